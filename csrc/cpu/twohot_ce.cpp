// Fused two-hot cross-entropy on the CPU. Forward: per row log-sum-exp and the two weighted logits,
// never building the [n, K] two-hot tensor. Backward: grad * (softmax - twohot) in one pass.
#include <algorithm>
#include <limits>

#include "../common/dx_math.h"
#include "../common/kernels.h"
#include "parallel.h"

namespace dx { namespace cpu {

namespace {
// log(sum_k exp(l_k)) of one row; the exp loop vectorises (dx::exp_ is branch-free for float).
template <typename T> T row_lse(const T* __restrict l, int64_t K) {
  T mx = -std::numeric_limits<T>::infinity();
  bool nan = false;
  for (int64_t k = 0; k < K; ++k) { mx = l[k] > mx ? l[k] : mx; nan |= l[k] != l[k]; }
  if (nan) return std::numeric_limits<T>::quiet_NaN();
  if (mx == -std::numeric_limits<T>::infinity()) return mx;
  T s = 0;
  for (int64_t k = 0; k < K; ++k) s += dx::exp_(l[k] - mx);
  return mx + dx::log_(s);
}
}  // namespace

template <typename T> void twohot_ce_fwd(const TwohotCEParams<T>& p, const Exec& e) {
  const int64_t K = p.K;
  parallel_for(p.n, std::max<int64_t>(1, (1 << 14) / std::max<int64_t>(K, 1)), e.nthreads, [&](int64_t b, int64_t end) {
    for (int64_t i = b; i < end; ++i) {
      const T* l = p.logits + i * K;
      const T lse = row_lse(l, K);
      const TwohotPos<T> pos = twohot_pos(p.target[i], p.bins, K);
      p.lse[i] = lse;
      // -sum_k w_k (l_k - lse) with sum_k w_k = 1; a NaN target gives NaN through w_lo
      p.loss[i] = lse - (pos.w_lo * l[pos.lo] + (T(1) - pos.w_lo) * l[pos.lo + 1]);
    }
  });
}

template <typename T> void twohot_ce_bwd(const TwohotCEBwdParams<T>& p, const Exec& e) {
  const int64_t K = p.K;
  parallel_for(p.n, std::max<int64_t>(1, (1 << 14) / std::max<int64_t>(K, 1)), e.nthreads, [&](int64_t b, int64_t end) {
    for (int64_t i = b; i < end; ++i) {
      const T* __restrict l = p.logits + i * K;
      T* __restrict gl = p.grad_logits + i * K;
      const T g = p.grad[i], lse = p.lse[i];
      for (int64_t k = 0; k < K; ++k) gl[k] = g * dx::exp_(l[k] - lse);
      const TwohotPos<T> pos = twohot_pos(p.target[i], p.bins, K);
      if (pos.w_lo != pos.w_lo) {
        std::fill(gl, gl + K, std::numeric_limits<T>::quiet_NaN());
        continue;
      }
      gl[pos.lo] -= g * pos.w_lo;
      gl[pos.lo + 1] -= g * (T(1) - pos.w_lo);
    }
  });
}

template void twohot_ce_fwd<float>(const TwohotCEParams<float>&, const Exec&);
template void twohot_ce_fwd<double>(const TwohotCEParams<double>&, const Exec&);
template void twohot_ce_bwd<float>(const TwohotCEBwdParams<float>&, const Exec&);
template void twohot_ce_bwd<double>(const TwohotCEBwdParams<double>&, const Exec&);

}}  // namespace dx::cpu
