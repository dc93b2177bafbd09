// Shared randomness of the imagination rollout: counter-based Philox4x32-10 and the inverse-CDF sampler.
// The same functions run in the C++ rollout, the CUDA rollout (and its CPU emulation), and, through the
// exported helper dreamer_ext._C.philox_uniform, in the PyTorch reference, so every backend draws the
// same numbers and samples agree wherever the probabilities do.
#pragma once

#include <cstdint>

#include "dx_math.h"  // DX_HD

namespace dx {

struct Philox4 { uint32_t x, y, z, w; };

// Philox4x32 with 10 rounds (Salmon, Moraes, Dror, Shaw: "Parallel random numbers: as easy as 1, 2, 3",
// SC 2011): each round multiplies words 0 and 2 by fixed odd constants, mixes the high halves with words
// 1 and 3 and the key, and the key is bumped by two Weyl constants between rounds.
DX_HD Philox4 philox4x32_10(Philox4 c, uint32_t k0, uint32_t k1) {
  for (int r = 0; r < 10; ++r) {
    if (r > 0) {
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    const uint64_t p0 = uint64_t(0xD2511F53u) * c.x;
    const uint64_t p1 = uint64_t(0xCD9E8D57u) * c.z;
    c = Philox4{uint32_t(p1 >> 32) ^ c.y ^ k0, uint32_t(p1), uint32_t(p0 >> 32) ^ c.w ^ k1, uint32_t(p0)};
  }
  return c;
}

// A uint32 to a float in [0, 1): its top 24 bits times 2^-24 (exact in float32).
DX_HD float uniform_from_bits(uint32_t bits) { return float(bits >> 8) * (1.0f / 16777216.0f); }

// Random streams of the rollout (the counter's last word).
enum RolloutStream : uint32_t { kStreamLatent = 0, kStreamAction = 1 };  // 2: the training posteriors (Python)

// Uniform number `i` of (row, step, stream) under `seed`: the Philox block with counter
// {row, step, i / 4, stream} and key {seed low, seed high}, word i % 4.
DX_HD float rollout_uniform(uint64_t seed, uint32_t row, uint32_t step, uint32_t stream, uint32_t i) {
  const Philox4 r = philox4x32_10(Philox4{row, step, i >> 2, stream}, uint32_t(seed), uint32_t(seed >> 32));
  const uint32_t j = i & 3u;
  return uniform_from_bits(j == 0 ? r.x : j == 1 ? r.y : j == 2 ? r.z : r.w);
}

// Inverse-CDF draw from probabilities p[0..K-1]: the first k whose running float32 sum, accumulated in
// class order, exceeds u (or is NaN); K-1 when none of the first K-1 does (so rounding never yields an
// index >= K).
DX_HD int sample_index(const float* p, int K, float u) {
  float c = 0.0f;
  for (int k = 0; k < K - 1; ++k) {
    c += p[k];
    if (!(c <= u)) return k;
  }
  return K - 1;
}

}  // namespace dx
