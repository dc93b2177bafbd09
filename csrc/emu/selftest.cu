// Test kernels for the SIMT emulation's primitives (see selftest.h). Host-side wrappers take host
// pointers: under the emulation (DX_EMU) kernels read host memory directly; the nvcc build of this file
// is a compile check only and never linked into dreamer_ext._C.
#include "selftest.h"

#if defined(DX_EMU)
#include "../cuda/launch.h"
#else
#include <cuda_runtime.h>
#define DX_LAUNCH(kernel, grid, block, stream) kernel<<<grid, block, 0, stream>>>
#endif

#include "../cuda/mma.h"

namespace dx { namespace selftest {

namespace {
constexpr int kBX = 16, kBY = 8;

__global__ void block_sum_kernel(const float* x, int64_t n, float* out) {
  __shared__ float buf[kBX * kBY];
  const int tid = threadIdx.y * blockDim.x + threadIdx.x;
  const int64_t block = int64_t(blockIdx.y) * gridDim.x + blockIdx.x;
  const int64_t i = block * (kBX * kBY) + tid;
  buf[tid] = i < n ? x[i] : 0.0f;
  __syncthreads();
  for (int half = kBX * kBY / 2; half > 0; half >>= 1) {
    if (tid < half) buf[tid] += buf[tid + half];
    __syncthreads();
  }
  if (tid == 0) atomicAdd(out, buf[0]);
}

__global__ void warp_down_kernel(const float* x, int64_t n, int width, float* out) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;  // n is a multiple of 32
  float v = i < n ? x[i] : 0.0f;
  for (int off = width / 2; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off, width);
  if (i < n && i % width == 0) out[i / width] = v;
}

__global__ void warp_broadcast_kernel(const double* x, int64_t n, int src, int width, double* out) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const double v = __shfl_sync(0xffffffffu, i < n ? x[i] : 0.0, src, width);
  if (i < n) out[i] = v;
}

__global__ void warp_xor_kernel(const int64_t* x, int64_t n, int mask, int width, int64_t* out) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const long long v = __shfl_xor_sync(0xffffffffu, (long long)(i < n ? x[i] : 0), mask, width);
  if (i < n) out[i] = v;
}

__global__ void histogram_kernel(const int32_t* bucket, int64_t n, int32_t* counts) {
  const int64_t stride = int64_t(blockDim.x) * gridDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) atomicAdd(&counts[bucket[i]], 1);
}

__global__ void mma_kernel(const uint16_t* a, const uint16_t* b, const float* c, float* d) {
  const unsigned lane = threadIdx.x, g = lane / 4, t = lane % 4;
  auto pair = [](const uint16_t* p) { return uint32_t(p[0]) | (uint32_t(p[1]) << 16); };
  auto col_pair = [&](unsigned k, unsigned n) { return uint32_t(b[k * 8 + n]) | (uint32_t(b[(k + 1) * 8 + n]) << 16); };
  const uint32_t af[4] = {pair(a + g * 16 + 2 * t), pair(a + (g + 8) * 16 + 2 * t), pair(a + g * 16 + 2 * t + 8),
                          pair(a + (g + 8) * 16 + 2 * t + 8)};
  const uint32_t bf[2] = {col_pair(2 * t, g), col_pair(2 * t + 8, g)};
  float acc[4] = {c[g * 8 + 2 * t], c[g * 8 + 2 * t + 1], c[(g + 8) * 8 + 2 * t], c[(g + 8) * 8 + 2 * t + 1]};
  dx::cuda::mma_bf16_16x8x16(acc, af, bf);
  d[g * 8 + 2 * t] = acc[0];
  d[g * 8 + 2 * t + 1] = acc[1];
  d[(g + 8) * 8 + 2 * t] = acc[2];
  d[(g + 8) * 8 + 2 * t + 1] = acc[3];
}

unsigned blocks(int64_t n, int per_block) { return unsigned((n + per_block - 1) / per_block); }
}  // namespace

void block_sum(const float* x, int64_t n, float* out) {
  if (n <= 0) return;
  const unsigned b = blocks(n, kBX * kBY), gx = b < 2 ? 1 : 2, gy = (b + gx - 1) / gx;  // a 2-D grid
  DX_LAUNCH(block_sum_kernel, dim3(gx, gy), dim3(kBX, kBY), 0)(x, n, out);
}
void warp_down_sum(const float* x, int64_t n, int width, float* out) {
  if (n > 0) DX_LAUNCH(warp_down_kernel, dim3(blocks(n, 64)), dim3(64), 0)(x, n, width, out);
}
void warp_broadcast(const double* x, int64_t n, int src, int width, double* out) {
  if (n > 0) DX_LAUNCH(warp_broadcast_kernel, dim3(blocks(n, 64)), dim3(64), 0)(x, n, src, width, out);
}
void warp_xor(const int64_t* x, int64_t n, int mask, int width, int64_t* out) {
  if (n > 0) DX_LAUNCH(warp_xor_kernel, dim3(blocks(n, 64)), dim3(64), 0)(x, n, mask, width, out);
}
void histogram(const int32_t* bucket, int64_t n, int32_t* counts) {
  if (n > 0) DX_LAUNCH(histogram_kernel, dim3(3), dim3(96), 0)(bucket, n, counts);
}
void mma_bf16(const uint16_t* a, const uint16_t* b, const float* c, float* d) {
  DX_LAUNCH(mma_kernel, dim3(1), dim3(32), 0)(a, b, c, d);
}

}}  // namespace dx::selftest
