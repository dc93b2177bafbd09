// Fused two-hot cross-entropy on the CPU. Forward: per row log-sum-exp and the two weighted logits,
// never building the [n, K] two-hot tensor. Backward: grad * (softmax - twohot) in one pass.
//
// Rows are walked in chunks of W lanes (one 64-byte vector: 16 floats / 8 doubles) with independent
// per-lane max and sum accumulators, so GCC keeps them in vector registers without reassociating a
// serial reduction. The last partial chunk of a row (K = 255 leaves 15) goes through a padded W-lane
// buffer instead of a scalar loop: -inf padding adds exp(-inf) = 0 to the sum. The float bodies are
// compiled for AVX-512, AVX2 and the baseline (DX_MULTIVERSION); the loader picks one per machine.
#include <algorithm>
#include <cstring>
#include <limits>

#include "../common/dx_math.h"
#include "../common/kernels.h"
#include "parallel.h"

namespace dx { namespace cpu {

namespace {
template <typename T> constexpr int kLanes = 64 / int(sizeof(T));
template <typename T> struct Vec64 { typedef T type __attribute__((vector_size(64))); };

// log(sum_k exp(l_k)) of one row; a NaN logit makes it NaN, all -inf gives -inf.
template <typename T> DX_INLINE T row_lse(const T* __restrict l, int64_t K) {
  constexpr int W = kLanes<T>;
  constexpr T ninf = -std::numeric_limits<T>::infinity();
  const int64_t full = K / W * W;
  T tail[W];
  for (int j = 0; j < W; ++j) tail[j] = ninf;
  std::memcpy(tail, l + full, sizeof(T) * size_t(K - full));
  // the max in a GCC vector type: written as scalar lanes, GCC leaves the select-based max scalar
  using V = typename Vec64<T>::type;
  V m, v;
  std::memcpy(&m, tail, sizeof(V));
  for (int64_t k = 0; k < full; k += W) {
    std::memcpy(&v, l + k, sizeof(V));
    m = v > m ? v : m;
  }
  T mx = ninf;
  for (int j = 0; j < W; ++j) mx = m[j] > mx ? m[j] : mx;
  if (mx == ninf) {  // every logit is -inf or NaN (the max skips NaN)
    for (int64_t r = 0; r < K; ++r) if (l[r] != l[r]) return l[r];
    return mx;
  }
  T s[W];
  for (int j = 0; j < W; ++j) s[j] = dx::exp_nonpos(tail[j] - mx);  // l - mx <= 0 (or NaN)
  for (int64_t k = 0; k < full; k += W) {
    __builtin_prefetch(l + K + k);  // the next row's line, so its max pass does not wait on memory
    for (int j = 0; j < W; ++j) s[j] += dx::exp_nonpos(l[k + j] - mx);  // NaN logits make the sum NaN
  }
  T tot = 0;
  for (int j = 0; j < W; ++j) tot += s[j];
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

// out[j] = g * exp(l[j] - lse) for j < W
template <typename T> DX_INLINE void softmax_chunk(const T* __restrict l, T* __restrict out, T g, T lse) {
  for (int j = 0; j < kLanes<T>; ++j) out[j] = g * dx::exp_(l[j] - lse);
}

template <typename T> DX_INLINE void bwd_rows(const TwohotCEBwdParams<T>& p, int64_t b, int64_t end) {
  constexpr int W = kLanes<T>;
  const int64_t K = p.K, full = K / W * W;
  for (int64_t i = b; i < end; ++i) {
    const T* __restrict l = p.logits + i * K;
    T* __restrict gl = p.grad_logits + i * K;
    const TwohotPos<T> pos = twohot_pos(p.target[i], p.bins, K);
    if (pos.w_lo != pos.w_lo) {
      std::fill(gl, gl + K, std::numeric_limits<T>::quiet_NaN());
      continue;
    }
    const T g = p.grad[i], lse = p.lse[i];
    for (int64_t k = 0; k < full; k += W) softmax_chunk(l + k, gl + k, g, lse);
    if (full < K) {
      T in[W] = {}, out[W];
      std::memcpy(in, l + full, sizeof(T) * size_t(K - full));
      softmax_chunk(in, out, g, lse);
      std::memcpy(gl + full, out, sizeof(T) * size_t(K - full));
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
