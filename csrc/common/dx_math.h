// Device/host math shared by the CPU kernels (csrc/cpu), the CUDA kernels (csrc/cuda) and the
// CPU emulation of the CUDA kernels (csrc/emu). No torch, no pybind11, no CUDA runtime calls here.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define DX_HD __host__ __device__ __forceinline__
#else
#define DX_HD inline
#endif

// The emulated CUDA build (tests) counts bin searches, so a test can check that a kernel searches once
// per row rather than once per output element. Nothing in the CPU or CUDA builds.
#if defined(DX_EMU)
#include <atomic>
namespace dx_emu { inline std::atomic<int64_t> g_bin_searches{0}; }
#define DX_COUNT_BIN_SEARCH() ::dx_emu::g_bin_searches.fetch_add(1, std::memory_order_relaxed)
#else
#define DX_COUNT_BIN_SEARCH() ((void)0)
#endif

namespace dx {

// ---------------------------------------------------------------------------------------------
// Branch-free float32 log1p / exp / expm1 for the CPU paths. Plain arithmetic and bit casts only,
// so GCC vectorises loops that call them (libm calls would keep those loops scalar). Errors are a
// few ulp over the whole float range; tests check them against float64 references.
// On a GPU the hardware-backed libdevice functions are used instead (see the dispatchers below).
// ---------------------------------------------------------------------------------------------
#if defined(__CUDA_ARCH__)
DX_HD float bits_to_float(uint32_t u) { return __uint_as_float(u); }
DX_HD uint32_t float_to_bits(float f) { return __float_as_uint(f); }
#else
DX_HD float bits_to_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
DX_HD uint32_t float_to_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
#endif
DX_HD float fabs_(float a) { return ::fabsf(a); }
DX_HD double fabs_(double a) { return ::fabs(a); }
DX_HD float copysign_(float a, float b) { return ::copysignf(a, b); }
DX_HD double copysign_(double a, double b) { return ::copysign(a, b); }

// log(u) for u >= 1 finite: u = 2^e * m with m in [sqrt(1/2), sqrt(2)),
// log m = 2 atanh(s), s = (m - 1) / (m + 1), |s| <= 0.1716, odd series to s^9.
DX_HD float log_ge1_poly(float u) {
  uint32_t b = float_to_bits(u);
  int32_t e = int32_t(b >> 23) - 127;
  float m = bits_to_float((b & 0x007fffffu) | 0x3f800000u);  // [1, 2)
  const bool big = m > 1.41421356f;
  m = big ? 0.5f * m : m;
  e = big ? e + 1 : e;
  const float s = (m - 1.0f) / (m + 1.0f);
  const float z = s * s;
  const float p = 1.0f + z * (0.33333334f + z * (0.2f + z * (0.14285715f + z * 0.11111111f)));
  const float ef = float(e);
  return ef * 0.693145752f + (ef * 1.42860677e-06f + 2.0f * s * p);  // ln2 split hi + lo
}

// 1/u to float precision for 1 <= u <= 2^100 without a division: a bit-level first guess (~12%)
// refined by three Newton steps (each squares the relative error).
DX_HD float recip_ge1(float u) {
  const float v = u < 1.2676506e30f ? u : 1.2676506e30f;  // 2^100; beyond it the caller's term vanishes
  float r = bits_to_float(0x7EF311C3u - float_to_bits(v));
  r = r * (2.0f - v * r);
  r = r * (2.0f - v * r);
  return r * (2.0f - v * r);
}

// log1p(a) for a >= 0 (a may be +inf or NaN).
DX_HD float log1p_pos_poly(float a) {
  const float u = 1.0f + a;
  // log1p(a) = log(u) + (a - (u - 1)) / u recovers the bits of a lost when rounding 1 + a; that
  // correction is tiny relative to the result, so an approximate 1/u is plenty.
  const float r = log_ge1_poly(u) + (a - (u - 1.0f)) * recip_ge1(u);
  return a == INFINITY ? a : r;
}

// 2 exp(r) for |r| <= ln2/2 + a little (degree-6 Taylor with doubled coefficients, relative error < 3e-8).
DX_HD float exp2x_reduced_poly(float r) {
  return 2.0f + r * (2.0f + r * (1.0f + r * (0.33333334f + r * (0.083333336f + r * (0.016666668f + r * 0.0027777778f)))));
}

// exp(a) for any float a; overflows to +inf above ~88.72, flushes to 0 below about -86.99, NaN stays NaN.
// About 17 vector operations: n = round(a / ln2) with the 1.5 * 2^23 trick (whose low bits then hold n,
// so 2^(n-1) is an integer add and a shift away), a two-part reduction, the polynomial, one multiply,
// and a select for each end (outside [-87, 88.8] the arithmetic before them is garbage, never used; NaN
// fails both comparisons and stays NaN; clamps instead would cost GCC more: it turns them into selects
// on the result anyway). 2^(n-1) * 2 exp(r) keeps n = 128 representable; at n = -126, 2^(n-1) has
// exponent field 0 and reads as 0, hence the flush just above -87.
DX_HD float exp_core(float a) {
  const float t = a * 1.44269504f + 12582912.0f;  // 1.5 * 2^23 + n, n in [-126, 128] for a in [-87, 88.8]
  const float n = t - 12582912.0f;
  const float r = (a - n * 0.693145752f) - n * 1.42860677e-06f;  // ln2 split hi + lo
  // bits(t) = 0x4B400000 + n and 0x4B400000 is a multiple of 2^9, so the low 9 bits of bits(t) + 126
  // are the biased exponent n - 1 + 127 in [0, 254]; the shift drops everything above them.
  const float scale = bits_to_float((float_to_bits(t) + 126u) << 23);
  return scale * exp2x_reduced_poly(r);
}
DX_HD float exp_poly(float a) {
  const float y = exp_core(a);
  const float hi = a > 88.8f ? INFINITY : y;
  return a < -87.0f ? 0.0f : hi;
}
// exp(a) for a <= 0 or NaN (e.g. a logit minus the row's max): exp_poly without the overflow select.
DX_HD float exp_nonpos_poly(float a) {
  const float y = exp_core(a);
  return a < -87.0f ? 0.0f : y;
}

// expm1(a) for a >= 0: Taylor series near zero (keeps relative accuracy), exp - 1 above.
DX_HD float expm1_pos_poly(float a) {
  const float t = a * (1.0f + a * (0.5f + a * (0.16666667f + a * (0.041666668f + a * (0.008333334f +
                  a * (0.0013888889f + a * (1.9841270e-04f + a * 2.4801587e-05f)))))));
  const float big = exp_poly(a) - 1.0f;
  return a < 0.34657359f ? t : big;
}

// ---------------------------------------------------------------------------------------------
// Dispatchers: libm / libdevice on double and on the GPU, the polynomials on CPU float32.
// ---------------------------------------------------------------------------------------------
DX_HD double log1p_pos(double a) { return ::log1p(a); }
DX_HD double expm1_pos(double a) { return ::expm1(a); }
DX_HD double exp_(double a) { return ::exp(a); }
DX_HD double exp_nonpos(double a) { return ::exp(a); }
#if defined(__CUDA_ARCH__)
DX_HD float log1p_pos(float a) { return ::log1pf(a); }
DX_HD float expm1_pos(float a) { return ::expm1f(a); }
DX_HD float exp_(float a) { return ::expf(a); }
DX_HD float exp_nonpos(float a) { return ::expf(a); }
#else
DX_HD float log1p_pos(float a) { return log1p_pos_poly(a); }
DX_HD float expm1_pos(float a) { return expm1_pos_poly(a); }
DX_HD float exp_(float a) { return exp_poly(a); }
DX_HD float exp_nonpos(float a) { return exp_nonpos_poly(a); }
#endif
DX_HD double log_(double a) { return ::log(a); }
DX_HD float log_(float a) { return ::logf(a); }

// symlog(x) = sign(x) log(1 + |x|); symexp(x) = sign(x) (exp|x| - 1). NaN in, NaN out.
template <typename T> DX_HD T symlog(T x) { return copysign_(log1p_pos(fabs_(x)), x); }
template <typename T> DX_HD T symexp(T x) { return copysign_(expm1_pos(fabs_(x)), x); }

// Two-hot position of x over strictly increasing bins[0..K-1] (K >= 2): the two weighted bins are
// lo and lo + 1 with weight w_lo on lo. Ends clamp (all weight on bin 0 or K-1, expressed as
// lo = 0, w_lo = 1 or lo = K-2, w_lo = 0). NaN gives w_lo = NaN (the caller writes a NaN row).
template <typename T> struct TwohotPos { int64_t lo; T w_lo; };

template <typename T> DX_HD TwohotPos<T> twohot_pos(T x, const T* bins, int64_t K) {
  // c = number of bins <= x by a branch-free binary search whose trip count depends on K only (no
  // mispredicted branches on the CPU, no divergence on the GPU): the answer stays in [b, b + len].
  DX_COUNT_BIN_SEARCH();
  int64_t b = 0, len = K;
  while (len > 1) {
    const int64_t half = len >> 1;
    b += bins[b + half] <= x ? half : 0;
    len -= half;
  }
  const int64_t c = b + (bins[b] <= x ? 1 : 0);  // NaN: every comparison is false, c = 0
  // lo = c - 1 clamped to [0, K-2]
  int64_t lo = c - 1;
  lo = lo < 0 ? 0 : lo;
  lo = lo > K - 2 ? K - 2 : lo;
  const T b0 = bins[lo], b1 = bins[lo + 1];
  T w = (b1 - x) / (b1 - b0);
  w = w < T(0) ? T(0) : w;
  w = w > T(1) ? T(1) : w;
  w = x != x ? x : w;  // keep NaN
  return {lo, w};
}

// Weight of bin k given the position (NaN row when w_lo is NaN).
template <typename T> DX_HD T twohot_weight(const TwohotPos<T>& p, int64_t k) {
  const T w = k == p.lo ? p.w_lo : (k == p.lo + 1 ? T(1) - p.w_lo : T(0));
  return p.w_lo != p.w_lo ? p.w_lo : w;
}

// sum_k twohot_k * l_k over the two weighted bins. A zero-weight bin contributes exactly 0 even when
// its logit is -inf (so the loss stays finite); a NaN weight (NaN target) gives NaN.
template <typename T> DX_HD T twohot_dot(const TwohotPos<T>& p, const T* l) {
  const T w_hi = T(1) - p.w_lo;
  return (p.w_lo != T(0) ? p.w_lo * l[p.lo] : T(0)) + (w_hi != T(0) ? w_hi * l[p.lo + 1] : T(0));
}

// One step of the reverse λ-return recursion, R_t = r_t + gamma c_t ((1 - lam) v_{t+1} + lam R_{t+1}),
// associated as (r_t + ((1 - lam) gamma c_t) v_{t+1}) + (gamma c_t lam) R_{t+1}: the order in which the
// reference (dreamer_ext/ops/reference.py) rounds, so float64 results agree to the last bits.
template <typename T> DX_HD T lambda_step(T reward, T cont, T next_value, T next_return, T gamma, T lam) {
  const T gc = gamma * cont;
  return (reward + ((T(1) - lam) * gc) * next_value) + (gc * lam) * next_return;
}

}  // namespace dx
