// Per-row work shared by the two-hot CUDA kernels: one warp per row, the bin search done once by lane 0
// and its result broadcast to the other lanes (instead of one search per output element).
#pragma once

#include "launch.h"
#include "../common/dx_math.h"

namespace dx { namespace cuda {

template <typename T>
__device__ __forceinline__ TwohotPos<T> warp_twohot_pos(T x, const T* bins, int64_t K, int lane) {
  TwohotPos<T> pos{0, T(0)};
  if (lane == 0) pos = twohot_pos(x, bins, K);
  pos.lo = __shfl_sync(0xffffffffu, pos.lo, 0);
  pos.w_lo = __shfl_sync(0xffffffffu, pos.w_lo, 0);
  return pos;
}

}}  // namespace dx::cuda
