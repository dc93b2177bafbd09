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

constexpr int kWarp = 32;

inline cudaStream_t stream_of(const Exec& e) { return reinterpret_cast<cudaStream_t>(e.stream); }

inline void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

inline void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": CUDA launch failed: " + cudaGetErrorString(err));
}

// Makes e.device the calling thread's current device for the launch and restores the previous one
// afterwards, so a kernel for a tensor on cuda:1 never runs on whatever device happens to be current.
class DeviceGuard {
 public:
  explicit DeviceGuard(const Exec& e) {
    if (e.device < 0) throw std::invalid_argument("device: a CUDA launch needs the tensor's device index (>= 0), got " +
                                                  std::to_string(e.device));
    check_cuda(cudaGetDevice(&prev_), "cudaGetDevice");
    if (prev_ != e.device) {
      check_cuda(cudaSetDevice(e.device), ("cudaSetDevice(" + std::to_string(e.device) + ")").c_str());
      switched_ = true;
    }
  }
  ~DeviceGuard() {
    if (switched_) cudaSetDevice(prev_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = -1;
  bool switched_ = false;
};

// Most blocks a grid-stride launch uses. The emulation caps grids at 3 blocks so that the tests'
// small inputs already go round the grid-stride loops.
#if defined(DX_EMU)
constexpr int64_t kMaxBlocks = 3;
#else
constexpr int64_t kMaxBlocks = int64_t(1) << 16;
#endif

// Blocks for a grid-stride loop over n items, `per_block` per block: enough to fill the GPU, never
// more than needed.
inline unsigned grid_for(int64_t n, int64_t per_block) {
  const int64_t want = (n + per_block - 1) / per_block;
  return unsigned(std::max<int64_t>(1, std::min<int64_t>(want, kMaxBlocks)));
}

// Launches kernel(p) on a 1-D grid sized for a grid-stride loop over n items (nothing when n <= 0).
template <typename P>
void launch_1d(void (*kernel)(P), const P& p, int64_t n, int threads, const Exec& e, const char* what) {
  if (n <= 0) return;
  DeviceGuard guard(e);
  DX_LAUNCH(kernel, dim3(grid_for(n, threads)), dim3(threads), stream_of(e))(p);
  check_launch(what);
}

// Launches kernel(p) with one warp per row, rows_per_block warps per block, for a grid-stride loop
// over n rows (nothing when n <= 0).
template <typename P>
void launch_rows(void (*kernel)(P), const P& p, int64_t n, int rows_per_block, const Exec& e, const char* what) {
  if (n <= 0) return;
  DeviceGuard guard(e);
  DX_LAUNCH(kernel, dim3(grid_for(n, rows_per_block)), dim3(rows_per_block * kWarp), stream_of(e))(p);
  check_launch(what);
}

}}  // namespace dx::cuda
