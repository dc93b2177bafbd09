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
// Large rollouts (N >= 1024 at deter >= 1024) take the phase kernels below instead: a kernel per layer over 64-row
// x 32-column tiles, bitwise the same results. Neither path has been timed on a GPU yet.
#include "launch.h"
#include "mma.h"
#include "../common/kernels.h"
#include "../common/rollout.h"

#include <array>
#include <utility>

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

// c[m] += bf16(X[16 m .. 16 m + 15, :K]) @ Wb[:K, n] for this lane's mma fragments of MT row tiles (tensor cores,
// mma.h): rows >= R and k >= K read as zeros (an odd K's last k-pair word has a zero high half), Wb the bf16 k-pair
// words [ceil(K/2), ld], n this lane's B column (g) of the warp's 8-column group (valid: n_ok). A weight fragment is
// loaded once for the MT tiles; each output sums its k-blocks in order from c, whatever MT is.
template <int MT>
__device__ __forceinline__ void mma_acc_mt(float (*c)[4], int R, const float* X, int64_t ldx, int K, const uint32_t* Wb,
                                           int64_t ld, int n, bool n_ok) {
  const int lane = threadIdx.x % kWarp, g = lane / 4, t = lane % 4;
  auto x_at = [&](int r, int k) { return r < R && k < K ? X[int64_t(r) * ldx + k] : 0.0f; };
  for (int k0 = 0; k0 < K; k0 += 16) {
    const int k = k0 + 2 * t;
    const uint32_t b[2] = {n_ok && k < K ? Wb[int64_t(k / 2) * ld + n] : 0u,
                           n_ok && k + 8 < K ? Wb[int64_t((k + 8) / 2) * ld + n] : 0u};
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      if (16 * m >= R) break;  // uniform per warp
      const int r = 16 * m + g;
      const uint32_t a[4] = {pack_bf16x2(x_at(r, k), x_at(r, k + 1)), pack_bf16x2(x_at(r + 8, k), x_at(r + 8, k + 1)),
                             pack_bf16x2(x_at(r, k + 8), x_at(r, k + 9)),
                             pack_bf16x2(x_at(r + 8, k + 8), x_at(r + 8, k + 9))};
      mma_bf16_16x8x16(c[m], a, b);
    }
  }
}

// The row-owned kernel's one tile of kTile = 16 rows (the mma's M).
__device__ __forceinline__ void mma_acc(float c[4], int R, const float* X, int64_t ldx, int K, const uint32_t* Wb,
                                        int64_t ld, int n, bool n_ok) {
  mma_acc_mt<1>(reinterpret_cast<float(*)[4]>(c), R, X, ldx, K, Wb, ld, n, n_ok);
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

DX_HD int64_t round32(int64_t f) { return (f + 31) / 32 * 32; }  // floats to 128-byte aligned slices

DX_HD int64_t block_floats(const RolloutParams& p, bool acting) {
  const int64_t R = kTile, width = actor_width(p), SC = int64_t(p.stoch) * p.classes, AO = p.actor_out.out;
  int64_t f = 2 * R * width + R * 3 * p.hidden + 2 * R * p.deter + R * (SC > AO ? SC : AO) + R * p.act_dim + R;
  if (acting) f += R * (p.deter + p.act_dim + p.stoch);
  return round32(f);
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

// zn [R, S]: each group of the latent logits [R, S * C] (overwritten with its unimixed probabilities) sampled with
// the uniforms of (row b0 + r, step).
__device__ void sample_latents(const RolloutParams& p, int R, int64_t b0, uint32_t step, float* logits, int32_t* zn) {
  const int S = p.stoch, C = p.classes;
  for (int i = threadIdx.x; i < R * S; i += blockDim.x) {
    const int r = i / S, s = i % S;
    float* l = logits + (int64_t(r) * S + s) * C;
    unimix_probs(l, C, p.rssm_unimix);
    zn[int64_t(r) * S + s] = sample_index(l, C, rollout_uniform(p.seed, p.rng_row0 + uint32_t(b0 + r), step, kStreamLatent, uint32_t(s)));
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
  sample_latents(p, R, b0, step, w.logits, zn);
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

// ---- the phase kernels (large N): each layer of a step is one kernel over (column tile, row tile, block group) ----
//
// A block computes kPhaseRows = 64 rows x kPhaseCols columns of one layer, so each weight fragment it loads serves
// four 16-row mma tiles (the row-owned kernel's tiles are 16 rows: at large N it reads every weight once per 16 rows
// per step). The activations between the kernels live in a workspace of a chunk of rows; norms, sampling and the
// start copy are row kernels of the row-owned kernel's block size that reuse its per-tile functions. Every output
// is summed in the row-owned kernel's order (bias, then the matmul's k-blocks or k in order, then the gathers), so
// the two paths give bitwise the same rollout. Launched back to back on the caller's stream (no graph capture yet).

#if defined(DX_EMU)
constexpr int kPhaseWarps = 2;
constexpr int64_t kPhaseChunkRows = 80;  // small, so that the tests' inputs take several chunks
std::atomic<int> g_path_override{0};     // 0: choose, 1: row-owned, 2: phases
std::atomic<int64_t> g_chunk_override{0};
#else
constexpr int kPhaseWarps = 4;
constexpr int64_t kPhaseChunkRows = 8192;  // bounds the workspace: about 26 KB per row at size12m
#endif
constexpr int kPhaseTiles = 4;  // mma row tiles per block
constexpr int kPhaseRows = kTile * kPhaseTiles;
constexpr int kPhaseThreads = kPhaseWarps * kWarp;
constexpr int kPhaseCols = 8 * kPhaseWarps;  // a warp per 8 columns (tensor cores) or 4 threads per column (float32)

// One layer: Y[r, q out + o] for q < Q (Q = 3: the GRU's r, c and u columns of unit o, Y = the new h) of
//   bias[q out + o] + X[r, :K] @ W[:K] + X2[r, :K2] @ W[K : K + K2] + sum_s W[K + K2 + s C + idx[r, s]]
// for rows r < n; blockIdx.z selects a group (a block of a block-linear layer) whose X, weights, bias and Y start
// gx, gw, gb and gy elements further.
struct Gemm {
  const float* X; int64_t ldx; int K;
  const float* X2; int64_t ldx2; int K2;
  const int32_t* idx; int64_t ldi; int S, C;
  const float* wf; const uint32_t* wb; int64_t ldw;  // float32 [rows, ldw] or bf16 k-pair words [rows / 2, ldw]
  const float* bias; float* Y; int64_t ldy; int out;
  const float* h;  // Q = 3: the previous h, ldy like Y
  bool mma;        // tensor cores (bf16 weights) or a thread per column (float32, or bf16 read as floats)
  int64_t n, gx, gw, gb, gy;
};

template <int Q>
__global__ void gemm_kernel(Gemm g) {
  const int grp = blockIdx.z;
  const int64_t r0 = int64_t(blockIdx.y) * kPhaseRows;
  const int R = int(g.n - r0 < kPhaseRows ? g.n - r0 : kPhaseRows);
  const float* X = g.X ? g.X + grp * g.gx + r0 * g.ldx : nullptr;
  const float* X2 = g.X2 ? g.X2 + r0 * g.ldx2 : nullptr;
  const int32_t* idx = g.idx ? g.idx + r0 * g.ldi : nullptr;
  const float* bias = g.bias + grp * g.gb;
  float* Y = g.Y + grp * g.gy + r0 * g.ldy;
  const float* h = g.h ? g.h + grp * g.gy + r0 * g.ldy : nullptr;
  const int c_base = int(blockIdx.x) * kPhaseCols;
  auto epilogue = [&](int r, int o, const float* v) {  // v[q]: row r, unit/column o
    const int64_t at = int64_t(r) * g.ldy + o;
    Y[at] = Q == 3 ? gru_update(v[0], v[1], v[2], h[at]) : v[0];
  };
  if (g.mma) {
    const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, fg = lane / 4, ft = lane % 4;
    const int n0 = c_base + warp * 8;
    if (n0 >= g.out) return;  // uniform per warp; no barriers in this kernel
    const int c0 = n0 + 2 * ft;
    const uint32_t* Wb = g.wb + grp * g.gw;
    float c[Q][kPhaseTiles][4];
    for (int q = 0; q < Q; ++q) {
      const int cq = q * g.out + c0;
      const float b0 = c0 < g.out ? bias[cq] : 0.0f, b1 = c0 + 1 < g.out ? bias[cq + 1] : 0.0f;
      for (int m = 0; m < kPhaseTiles; ++m) c[q][m][0] = c[q][m][2] = b0, c[q][m][1] = c[q][m][3] = b1;
      const int n = q * g.out + n0 + fg;
      const bool n_ok = n0 + fg < g.out;
      if (g.K) mma_acc_mt<kPhaseTiles>(c[q], R, X, g.ldx, g.K, Wb, g.ldw, n, n_ok);
      if (g.K2) mma_acc_mt<kPhaseTiles>(c[q], R, X2, g.ldx2, g.K2, Wb + int64_t(g.K / 2) * g.ldw, g.ldw, n, n_ok);
      if (idx)
        for (int m = 0; m < kPhaseTiles && 16 * m < R; ++m)
          gather_frag(c[q][m], R - 16 * m, idx + int64_t(16 * m) * g.ldi, g.ldi, g.S, g.C,
                      Wb + int64_t((g.K + g.K2) / 2) * g.ldw, g.ldw, c0 + q * g.out, (q + 1) * g.out);
    }
    for (int m = 0; m < kPhaseTiles; ++m)
      for (int e = 0; e < 4; ++e) {
        const int r = 16 * m + fg + (e >= 2 ? 8 : 0), o = c0 + (e & 1);
        const float v[3] = {c[0][m][e], c[Q > 1 ? 1 : 0][m][e], c[Q > 2 ? 2 : 0][m][e]};
        if (r < R && o < g.out) epilogue(r, o, v);
      }
    return;
  }
  const int o = c_base + int(threadIdx.x) % kPhaseCols;
  if (o >= g.out) return;
  Col W[Q];
  for (int q = 0; q < Q; ++q)
    W[q] = Col{g.wf ? g.wf + grp * g.gw + q * g.out + o : nullptr,
               g.wb ? g.wb + grp * g.gw + q * g.out + o : nullptr, g.ldw};
  for (int m = int(threadIdx.x) / kPhaseCols; m < kPhaseTiles && 16 * m < R; m += kPhaseThreads / kPhaseCols) {
    const int rows = R - 16 * m < kTile ? R - 16 * m : kTile;
    const int64_t rm = 16 * m;
    float acc[Q][kTile];
    for (int q = 0; q < Q; ++q) {
      col_init(acc[q], bias[q * g.out + o]);
      if (g.K) col_acc(acc[q], rows, X + rm * g.ldx, g.ldx, W[q], g.K);
      if (g.K2) col_acc(acc[q], rows, X2 + rm * g.ldx2, g.ldx2, W[q].shift(g.K), g.K2);
      if (idx) col_gather(acc[q], rows, idx + rm * g.ldi, g.ldi, g.S, g.C, W[q].shift(g.K + g.K2));
    }
    for (int r = 0; r < rows; ++r) {
      const float v[3] = {acc[0][r], acc[Q > 1 ? 1 : 0][r], acc[Q > 2 ? 2 : 0][r]};
      epilogue(int(rm) + r, o, v);
    }
  }
}

// The row kernels: a block of kThreads per tile of kTile rows (the row-owned kernel's per-tile functions).
struct RowArgs {
  RolloutParams p;
  int64_t n, row0;  // rows of this chunk, and its first row in the rollout (Philox rows)
  float* Y; int64_t ldy; int O, parts; int64_t ldp; const float *nw[3], *nb[3];  // norm + SiLU of row segments
  float* logits; int32_t* aidx; float* an; float* act; int32_t* zn; uint32_t step;  // sampling
  __device__ int rows(int64_t b0) const { return int(n - b0 < kTile ? n - b0 : kTile); }  // of the tile at b0
};

__global__ void norm_kernel(RowArgs a) {
  const int64_t b0 = int64_t(blockIdx.x) * kTile;
  const int R = a.rows(b0);
  norm_silu(R, a.Y + b0 * a.ldy, a.ldy, a.O, a.nw[0], a.nb[0], a.p.norm, a.parts, a.ldp, a.nw[1], a.nb[1], a.nw[2],
            a.nb[2]);
}

__global__ void actions_kernel(RowArgs a) {
  const int64_t b0 = int64_t(blockIdx.x) * kTile;
  const int R = a.rows(b0);
  Work w{};
  w.logits = a.logits + b0 * a.p.actor_out.out;
  w.aidx = a.aidx + b0;
  w.an = a.an + b0 * a.p.act_dim;
  pick_actions(a.p, w, R, a.row0 + b0, a.step, a.act + b0 * a.p.act_dim, true);
}

__global__ void latents_kernel(RowArgs a) {
  const int64_t b0 = int64_t(blockIdx.x) * kTile;
  const int R = a.rows(b0);
  sample_latents(a.p, R, a.row0 + b0, a.step, a.logits + b0 * a.p.stoch * a.p.classes, a.zn + b0 * a.p.stoch);
}

__global__ void start_kernel(RolloutParams p) {  // states 0 of the rollout: h0 and z0
  const int64_t nh = p.n * p.deter, nz = p.n * p.stoch;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < nh + nz; i += int64_t(gridDim.x) * blockDim.x)
    if (i < nh) p.h_out[i] = p.h0[i];
    else p.z_out[i - nh] = p.z0[i - nh];
}

// The phase path's workspace per row of a chunk (floats; aidx takes float slots), as slices of 128 bytes.
struct PhaseWork {
  float *xa, *xb, *x3, *da, *db, *logits, *an;
  int32_t* aidx;
};

int64_t phase_chunk(const RolloutParams& p) {
#if defined(DX_EMU)
  if (const int64_t c = g_chunk_override.load()) return std::min(p.n, c);
#endif
  return std::min(p.n, kPhaseChunkRows);
}

PhaseWork phase_work(const RolloutParams& p, int64_t rows, int64_t* floats) {
  const int64_t width = actor_width(p), SC = int64_t(p.stoch) * p.classes, AO = p.actor_out.out;
  const int64_t sizes[8] = {rows * width, rows * width, rows * 3 * p.hidden, rows * p.deter, rows * p.deter,
                            rows * std::max(SC, AO), rows * p.act_dim, rows};
  float* at[8];
  int64_t f = 0;
  for (int i = 0; i < 8; ++i) {
    at[i] = p.work ? p.work + f : nullptr;
    f += round32(sizes[i]);
  }
  if (floats) *floats = f;
  return PhaseWork{at[0], at[1], at[2], at[3], at[4], at[5], at[6], reinterpret_cast<int32_t*>(at[7])};
}

// Large rollouts take the phase path: their row tiles outnumber the SMs and their weights outgrow what one
// block's tile should stream every step (a size12m step reads 12 MB of bf16 weights). Not yet measured on a GPU.
bool use_phases(const RolloutParams& p) {
#if defined(DX_EMU)
  if (const int o = g_path_override.load()) return o == 2;
#endif
  return p.n >= 1024 && p.deter >= 1024;
}

class Phases {
 public:
  Phases(const RolloutParams& p, cudaStream_t s) : p_(p), s_(s) {}

  void run() {
    const RolloutParams& p = p_;
    const int64_t N = p.n, chunk = phase_chunk(p);
    DX_LAUNCH(start_kernel, dim3(unsigned(grid_for(N * (p.deter + p.stoch), kThreads))), dim3(kThreads), s_)(p);
    check_launch("rollout (start states)");
    w_ = phase_work(p, chunk, nullptr);
    for (int64_t c0 = 0; c0 < N; c0 += chunk) {
      n_ = std::min(chunk, N - c0);
      row0_ = c0;
      for (int t = 0; t < p.horizon; ++t) step(t, c0);
    }
  }

 private:
  // One imagined step of the chunk's rows (c0 ..): actor, action, core, prior, latent.
  void step(int t, int64_t c0) {
    const RolloutParams& p = p_;
    const int64_t N = p.n, D = p.deter, S = p.stoch, C = p.classes, A = p.act_dim, Hd = p.hidden, H3 = 3 * Hd;
    const float* h = p.h_out + (t * N + c0) * D;
    const int32_t* z = p.z_out + (t * N + c0) * S;
    float* hn = p.h_out + ((t + 1) * N + c0) * D;
    int32_t* zn = p.z_out + ((t + 1) * N + c0) * S;
    // actor: [h, onehot z] -> MLP -> logits -> actions
    float *x = w_.xa, *y = w_.xb;
    int width = 0;
    for (int l = 0; l < p.actor_layers; ++l) {
      const DenseW& L = p.actor[l];
      if (l == 0) dense(L, h, D, int(D), y, L.out, z, S, int(S), int(C));
      else dense(L, x, width, width, y, L.out);
      std::swap(x, y);
      width = L.out;
    }
    dense(p.actor_out, x, width, width, w_.logits, p.actor_out.out);
    rows(actions_kernel, [&](RowArgs& a) {
      a.logits = w_.logits, a.aidx = w_.aidx, a.an = w_.an, a.act = p.a_out + (t * N + c0) * A, a.step = uint32_t(t);
    });
    // core: x3 = [in_h(h), in_z(z), in_a(a)] -> norms -> block-linear layers -> GRU gates -> h'
    dense_only(p.in_h, h, D, int(D), w_.x3, H3, nullptr, 0, 0, 0, p.in_h.wb != nullptr);
    dense_only(p.in_z, nullptr, 0, 0, w_.x3 + Hd, H3, z, S, int(S), int(C), false);
    if (p.discrete) dense_only(p.in_a, nullptr, 0, 0, w_.x3 + 2 * Hd, H3, w_.aidx, 1, 1, int(A), false);
    else dense_only(p.in_a, w_.an, A, int(A), w_.x3 + 2 * Hd, H3, nullptr, 0, 0, 0, false);
    norm(w_.x3, H3, int(Hd), 3, Hd, {p.in_h.nw, p.in_z.nw, p.in_a.nw}, {p.in_h.nb, p.in_z.nb, p.in_a.nb});
    const float* xin = nullptr;
    float* dbuf[2] = {w_.da, w_.db};
    for (int l = 0; l < p.dyn_layers; ++l) {
      const BlockW& L = p.dyn[l];
      block_layer<1>(L, xin, h, dbuf[l & 1], nullptr);
      norm(dbuf[l & 1], D, int(D), 1, 0, {L.nw}, {L.nb});
      xin = dbuf[l & 1];
    }
    block_layer<3>(p.gru, xin, h, hn, h);
    // prior: h' -> MLP -> logits -> latents
    const float* pin = hn;
    int pw = int(D);
    x = w_.xa, y = w_.xb;
    for (int l = 0; l < p.prior_layers; ++l) {
      dense(p.prior[l], pin, pw, pw, y, p.prior[l].out);
      std::swap(x, y);
      pin = x;
      pw = p.prior[l].out;
    }
    dense(p.prior_out, pin, pw, pw, w_.logits, int(S * C));
    rows(latents_kernel, [&](RowArgs& a) { a.logits = w_.logits, a.zn = zn, a.step = uint32_t(t); });
  }

  void launch_gemm(const Gemm& g, int groups, bool gru) {
    const dim3 grid(unsigned((g.out + kPhaseCols - 1) / kPhaseCols), unsigned((g.n + kPhaseRows - 1) / kPhaseRows),
                    unsigned(groups));
    if (gru) DX_LAUNCH(gemm_kernel<3>, grid, dim3(kPhaseThreads), s_)(g);
    else DX_LAUNCH(gemm_kernel<1>, grid, dim3(kPhaseThreads), s_)(g);
    check_launch("rollout (phase)");
  }

  // Y = X @ W (+ gathers) + b, on tensor cores where the row-owned kernel's dense() uses them; then its norm.
  void dense(const DenseW& L, const float* X, int64_t ldx, int K, float* Y, int64_t ldy, const int32_t* idx = nullptr,
             int64_t ldi = 0, int S = 0, int C = 0) {
    dense_only(L, X, ldx, K, Y, ldy, idx, ldi, S, C, L.wb != nullptr);
    if (L.nw) norm(Y, ldy, L.out, 1, 0, {L.nw}, {L.nb});
  }

  void dense_only(const DenseW& L, const float* X, int64_t ldx, int K, float* Y, int64_t ldy, const int32_t* idx,
                  int64_t ldi, int S, int C, bool mma) {
    Gemm g{};
    g.X = X, g.ldx = ldx, g.K = K, g.idx = idx, g.ldi = ldi, g.S = S, g.C = C;
    g.wf = L.w, g.wb = reinterpret_cast<const uint32_t*>(L.wb), g.ldw = L.out;
    g.bias = L.b, g.Y = Y, g.ldy = ldy, g.out = L.out, g.mma = mma, g.n = n_;
    launch_gemm(g, 1, false);
  }

  // A block-linear layer (Q = 1) or the GRU gate layer (Q = 3, Y = h' from h): block i reads [h block i, x3] (the
  // first layer) or block i of xin, and writes its columns (units) of Y.
  template <int Q>
  void block_layer(const BlockW& L, const float* xin, const float* h, float* Y, const float* hprev) {
    const RolloutParams& p = p_;
    const int g = p.blocks, ob = L.out / g, ib = L.in / g, hb = p.deter / g, units = ob / Q;
    Gemm a{};
    if (xin) a.X = xin, a.ldx = p.deter, a.K = ib, a.gx = ib;
    else a.X = h, a.ldx = p.deter, a.K = hb, a.gx = hb, a.X2 = w_.x3, a.ldx2 = 3 * p.hidden, a.K2 = 3 * p.hidden;
    a.wf = L.w, a.wb = reinterpret_cast<const uint32_t*>(L.wb), a.ldw = ob;
    a.gw = L.wb ? int64_t((ib + 1) / 2) * ob : int64_t(ib) * ob;
    a.bias = L.b, a.gb = ob, a.Y = Y, a.ldy = p.deter, a.gy = units, a.out = units, a.h = hprev;
    a.mma = L.wb != nullptr && units % 8 == 0;
    a.n = n_;
    launch_gemm(a, g, Q == 3);
  }

  // norm + SiLU of `parts` row segments of O columns, ldp apart (norm weights and biases of each: nw, nb)
  void norm(float* Y, int64_t ldy, int O, int parts, int64_t ldp, std::array<const float*, 3> nw,
            std::array<const float*, 3> nb) {
    rows(norm_kernel, [&](RowArgs& a) {
      a.Y = Y, a.ldy = ldy, a.O = O, a.parts = parts, a.ldp = ldp;
      for (int i = 0; i < 3; ++i) a.nw[i] = nw[i], a.nb[i] = nb[i];
    });
  }

  template <typename Fill>
  void rows(void (*kernel)(RowArgs), Fill fill) {
    RowArgs a{};
    a.p = p_, a.n = n_, a.row0 = row0_;
    fill(a);
    DX_LAUNCH(kernel, dim3(unsigned((n_ + kTile - 1) / kTile)), dim3(kThreads), s_)(a);
    check_launch("rollout (row phase)");
  }

  const RolloutParams& p_;
  cudaStream_t s_;
  PhaseWork w_{};
  int64_t n_ = 0, row0_ = 0;
};

unsigned rollout_grid(int64_t n) {
#if defined(DX_EMU)
  if (const int g = g_grid_override.load()) return unsigned(g);
#endif
  const int64_t tiles = (n + kTile - 1) / kTile;
  return unsigned(std::max<int64_t>(1, std::min(tiles, kMaxRolloutBlocks)));
}

}  // namespace

int64_t rollout_work_floats(const RolloutParams& p, bool acting) {
  if (p.n <= 0) return 0;
  if (!acting && use_phases(p)) {
    int64_t f = 0;
    phase_work(p, phase_chunk(p), &f);
    return f;
  }
  return int64_t(rollout_grid(p.n)) * block_floats(p, acting);
}

#if defined(DX_EMU)
void set_rollout_grid(int blocks) {
  if (blocks < 0 || blocks > 64) throw std::invalid_argument("set_rollout_grid: blocks must be in [0, 64]");
  g_grid_override.store(blocks);
}

void set_rollout_path(int path, int64_t chunk_rows) {
  if (path < 0 || path > 2) throw std::invalid_argument("set_rollout_path: path must be 0 (choose), 1 (row-owned) or 2 (phases)");
  if (chunk_rows < 0) throw std::invalid_argument("set_rollout_path: chunk_rows must be >= 0 (0: the default)");
  g_path_override.store(path);
  g_chunk_override.store(chunk_rows);
}
#endif

void rollout_fwd(const RolloutParams& p, const Exec& e) {
  if (p.n <= 0) return;
  if (!p.work) throw std::invalid_argument("rollout: the CUDA rollout needs its workspace (rollout_work_floats)");
  if (p.ldh != p.deter || p.z_onehot)
    throw std::invalid_argument("rollout: the CUDA rollout writes h rows deter apart (no feat layout)");
  DeviceGuard guard(e);
  if (use_phases(p)) {
    Phases(p, stream_of(e)).run();
    return;
  }
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
