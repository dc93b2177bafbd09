// Reverse λ-return scan on the GPU: one thread per column walks time backwards; reads and writes of
// one time step are coalesced across threads (CPU twin: csrc/cpu/lambda_return.cpp).
#include "launch.h"
#include "../common/dx_math.h"
#include "../common/kernels.h"

namespace dx { namespace cuda {

namespace {
template <typename T> __global__ void lambda_return_kernel(LambdaReturnParams<T> p) {
  const int64_t stride = int64_t(blockDim.x) * gridDim.x;
  for (int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; j < p.m; j += stride) {
    T next = p.value[p.steps * p.m + j];
    for (int64_t t = p.steps - 1; t >= 0; --t) {
      const int64_t o = t * p.m + j;
      next = dx::lambda_step(p.reward[o], p.cont[o], p.value[o + p.m], next, p.gamma, p.lam);
      p.out[o] = next;
    }
  }
}
}  // namespace

template <typename T> void lambda_return_fwd(const LambdaReturnParams<T>& p, const Exec& e) {
  launch_1d(lambda_return_kernel<T>, p, p.steps > 0 ? p.m : 0, 128, e, "lambda_return");
}

template void lambda_return_fwd<float>(const LambdaReturnParams<float>&, const Exec&);
template void lambda_return_fwd<double>(const LambdaReturnParams<double>&, const Exec&);

}}  // namespace dx::cuda
