// symlog / symexp on the CPU: one vectorised pass (see csrc/cuda/symlog.cu for the GPU twin).
#include "../common/dx_math.h"
#include "../common/kernels.h"
#include "parallel.h"

namespace dx { namespace cpu {

namespace {
template <typename T, typename F> void unary(const UnaryParams<T>& p, const Exec& e, F f) {
  const T* __restrict x = p.x;
  T* __restrict y = p.y;
  parallel_for(p.n, 1 << 15, e.nthreads, [&](int64_t b, int64_t end) {
    for (int64_t i = b; i < end; ++i) y[i] = f(x[i]);
  });
}
}  // namespace

template <typename T> void symlog_fwd(const UnaryParams<T>& p, const Exec& e) {
  unary(p, e, [](T v) { return dx::symlog(v); });
}
template <typename T> void symexp_fwd(const UnaryParams<T>& p, const Exec& e) {
  unary(p, e, [](T v) { return dx::symexp(v); });
}

template void symlog_fwd<float>(const UnaryParams<float>&, const Exec&);
template void symlog_fwd<double>(const UnaryParams<double>&, const Exec&);
template void symexp_fwd<float>(const UnaryParams<float>&, const Exec&);
template void symexp_fwd<double>(const UnaryParams<double>&, const Exec&);

}}  // namespace dx::cpu
