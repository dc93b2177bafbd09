// The fused imagination rollout on the CPU, float32.
//
// The rows are cut into blocks of kRowBlock; a block runs all H steps back to back (actor -> action sample ->
// core -> prior -> latent sample) in per-thread scratch that stays in cache, while the weights stream from
// L2/L3. Threads own disjoint row blocks (parallel_for). Every matmul is one register-blocked microkernel over
// K-major weights (6 rows x 64 columns of accumulators: 24 of the 32 AVX-512 registers), with the one-hot inputs
// (latents, discrete actions) added as gathered weight rows instead of multiplied. The whole block body is
// compiled once per x86-64 level (DX_MULTIVERSION) through GCC vector extensions.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

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

// Y[:R, :O] += X[:R, :K] @ W[:K, :O]: column panels of 64, then 16, then a scalar tail; each panel of W is
// reused by all row tiles while it sits in L2.
DX_INLINE void gemm_acc(int R, const float* X, int64_t ldx, const float* W, int64_t ldw, int K, int O, float* Y,
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

DX_INLINE void set_bias(int R, const float* b, int O, float* Y, int64_t ldy) {
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

DX_INLINE void norm_silu(int R, float* Y, int64_t ldy, int O, const float* nw, const float* nb, int kind) {
  for (int r = 0; r < R; ++r) norm_silu_row(Y + r * ldy, O, nw, nb, kind);
}

// Y = silu(norm(b + X @ W)) for a dense layer on R rows.
DX_INLINE void dense(const DenseW& L, int R, const float* X, int64_t ldx, float* Y, int64_t ldy, int kind) {
  set_bias(R, L.b, L.out, Y, ldy);
  gemm_acc(R, X, ldx, L.w, L.out, L.in, L.out, Y, ldy);
  if (L.nw) norm_silu(R, Y, ldy, L.out, L.nw, L.nb, kind);
}

// Y[r] += sum over groups s of W[s * C + idx[r, s]] (a one-hot input [S, C] times W [S*C, O]).
DX_INLINE void gather_acc(int R, const int32_t* idx, int64_t ldi, int S, int C, const float* W, int O, float* Y,
                          int64_t ldy) {
  for (int r = 0; r < R; ++r) {
    float* y = Y + r * ldy;
    for (int s = 0; s < S; ++s) {
      const float* w = W + (int64_t(s) * C + idx[r * ldi + s]) * O;
      for (int j = 0; j < O; ++j) y[j] += w[j];
    }
  }
}

// Probabilities (1 - mix) softmax(l) + mix / K of one row of logits, in place.
DX_INLINE void unimix_probs(float* l, int K, float mix) {
  float m = l[0];
  for (int k = 1; k < K; ++k) m = std::max(m, l[k]);
  float sum = 0.0f;
  for (int k = 0; k < K; ++k) {
    l[k] = exp_(l[k] - m);
    sum += l[k];
  }
  const float scale = (1.0f - mix) / sum, add = mix / float(K);
  for (int k = 0; k < K; ++k) l[k] = l[k] * scale + add;
}

// Per-thread scratch of one row block.
struct Scratch {
  std::vector<float> a, xa, xb, x3, dyn_a, dyn_b, gates, logits;
  std::vector<int32_t> aidx;
  explicit Scratch(const RolloutParams& p) {
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
  }
};

// The core's block-linear layer on R rows: block i reads its own columns of `xin` (or, for the first layer,
// [h block i, x3]) and writes its own `out / g` columns of Y (bias included).
DX_INLINE void block_linear(const BlockW& L, int g, int R, const float* h, int64_t ldh, int hd, const float* x3,
                            int h3, const float* xin, float* Y) {
  const int ob = L.out / g, ib = L.in / g;
  set_bias(R, L.b, L.out, Y, L.out);
  for (int i = 0; i < g; ++i) {
    const float* W = L.w + int64_t(i) * ib * ob;
    float* y = Y + int64_t(i) * ob;
    if (xin) {
      gemm_acc(R, xin + int64_t(i) * ib, L.in, W, ob, ib, ob, y, L.out);
    } else {  // first layer: [h_i (hd / g), x3 (h3)]
      const int hb = hd / g;
      gemm_acc(R, h + int64_t(i) * hb, ldh, W, ob, hb, ob, y, L.out);
      gemm_acc(R, x3, h3, W + int64_t(hb) * ob, ob, h3, ob, y, L.out);
    }
  }
}

DX_MULTIVERSION void rollout_rows_f32(const RolloutParams& p, int64_t row0, int64_t row_end) {
  Scratch sc(p);
  const int D = p.deter, S = p.stoch, C = p.classes, A = p.act_dim, Hd = p.hidden, g = p.blocks;
  const int64_t N = p.n;
  for (int64_t b0 = row0; b0 < row_end; b0 += kRowBlock) {
    const int R = int(std::min<int64_t>(kRowBlock, row_end - b0));
    std::memcpy(p.h_out + b0 * D, p.h0 + b0 * D, sizeof(float) * size_t(R) * D);
    std::memcpy(p.z_out + b0 * S, p.z0 + b0 * S, sizeof(int32_t) * size_t(R) * S);
    for (int t = 0; t < p.horizon; ++t) {
      const float* h = p.h_out + (int64_t(t) * N + b0) * D;
      const int32_t* z = p.z_out + (int64_t(t) * N + b0) * S;
      float* hn = p.h_out + (int64_t(t + 1) * N + b0) * D;
      int32_t* zn = p.z_out + (int64_t(t + 1) * N + b0) * S;
      float* act = p.a_out + (int64_t(t) * N + b0) * A;

      // ---- actor on feat = [h, onehot z] ----
      float* x = sc.xa.data();
      float* y = sc.xb.data();
      int width = 0;
      for (int l = 0; l < p.actor_layers; ++l) {
        const DenseW& L = p.actor[l];
        set_bias(R, L.b, L.out, y, L.out);
        if (l == 0) {
          gemm_acc(R, h, D, L.w, L.out, D, L.out, y, L.out);
          gather_acc(R, z, S, S, C, L.w + int64_t(D) * L.out, L.out, y, L.out);
        } else {
          gemm_acc(R, x, width, L.w, L.out, L.in, L.out, y, L.out);
        }
        norm_silu(R, y, L.out, L.out, L.nw, L.nb, p.norm);
        std::swap(x, y);
        width = L.out;
      }
      float* logits = sc.logits.data();
      const int AO = p.actor_out.out;
      set_bias(R, p.actor_out.b, AO, logits, AO);
      gemm_acc(R, x, width, p.actor_out.w, AO, width, AO, logits, AO);

      // ---- action sample ----
      for (int r = 0; r < R; ++r) {
        const uint32_t row = uint32_t(b0 + r);
        float* l = logits + int64_t(r) * AO;
        float* a = act + int64_t(r) * A;
        if (p.discrete) {
          unimix_probs(l, A, p.actor_unimix);
          const int k = sample_index(l, A, rollout_uniform(p.seed, row, uint32_t(t), kStreamAction, 0));
          for (int j = 0; j < A; ++j) a[j] = j == k ? 1.0f : 0.0f;
          sc.aidx[r] = k;
        } else {
          for (int j = 0; j < A; ++j) {
            const float mean = tanh_(l[j]);
            const float std_ = (p.max_std - p.min_std) * sigmoid_(l[A + j] + 2.0f) + p.min_std;
            a[j] = mean + std_ * normal_from_uniform(rollout_uniform(p.seed, row, uint32_t(t), kStreamAction, uint32_t(j)));
          }
        }
      }

      // ---- core inputs: in_h(h), in_z(z), in_a(a) -> x3 [R, 3 hidden] ----
      float* x3 = sc.x3.data();
      const int H3 = 3 * Hd;
      for (int r = 0; r < R; ++r) {
        std::memcpy(x3 + int64_t(r) * H3, p.in_h.b, sizeof(float) * Hd);
        std::memcpy(x3 + int64_t(r) * H3 + Hd, p.in_z.b, sizeof(float) * Hd);
        std::memcpy(x3 + int64_t(r) * H3 + 2 * Hd, p.in_a.b, sizeof(float) * Hd);
      }
      gemm_acc(R, h, D, p.in_h.w, Hd, D, Hd, x3, H3);
      gather_acc(R, z, S, S, C, p.in_z.w, Hd, x3 + Hd, H3);
      if (p.discrete) {
        gather_acc(R, sc.aidx.data(), 1, 1, A, p.in_a.w, Hd, x3 + 2 * Hd, H3);
      } else {
        float* an = sc.a.data();  // a / max(|a|, 1), elementwise
        for (int r = 0; r < R; ++r)
          for (int j = 0; j < A; ++j) {
            const float v = act[int64_t(r) * A + j];
            an[int64_t(r) * A + j] = v / std::max(std::fabs(v), 1.0f);
          }
        gemm_acc(R, an, A, p.in_a.w, Hd, A, Hd, x3 + 2 * Hd, H3);
      }
      for (int r = 0; r < R; ++r)
        for (int part = 0; part < 3; ++part) {
          const DenseW& L = part == 0 ? p.in_h : part == 1 ? p.in_z : p.in_a;
          norm_silu_row(x3 + int64_t(r) * H3 + part * Hd, Hd, L.nw, L.nb, p.norm);
        }

      // ---- dyn layers and the GRU gates ----
      const float* xin = nullptr;
      float* dbuf[2] = {sc.dyn_a.data(), sc.dyn_b.data()};
      for (int i = 0; i < p.dyn_layers; ++i) {
        float* out = dbuf[i & 1];
        block_linear(p.dyn[i], g, R, h, D, D, x3, H3, xin, out);
        norm_silu(R, out, D, D, p.dyn[i].nw, p.dyn[i].nb, p.norm);
        xin = out;
      }
      float* gates = sc.gates.data();
      block_linear(p.gru, g, R, h, D, D, x3, H3, xin, gates);
      const int db = D / g;
      for (int r = 0; r < R; ++r) {
        const float* gr = gates + int64_t(r) * 3 * D;
        const float* hr = h + int64_t(r) * D;
        float* hnr = hn + int64_t(r) * D;
        for (int i = 0; i < g; ++i) {
          const float* gi = gr + int64_t(i) * 3 * db;  // per block: r, c, u
          for (int j = 0; j < db; ++j)
            hnr[i * db + j] = gru_update(gi[j], gi[db + j], gi[2 * db + j], hr[i * db + j]);
        }
      }

      // ---- prior on h' and the latent sample ----
      x = sc.xa.data();
      y = sc.xb.data();
      const float* pin = hn;
      int pw = D;
      for (int l = 0; l < p.prior_layers; ++l) {
        dense(p.prior[l], R, pin, pw, y, p.prior[l].out, p.norm);
        std::swap(x, y);
        pin = x;
        pw = p.prior[l].out;
      }
      const int SC = S * C;
      set_bias(R, p.prior_out.b, SC, logits, SC);
      gemm_acc(R, pin, pw, p.prior_out.w, SC, pw, SC, logits, SC);
      for (int r = 0; r < R; ++r) {
        const uint32_t row = uint32_t(b0 + r);
        for (int s = 0; s < S; ++s) {
          float* l = logits + int64_t(r) * SC + int64_t(s) * C;
          unimix_probs(l, C, p.rssm_unimix);
          zn[int64_t(r) * S + s] = sample_index(l, C, rollout_uniform(p.seed, row, uint32_t(t), kStreamLatent, uint32_t(s)));
        }
      }
    }
  }
}

}  // namespace

void rollout_fwd(const RolloutParams& p, const Exec& e) {
  if (p.n <= 0) return;
  // blocks of whole row blocks per thread; a thread for fewer than 2 row blocks is not worth waking
  const int64_t blocks = (p.n + kRowBlock - 1) / kRowBlock;
  parallel_for(blocks, 2, e.nthreads, [&](int64_t b, int64_t end) {
    rollout_rows_f32(p, b * kRowBlock, std::min(p.n, end * kRowBlock));
  });
}

}}  // namespace dx::cpu
