// Fused two-hot cross-entropy on the GPU (CPU twin: csrc/cpu/twohot_ce.cpp).
// Forward: one warp per row; max and sum-exp reduced with warp shuffles; lane 0 writes loss and lse.
// Backward: one thread per logit, grad * (softmax - twohot).
#include "launch.h"
#include "../common/dx_math.h"
#include "../common/kernels.h"

namespace dx { namespace cuda {

namespace {
constexpr int kWarp = 32;
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
  const int64_t row = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  // Every lane of the warp takes part in the shuffles; a warp past the last row reads row 0 and
  // writes nothing.
  const bool active = row < p.n;
  const T* l = p.logits + (active ? row : 0) * p.K;
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
  if (active && lane == 0) {
    const T lse = nan ? T(NAN) : (mx == -INFINITY ? mx : mx + dx::log_(s));
    const TwohotPos<T> pos = twohot_pos(p.target[row], p.bins, p.K);
    p.lse[row] = lse;
    p.loss[row] = lse - twohot_dot(pos, l);
  }
}

template <typename T> __global__ void twohot_ce_bwd_kernel(TwohotCEBwdParams<T> p) {
  const int64_t total = p.n * p.K;
  const int64_t stride = int64_t(blockDim.x) * gridDim.x;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += stride) {
    const int64_t i = idx / p.K;
    const TwohotPos<T> pos = twohot_pos(p.target[i], p.bins, p.K);
    const T w = twohot_weight(pos, idx - i * p.K);
    p.grad_logits[idx] = p.grad[i] * (dx::exp_(p.logits[idx] - p.lse[i]) - w);
  }
}
}  // namespace

template <typename T> void twohot_ce_fwd(const TwohotCEParams<T>& p, const Exec& e) {
  if (p.n <= 0) return;
  const int64_t blocks = (p.n + kRowsPerBlock - 1) / kRowsPerBlock;
  if (blocks > 0x7fffffffLL) throw std::runtime_error("twohot_cross_entropy: too many rows for one launch");
  auto kernel = twohot_ce_fwd_kernel<T>;
  DX_LAUNCH(kernel, dim3(unsigned(blocks)), dim3(kRowsPerBlock * kWarp), stream_of(e))(p);
  check_launch("twohot_cross_entropy forward");
}

template <typename T> void twohot_ce_bwd(const TwohotCEBwdParams<T>& p, const Exec& e) {
  launch_1d(twohot_ce_bwd_kernel<T>, p, p.n * p.K, 256, e, "twohot_cross_entropy backward");
}

template void twohot_ce_fwd<float>(const TwohotCEParams<float>&, const Exec&);
template void twohot_ce_fwd<double>(const TwohotCEParams<double>&, const Exec&);
template void twohot_ce_bwd<float>(const TwohotCEBwdParams<float>&, const Exec&);
template void twohot_ce_bwd<double>(const TwohotCEBwdParams<double>&, const Exec&);

}}  // namespace dx::cuda
