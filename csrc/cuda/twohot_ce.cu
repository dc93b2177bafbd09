// Fused two-hot cross-entropy on the GPU (CPU twin: csrc/cpu/twohot_ce.cpp). Both kernels give each
// row one warp (grid-stride over rows):
// Forward: max and sum-exp reduced with warp shuffles; lane 0 finds the two bins and writes loss and lse.
// Backward: lane 0 finds the two bins once, the warp shares them by shuffle, and the lanes write
// grad * (softmax - twohot) across the row.
#include "warp_row.h"
#include "../common/kernels.h"

namespace dx { namespace cuda {

namespace {
constexpr int kRowsPerBlock = 4;

template <typename T> __device__ __forceinline__ T warp_max(T v) {
  for (int off = kWarp / 2; off > 0; off >>= 1) {
    const T o = __shfl_xor_sync(0xffffffffu, v, off);
    v = o > v ? o : v;
  }
  return v;
}
template <typename T> __device__ __forceinline__ T warp_sum(T v) {
  for (int off = kWarp / 2; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

template <typename T> __global__ void twohot_ce_fwd_kernel(TwohotCEParams<T> p) {
  const int lane = threadIdx.x % kWarp;
  const int64_t stride = int64_t(gridDim.x) * kRowsPerBlock;
  // row is the same for every lane of a warp, so whole warps take part in the shuffles
  for (int64_t row = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp; row < p.n; row += stride) {
    const T* l = p.logits + row * p.K;
    T mx = -INFINITY;
    int nan = 0;
    for (int64_t k = lane; k < p.K; k += kWarp) {
      const T v = l[k];
      mx = v > mx ? v : mx;
      nan |= v != v;
    }
    mx = warp_max(mx);
    nan = int(warp_max(T(nan)));
    T s = 0;
    if (mx != -INFINITY && !nan)
      for (int64_t k = lane; k < p.K; k += kWarp) s += dx::exp_(l[k] - mx);
    s = warp_sum(s);
    if (lane == 0) {
      const T lse = nan ? T(NAN) : (mx == -INFINITY ? mx : mx + dx::log_(s));
      const TwohotPos<T> pos = twohot_pos(p.target[row], p.bins, p.K);
      p.lse[row] = lse;
      p.loss[row] = lse - twohot_dot(pos, l);
    }
  }
}

template <typename T> __global__ void twohot_ce_bwd_kernel(TwohotCEBwdParams<T> p) {
  const int lane = threadIdx.x % kWarp;
  const int64_t stride = int64_t(gridDim.x) * kRowsPerBlock;
  for (int64_t row = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp; row < p.n; row += stride) {
    const TwohotPos<T> pos = warp_twohot_pos(p.target[row], p.bins, p.K, lane);
    const T g = p.grad[row], lse = p.lse[row];
    const T* l = p.logits + row * p.K;
    T* gl = p.grad_logits + row * p.K;
    for (int64_t k = lane; k < p.K; k += kWarp) gl[k] = g * (dx::exp_(l[k] - lse) - twohot_weight(pos, k));
  }
}
}  // namespace

template <typename T> void twohot_ce_fwd(const TwohotCEParams<T>& p, const Exec& e) {
  launch_rows(twohot_ce_fwd_kernel<T>, p, p.n, kRowsPerBlock, e, "twohot_cross_entropy forward");
}

template <typename T> void twohot_ce_bwd(const TwohotCEBwdParams<T>& p, const Exec& e) {
  launch_rows(twohot_ce_bwd_kernel<T>, p, p.n, kRowsPerBlock, e, "twohot_cross_entropy backward");
}

template void twohot_ce_fwd<float>(const TwohotCEParams<float>&, const Exec&);
template void twohot_ce_fwd<double>(const TwohotCEParams<double>&, const Exec&);
template void twohot_ce_bwd<float>(const TwohotCEBwdParams<float>&, const Exec&);
template void twohot_ce_bwd<double>(const TwohotCEBwdParams<double>&, const Exec&);

}}  // namespace dx::cuda
