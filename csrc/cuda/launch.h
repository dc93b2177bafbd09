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

}}  // namespace dx::cuda
