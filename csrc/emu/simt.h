// SIMT emulation for running csrc/cuda/*.cu on the CPU in test builds (never in a release build).
//
// A launch runs the grid's blocks one after another; the threads of a block are real OS threads, so
// __syncthreads() is a true barrier, `__shared__` variables (function-local statics) are shared by
// the block, and warp shuffles exchange values through a per-warp buffer between two barriers.
// This checks the kernels' indexing, bounds, reductions and barriers, not their speed.
#pragma once

#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __restrict__ __restrict

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

using cudaError_t = int;
using cudaStream_t = void*;
constexpr cudaError_t cudaSuccess = 0;
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline const char* cudaGetErrorString(cudaError_t) { return "no error (emulated)"; }

namespace dx_emu {

inline thread_local dim3 tl_thread_idx, tl_block_idx;
inline dim3 g_block_dim, g_grid_dim;

struct Warp {
  explicit Warp(std::ptrdiff_t lanes) : barrier(lanes) {}
  std::barrier<> barrier;
  alignas(8) unsigned char slots[32][8];
};

struct Block {
  explicit Block(std::ptrdiff_t threads) : barrier(threads) {
    for (std::ptrdiff_t w = 0; w < (threads + 31) / 32; ++w)
      warps.emplace_back(std::make_unique<Warp>(std::min<std::ptrdiff_t>(32, threads - 32 * w)));
  }
  std::barrier<> barrier;
  std::vector<std::unique_ptr<Warp>> warps;
};
inline Block* g_block = nullptr;
inline std::mutex g_atomic_mutex;

inline unsigned linear_tid() {
  return tl_thread_idx.x + g_block_dim.x * (tl_thread_idx.y + g_block_dim.y * tl_thread_idx.z);
}


template <typename T, typename SrcLane> T warp_exchange(T v, SrcLane src) {
  static_assert(sizeof(T) <= 8, "emulated shuffles move at most 8 bytes");
  const unsigned tid = linear_tid(), lane = tid % 32;
  Warp& w = *g_block->warps[tid / 32];
  std::memcpy(w.slots[lane], &v, sizeof(T));
  w.barrier.arrive_and_wait();
  T out;
  std::memcpy(&out, w.slots[src(lane) % 32], sizeof(T));
  w.barrier.arrive_and_wait();
  return out;
}

// Runs kernel(args...) over grid x block with CUDA's semantics for the features above.
template <typename... KArgs> struct Launch {
  dim3 grid, block;
  void (*kernel)(KArgs...);
  template <typename... Args> void operator()(Args&&... args) const {
    const std::ptrdiff_t threads = std::ptrdiff_t(block.x) * block.y * block.z;
    if (threads <= 0 || threads > 1024) throw std::runtime_error("emulated launch: bad block size");
    g_block_dim = block;
    g_grid_dim = grid;
    for (unsigned bz = 0; bz < grid.z; ++bz)
      for (unsigned by = 0; by < grid.y; ++by)
        for (unsigned bx = 0; bx < grid.x; ++bx) {
          Block blk(threads);
          g_block = &blk;
          std::vector<std::thread> pool;
          pool.reserve(threads);
          for (unsigned tz = 0; tz < block.z; ++tz)
            for (unsigned ty = 0; ty < block.y; ++ty)
              for (unsigned tx = 0; tx < block.x; ++tx)
                pool.emplace_back([&, tx, ty, tz] {
                  tl_block_idx = dim3(bx, by, bz);
                  tl_thread_idx = dim3(tx, ty, tz);
                  kernel(args...);
                });
          for (auto& t : pool) t.join();
          g_block = nullptr;
        }
  }
};
template <typename... KArgs> Launch<KArgs...> launch(dim3 grid, dim3 block, void (*kernel)(KArgs...)) {
  return Launch<KArgs...>{grid, block, kernel};
}

}  // namespace dx_emu

#define threadIdx (::dx_emu::tl_thread_idx)
#define blockIdx (::dx_emu::tl_block_idx)
#define blockDim (::dx_emu::g_block_dim)
#define gridDim (::dx_emu::g_grid_dim)

inline void __syncthreads() { ::dx_emu::g_block->barrier.arrive_and_wait(); }

template <typename T> T __shfl_xor_sync(unsigned, T v, int lane_mask, int = 32) {
  return ::dx_emu::warp_exchange(v, [lane_mask](unsigned lane) { return lane ^ unsigned(lane_mask); });
}
template <typename T> T __shfl_down_sync(unsigned, T v, unsigned delta, int = 32) {
  return ::dx_emu::warp_exchange(v, [delta](unsigned lane) { return lane + delta < 32 ? lane + delta : lane; });
}
template <typename T> T __shfl_sync(unsigned, T v, int src, int = 32) {
  return ::dx_emu::warp_exchange(v, [src](unsigned) { return unsigned(src); });
}
template <typename T> T atomicAdd(T* addr, T v) {
  std::lock_guard<std::mutex> lock(::dx_emu::g_atomic_mutex);
  const T old = *addr;
  *addr = old + v;
  return old;
}
