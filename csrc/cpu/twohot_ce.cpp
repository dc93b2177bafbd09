// Fused two-hot cross-entropy on the CPU. Forward: per row log-sum-exp and the two weighted logits,
// never building the [n, K] two-hot tensor. Backward: grad * (softmax - twohot) in one pass.
#include <algorithm>
#include <limits>

#include "../common/dx_math.h"
#include "../common/kernels.h"
#include "parallel.h"

namespace dx { namespace cpu {

namespace {
// log(sum_k exp(l_k)) of one row. Max and sum run on W independent lanes (so the compiler can keep
// them in vector registers without reassociating a serial reduction); a NaN logit makes the sum NaN.
template <typename T> DX_INLINE T row_lse(const T* __restrict l, int64_t K) {
  constexpr int W = 16;
  constexpr T ninf = -std::numeric_limits<T>::infinity();
  T m[W], s[W];
  for (int j = 0; j < W; ++j) { m[j] = ninf; s[j] = T(0); }
  int64_t k = 0;
  for (; k + W <= K; k += W)
    for (int j = 0; j < W; ++j) m[j] = l[k + j] > m[j] ? l[k + j] : m[j];
  T mx = ninf;
  for (int j = 0; j < W; ++j) mx = m[j] > mx ? m[j] : mx;
  for (int64_t r = k; r < K; ++r) mx = l[r] > mx ? l[r] : mx;
  if (mx == ninf) {  // every logit is -inf or NaN
    for (int64_t r = 0; r < K; ++r) if (l[r] != l[r]) return l[r];
    return mx;
  }
  for (k = 0; k + W <= K; k += W)
    for (int j = 0; j < W; ++j) s[j] += dx::exp_(l[k + j] - mx);
  T tot = 0;
  for (int j = 0; j < W; ++j) tot += s[j];
  for (int64_t r = k; r < K; ++r) tot += dx::exp_(l[r] - mx);
  return mx + dx::log_(tot);
}

template <typename T> DX_INLINE void fwd_rows(const TwohotCEParams<T>& p, int64_t b, int64_t end) {
  const int64_t K = p.K;
  for (int64_t i = b; i < end; ++i) {
    const T* l = p.logits + i * K;
    const T lse = row_lse(l, K);
    const TwohotPos<T> pos = twohot_pos(p.target[i], p.bins, K);
    p.lse[i] = lse;
    // -sum_k w_k (l_k - lse) with sum_k w_k = 1; a NaN target gives NaN through w_lo
    p.loss[i] = lse - twohot_dot(pos, l);
  }
}

template <typename T> DX_INLINE void bwd_rows(const TwohotCEBwdParams<T>& p, int64_t b, int64_t end) {
  const int64_t K = p.K;
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
}

DX_MULTIVERSION void fwd_rows_f32(const TwohotCEParams<float>& p, int64_t b, int64_t e) { fwd_rows(p, b, e); }
DX_MULTIVERSION void bwd_rows_f32(const TwohotCEBwdParams<float>& p, int64_t b, int64_t e) { bwd_rows(p, b, e); }
void fwd_rows_(const TwohotCEParams<float>& p, int64_t b, int64_t e) { fwd_rows_f32(p, b, e); }
void bwd_rows_(const TwohotCEBwdParams<float>& p, int64_t b, int64_t e) { bwd_rows_f32(p, b, e); }
void fwd_rows_(const TwohotCEParams<double>& p, int64_t b, int64_t e) { fwd_rows(p, b, e); }
void bwd_rows_(const TwohotCEBwdParams<double>& p, int64_t b, int64_t e) { bwd_rows(p, b, e); }
}  // namespace

template <typename T> void twohot_ce_fwd(const TwohotCEParams<T>& p, const Exec& e) {
  const int64_t grain = std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(p.K, 1));
  parallel_for(p.n, grain, e.nthreads, [&](int64_t b, int64_t end) { fwd_rows_(p, b, end); });
}

template <typename T> void twohot_ce_bwd(const TwohotCEBwdParams<T>& p, const Exec& e) {
  const int64_t grain = std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(p.K, 1));
  parallel_for(p.n, grain, e.nthreads, [&](int64_t b, int64_t end) { bwd_rows_(p, b, end); });
}

template void twohot_ce_fwd<float>(const TwohotCEParams<float>&, const Exec&);
template void twohot_ce_fwd<double>(const TwohotCEParams<double>&, const Exec&);
template void twohot_ce_bwd<float>(const TwohotCEBwdParams<float>&, const Exec&);
template void twohot_ce_bwd<double>(const TwohotCEBwdParams<double>&, const Exec&);

}}  // namespace dx::cpu
