// Small kernels that exercise the SIMT emulation's primitives which the op kernels do not use yet
// (__shared__, __syncthreads, __shfl_sync, __shfl_down_sync, atomicAdd, 2-D blocks and grids), and the warp matrix
// step's fragment layout.
// Compiled into dreamer_ext._emu (run by python_tests/test_emu.py) and, in CUDA builds, by nvcc as a
// compile check, so the same source is known to be valid CUDA. Host pointers in, results written.
#pragma once

#include <cstdint>

namespace dx { namespace selftest {

// out[0] += sum of x[0..n) by 2-D blocks of 16 x 8 threads over a 2-D grid: each block reduces its
// 128 values in __shared__ memory with __syncthreads between the tree levels, then one atomicAdd.
void block_sum(const float* x, int64_t n, float* out);

// out[s] = sum of x[width s .. width s + width) for n a multiple of 32, by a __shfl_down_sync tree over
// segments of `width` lanes (width 32: one sum per warp).
void warp_down_sum(const float* x, int64_t n, int width, float* out);

// out[i] = x[(i / width) * width + src % width] for i < n (n a multiple of 32): __shfl_sync broadcast.
void warp_broadcast(const double* x, int64_t n, int src, int width, double* out);

// out[i] = x[i ^ mask] within segments of `width` lanes, own value where that lies in a later segment.
void warp_xor(const int64_t* x, int64_t n, int mask, int width, int64_t* out);

// counts[b] += number of i < n with bucket[i] == b, by atomicAdd from every thread (contention).
void histogram(const int32_t* bucket, int64_t n, int32_t* counts);

// d = c + a @ b by one warp through the tensor-core step of csrc/cuda/mma.h, each lane loading its fragments in the
// PTX m16n8k16 layout: a [16, 16] and b [16, 8] row-major bf16 bits, c and d [16, 8] row-major float32.
void mma_bf16(const uint16_t* a, const uint16_t* b, const float* c, float* d);

}}  // namespace dx::selftest
