// The fused imagination rollout: parameter struct and the per-element math shared by the CPU kernel
// (csrc/cpu/rollout.cpp) and the CUDA kernels. What one step computes is in the project's rollout spec and
// mirrors dreamer_ext.rssm.RSSM.img_step + dreamer_ext.behavior.Actor; the PyTorch twin is
// dreamer_ext.ops.reference.rollout.
#pragma once

#include <cstdint>

#include "dx_math.h"
#include "philox.h"

namespace dx {

constexpr int kRolloutMaxLayers = 8;

// Linear + norm (+ SiLU) layer with a K-major weight: y = norm(b + x @ w) with w [in, out] in float32, or, for
// bf16 compute, wb [ceil(in/2), out, 2]: bf16 (as uint16) k-pairs, the layout of vdpbf16ps. nw is the norm
// scale, nb the LayerNorm offset (nullptr for RMSNorm). Output layers leave nw = nullptr.
struct DenseW { const float* w; const uint16_t* wb; const float* b; const float* nw; const float* nb; int in; int out; };

// Block-diagonal linear layer: w [g, in/g, out/g] (K-major per block; bf16: wb [g, in/g/2, out/g, 2]), b [out];
// plus the norm over all of `out` that follows it in the core's dyn layers (nw, nb; unused for the gate layer).
struct BlockW { const float* w; const uint16_t* wb; const float* b; const float* nw; const float* nb; int in; int out; };

struct RolloutParams {
  int64_t n;           // start states (rows)
  int horizon;         // H imagined steps: states 0..H, actions 0..H-1
  int deter, blocks, hidden, stoch, classes, act_dim;
  bool discrete;       // one-hot actions (inverse-CDF sample) or BoundedNormal actions
  bool bf16;           // matmuls on bf16 inputs and weights with float32 accumulation (weights in wb)
  int norm;            // 0: RMSNorm eps 1e-4 (V2), 1: LayerNorm eps 1e-3 (V1)
  float rssm_unimix, actor_unimix, min_std, max_std;
  uint64_t seed;       // Philox key of this call
  uint32_t rng_row0;   // Philox row of row 0 (data-parallel: the first global row of this rank; else 0)
  int actor_layers; DenseW actor[kRolloutMaxLayers]; DenseW actor_out;  // actor_out: [units, A or 2A]
  DenseW in_h, in_z, in_a;                                             // core inputs -> hidden each
  int dyn_layers; BlockW dyn[kRolloutMaxLayers]; BlockW gru;           // gru: [g, in/g, 3 deter/g]
  int prior_layers; DenseW prior[kRolloutMaxLayers]; DenseW prior_out;  // prior_out: [hidden, S*C]
  const float* h0;     // [n, deter]
  const int32_t* z0;   // [n, stoch] class indices
  float* h_out;        // [H+1, n, deter] rows ldh apart
  int64_t ldh;         // row stride of h_out in floats: deter, or deter + stoch * classes for the feat layout
  float* z_onehot;     // null, or (feat layout, CPU rollout only) h_out + deter: the latents one-hot, rows ldh apart
  int32_t* z_out;      // [H+1, n, stoch]
  float* a_out;        // [H, n, act_dim]
  float* work;         // CUDA only: the launch's workspace, dx::cuda::rollout_work_floats(...) floats (CPU: unused)
};

// The acting step (one posterior step + actor per environment) reuses RolloutParams for the actor and the core
// (h0/z0: the carry, h_out/z_out/a_out: [1, n, ...]; the prior fields unused) plus these.
struct ActParams {
  int embed_dim;
  int post_layers; DenseW post[kRolloutMaxLayers]; DenseW post_out;  // post.0 reads [h', embed]: in = deter + embed_dim
  const float* embed;        // [n, embed_dim]
  const float* prev_action;  // [n, act_dim]: the action taken before this step (zeros: none)
  const uint8_t* is_first;   // [n]: reset h, z and the previous action to zeros first
  bool sample;               // sample the action (else its mode)
  float* z_onehot;           // [n, stoch * classes] or null: the new latent also as one-hot floats
};

// The first row whose carried class indices lie outside [z_min, classes) (z_min: 0 for the rollout's start
// states, -1 for an acting carry, where -1 marks an all-zero group), or -1 when all are in range. The CPU
// kernels check before they read; the CUDA path's wrapper checks on the device instead.
inline int64_t first_bad_class_row(const int32_t* z, int64_t n, int stoch, int classes, int z_min) {
  for (int64_t i = 0; i < n * int64_t(stoch); ++i)
    if (z[i] < z_min || z[i] >= classes) return i / stoch;
  return -1;
}

// ---- bf16 ----
// float32 -> bf16 bits, round to nearest even (NaN stays a quiet NaN), and back.
DX_HD uint16_t f32_to_bf16(float f) {
  const uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40u);
  return uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
DX_HD float bf16_to_f32(uint16_t b) { return bits_to_float(uint32_t(b) << 16); }

// ---- per-element math (float32) ----
DX_HD float sigmoid_(float x) { return 1.0f / (1.0f + exp_(-x)); }
DX_HD float silu_(float x) { return x / (1.0f + exp_(-x)); }
// tanh through exp: saturates cleanly to +-1 (exp overflows to inf, 2/(inf+1) = 0)
DX_HD float tanh_(float x) { return 1.0f - 2.0f / (exp_(2.0f * x) + 1.0f); }

// Block-GRU state update from the raw gate pre-activations (r, c, u) and the previous state h.
DX_HD float gru_update(float r, float c, float u, float h) {
  const float cand = tanh_(sigmoid_(r) * c);
  const float upd = sigmoid_(u - 1.0f);
  return upd * cand + (1.0f - upd) * h;
}

// Inverse error function, single precision (M. Giles, "Approximating the erfinv function", GPU Computing
// Gems Jade Edition, 2011): two polynomial branches in w = -log((1 - x)(1 + x)). |x| < 1.
DX_HD float erfinv_(float x) {
  float w = -log_((1.0f - x) * (1.0f + x)), p;
  if (w < 5.0f) {
    w = w - 2.5f;
    p = 2.81022636e-08f;
    p = 3.43273939e-07f + p * w;
    p = -3.5233877e-06f + p * w;
    p = -4.39150654e-06f + p * w;
    p = 0.00021858087f + p * w;
    p = -0.00125372503f + p * w;
    p = -0.00417768164f + p * w;
    p = 0.246640727f + p * w;
    p = 1.50140941f + p * w;
  } else {
    w = ::sqrtf(w) - 3.0f;
    p = -0.000200214257f;
    p = 0.000100950558f + p * w;
    p = 0.00134934322f + p * w;
    p = -0.00367342844f + p * w;
    p = 0.00573950773f + p * w;
    p = -0.0076224613f + p * w;
    p = 0.00943887047f + p * w;
    p = 1.00167406f + p * w;
    p = 2.83297682f + p * w;
  }
  return p * x;
}

// A standard normal from a uniform, as the PyTorch BoundedNormal does: sqrt(2) erfinv(2u - 1), u clamped.
DX_HD float normal_from_uniform(float u) {
  u = u < 1e-6f ? 1e-6f : (u > 1.0f - 1e-6f ? 1.0f - 1e-6f : u);
  return 1.41421356f * erfinv_(2.0f * u - 1.0f);
}

// Probabilities (1 - mix) softmax(l) + mix / K of one row of logits, in place.
DX_HD void unimix_probs(float* l, int K, float mix) {
  float m = l[0];
  for (int k = 1; k < K; ++k) m = l[k] > m ? l[k] : m;
  float sum = 0.0f;
  for (int k = 0; k < K; ++k) {
    l[k] = exp_(l[k] - m);
    sum += l[k];
  }
  const float scale = (1.0f - mix) / sum, add = mix / float(K);
  for (int k = 0; k < K; ++k) l[k] = l[k] * scale + add;
}

// A discrete action from one row of actor logits l[0..A-1] (turned into unimix probabilities in place): the
// inverse-CDF draw with uniform u, or, with sample = false, the most probable class (the first on ties).
DX_HD int discrete_action(float* l, int A, float mix, bool sample, float u) {
  unimix_probs(l, A, mix);
  if (sample) return sample_index(l, A, u);
  int k = 0;
  for (int j = 1; j < A; ++j) k = l[j] > l[k] ? j : k;
  return k;
}

// One continuous action dimension from its mean and std logits: tanh(mean) + std * N(0, 1) from uniform u
// (std = (max - min) sigmoid(std logit + 2) + min), or, with sample = false, tanh(mean).
DX_HD float continuous_action(float lmean, float lstd, float min_std, float max_std, bool sample, float u) {
  const float mean = tanh_(lmean);
  if (!sample) return mean;
  const float std_ = (max_std - min_std) * sigmoid_(lstd + 2.0f) + min_std;
  return mean + std_ * normal_from_uniform(u);
}

// The core's continuous action input: a / max(|a|, 1), elementwise.
DX_HD float action_input(float a) {
  const float m = fabs_(a);
  return a / (m > 1.0f ? m : 1.0f);
}

}  // namespace dx
