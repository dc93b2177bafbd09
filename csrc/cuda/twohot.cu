// Dense two-hot encoding on the GPU: one thread per output element, coalesced row writes
// (CPU twin: csrc/cpu/twohot.cpp).
#include "launch.h"
#include "../common/dx_math.h"
#include "../common/kernels.h"

namespace dx { namespace cuda {

namespace {
template <typename T> __global__ void twohot_kernel(TwohotParams<T> p) {
  const int64_t total = p.n * p.K;
  const int64_t stride = int64_t(blockDim.x) * gridDim.x;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += stride) {
    const int64_t i = idx / p.K;
    const TwohotPos<T> pos = twohot_pos(p.x[i], p.bins, p.K);
    p.out[idx] = twohot_weight(pos, idx - i * p.K);
  }
}
}  // namespace

template <typename T> void twohot_fwd(const TwohotParams<T>& p, const Exec& e) {
  launch_1d(twohot_kernel<T>, p, p.n * p.K, 256, e, "twohot");
}

template void twohot_fwd<float>(const TwohotParams<float>&, const Exec&);
template void twohot_fwd<double>(const TwohotParams<double>&, const Exec&);

}}  // namespace dx::cuda
