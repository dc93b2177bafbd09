// The fused imagination rollout on the CPU, float32 or bf16 compute.
//
// The rows are cut into blocks of kRowBlock; a block runs all H steps back to back (actor -> action sample ->
// core -> prior -> latent sample) in per-thread scratch that stays in cache, while the weights stream from
// L2/L3. Threads own disjoint row blocks (parallel_for). Every matmul is one register-blocked microkernel over
// K-major weights (6 rows x 64 columns of accumulators: 24 of the 32 AVX-512 registers), with the one-hot inputs
// (latents, discrete actions) added as gathered weight rows instead of multiplied. The whole block body is
// compiled once per x86-64 level (DX_MULTIVERSION) through GCC vector extensions: the matmul, the norms, the GRU
// update, the gathers and the bf16 rounding are multiversioned functions; the step logic around them is not, so
// each clone holds only the hot loops (inlining the whole step into every clone made the file take >10 min to build).
//
// bf16 compute: each matmul input row is rounded to bf16 and packed in k-pairs, the weights come pre-packed as
// bf16 k-pairs, and the AVX512-BF16 microkernel (vdpbf16ps: two exact bf16 products added into each float32
// accumulator) runs the same 6 x 64 tiles, reading half the weight bytes of float32. On CPUs without
// AVX512-BF16 a portable loop computes the same products (slowly). Norms, gates, softmax and sampling stay float32.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#define DX_HAVE_BF16_KERNEL 1
#endif

#include "../common/kernels.h"
#include "../common/rollout.h"
#include "parallel.h"

namespace dx { namespace cpu {

namespace {

constexpr int kRowBlock = 48;  // rows that run the horizon together
constexpr int kRT = 6;         // microkernel rows
constexpr int kNV = 4;         // microkernel column vectors of 16 floats

typedef float vf16 __attribute__((vector_size(64)));
DX_INLINE vf16 loadu(const float* p) { vf16 v; std::memcpy(&v, p, sizeof v); return v; }
DX_INLINE void storeu(float* p, vf16 v) { std::memcpy(p, &v, sizeof v); }

// Y[r, 0:16 NV] += X[r, :K] @ W[:K, 0:16 NV] for r < RT (ldx, ldw, ldy: row strides in floats).
template <int RT, int NV>
DX_INLINE void tile(const float* X, int64_t ldx, const float* W, int64_t ldw, int K, float* Y, int64_t ldy) {
  vf16 acc[RT][NV];
  for (int r = 0; r < RT; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = loadu(Y + r * ldy + 16 * v);
  for (int k = 0; k < K; ++k) {
    vf16 w[NV];
    for (int v = 0; v < NV; ++v) w[v] = loadu(W + int64_t(k) * ldw + 16 * v);
    for (int r = 0; r < RT; ++r) {
      const float x = X[r * ldx + k];
      for (int v = 0; v < NV; ++v) acc[r][v] += x * w[v];
    }
  }
  for (int r = 0; r < RT; ++r)
    for (int v = 0; v < NV; ++v) storeu(Y + r * ldy + 16 * v, acc[r][v]);
}

template <int NV>
DX_INLINE void tile_rows(int rows, const float* X, int64_t ldx, const float* W, int64_t ldw, int K, float* Y, int64_t ldy) {
  switch (rows) {
    case 1: tile<1, NV>(X, ldx, W, ldw, K, Y, ldy); break;
    case 2: tile<2, NV>(X, ldx, W, ldw, K, Y, ldy); break;
    case 3: tile<3, NV>(X, ldx, W, ldw, K, Y, ldy); break;
    case 4: tile<4, NV>(X, ldx, W, ldw, K, Y, ldy); break;
    case 5: tile<5, NV>(X, ldx, W, ldw, K, Y, ldy); break;
    default: tile<6, NV>(X, ldx, W, ldw, K, Y, ldy); break;
  }
}

// Y[:R, :O] += X[:R, :K] @ W[:K, :O] (float32): column panels of 64, then 16, then a scalar tail; each panel of W
// is reused by all row tiles while it sits in L2.
DX_MULTIVERSION void gemm_f32(int R, const float* X, int64_t ldx, const float* W, int64_t ldw, int K, int O, float* Y,
                        int64_t ldy) {
  int o = 0;
  for (; o + 16 * kNV <= O; o += 16 * kNV)
    for (int r = 0; r < R; r += kRT)
      tile_rows<kNV>(std::min(kRT, R - r), X + r * ldx, ldx, W + o, ldw, K, Y + r * ldy + o, ldy);
  for (; o + 16 <= O; o += 16)
    for (int r = 0; r < R; r += kRT)
      tile_rows<1>(std::min(kRT, R - r), X + r * ldx, ldx, W + o, ldw, K, Y + r * ldy + o, ldy);
  if (o < O)
    for (int r = 0; r < R; ++r)
      for (int k = 0; k < K; ++k) {
        const float x = X[r * ldx + k];
        const float* w = W + int64_t(k) * ldw;
        for (int j = o; j < O; ++j) Y[r * ldy + j] += x * w[j];
      }
}

// ---- bf16: Y[:R, :O] += Xp[:R, :KP] @ Wp[:KP, :O] with k-pairs (Xp: uint32 = two bf16; Wp: [KP, O, 2]) ----
// Portable version: the same exact products, float32 sums.
void gemm_bf16_portable(int R, const uint32_t* Xp, int64_t ldx, const uint16_t* Wp, int64_t ldw, int KP, int O,
                        float* Y, int64_t ldy) {
  for (int r = 0; r < R; ++r)
    for (int kp = 0; kp < KP; ++kp) {
      const uint32_t x = Xp[r * ldx + kp];
      const float x0 = bf16_to_f32(uint16_t(x)), x1 = bf16_to_f32(uint16_t(x >> 16));
      const uint16_t* w = Wp + int64_t(kp) * ldw * 2;
      for (int j = 0; j < O; ++j) Y[r * ldy + j] += x1 * bf16_to_f32(w[2 * j + 1]) + x0 * bf16_to_f32(w[2 * j]);
    }
}

#if defined(DX_HAVE_BF16_KERNEL)
#define DX_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,fma")))
template <int RT, int NV>
DX_BF16_TARGET inline __attribute__((always_inline)) void tile_bf16(const uint32_t* Xp, int64_t ldx, const uint16_t* Wp,
                                                                     int64_t ldw, int KP, float* Y, int64_t ldy) {
  __m512 acc[RT][NV];
  for (int r = 0; r < RT; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_loadu_ps(Y + r * ldy + 16 * v);
  for (int kp = 0; kp < KP; ++kp) {
    __m512bh w[NV];
    for (int v = 0; v < NV; ++v) w[v] = (__m512bh)_mm512_loadu_si512(Wp + (int64_t(kp) * ldw + 16 * v) * 2);
    for (int r = 0; r < RT; ++r) {
      const __m512bh x = (__m512bh)_mm512_set1_epi32(int(Xp[r * ldx + kp]));
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], x, w[v]);
    }
  }
  for (int r = 0; r < RT; ++r)
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(Y + r * ldy + 16 * v, acc[r][v]);
}

template <int NV>
DX_BF16_TARGET void tile_rows_bf16(int rows, const uint32_t* Xp, int64_t ldx, const uint16_t* Wp, int64_t ldw, int KP,
                                   float* Y, int64_t ldy) {
  switch (rows) {
    case 1: tile_bf16<1, NV>(Xp, ldx, Wp, ldw, KP, Y, ldy); break;
    case 2: tile_bf16<2, NV>(Xp, ldx, Wp, ldw, KP, Y, ldy); break;
    case 3: tile_bf16<3, NV>(Xp, ldx, Wp, ldw, KP, Y, ldy); break;
    case 4: tile_bf16<4, NV>(Xp, ldx, Wp, ldw, KP, Y, ldy); break;
    case 5: tile_bf16<5, NV>(Xp, ldx, Wp, ldw, KP, Y, ldy); break;
    default: tile_bf16<6, NV>(Xp, ldx, Wp, ldw, KP, Y, ldy); break;
  }
}

DX_BF16_TARGET void gemm_bf16_avx512(int R, const uint32_t* Xp, int64_t ldx, const uint16_t* Wp, int64_t ldw, int KP,
                                     int O, float* Y, int64_t ldy) {
  int o = 0;
  for (; o + 16 * kNV <= O; o += 16 * kNV)
    for (int r = 0; r < R; r += kRT)
      tile_rows_bf16<kNV>(std::min(kRT, R - r), Xp + r * ldx, ldx, Wp + int64_t(o) * 2, ldw, KP, Y + r * ldy + o, ldy);
  for (; o + 16 <= O; o += 16)
    for (int r = 0; r < R; r += kRT)
      tile_rows_bf16<1>(std::min(kRT, R - r), Xp + r * ldx, ldx, Wp + int64_t(o) * 2, ldw, KP, Y + r * ldy + o, ldy);
  if (o < O) {  // the last < 16 columns
    for (int r = 0; r < R; ++r)
      for (int kp = 0; kp < KP; ++kp) {
        const uint32_t x = Xp[r * ldx + kp];
        const float x0 = bf16_to_f32(uint16_t(x)), x1 = bf16_to_f32(uint16_t(x >> 16));
        const uint16_t* w = Wp + int64_t(kp) * ldw * 2;
        for (int j = o; j < O; ++j) Y[r * ldy + j] += x1 * bf16_to_f32(w[2 * j + 1]) + x0 * bf16_to_f32(w[2 * j]);
      }
  }
}

bool cpu_has_avx512bf16() {
  static const bool yes = [] { __builtin_cpu_init(); return bool(__builtin_cpu_supports("avx512bf16")); }();
  return yes;
}
#endif

void gemm_bf16(int R, const uint32_t* Xp, int64_t ldx, const uint16_t* Wp, int64_t ldw, int KP, int O, float* Y,
               int64_t ldy) {
#if defined(DX_HAVE_BF16_KERNEL)
  if (cpu_has_avx512bf16()) return gemm_bf16_avx512(R, Xp, ldx, Wp, ldw, KP, O, Y, ldy);
#endif
  gemm_bf16_portable(R, Xp, ldx, Wp, ldw, KP, O, Y, ldy);
}

// A matmul weight: float32 [K, ld] or bf16 k-pairs [ceil(K/2), ld, 2].
struct Mat {
  const float* f;
  const uint16_t* b;
  int64_t ld;
  DX_INLINE float at(int64_t k, int64_t j) const {
    return f ? f[k * ld + j] : bf16_to_f32(b[((k >> 1) * ld + j) * 2 + (k & 1)]);
  }
};

// A matmul input of R rows: float32 rows (f, ldf) and, for bf16 compute, the same rows rounded to bf16 k-pairs
// (p, ldp in pairs), converted once and shared by every matmul that reads them.
struct In {
  const float* f;
  int64_t ldf;
  const uint32_t* p;
  int64_t ldp;
};

// `In` over X[:R, :K]; with bf16 its k-pairs are written to `buf` (R * ceil(K/2) words).
DX_MULTIVERSION void to_pairs(int R, const float* X, int64_t ldx, int K, uint32_t* buf) {
  const int KP = (K + 1) / 2, KE = K / 2;
  for (int r = 0; r < R; ++r) {
    const float* x = X + r * ldx;
    uint32_t* o = buf + int64_t(r) * KP;
    for (int kp = 0; kp < KE; ++kp) o[kp] = uint32_t(f32_to_bf16(x[2 * kp])) | (uint32_t(f32_to_bf16(x[2 * kp + 1])) << 16);
    if (KP > KE) o[KE] = f32_to_bf16(x[K - 1]);
  }
}

// ---- a team of threads on the same rows (the acting step of a large model at a few rows) ----
// Every thread of the team runs the same sequence of calls on one shared scratch. A matmul splits its output
// columns over the team in 64-column panels (each column is summed in the same order as by one thread, so the
// result is bitwise the serial one); everything else (biases, gathers, norms, gates, sampling, bf16 packing) is
// `serial`: thread 0 does it, and the team meets at a barrier only where one side reads what the other wrote.
// Outside a team (nt = 1) all of this is a no-op.
struct Team {
  int tid = 0, nt = 1;
  bool dirty = false;    // serial work was done since the last barrier
  bool pending = false;  // matmul columns were written by the team since the last barrier
};
thread_local Team tl_team;

inline void team_sync() {
#if defined(_OPENMP)
#pragma omp barrier
#endif
  tl_team.dirty = tl_team.pending = false;
}

// Called by every thread of the team at the start of a serial piece: true on the thread that does it.
inline bool serial() {
  Team& t = tl_team;
  if (t.nt == 1) return true;
  if (t.pending) team_sync();
  t.dirty = true;
  return t.tid == 0;
}

inline In prep(int R, const float* X, int64_t ldx, int K, bool bf16, uint32_t* buf) {
  if (!bf16) return In{X, ldx, nullptr, 0};
  if (serial()) to_pairs(R, X, ldx, K, buf);
  return In{X, ldx, buf, (K + 1) / 2};
}

// Y[:R, :O] += In[:R, kx:kx+K] @ W[k0:k0+K, :O] (kx and k0 even for bf16); in a team, this thread's columns.
// `after_gemm`: this matmul reads nothing the team's previous matmuls wrote (the blocks of a block-linear layer,
// the two inputs of one layer), so it need not wait for them; serial work before it is always waited for.
inline void gemm_acc(int R, const In& X, int kx, const Mat& W, int k0, int K, int O, float* Y, int64_t ldy,
                     bool after_gemm = false) {
  int o0 = 0, o1 = O;
  Team& t = tl_team;
  if (t.nt > 1) {
    if (t.dirty || (t.pending && !after_gemm)) team_sync();
    t.pending = true;
    const int panels = O / 64;  // the last thread also takes the columns after the last whole panel
    if (panels >= t.nt) {
      o0 = 64 * (panels * t.tid / t.nt);
      o1 = t.tid == t.nt - 1 ? O : 64 * (panels * (t.tid + 1) / t.nt);
    } else if (t.tid != 0) {
      return;
    }
  }
  if (W.f) return gemm_f32(R, X.f + kx, X.ldf, W.f + int64_t(k0) * W.ld + o0, W.ld, K, o1 - o0, Y + o0, ldy);
  gemm_bf16(R, X.p + kx / 2, X.ldp, W.b + (int64_t(k0 / 2) * W.ld + o0) * 2, W.ld, (K + 1) / 2, o1 - o0, Y + o0, ldy);
}

DX_INLINE Mat mat(const DenseW& L) { return Mat{L.w, L.wb, L.out}; }

inline void set_bias(int R, const float* b, int O, float* Y, int64_t ldy) {
  if (!serial()) return;
  for (int r = 0; r < R; ++r) std::memcpy(Y + r * ldy, b, sizeof(float) * O);
}

// y = norm(y) (RMSNorm eps 1e-4 or LayerNorm eps 1e-3 with offset), then SiLU, in place over one row.
DX_INLINE void norm_silu_row(float* y, int O, const float* nw, const float* nb, int kind) {
  float mean = 0.0f, ss = 0.0f;
  if (kind == 1) {
    for (int j = 0; j < O; ++j) mean += y[j];
    mean /= float(O);
  }
  for (int j = 0; j < O; ++j) {
    const float d = y[j] - mean;
    ss += d * d;
  }
  const float inv = 1.0f / std::sqrt(ss / float(O) + (kind == 1 ? 1e-3f : 1e-4f));
  if (nb)
    for (int j = 0; j < O; ++j) y[j] = silu_((y[j] - mean) * inv * nw[j] + nb[j]);
  else
    for (int j = 0; j < O; ++j) y[j] = silu_((y[j] - mean) * inv * nw[j]);
}

DX_MULTIVERSION void norm_silu(int R, float* Y, int64_t ldy, int O, const float* nw, const float* nb, int kind) {
  if (!serial()) return;
  for (int r = 0; r < R; ++r) norm_silu_row(Y + r * ldy, O, nw, nb, kind);
}

// Y = silu(norm(b + X @ W)) for a dense layer on R rows.
inline void dense(const DenseW& L, int R, const In& X, float* Y, int64_t ldy, int kind) {
  set_bias(R, L.b, L.out, Y, ldy);
  gemm_acc(R, X, 0, mat(L), 0, L.in, L.out, Y, ldy);
  if (L.nw) norm_silu(R, Y, ldy, L.out, L.nw, L.nb, kind);
}

// Y[r] += sum over groups s of W[k0 + s * C + idx[r, s]] (a one-hot input [S, C] times rows k0.. of W).
DX_MULTIVERSION void gather_acc(int R, const int32_t* idx, int64_t ldi, int S, int C, const Mat& W, int64_t k0, int O,
                          float* Y, int64_t ldy) {
  if (!serial()) return;
  for (int r = 0; r < R; ++r) {
    float* y = Y + r * ldy;
    for (int s = 0; s < S; ++s) {
      if (idx[r * ldi + s] < 0) continue;  // an all-zero one-hot group (a reset state, no action yet)
      const int64_t k = k0 + int64_t(s) * C + idx[r * ldi + s];
      if (W.f) {
        const float* w = W.f + k * W.ld;
        for (int j = 0; j < O; ++j) y[j] += w[j];
      } else {
        const uint16_t* w = W.b + ((k >> 1) * W.ld) * 2 + (k & 1);
        for (int j = 0; j < O; ++j) y[j] += bf16_to_f32(w[2 * j]);
      }
    }
  }
}

// Per-thread scratch of one row block.
struct Scratch {
  std::vector<float> a, xa, xb, x3, dyn_a, dyn_b, gates, logits;
  std::vector<int32_t> aidx;
  std::vector<uint32_t> hp, x3p, xp;  // bf16 k-pairs of matmul inputs: h, x3, the others
  std::vector<float> carry_h, carry_a;  // acting: the carry after the is_first reset
  std::vector<int32_t> carry_z;
  explicit Scratch(const RolloutParams& p, int embed_dim = 0) {
    const int R = kRowBlock;
    int width = std::max(p.hidden, 1);
    for (int l = 0; l < p.actor_layers; ++l) width = std::max(width, p.actor[l].out);
    width = std::max(width, p.actor_out.out);
    a.resize(size_t(R) * p.act_dim);
    aidx.resize(R);
    xa.resize(size_t(R) * width);
    xb.resize(size_t(R) * width);
    x3.resize(size_t(R) * 3 * p.hidden);
    dyn_a.resize(size_t(R) * p.deter);
    dyn_b.resize(size_t(R) * p.deter);
    gates.resize(size_t(R) * 3 * p.deter);
    logits.resize(size_t(R) * std::max(p.stoch * p.classes, p.actor_out.out));
    if (p.bf16) {
      hp.resize(size_t(R) * (p.deter / 2 + 1));
      x3p.resize(size_t(R) * (3 * p.hidden / 2 + 1));
      xp.resize(size_t(R) * (std::max({p.deter, width, p.act_dim, embed_dim}) / 2 + 1));
    }
    if (embed_dim) {
      carry_h.resize(size_t(R) * p.deter);
      carry_a.resize(size_t(R) * p.act_dim);
      carry_z.resize(size_t(R) * p.stoch);
    }
  }
};

// h' = GRU update of h from the gate pre-activations [R, 3 D] (per block: r, c, u of D/g each); h and h' rows are
// ldh floats apart.
DX_MULTIVERSION void gru_rows(int R, const float* gates, const float* h, float* hn, int D, int g, int64_t ldh) {
  if (!serial()) return;
  const int db = D / g;
  for (int r = 0; r < R; ++r) {
    const float* gr = gates + int64_t(r) * 3 * D;
    const float* hr = h + int64_t(r) * ldh;
    float* hnr = hn + int64_t(r) * ldh;
    for (int i = 0; i < g; ++i) {
      const float* gi = gr + int64_t(i) * 3 * db;
      for (int j = 0; j < db; ++j) hnr[i * db + j] = gru_update(gi[j], gi[db + j], gi[2 * db + j], hr[i * db + j]);
    }
  }
}

// The calling thread's scratch, kept between calls (acting calls it every environment step) and remade when the
// model's sizes change.
Scratch& scratch_for(const RolloutParams& p, int embed_dim) {
  int width = p.hidden;
  for (int l = 0; l < p.actor_layers; ++l) width = std::max(width, p.actor[l].out);
  const std::array<int, 9> sig{p.deter, p.hidden, p.stoch, p.classes, p.act_dim, p.actor_out.out, width, embed_dim,
                               int(p.bf16)};
  thread_local std::unique_ptr<Scratch> sc;
  thread_local std::array<int, 9> have{};
  if (!sc || sig != have) {
    sc = std::make_unique<Scratch>(p, embed_dim);
    have = sig;
  }
  return *sc;
}

// The core's block-linear layer on R rows: block i reads its own columns of `xin` (or, for the first layer,
// [h block i, x3]) and writes its own `out / g` columns of Y (bias included).
void block_linear(const BlockW& L, int g, int R, const In& h, int hd, const In& x3, int h3, const In* xin,
                            float* Y) {
  const int ob = L.out / g, ib = L.in / g;
  set_bias(R, L.b, L.out, Y, L.out);
  for (int i = 0; i < g; ++i) {
    // block i of the weight: float32 [ib, ob] or bf16 pairs [ceil(ib/2), ob, 2]
    const Mat W{L.w ? L.w + int64_t(i) * ib * ob : nullptr, L.wb ? L.wb + int64_t(i) * ((ib + 1) / 2) * ob * 2 : nullptr,
                ob};
    float* y = Y + int64_t(i) * ob;
    if (xin) {
      gemm_acc(R, *xin, i * ib, W, 0, ib, ob, y, L.out, i > 0);
    } else {  // first layer: [h_i (hd / g), x3 (h3)]
      const int hb = hd / g;
      gemm_acc(R, h, i * hb, W, 0, hb, ob, y, L.out, i > 0);
      gemm_acc(R, x3, 0, W, hb, h3, ob, y, L.out, true);
    }
  }
}

// ---- the pieces of a step, on one row block of R rows (rows b0 .. b0 + R - 1 of the call) ----

// Actor logits [R, AO] into sc.logits from feat = [h, onehot z] (z index < 0: an all-zero group).
float* actor_logits(const RolloutParams& p, Scratch& sc, int R, const In& hin, const int32_t* z) {
  const int D = p.deter, S = p.stoch, C = p.classes;
  uint32_t* xp = sc.xp.data();
  float* x = sc.xa.data();
  float* y = sc.xb.data();
  int width = 0;
  for (int l = 0; l < p.actor_layers; ++l) {
    const DenseW& L = p.actor[l];
    set_bias(R, L.b, L.out, y, L.out);
    if (l == 0) {
      gemm_acc(R, hin, 0, mat(L), 0, D, L.out, y, L.out);
      gather_acc(R, z, S, S, C, mat(L), D, L.out, y, L.out);
    } else {
      gemm_acc(R, prep(R, x, width, width, p.bf16, xp), 0, mat(L), 0, L.in, L.out, y, L.out);
    }
    norm_silu(R, y, L.out, L.out, L.nw, L.nb, p.norm);
    std::swap(x, y);
    width = L.out;
  }
  float* logits = sc.logits.data();
  const int AO = p.actor_out.out;
  set_bias(R, p.actor_out.b, AO, logits, AO);
  gemm_acc(R, prep(R, x, width, width, p.bf16, xp), 0, mat(p.actor_out), 0, width, AO, logits, AO);
  return logits;
}

// Actions [R, A] from actor logits: sampled with the uniforms of (row, step) or, with sample = false, the mode
// (discrete: the most probable class, the first on ties; continuous: tanh of the mean). Discrete indices go to
// sc.aidx for the core's gather.
void pick_actions(const RolloutParams& p, Scratch& sc, int R, int64_t b0, uint32_t step, float* logits,
                            float* act, bool sample) {
  if (!serial()) return;
  const int A = p.act_dim, AO = p.actor_out.out;
  for (int r = 0; r < R; ++r) {
    const uint32_t row = p.rng_row0 + uint32_t(b0 + r);
    float* l = logits + int64_t(r) * AO;
    float* a = act + int64_t(r) * A;
    if (p.discrete) {
      const float u = sample ? rollout_uniform(p.seed, row, step, kStreamAction, 0) : 0.0f;
      const int k = discrete_action(l, A, p.actor_unimix, sample, u);
      for (int j = 0; j < A; ++j) a[j] = j == k ? 1.0f : 0.0f;
      sc.aidx[r] = k;
    } else {
      for (int j = 0; j < A; ++j) {
        const float u = sample ? rollout_uniform(p.seed, row, step, kStreamAction, uint32_t(j)) : 0.0f;
        a[j] = continuous_action(l[j], l[A + j], p.min_std, p.max_std, sample, u);
      }
    }
  }
}

// The block-GRU core: hn [R, D] from h (also as `hin`), z indices, and the action taken (discrete: sc.aidx, an
// index < 0 being no action; continuous: act [R, A]). h and hn rows are ldh floats apart.
void core_step(const RolloutParams& p, Scratch& sc, int R, const In& hin, const float* h, const int32_t* z,
                         const float* act, float* hn, int64_t ldh) {
  const int D = p.deter, S = p.stoch, C = p.classes, A = p.act_dim, Hd = p.hidden, g = p.blocks, H3 = 3 * Hd;
  uint32_t* xp = sc.xp.data();
  float* x3 = sc.x3.data();
  if (serial())
    for (int r = 0; r < R; ++r) {
      std::memcpy(x3 + int64_t(r) * H3, p.in_h.b, sizeof(float) * Hd);
      std::memcpy(x3 + int64_t(r) * H3 + Hd, p.in_z.b, sizeof(float) * Hd);
      std::memcpy(x3 + int64_t(r) * H3 + 2 * Hd, p.in_a.b, sizeof(float) * Hd);
    }
  gemm_acc(R, hin, 0, mat(p.in_h), 0, D, Hd, x3, H3);
  gather_acc(R, z, S, S, C, mat(p.in_z), 0, Hd, x3 + Hd, H3);
  if (p.discrete) {
    gather_acc(R, sc.aidx.data(), 1, 1, A, mat(p.in_a), 0, Hd, x3 + 2 * Hd, H3);
  } else {
    float* an = sc.a.data();  // a / max(|a|, 1), elementwise
    if (serial())
      for (int64_t i = 0; i < int64_t(R) * A; ++i) an[i] = action_input(act[i]);
    gemm_acc(R, prep(R, an, A, A, p.bf16, xp), 0, mat(p.in_a), 0, A, Hd, x3 + 2 * Hd, H3);
  }
  for (int part = 0; part < 3; ++part) {
    const DenseW& L = part == 0 ? p.in_h : part == 1 ? p.in_z : p.in_a;
    norm_silu(R, x3 + part * Hd, H3, Hd, L.nw, L.nb, p.norm);
  }
  const In x3in = prep(R, x3, H3, H3, p.bf16, sc.x3p.data());
  In xin{};
  bool have_xin = false;
  float* dbuf[2] = {sc.dyn_a.data(), sc.dyn_b.data()};
  for (int i = 0; i < p.dyn_layers; ++i) {
    float* out = dbuf[i & 1];
    block_linear(p.dyn[i], g, R, hin, D, x3in, H3, have_xin ? &xin : nullptr, out);
    norm_silu(R, out, D, D, p.dyn[i].nw, p.dyn[i].nb, p.norm);
    xin = prep(R, out, D, D, p.bf16, xp);
    have_xin = true;
  }
  float* gates = sc.gates.data();
  block_linear(p.gru, g, R, hin, D, x3in, H3, have_xin ? &xin : nullptr, gates);
  gru_rows(R, gates, h, hn, D, g, ldh);
}

// Latent sample zn [R, S] from an MLP (the prior on h', or the posterior on [h', embed]) and its output layer.
void latent_step(const RolloutParams& p, Scratch& sc, int R, int64_t b0, uint32_t step, const DenseW* layers,
                           int nlayers, const DenseW& out, const float* hn, const float* embed, int E, int32_t* zn,
                           int64_t ldhn) {
  const int D = p.deter, S = p.stoch, C = p.classes, SC = S * C;
  uint32_t* xp = sc.xp.data();
  float* x = sc.xa.data();
  float* y = sc.xb.data();
  const float* pin = hn;
  int pw = D;
  int64_t ldin = ldhn;  // the MLP's input rows: h' (ldhn apart), then the previous layer's (its width apart)
  for (int l = 0; l < nlayers; ++l) {
    const DenseW& L = layers[l];
    if (l == 0 && embed) {  // [h', embed]: two inputs, one weight (rows D.. for the embedding)
      set_bias(R, L.b, L.out, y, L.out);
      gemm_acc(R, prep(R, hn, ldhn, D, p.bf16, xp), 0, mat(L), 0, D, L.out, y, L.out);
      gemm_acc(R, prep(R, embed, E, E, p.bf16, xp), 0, mat(L), D, E, L.out, y, L.out);
      norm_silu(R, y, L.out, L.out, L.nw, L.nb, p.norm);
    } else {
      dense(L, R, prep(R, pin, ldin, pw, p.bf16, xp), y, L.out, p.norm);
    }
    std::swap(x, y);
    pin = x;
    pw = L.out;
    ldin = L.out;
  }
  float* logits = sc.logits.data();
  set_bias(R, out.b, SC, logits, SC);
  gemm_acc(R, prep(R, pin, ldin, pw, p.bf16, xp), 0, mat(out), 0, pw, SC, logits, SC);
  if (!serial()) return;
  for (int r = 0; r < R; ++r) {
    const uint32_t row = p.rng_row0 + uint32_t(b0 + r);
    for (int s = 0; s < S; ++s) {
      float* l = logits + int64_t(r) * SC + int64_t(s) * C;
      unimix_probs(l, C, p.rssm_unimix);
      zn[int64_t(r) * S + s] = sample_index(l, C, rollout_uniform(p.seed, row, step, kStreamLatent, uint32_t(s)));
    }
  }
}

// The one-hot latents of R rows (rows `ld` floats apart) from their class indices [R, S].
void write_onehot(const RolloutParams& p, int R, const int32_t* z, float* oh, int64_t ld) {
  const int S = p.stoch, C = p.classes;
  for (int r = 0; r < R; ++r) {
    float* o = oh + int64_t(r) * ld;
    std::fill(o, o + int64_t(S) * C, 0.0f);
    for (int s = 0; s < S; ++s) o[int64_t(s) * C + z[int64_t(r) * S + s]] = 1.0f;
  }
}

void rollout_rows(const RolloutParams& p, int64_t row0, int64_t row_end) {
  Scratch& sc = scratch_for(p, 0);
  const int D = p.deter, S = p.stoch, A = p.act_dim;
  const int64_t N = p.n, ldh = p.ldh;
  for (int64_t b0 = row0; b0 < row_end; b0 += kRowBlock) {
    const int R = int(std::min<int64_t>(kRowBlock, row_end - b0));
    for (int r = 0; r < R; ++r) std::memcpy(p.h_out + (b0 + r) * ldh, p.h0 + (b0 + r) * D, sizeof(float) * D);
    std::memcpy(p.z_out + b0 * S, p.z0 + b0 * S, sizeof(int32_t) * size_t(R) * S);
    if (p.z_onehot) write_onehot(p, R, p.z0 + b0 * S, p.z_onehot + b0 * ldh, ldh);
    for (int t = 0; t < p.horizon; ++t) {
      const float* h = p.h_out + (int64_t(t) * N + b0) * ldh;
      const int32_t* z = p.z_out + (int64_t(t) * N + b0) * S;
      float* hn = p.h_out + (int64_t(t + 1) * N + b0) * ldh;
      int32_t* zn = p.z_out + (int64_t(t + 1) * N + b0) * S;
      float* act = p.a_out + (int64_t(t) * N + b0) * A;
      const In hin = prep(R, h, ldh, D, p.bf16, sc.hp.data());  // h feeds the actor, in_h and the first core layer
      pick_actions(p, sc, R, b0, uint32_t(t), actor_logits(p, sc, R, hin, z), act, true);
      core_step(p, sc, R, hin, h, z, act, hn, ldh);
      latent_step(p, sc, R, b0, uint32_t(t), p.prior, p.prior_layers, p.prior_out, hn, nullptr, 0, zn, ldh);
      if (p.z_onehot) write_onehot(p, R, zn, p.z_onehot + (int64_t(t + 1) * N + b0) * ldh, ldh);
    }
  }
}

// One acting step per row: reset the carry where is_first, core on (h, z, previous action), posterior latent on
// [h', embed], then the actor's action on [h', z'].
void act_rows(const RolloutParams& p, const ActParams& q, int64_t row0, int64_t row_end, Scratch& sc) {
  const int D = p.deter, S = p.stoch, A = p.act_dim;
  std::vector<float>& h = sc.carry_h;
  std::vector<float>& prev = sc.carry_a;
  std::vector<int32_t>& z = sc.carry_z;
  for (int64_t b0 = row0; b0 < row_end; b0 += kRowBlock) {
    const int R = int(std::min<int64_t>(kRowBlock, row_end - b0));
    if (serial())
      for (int r = 0; r < R; ++r) {
        const int64_t i = b0 + r;
        const bool first = q.is_first[i] != 0;
        for (int j = 0; j < D; ++j) h[size_t(r) * D + j] = first ? 0.0f : p.h0[i * D + j];
        for (int s = 0; s < S; ++s) z[size_t(r) * S + s] = first ? -1 : p.z0[i * S + s];
        for (int j = 0; j < A; ++j) prev[size_t(r) * A + j] = first ? 0.0f : q.prev_action[i * A + j];
        if (p.discrete) {  // the previous action's index, or none (an all-zero action: the initial carry)
          int k = -1;
          for (int j = 0; j < A; ++j) k = prev[size_t(r) * A + j] > 0.5f ? j : k;
          sc.aidx[r] = k;
        }
      }
    float* hn = p.h_out + b0 * D;
    int32_t* zn = p.z_out + b0 * S;
    const In hin = prep(R, h.data(), D, D, p.bf16, sc.hp.data());
    core_step(p, sc, R, hin, h.data(), z.data(), prev.data(), hn, D);
    latent_step(p, sc, R, b0, 0, q.post, q.post_layers, q.post_out, hn, q.embed + b0 * q.embed_dim, q.embed_dim, zn,
                D);
    if (q.z_onehot && serial()) write_onehot(p, R, zn, q.z_onehot + b0 * S * p.classes, int64_t(S) * p.classes);
    const In hnin = prep(R, hn, D, D, p.bf16, sc.hp.data());
    pick_actions(p, sc, R, b0, 0, actor_logits(p, sc, R, hnin, zn), p.a_out + b0 * A, q.sample);
  }
}

[[noreturn]] void bad_classes(const char* what, int64_t row, int z_min, int classes) {
  throw std::invalid_argument(std::string(what) + ": class indices must lie in [" + std::to_string(z_min) + ", " +
                              std::to_string(classes) + "), row " + std::to_string(row) + " does not");
}

}  // namespace

void rollout_fwd(const RolloutParams& p, const Exec& e) {
  if (p.n <= 0) return;
  const int64_t bad = first_bad_class_row(p.z0, p.n, p.stoch, p.classes, 0);
  if (bad >= 0) bad_classes("z0", bad, 0, p.classes);
  // blocks of whole row blocks per thread; a thread for fewer than 2 row blocks is not worth waking
  const int64_t blocks = (p.n + kRowBlock - 1) / kRowBlock;
  parallel_for(blocks, 2, e.nthreads, [&](int64_t b, int64_t end) {
    rollout_rows(p, b * kRowBlock, std::min(p.n, end * kRowBlock));
  });
}

// Bytes of matmul weights one acting step reads (per row block).
int64_t act_weight_bytes(const RolloutParams& p, const ActParams& q) {
  int64_t w = 0;
  auto dense = [&](const DenseW& L) { w += int64_t(L.in) * L.out; };
  for (int l = 0; l < p.actor_layers; ++l) dense(p.actor[l]);
  dense(p.actor_out); dense(p.in_h); dense(p.in_z); dense(p.in_a);
  for (int l = 0; l < p.dyn_layers; ++l) w += int64_t(p.dyn[l].in) * p.dyn[l].out / p.blocks;
  w += int64_t(p.gru.in) * p.gru.out / p.blocks;
  for (int l = 0; l < q.post_layers; ++l) dense(q.post[l]);
  dense(q.post_out);
  return w * (p.bf16 ? 2 : 4);
}

// A team shares one row block's matmuls by columns when there are fewer row blocks than threads and the weights
// are large: at size12m (12-23 MB per step) one core's memory bandwidth bounds a step at a few rows; at size1m
// (1-1.5 MB) the team's barriers would cost more than the second core saves.
constexpr int64_t kTeamMinWeightBytes = int64_t(4) << 20;

void act_fwd(const RolloutParams& p, const ActParams& q, const Exec& e) {
  if (p.n <= 0) return;
  const int64_t bad = first_bad_class_row(p.z0, p.n, p.stoch, p.classes, -1);
  if (bad >= 0) bad_classes("z", bad, -1, p.classes);
  const int64_t blocks = (p.n + kRowBlock - 1) / kRowBlock;
#if defined(_OPENMP)
  if (blocks < e.nthreads && act_weight_bytes(p, q) >= kTeamMinWeightBytes) {
    Scratch& sc = scratch_for(p, q.embed_dim);  // the calling thread's, shared by the team (it is thread 0)
#pragma omp parallel num_threads(e.nthreads)
    {
      tl_team = Team{omp_get_thread_num(), omp_get_num_threads()};
      act_rows(p, q, 0, p.n, sc);
      tl_team = Team{};
    }
    return;
  }
#endif
  parallel_for(blocks, 2, e.nthreads, [&](int64_t b, int64_t end) {
    act_rows(p, q, b * kRowBlock, std::min(p.n, end * kRowBlock), scratch_for(p, q.embed_dim));
  });
}

}}  // namespace dx::cpu
