// Plain parameter structs: what every kernel (CPU, CUDA, emulated CUDA) sees. Pointers are to
// contiguous buffers; sizes are int64 so no index arithmetic overflows at 2^31 elements.
#pragma once

#include <cstdint>

namespace dx {

enum class DType : int { f32 = 0, f64 = 1 };

template <typename T> struct UnaryParams {  // y[i] = f(x[i]), i < n
  const T* x; T* y; int64_t n;
};

template <typename T> struct TwohotParams {  // out[n, K] = twohot(x[n], bins[K])
  const T* x; const T* bins; T* out; int64_t n; int64_t K;
};

template <typename T> struct TwohotCEParams {  // loss[n], lse[n] from logits[n, K], target[n]
  const T* logits; const T* target; const T* bins; T* loss; T* lse; int64_t n; int64_t K;
};

template <typename T> struct TwohotCEBwdParams {  // grad_logits[n, K] = grad[n] * (softmax - twohot)
  const T* grad; const T* logits; const T* target; const T* bins; const T* lse; T* grad_logits;
  int64_t n; int64_t K;
};

template <typename T> struct LambdaReturnParams {  // out[T, M] from reward[T, M], cont[T, M], value[T+1, M]
  const T* reward; const T* cont; const T* value; T* out; int64_t steps; int64_t m; T gamma; T lam;
};

}  // namespace dx

namespace dx {
// Where a kernel runs: CPU kernels read nthreads (OpenMP team size, from torch.get_num_threads()),
// CUDA kernels read stream (a cudaStream_t passed through Python as an integer) and device (the
// tensors' CUDA device index, made current around the launch; -1 for CPU calls).
struct Exec { int nthreads = 1; uintptr_t stream = 0; int device = -1; };
}  // namespace dx
