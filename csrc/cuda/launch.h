// Kernel launch plumbing shared by csrc/cuda/*.cu. With DX_EMU the same .cu sources compile as
// C++ against csrc/emu/simt.h and run on the CPU (test builds only).
#pragma once

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#if defined(DX_EMU)
#include "../emu/simt.h"
#define DX_LAUNCH(kernel, grid, block, stream) ::dx_emu::launch(grid, block, kernel)
#else
#include <cuda_runtime.h>
#define DX_LAUNCH(kernel, grid, block, stream) kernel<<<grid, block, 0, stream>>>
#endif

#include "../common/params.h"

namespace dx { namespace cuda {

inline cudaStream_t stream_of(const Exec& e) { return reinterpret_cast<cudaStream_t>(e.stream); }

inline void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": CUDA launch failed: " + cudaGetErrorString(err));
}

// Blocks for a grid-stride loop over n items: enough to fill the GPU, never more than needed.
inline unsigned grid_for(int64_t n, int threads) {
  const int64_t want = (n + threads - 1) / threads;
  return unsigned(std::max<int64_t>(1, std::min<int64_t>(want, int64_t(1) << 16)));
}

// Launches kernel(p) on a 1-D grid sized for a grid-stride loop over n items (nothing when n <= 0).
template <typename P>
void launch_1d(void (*kernel)(P), const P& p, int64_t n, int threads, const Exec& e, const char* what) {
  if (n <= 0) return;
  DX_LAUNCH(kernel, dim3(grid_for(n, threads)), dim3(threads), stream_of(e))(p);
  check_launch(what);
}

}}  // namespace dx::cuda
