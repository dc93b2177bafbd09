// The fused imagination rollout and acting step on the GPU (CPU twin: csrc/cpu/rollout.cpp, same signatures; the
// per-element math both use: csrc/common/rollout.h).
//
// v1 is the row-owned kernel of the rollout spec: a block owns a tile of kTile rows and runs all H steps for them
// (actor -> action sample -> block-GRU core -> prior -> latent sample), so the only barriers are the block's own
// __syncthreads between phases and nothing crosses blocks. Weights are read from global memory (they stay in L2
// across the tiles); the tile's activations live in the block's slice of a workspace that the caller allocates
// (rollout_work_floats). Every matmul is column-major over the block's threads: a thread owns one output column
// for all the tile's rows (kTile accumulators) and sums over k in order, so a result never depends on the grid
// size or the thread count. One-hot inputs are gathered weight rows; norms reduce a row within one warp; the
// three gate columns (r, c, u) of a block-GRU unit are computed by one thread, which updates h in its epilogue.
// bf16 compute: the weights are the same bf16 k-pairs the CPU reads, the inputs are rounded to bf16 as they are
// loaded, products are exact in float32 and sums float32. The dense layers (actor layers after the first, actor
// output, prior/posterior MLP and output) run on tensor cores in bf16 (mma.h: a warp per 16 x 8 output tile, a k-pair
// weight word is an mma B register as it is), and so do the core's block-linear layers when a block's width is a
// multiple of 8 (the GRU's warp holds the r, c and u tiles of the same 8 units and updates h in registers), the
// core's in_h layer and the actor's first layer (its one-hot z rows added as gathers at the fragment positions); only
// the gather-only layers (in_z, a discrete in_a) and a continuous in_a keep the per-thread column loops.
// Not yet here: the phase kernels over tiles for large N; this kernel is the spec's choice for size1m and acting and
// a correct baseline at every size.
#include "launch.h"
#include "mma.h"
#include "../common/kernels.h"
#include "../common/rollout.h"

#if defined(DX_EMU)
#include <atomic>
#endif

namespace dx { namespace cuda {

namespace {

#if defined(DX_EMU)
constexpr int kThreads = 64;  // emulated threads are OS threads: keep blocks small
constexpr int64_t kMaxRolloutBlocks = 3;
std::atomic<int> g_grid_override{0};
#else
constexpr int kThreads = 256;
constexpr int64_t kMaxRolloutBlocks = 264;  // 2 per SM on an H100/H200 (132 SMs); bounds the workspace
#endif
constexpr int kTile = 16;  // rows per block
constexpr int kWarps = kThreads / kWarp;

// A matmul weight for one output column: float32 [K, ld] or bf16 k-pair words [ceil(K/2), ld], at that column.
struct Col {
  const float* f;
  const uint32_t* b;
  int64_t ld;
  __device__ __forceinline__ Col shift(int64_t k0) const {  // rows k0.. (k0 even for bf16)
    return Col{f ? f + k0 * ld : nullptr, b ? b + (k0 >> 1) * ld : nullptr, ld};
  }
  __device__ __forceinline__ float at(int64_t k) const {
    return f ? f[k * ld] : bf16_to_f32(uint16_t(b[(k >> 1) * ld] >> (16 * (k & 1))));
  }
};

__device__ __forceinline__ Col col_of(const DenseW& L, int o) {
  return Col{L.w ? L.w + o : nullptr, L.wb ? reinterpret_cast<const uint32_t*>(L.wb) + o : nullptr, L.out};
}

__device__ __forceinline__ float bf16_round(float x) { return bf16_to_f32(f32_to_bf16(x)); }

// acc[r] += sum_{k < K} X[r, k] W[k] for r < R (float32, or bf16-rounded X against bf16 k-pairs).
__device__ __forceinline__ void col_acc(float* acc, int R, const float* X, int64_t ldx, const Col& W, int K) {
  if (W.f) {
    for (int k = 0; k < K; ++k) {
      const float w = W.f[int64_t(k) * W.ld];
#pragma unroll
      for (int r = 0; r < kTile; ++r)
        if (r < R) acc[r] += X[r * ldx + k] * w;
    }
    return;
  }
  for (int kp = 0; kp < (K + 1) / 2; ++kp) {
    const uint32_t wp = W.b[int64_t(kp) * W.ld];
    const float w0 = bf16_to_f32(uint16_t(wp)), w1 = bf16_to_f32(uint16_t(wp >> 16));
    const int k = 2 * kp;
    const bool two = k + 1 < K;
#pragma unroll
    for (int r = 0; r < kTile; ++r)
      if (r < R) {
        const float x0 = bf16_round(X[r * ldx + k]), x1 = two ? bf16_round(X[r * ldx + k + 1]) : 0.0f;
        acc[r] += x1 * w1 + x0 * w0;
      }
  }
}

// acc[r] += sum over groups s of W[s * C + idx[r, s]] (a one-hot input [S, C]; an index < 0 is an all-zero group).
__device__ __forceinline__ void col_gather(float* acc, int R, const int32_t* idx, int64_t ldi, int S, int C, const Col& W) {
  for (int r = 0; r < R; ++r)
    for (int s = 0; s < S; ++s) {
      const int32_t i = idx[r * ldi + s];
      if (i >= 0) acc[r] += W.at(int64_t(s) * C + i);
    }
}

__device__ __forceinline__ void col_store(const float* acc, int R, float* Y, int64_t ldy) {
#pragma unroll
  for (int r = 0; r < kTile; ++r)
    if (r < R) Y[r * ldy] = acc[r];
}

__device__ __forceinline__ void col_init(float* acc, float b) {
#pragma unroll
  for (int r = 0; r < kTile; ++r) acc[r] = b;
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int off = kWarp / 2; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Y[r, :O] = silu(norm(Y[r, :O])) for the R rows (RMSNorm eps 1e-4 or LayerNorm eps 1e-3), a warp per row;
// `parts` row segments of O columns each, `ldp` apart (the core's three input layers share one row).
__device__ void norm_silu(int R, float* Y, int64_t ldy, int O, const float* nw, const float* nb, int kind, int parts = 1,
                          int64_t ldp = 0, const float* nw2 = nullptr, const float* nb2 = nullptr,
                          const float* nw3 = nullptr, const float* nb3 = nullptr) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  for (int item = warp; item < R * parts; item += kWarps) {  // uniform per warp: every lane takes the shuffles
    const int r = item / parts, part = item % parts;
    float* y = Y + r * ldy + part * ldp;
    const float* w = part == 0 ? nw : part == 1 ? nw2 : nw3;
    const float* b = part == 0 ? nb : part == 1 ? nb2 : nb3;
    float mean = 0.0f;
    if (kind == 1) {
      float s = 0.0f;
      for (int j = lane; j < O; j += kWarp) s += y[j];
      mean = warp_sum(s) / float(O);
    }
    float ss = 0.0f;
    for (int j = lane; j < O; j += kWarp) {
      const float d = y[j] - mean;
      ss += d * d;
    }
    const float inv = 1.0f / ::sqrtf(warp_sum(ss) / float(O) + (kind == 1 ? 1e-3f : 1e-4f));
    for (int j = lane; j < O; j += kWarp) {
      const float v = (y[j] - mean) * inv * w[j];
      y[j] = silu_(b ? v + b[j] : v);
    }
  }
}

// c += bf16(X[:R, :K]) @ Wb[:K, n] for this lane's mma fragments (tensor cores, mma.h): the tile's kTile = 16 rows are
// the mma's 16 (rows >= R and k >= K read as zeros; an odd K's last k-pair word has a zero high half), Wb the bf16
// k-pair words [ceil(K/2), ld], n this lane's B column (g) of the warp's 8-column group (valid: n_ok).
__device__ __forceinline__ void mma_acc(float c[4], int R, const float* X, int64_t ldx, int K, const uint32_t* Wb,
                                        int64_t ld, int n, bool n_ok) {
  const int lane = threadIdx.x % kWarp, g = lane / 4, t = lane % 4;
  auto x_at = [&](int r, int k) { return r < R && k < K ? X[r * ldx + k] : 0.0f; };
  for (int k0 = 0; k0 < K; k0 += 16) {
    const int k = k0 + 2 * t;
    const uint32_t a[4] = {pack_bf16x2(x_at(g, k), x_at(g, k + 1)), pack_bf16x2(x_at(g + 8, k), x_at(g + 8, k + 1)),
                           pack_bf16x2(x_at(g, k + 8), x_at(g, k + 9)),
                           pack_bf16x2(x_at(g + 8, k + 8), x_at(g + 8, k + 9))};
    const uint32_t b[2] = {n_ok && k < K ? Wb[int64_t(k / 2) * ld + n] : 0u,
                           n_ok && k + 8 < K ? Wb[int64_t((k + 8) / 2) * ld + n] : 0u};
    mma_bf16_16x8x16(c, a, b);
  }
}

// c[e] += the weight rows of a one-hot input idx [R, S] (C classes; < 0: an all-zero group) at this lane's fragment
// positions (rows g, g + 8; columns c0, c0 + 1 below `out`), from bf16 k-pair words Wb [., ld].
__device__ __forceinline__ void gather_frag(float c[4], int R, const int32_t* idx, int64_t ldi, int S, int C,
                                            const uint32_t* Wb, int64_t ld, int c0, int out) {
  const int g = threadIdx.x % kWarp / 4;
  for (int e = 0; e < 4; ++e) {
    const int r = g + (e >= 2 ? 8 : 0), col = c0 + (e & 1);
    if (r >= R || col >= out) continue;
    for (int s = 0; s < S; ++s) {
      const int32_t i = idx[r * ldi + s];
      if (i < 0) continue;
      const int64_t k = int64_t(s) * C + i;
      c[e] += bf16_to_f32(uint16_t(Wb[(k >> 1) * ld + col] >> (16 * (k & 1))));
    }
  }
}

// Y[r, col] = c for this lane's fragment positions (rows g, g + 8 below R; columns c0, c0 + 1 below `out`).
__device__ __forceinline__ void store_frag(const float c[4], int R, float* Y, int64_t ldy, int c0, int out) {
  const int g = threadIdx.x % kWarp / 4;
  for (int e = 0; e < 4; ++e) {
    const int r = g + (e >= 2 ? 8 : 0), col = c0 + (e & 1);
    if (r < R && col < out) Y[int64_t(r) * ldy + col] = c[e];
  }
}

// The bf16 matmul of dense() on tensor cores: a warp per 8-column group of the output (groups w, w + kWarps, ...),
// 16 x 8 accumulators starting from the bias. idx/S/C: a one-hot input read by the weight rows after X (and X2), as
// gathers (the actor's first layer reads [h, onehot z]).
__device__ void dense_mma(const DenseW& L, int R, const float* X, int64_t ldx, int in, float* Y, int64_t ldy,
                          const float* X2, int64_t ldx2, int in2, const int32_t* idx = nullptr, int S = 0, int C = 0) {
  static_assert(kTile == 16, "the tensor-core path takes 16-row tiles (the mma's M)");
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, g = lane / 4, t = lane % 4;
  const uint32_t* Wb = reinterpret_cast<const uint32_t*>(L.wb);
  for (int n0 = warp * 8; n0 < L.out; n0 += kWarps * 8) {  // uniform per warp: every lane takes the mma
    const int n = n0 + g, c0 = n0 + 2 * t;
    const float b0 = c0 < L.out ? L.b[c0] : 0.0f, b1 = c0 + 1 < L.out ? L.b[c0 + 1] : 0.0f;
    float c[4] = {b0, b1, b0, b1};
    mma_acc(c, R, X, ldx, in, Wb, L.out, n, n < L.out);
    if (X2) mma_acc(c, R, X2, ldx2, in2, Wb + int64_t(in / 2) * L.out, L.out, n, n < L.out);
    if (idx) gather_frag(c, R, idx, S, S, C, Wb + int64_t((in + in2) / 2) * L.out, L.out, c0, L.out);
    store_frag(c, R, Y, ldy, c0, L.out);
  }
}

// Y[:R, :out] = X[:R, :in] @ W + b (float32: columns over the threads; bf16: tensor cores), then the norm + SiLU if
// the layer has one. X2/in2: a second input read by rows in.. of the weight (the posterior's [h', embed]).
__device__ void dense(const DenseW& L, int R, const float* X, int64_t ldx, int in, float* Y, int64_t ldy, int kind,
                      const float* X2 = nullptr, int64_t ldx2 = 0, int in2 = 0) {
  if (L.wb) {
    dense_mma(L, R, X, ldx, in, Y, ldy, X2, ldx2, in2);
  } else {
    float acc[kTile];
    for (int o = threadIdx.x; o < L.out; o += blockDim.x) {
      const Col W = col_of(L, o);
      col_init(acc, L.b[o]);
      col_acc(acc, R, X, ldx, W, in);
      if (X2) col_acc(acc, R, X2, ldx2, W.shift(in), in2);
      col_store(acc, R, Y + o, ldy);
    }
  }
  __syncthreads();
  if (L.nw) {
    norm_silu(R, Y, ldy, L.out, L.nw, L.nb, kind);
    __syncthreads();
  }
}

// Per-block workspace (floats; the int32 buffers take float slots).
struct Work {
  float *xa, *xb, *x3, *da, *db, *logits, *an, *ch, *ca;
  int32_t *aidx, *cz;
};

DX_HD int actor_width(const RolloutParams& p) {
  int w = p.hidden > 1 ? p.hidden : 1;
  for (int l = 0; l < p.actor_layers; ++l) w = p.actor[l].out > w ? p.actor[l].out : w;
  return w;
}

DX_HD int64_t block_floats(const RolloutParams& p, bool acting) {
  const int64_t R = kTile, width = actor_width(p), SC = int64_t(p.stoch) * p.classes, AO = p.actor_out.out;
  int64_t f = 2 * R * width + R * 3 * p.hidden + 2 * R * p.deter + R * (SC > AO ? SC : AO) + R * p.act_dim + R;
  if (acting) f += R * (p.deter + p.act_dim + p.stoch);
  return (f + 31) / 32 * 32;  // 128-byte aligned slices
}

__device__ Work work_of(const RolloutParams& p, bool acting) {
  const int64_t R = kTile, width = actor_width(p), SC = int64_t(p.stoch) * p.classes, AO = p.actor_out.out;
  float* f = p.work + int64_t(blockIdx.x) * block_floats(p, acting);
  Work w{};
  w.xa = f; f += R * width;
  w.xb = f; f += R * width;
  w.x3 = f; f += R * 3 * p.hidden;
  w.da = f; f += R * p.deter;
  w.db = f; f += R * p.deter;
  w.logits = f; f += R * (SC > AO ? SC : AO);
  w.an = f; f += R * p.act_dim;
  w.aidx = reinterpret_cast<int32_t*>(f); f += R;
  if (acting) {
    w.ch = f; f += R * p.deter;
    w.ca = f; f += R * p.act_dim;
    w.cz = reinterpret_cast<int32_t*>(f);
  }
  return w;
}

// ---- the pieces of a step on one tile of R rows (rows b0 .. b0 + R - 1); each ends with a barrier ----

// Actor logits [R, AO] into w.logits from feat = [h, onehot z].
__device__ const float* actor_logits(const RolloutParams& p, const Work& w, int R, const float* h, const int32_t* z) {
  const int D = p.deter, S = p.stoch, C = p.classes;
  float acc[kTile];
  float *x = w.xa, *y = w.xb;
  int width = 0;
  for (int l = 0; l < p.actor_layers; ++l) {
    const DenseW& L = p.actor[l];
    if (l == 0) {
      if (L.wb) {
        dense_mma(L, R, h, D, D, y, L.out, nullptr, 0, 0, z, S, C);
      } else {
        for (int o = threadIdx.x; o < L.out; o += blockDim.x) {
          const Col W = col_of(L, o);
          col_init(acc, L.b[o]);
          col_acc(acc, R, h, D, W, D);
          col_gather(acc, R, z, S, S, C, W.shift(D));
          col_store(acc, R, y + o, L.out);
        }
      }
      __syncthreads();
      norm_silu(R, y, L.out, L.out, L.nw, L.nb, p.norm);
      __syncthreads();
    } else {
      dense(L, R, x, width, width, y, L.out, p.norm);
    }
    float* t = x; x = y; y = t;
    width = L.out;
  }
  dense(p.actor_out, R, x, width, width, w.logits, p.actor_out.out, p.norm);
  return w.logits;
}

// Actions [R, A] into act (and discrete indices into w.aidx): sampled with the uniforms of (row, step) or the mode.
__device__ void pick_actions(const RolloutParams& p, const Work& w, int R, int64_t b0, uint32_t step, float* act,
                             bool sample) {
  const int A = p.act_dim, AO = p.actor_out.out;
  if (p.discrete) {
    for (int r = threadIdx.x; r < R; r += blockDim.x) {
      const float u = sample ? rollout_uniform(p.seed, p.rng_row0 + uint32_t(b0 + r), step, kStreamAction, 0) : 0.0f;
      const int k = discrete_action(w.logits + int64_t(r) * AO, A, p.actor_unimix, sample, u);
      for (int j = 0; j < A; ++j) act[int64_t(r) * A + j] = j == k ? 1.0f : 0.0f;
      w.aidx[r] = k;
    }
  } else {
    for (int i = threadIdx.x; i < R * A; i += blockDim.x) {
      const int r = i / A, j = i % A;
      const float* l = w.logits + int64_t(r) * AO;
      const float u = sample ? rollout_uniform(p.seed, p.rng_row0 + uint32_t(b0 + r), step, kStreamAction, uint32_t(j)) : 0.0f;
      act[i] = continuous_action(l[j], l[A + j], p.min_std, p.max_std, sample, u);
      w.an[i] = action_input(act[i]);
    }
  }
  __syncthreads();
}

// c += (block i's input) @ Wb[:, n] on tensor cores: the first block-linear layer reads [h block i (hb), x3 (H3)],
// a later one xin block i (ib); Wb is block i's bf16 k-pair words [ceil(ib/2), ld].
__device__ __forceinline__ void block_mma(float c[4], int R, const float* xin, const float* h, const float* x3, int D,
                                          int H3, int hb, int ib, int i, const uint32_t* Wb, int64_t ld, int n) {
  if (xin) {
    mma_acc(c, R, xin + int64_t(i) * ib, D, ib, Wb, ld, n, true);
  } else {
    mma_acc(c, R, h + int64_t(i) * hb, D, hb, Wb, ld, n, true);
    mma_acc(c, R, x3, H3, H3, Wb + int64_t(hb / 2) * ld, ld, n, true);
  }
}

// The block-GRU core: hn [R, D] from h, the z indices and the action (discrete: w.aidx, < 0 none; continuous: w.an).
__device__ void core_step(const RolloutParams& p, const Work& w, int R, const float* h, const int32_t* z, float* hn) {
  const int D = p.deter, S = p.stoch, C = p.classes, A = p.act_dim, Hd = p.hidden, g = p.blocks, H3 = 3 * Hd;
  float acc[kTile];
  const bool h_mma = p.in_h.wb != nullptr;  // bf16: in_h (x3's first Hd columns) on tensor cores, the gathers below
  if (h_mma) dense_mma(p.in_h, R, h, D, D, w.x3, H3, nullptr, 0, 0);
  for (int o = (h_mma ? Hd : 0) + threadIdx.x; o < H3; o += blockDim.x) {  // the three input layers side by side in x3
    const int part = o / Hd, j = o % Hd;
    const DenseW& L = part == 0 ? p.in_h : part == 1 ? p.in_z : p.in_a;
    const Col W = col_of(L, j);
    col_init(acc, L.b[j]);
    if (part == 0) col_acc(acc, R, h, D, W, D);
    else if (part == 1) col_gather(acc, R, z, S, S, C, W);
    else if (p.discrete) col_gather(acc, R, w.aidx, 1, 1, A, W);
    else col_acc(acc, R, w.an, A, W, A);
    col_store(acc, R, w.x3 + o, H3);
  }
  __syncthreads();
  norm_silu(R, w.x3, H3, Hd, p.in_h.nw, p.in_h.nb, p.norm, 3, Hd, p.in_z.nw, p.in_z.nb, p.in_a.nw, p.in_a.nb);
  __syncthreads();
  // block-linear layers: block i reads [h block i, x3] (first layer) or its own columns of the previous layer
  const int hb = D / g;
  const float* xin = nullptr;
  float* dbuf[2] = {w.da, w.db};
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, fg = lane / 4, ft = lane % 4;  // mma fragments
  for (int l = 0; l < p.dyn_layers; ++l) {
    const BlockW& L = p.dyn[l];
    const int ob = L.out / g, ib = L.in / g;
    if (L.wb && ob % 8 == 0) {  // bf16 on tensor cores: a warp per 8 columns of one block
      for (int n0 = warp * 8; n0 < L.out; n0 += kWarps * 8) {
        const int i = n0 / ob, c0 = n0 + 2 * ft;
        const uint32_t* Wb = reinterpret_cast<const uint32_t*>(L.wb) + int64_t(i) * ((ib + 1) / 2) * ob;
        float c[4] = {L.b[c0], L.b[c0 + 1], L.b[c0], L.b[c0 + 1]};
        block_mma(c, R, xin, h, w.x3, D, H3, hb, ib, i, Wb, ob, n0 % ob + fg);
        store_frag(c, R, dbuf[l & 1], D, c0, L.out);
      }
    } else {
      for (int o = threadIdx.x; o < L.out; o += blockDim.x) {
        const int i = o / ob, j = o % ob;
        const Col W{L.w ? L.w + int64_t(i) * ib * ob + j : nullptr,
                    L.wb ? reinterpret_cast<const uint32_t*>(L.wb) + int64_t(i) * ((ib + 1) / 2) * ob + j : nullptr, ob};
        col_init(acc, L.b[o]);
        if (xin) {
          col_acc(acc, R, xin + int64_t(i) * ib, D, W, ib);
        } else {
          col_acc(acc, R, h + int64_t(i) * hb, D, W, hb);
          col_acc(acc, R, w.x3, H3, W.shift(hb), H3);
        }
        col_store(acc, R, dbuf[l & 1] + o, D);
      }
    }
    __syncthreads();
    norm_silu(R, dbuf[l & 1], D, D, L.nw, L.nb, p.norm);
    __syncthreads();
    xin = dbuf[l & 1];
  }
  // gate layer: one thread (float32) or one warp (bf16: 8 units) computes the r, c and u columns and writes h'
  const BlockW& G = p.gru;
  const int db = D / g, ob = 3 * db, ib = G.in / g;
  if (G.wb && db % 8 == 0) {  // bf16 on tensor cores: a warp holds the r, c and u tiles of the same 8 units
    for (int n0 = warp * 8; n0 < D; n0 += kWarps * 8) {
      const int i = n0 / db, j0 = n0 % db;
      const uint32_t* Wb = reinterpret_cast<const uint32_t*>(G.wb) + int64_t(i) * ((ib + 1) / 2) * ob;
      const float* bias = G.b + int64_t(i) * ob;
      float cq[3][4];
      for (int q = 0; q < 3; ++q) {
        const int c0 = q * db + j0 + 2 * ft;
        cq[q][0] = cq[q][2] = bias[c0];
        cq[q][1] = cq[q][3] = bias[c0 + 1];
        block_mma(cq[q], R, xin, h, w.x3, D, H3, hb, ib, i, Wb, ob, q * db + j0 + fg);
      }
      for (int e = 0; e < 4; ++e) {
        const int r = fg + (e >= 2 ? 8 : 0);
        const int64_t o = int64_t(r) * D + n0 + 2 * ft + (e & 1);
        if (r < R) hn[o] = gru_update(cq[0][e], cq[1][e], cq[2][e], h[o]);
      }
    }
    __syncthreads();
    return;
  }
  float ar[kTile], ac[kTile], au[kTile];
  for (int o = threadIdx.x; o < D; o += blockDim.x) {
    const int i = o / db, j = o % db;
    const int64_t wo = int64_t(i) * ((ib + 1) / 2) * ob;
    Col W[3];
    float* accs[3] = {ar, ac, au};
    for (int q = 0; q < 3; ++q) {
      const int c = q * db + j;
      W[q] = Col{G.w ? G.w + int64_t(i) * ib * ob + c : nullptr,
                 G.wb ? reinterpret_cast<const uint32_t*>(G.wb) + wo + c : nullptr, ob};
      col_init(accs[q], G.b[int64_t(i) * ob + c]);
      if (xin) {
        col_acc(accs[q], R, xin + int64_t(i) * ib, D, W[q], ib);
      } else {
        col_acc(accs[q], R, h + int64_t(i) * hb, D, W[q], hb);
        col_acc(accs[q], R, w.x3, H3, W[q].shift(hb), H3);
      }
    }
    for (int r = 0; r < R; ++r) hn[int64_t(r) * D + o] = gru_update(ar[r], ac[r], au[r], h[int64_t(r) * D + o]);
  }
  __syncthreads();
}

// Latent sample zn [R, S] from an MLP on h' (the prior) or on [h', embed] (the posterior) and its output layer.
__device__ void latent_step(const RolloutParams& p, const Work& w, int R, int64_t b0, uint32_t step, const DenseW* layers,
                            int nlayers, const DenseW& out, const float* hn, const float* embed, int E, int32_t* zn) {
  const int D = p.deter, S = p.stoch, C = p.classes, SC = S * C;
  float *x = w.xa, *y = w.xb;
  const float* pin = hn;
  int pw = D;
  for (int l = 0; l < nlayers; ++l) {
    if (l == 0 && embed) dense(layers[l], R, hn, D, D, y, layers[l].out, p.norm, embed, E, E);
    else dense(layers[l], R, pin, pw, pw, y, layers[l].out, p.norm);
    float* t = x; x = y; y = t;
    pin = x;
    pw = layers[l].out;
  }
  if (nlayers == 0 && embed) dense(out, R, hn, D, D, w.logits, SC, p.norm, embed, E, E);
  else dense(out, R, pin, pw, pw, w.logits, SC, p.norm);
  for (int i = threadIdx.x; i < R * S; i += blockDim.x) {
    const int r = i / S, s = i % S;
    float* l = w.logits + int64_t(r) * SC + int64_t(s) * C;
    unimix_probs(l, C, p.rssm_unimix);
    zn[int64_t(r) * S + s] = sample_index(l, C, rollout_uniform(p.seed, p.rng_row0 + uint32_t(b0 + r), step, kStreamLatent, uint32_t(s)));
  }
  __syncthreads();
}

// The block's tiles (grid-stride): first row b0 and rows R of each.
struct Tiles {
  int64_t n, tile;
  __device__ explicit Tiles(int64_t n_) : n(n_), tile(blockIdx.x) {}
  __device__ bool more() const { return tile * kTile < n; }
  __device__ void next() { tile += gridDim.x; }
  __device__ int64_t b0() const { return tile * kTile; }
  __device__ int rows() const { return int(n - b0() < kTile ? n - b0() : kTile); }
};

__global__ void rollout_kernel(RolloutParams p) {
  const Work w = work_of(p, false);
  const int D = p.deter, S = p.stoch, A = p.act_dim;
  const int64_t N = p.n;
  for (Tiles t_(N); t_.more(); t_.next()) {
    const int64_t b0 = t_.b0();
    const int R = t_.rows();
    for (int64_t i = threadIdx.x; i < int64_t(R) * D; i += blockDim.x) p.h_out[b0 * D + i] = p.h0[b0 * D + i];
    for (int64_t i = threadIdx.x; i < int64_t(R) * S; i += blockDim.x) p.z_out[b0 * S + i] = p.z0[b0 * S + i];
    __syncthreads();
    for (int t = 0; t < p.horizon; ++t) {
      const float* h = p.h_out + (int64_t(t) * N + b0) * D;
      const int32_t* z = p.z_out + (int64_t(t) * N + b0) * S;
      float* hn = p.h_out + (int64_t(t + 1) * N + b0) * D;
      int32_t* zn = p.z_out + (int64_t(t + 1) * N + b0) * S;
      actor_logits(p, w, R, h, z);
      pick_actions(p, w, R, b0, uint32_t(t), p.a_out + (int64_t(t) * N + b0) * A, true);
      core_step(p, w, R, h, z, hn);
      latent_step(p, w, R, b0, uint32_t(t), p.prior, p.prior_layers, p.prior_out, hn, nullptr, 0, zn);
    }
  }
}

__global__ void act_kernel(RolloutParams p, ActParams q) {
  const Work w = work_of(p, true);
  const int D = p.deter, S = p.stoch, A = p.act_dim;
  for (Tiles t_(p.n); t_.more(); t_.next()) {
    const int64_t b0 = t_.b0();
    const int R = t_.rows();
    // the carry, reset to zeros (no latent, no action) where is_first
    for (int64_t i = threadIdx.x; i < int64_t(R) * D; i += blockDim.x)
      w.ch[i] = q.is_first[b0 + i / D] ? 0.0f : p.h0[b0 * D + i];
    for (int64_t i = threadIdx.x; i < int64_t(R) * S; i += blockDim.x)
      w.cz[i] = q.is_first[b0 + i / S] ? -1 : p.z0[b0 * S + i];
    for (int r = threadIdx.x; r < R; r += blockDim.x) {
      const bool first = q.is_first[b0 + r] != 0;
      int k = -1;  // discrete: the previous action's index, or none
      for (int j = 0; j < A; ++j) {
        const float a = first ? 0.0f : q.prev_action[(b0 + r) * A + j];
        w.ca[int64_t(r) * A + j] = a;
        w.an[int64_t(r) * A + j] = action_input(a);
        k = a > 0.5f ? j : k;
      }
      w.aidx[r] = k;
    }
    __syncthreads();
    float* hn = p.h_out + b0 * D;
    int32_t* zn = p.z_out + b0 * S;
    core_step(p, w, R, w.ch, w.cz, hn);
    latent_step(p, w, R, b0, 0, q.post, q.post_layers, q.post_out, hn, q.embed + b0 * q.embed_dim, q.embed_dim, zn);
    if (q.z_onehot) {
      __syncthreads();
      const int C = p.classes;
      for (int64_t i = threadIdx.x; i < int64_t(R) * S * C; i += blockDim.x)
        q.z_onehot[b0 * S * C + i] = zn[i / C] == int32_t(i % C) ? 1.0f : 0.0f;
    }
    actor_logits(p, w, R, hn, zn);
    pick_actions(p, w, R, b0, 0, p.a_out + b0 * A, q.sample);
  }
}

unsigned rollout_grid(int64_t n) {
#if defined(DX_EMU)
  if (const int g = g_grid_override.load()) return unsigned(g);
#endif
  const int64_t tiles = (n + kTile - 1) / kTile;
  return unsigned(std::max<int64_t>(1, std::min(tiles, kMaxRolloutBlocks)));
}

}  // namespace

int64_t rollout_work_floats(const RolloutParams& p, bool acting) {
  return p.n <= 0 ? 0 : int64_t(rollout_grid(p.n)) * block_floats(p, acting);
}

#if defined(DX_EMU)
void set_rollout_grid(int blocks) {
  if (blocks < 0 || blocks > 64) throw std::invalid_argument("set_rollout_grid: blocks must be in [0, 64]");
  g_grid_override.store(blocks);
}
#endif

void rollout_fwd(const RolloutParams& p, const Exec& e) {
  if (p.n <= 0) return;
  if (!p.work) throw std::invalid_argument("rollout: the CUDA rollout needs its workspace (rollout_work_floats)");
  if (p.ldh != p.deter || p.z_onehot)
    throw std::invalid_argument("rollout: the CUDA rollout writes h rows deter apart (no feat layout)");
  DeviceGuard guard(e);
  DX_LAUNCH(rollout_kernel, dim3(rollout_grid(p.n)), dim3(kThreads), stream_of(e))(p);
  check_launch("rollout");
}

void act_fwd(const RolloutParams& p, const ActParams& q, const Exec& e) {
  if (p.n <= 0) return;
  if (!p.work) throw std::invalid_argument("act: the CUDA acting step needs its workspace (rollout_work_floats)");
  DeviceGuard guard(e);
  DX_LAUNCH(act_kernel, dim3(rollout_grid(p.n)), dim3(kThreads), stream_of(e))(p, q);
  check_launch("act");
}

}}  // namespace dx::cuda
