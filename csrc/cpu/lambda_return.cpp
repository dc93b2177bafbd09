// Reverse λ-return scan on the CPU: time loop outside, a vectorised sweep over the M columns inside.
#include <algorithm>

#include "../common/dx_math.h"
#include "../common/kernels.h"
#include "parallel.h"

namespace dx { namespace cpu {

template <typename T> void lambda_return_fwd(const LambdaReturnParams<T>& p, const Exec& e) {
  const int64_t M = p.m, S = p.steps;
  const T gamma = p.gamma, lam = p.lam;
  parallel_for(M, std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(S, 1)), e.nthreads, [&](int64_t b, int64_t end) {
    for (int64_t t = S - 1; t >= 0; --t) {
      const T* __restrict r = p.reward + t * M;
      const T* __restrict c = p.cont + t * M;
      const T* __restrict v = p.value + (t + 1) * M;
      // R_{t+1} lives in out[t+1] except at the last step, where it is value[S]
      const T* __restrict nr = t == S - 1 ? p.value + S * M : p.out + (t + 1) * M;
      T* __restrict o = p.out + t * M;
      for (int64_t j = b; j < end; ++j) o[j] = dx::lambda_step(r[j], c[j], v[j], nr[j], gamma, lam);
    }
  });
}

template void lambda_return_fwd<float>(const LambdaReturnParams<float>&, const Exec&);
template void lambda_return_fwd<double>(const LambdaReturnParams<double>&, const Exec&);

}}  // namespace dx::cpu
