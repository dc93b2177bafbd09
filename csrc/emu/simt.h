// SIMT emulation for running csrc/cuda/*.cu on the CPU in test builds (never in a release build).
//
// A launch runs the grid's blocks one after another; the threads of a block are real OS threads, so
// __syncthreads() is a true barrier, `__shared__` variables (function-local statics) are shared by
// the block, and warp shuffles exchange values through a per-warp buffer between two barriers.
// This checks the kernels' indexing, bounds, reductions and barriers, not their speed.
//
// Launch state is per launch, never global: the launching thread builds a Launch context and every
// emulated GPU thread of that launch reads it through its own thread_local pointer. So two host
// threads (the Python bindings release the GIL) can launch at the same time. `__shared__` variables
// are function-local statics, one per kernel, so launches of the *same* kernel are serialised by a
// per-kernel mutex; different kernels run concurrently. Declare `__shared__` variables in the
// `__global__` function itself (a `__device__` helper's statics would be shared across kernels).
//
// Supported: 1-3-D grids and blocks (at most 1024 threads per block), threadIdx/blockIdx/blockDim/
// gridDim, __syncthreads, __shfl_sync / __shfl_down_sync / __shfl_xor_sync (any width that is a power
// of two up to 32; every lane of the warp must take part, the mask is not checked), the fragment exchange of
// the warp matrix operations (warp_publish / warp_release, full warps only), atomicAdd, and a
// per-host-thread current device (cudaGetDevice/cudaSetDevice over kEmulatedDevices devices).
#pragma once

#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
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
constexpr cudaError_t cudaErrorInvalidDevice = 101;

namespace dx_emu {

constexpr int kEmulatedDevices = 2;

struct Warp {
  explicit Warp(std::ptrdiff_t lanes) : barrier(lanes) {}
  std::barrier<> barrier;
  alignas(8) unsigned char slots[32][8];
  uint32_t frags[32][6];  // warp_publish: each lane's six fragment registers
};

struct Block {
  explicit Block(std::ptrdiff_t threads) : barrier(threads) {
    for (std::ptrdiff_t w = 0; w < (threads + 31) / 32; ++w)
      warps.emplace_back(std::make_unique<Warp>(std::min<std::ptrdiff_t>(32, threads - 32 * w)));
  }
  std::barrier<> barrier;
  std::vector<std::unique_ptr<Warp>> warps;
};

// What one launch's threads share: its shape and the block running now.
struct Context {
  dim3 grid_dim, block_dim;
  Block* block = nullptr;
};

// Per emulated GPU thread: its launch and its coordinates.
inline thread_local const Context* tl_ctx = nullptr;
inline thread_local dim3 tl_thread_idx, tl_block_idx;
// Per host thread, like the CUDA runtime's current device; and the device of its last launch (tests).
inline thread_local int tl_device = 0;
inline thread_local int tl_last_launch_device = -1;

inline std::mutex g_atomic_mutex;

// One mutex per kernel function: its `__shared__` statics are shared by every launch of it.
inline std::mutex& kernel_mutex(const void* kernel) {
  static std::mutex map_mutex;
  static std::map<const void*, std::unique_ptr<std::mutex>> mutexes;
  std::lock_guard<std::mutex> lock(map_mutex);
  auto& m = mutexes[kernel];
  if (!m) m = std::make_unique<std::mutex>();
  return *m;
}

inline unsigned linear_tid() {
  const dim3& b = tl_ctx->block_dim;
  return tl_thread_idx.x + b.x * (tl_thread_idx.y + b.y * tl_thread_idx.z);
}

template <typename T, typename SrcLane> T warp_exchange(T v, SrcLane src) {
  static_assert(sizeof(T) <= 8, "emulated shuffles move at most 8 bytes");
  const unsigned tid = linear_tid(), lane = tid % 32;
  Warp& w = *tl_ctx->block->warps[tid / 32];
  std::memcpy(w.slots[lane], &v, sizeof(T));
  w.barrier.arrive_and_wait();
  T out;
  std::memcpy(&out, w.slots[src(lane) % 32], sizeof(T));
  w.barrier.arrive_and_wait();
  return out;
}

// Warp matrix operations (csrc/cuda/mma.h): every lane publishes its six fragment registers; after the barrier each
// lane reads all 32 lanes' registers from the returned table, then calls warp_release (a second barrier) before the
// table may be written again.
inline const uint32_t (*warp_publish(const uint32_t (&regs)[6]))[6] {
  const unsigned tid = linear_tid();
  Warp& w = *tl_ctx->block->warps[tid / 32];
  std::memcpy(w.frags[tid % 32], regs, sizeof regs);
  w.barrier.arrive_and_wait();
  return w.frags;
}
inline void warp_release() { tl_ctx->block->warps[linear_tid() / 32]->barrier.arrive_and_wait(); }

// Runs kernel(args...) over grid x block with CUDA's semantics for the features above.
template <typename... KArgs> struct Launch {
  dim3 grid, block;
  void (*kernel)(KArgs...);
  template <typename... Args> void operator()(Args&&... args) const {
    const std::ptrdiff_t threads = std::ptrdiff_t(block.x) * block.y * block.z;
    if (threads <= 0 || threads > 1024) throw std::runtime_error("emulated launch: bad block size");
    tl_last_launch_device = tl_device;
    std::lock_guard<std::mutex> serial(kernel_mutex(reinterpret_cast<const void*>(kernel)));
    Context ctx;
    ctx.grid_dim = grid;
    ctx.block_dim = block;
    for (unsigned bz = 0; bz < grid.z; ++bz)
      for (unsigned by = 0; by < grid.y; ++by)
        for (unsigned bx = 0; bx < grid.x; ++bx) {
          Block blk(threads);
          ctx.block = &blk;
          std::vector<std::thread> pool;
          pool.reserve(threads);
          for (unsigned tz = 0; tz < block.z; ++tz)
            for (unsigned ty = 0; ty < block.y; ++ty)
              for (unsigned tx = 0; tx < block.x; ++tx)
                pool.emplace_back([&, tx, ty, tz] {
                  tl_ctx = &ctx;
                  tl_block_idx = dim3(bx, by, bz);
                  tl_thread_idx = dim3(tx, ty, tz);
                  kernel(args...);
                });
          for (auto& t : pool) t.join();
        }
  }
};
template <typename... KArgs> Launch<KArgs...> launch(dim3 grid, dim3 block, void (*kernel)(KArgs...)) {
  return Launch<KArgs...>{grid, block, kernel};
}

// Source lane of a shuffle within segments of `width` lanes (CUDA's rules): shfl reads lane `src` of
// the segment; shfl_down reads lane + delta unless that leaves the segment (then its own value); shfl_xor
// reads lane ^ mask unless that lies in a later segment (then its own value).
inline unsigned check_width(int width) {
  if (width <= 0 || width > 32 || (width & (width - 1)) != 0) {  // undefined in CUDA: stop loudly
    std::fprintf(stderr, "emulated shuffle: width %d is not a power of two in [1, 32]\n", width);
    std::abort();
  }
  return unsigned(width);
}

}  // namespace dx_emu

inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline const char* cudaGetErrorString(cudaError_t e) {
  return e == cudaSuccess ? "no error (emulated)" : e == cudaErrorInvalidDevice ? "invalid device ordinal (emulated)"
                                                                                  : "unknown error (emulated)";
}
inline cudaError_t cudaGetDevice(int* device) { *device = ::dx_emu::tl_device; return cudaSuccess; }
inline cudaError_t cudaSetDevice(int device) {
  if (device < 0 || device >= ::dx_emu::kEmulatedDevices) return cudaErrorInvalidDevice;
  ::dx_emu::tl_device = device;
  return cudaSuccess;
}

#define threadIdx (::dx_emu::tl_thread_idx)
#define blockIdx (::dx_emu::tl_block_idx)
#define blockDim (::dx_emu::tl_ctx->block_dim)
#define gridDim (::dx_emu::tl_ctx->grid_dim)

inline void __syncthreads() { ::dx_emu::tl_ctx->block->barrier.arrive_and_wait(); }

template <typename T> T __shfl_sync(unsigned, T v, int src, int width = 32) {
  const unsigned w = ::dx_emu::check_width(width);
  return ::dx_emu::warp_exchange(v, [src, w](unsigned lane) { return lane / w * w + unsigned(src) % w; });
}
template <typename T> T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32) {
  const unsigned w = ::dx_emu::check_width(width);
  return ::dx_emu::warp_exchange(v, [delta, w](unsigned lane) { return lane % w + delta < w ? lane + delta : lane; });
}
template <typename T> T __shfl_xor_sync(unsigned, T v, int lane_mask, int width = 32) {
  const unsigned w = ::dx_emu::check_width(width);
  return ::dx_emu::warp_exchange(v, [lane_mask, w](unsigned lane) {
    const unsigned src = lane ^ unsigned(lane_mask);
    return src / w > lane / w ? lane : src;
  });
}
template <typename T> T atomicAdd(T* addr, T v) {
  std::lock_guard<std::mutex> lock(::dx_emu::g_atomic_mutex);
  const T old = *addr;
  *addr = old + v;
  return old;
}
