// Dense two-hot encoding on the GPU: one warp per row. Lane 0 finds the row's two bins once and the
// warp shares them by shuffle; the lanes then write the row with coalesced stores
// (CPU twin: csrc/cpu/twohot.cpp).
#include "warp_row.h"
#include "../common/kernels.h"

namespace dx { namespace cuda {

namespace {
constexpr int kRowsPerBlock = 8;

template <typename T> __global__ void twohot_kernel(TwohotParams<T> p) {
  const int lane = threadIdx.x % kWarp;
  const int64_t stride = int64_t(gridDim.x) * kRowsPerBlock;
  // row is the same for every lane of a warp, so whole warps enter and leave the loop together
  for (int64_t row = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp; row < p.n; row += stride) {
    const TwohotPos<T> pos = warp_twohot_pos(p.x[row], p.bins, p.K, lane);
    T* out = p.out + row * p.K;
    for (int64_t k = lane; k < p.K; k += kWarp) out[k] = twohot_weight(pos, k);
  }
}
}  // namespace

template <typename T> void twohot_fwd(const TwohotParams<T>& p, const Exec& e) {
  launch_rows(twohot_kernel<T>, p, p.n, kRowsPerBlock, e, "twohot");
}

template void twohot_fwd<float>(const TwohotParams<float>&, const Exec&);
template void twohot_fwd<double>(const TwohotParams<double>&, const Exec&);

}}  // namespace dx::cuda
