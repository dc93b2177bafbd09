// One warp-wide tensor-core step, D[16 x 8] += A[16 x 16] B[16 x 8] with bf16 inputs and float32 accumulators, in
// the register layout of PTX `mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32`. Lane l holds (g = l / 4,
// t = l % 4; a 32-bit register holds two bf16, the lower k in its low half):
//   a[0] = A[g][2t, 2t+1]     a[1] = A[g+8][2t, 2t+1]     a[2] = A[g][2t+8, 2t+9]     a[3] = A[g+8][2t+8, 2t+9]
//   b[0] = B[2t, 2t+1][g]     b[1] = B[2t+8, 2t+9][g]
//   c[0], c[1] = D[g][2t, 2t+1]                           c[2], c[3] = D[g+8][2t, 2t+1]
// A bf16 k-pair weight word (the layout the rollout's bf16 weights already have) is exactly a b register.
//
// On sm_80 and newer this is the instruction. Under the emulator (csrc/emu/simt.h) the lanes publish their registers
// to the warp and every lane computes its four outputs from the whole tiles, summing the 16 exact products of each
// output in k order in float32 (a tensor core sums in its own order, so GPU results agree to float32 rounding, not
// bit for bit). Every lane of the warp must call it (it is warp-synchronous, like the instruction).
#pragma once

#include <cstdint>

#include "../common/rollout.h"

namespace dx { namespace cuda {

#if defined(DX_EMU)
__device__ inline void mma_bf16_16x8x16(float c[4], const uint32_t a[4], const uint32_t b[2]) {
  uint32_t mine[6] = {a[0], a[1], a[2], a[3], b[0], b[1]};
  const uint32_t(*all)[6] = ::dx_emu::warp_publish(mine);
  const unsigned lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  auto half = [](uint32_t w, unsigned hi) { return bf16_to_f32(uint16_t(hi ? w >> 16 : w)); };
  for (int i = 0; i < 4; ++i) {
    const unsigned row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i & 1);
    float acc = 0.0f;
    for (unsigned k = 0; k < 16; ++k) {
      // A[row][k]: lane (row % 8) * 4 + (k % 8) / 2, register (row >= 8) + 2 (k >= 8); B[k][col]: lane col * 4 +
      // (k % 8) / 2, register 4 + (k >= 8)
      const float x = half(all[(row % 8) * 4 + (k % 8) / 2][(row >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0)], k & 1);
      const float w = half(all[col * 4 + (k % 8) / 2][4 + (k >= 8 ? 1 : 0)], k & 1);
      acc += x * w;
    }
    c[i] += acc;
  }
  ::dx_emu::warp_release();
}
#else
__device__ __forceinline__ void mma_bf16_16x8x16(float c[4], const uint32_t a[4], const uint32_t b[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  // Before sm_80 there is no bf16 mma: the same sums through shuffles (every lane takes part).
  const unsigned lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (unsigned k = 0; k < 16; ++k) {
    const unsigned src = k % 8 / 2, hi = k & 1;
    const uint32_t a_lo = __shfl_sync(0xffffffffu, a[k >= 8 ? 2 : 0], g * 4 + src);
    const uint32_t a_hi = __shfl_sync(0xffffffffu, a[k >= 8 ? 3 : 1], g * 4 + src);
    const uint32_t b0 = __shfl_sync(0xffffffffu, b[k >= 8 ? 1 : 0], (2 * t) * 4 + src);
    const uint32_t b1 = __shfl_sync(0xffffffffu, b[k >= 8 ? 1 : 0], (2 * t + 1) * 4 + src);
    const float x0 = bf16_to_f32(uint16_t(hi ? a_lo >> 16 : a_lo)), x1 = bf16_to_f32(uint16_t(hi ? a_hi >> 16 : a_hi));
    const float w0 = bf16_to_f32(uint16_t(hi ? b0 >> 16 : b0)), w1 = bf16_to_f32(uint16_t(hi ? b1 >> 16 : b1));
    acc[0] += x0 * w0;
    acc[1] += x0 * w1;
    acc[2] += x1 * w0;
    acc[3] += x1 * w1;
  }
  for (int i = 0; i < 4; ++i) c[i] += acc[i];
#endif
}
#endif

// Two bf16 (round to nearest even) of x0 (low half) and x1 (high half).
__device__ __forceinline__ uint32_t pack_bf16x2(float x0, float x1) {
  return uint32_t(f32_to_bf16(x0)) | (uint32_t(f32_to_bf16(x1)) << 16);
}

}}  // namespace dx::cuda
