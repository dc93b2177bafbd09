// symlog / symexp on the GPU: grid-stride elementwise loop (CPU twin: csrc/cpu/symlog.cpp).
#include "launch.h"
#include "../common/dx_math.h"
#include "../common/kernels.h"

namespace dx { namespace cuda {

namespace {
struct SymlogOp { template <typename T> DX_HD T operator()(T v) const { return dx::symlog(v); } };
struct SymexpOp { template <typename T> DX_HD T operator()(T v) const { return dx::symexp(v); } };

template <typename T, typename Op> __global__ void unary_kernel(UnaryParams<T> p) {
  const int64_t stride = int64_t(blockDim.x) * gridDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < p.n; i += stride) p.y[i] = Op()(p.x[i]);
}

}  // namespace

template <typename T> void symlog_fwd(const UnaryParams<T>& p, const Exec& e) {
  launch_1d(unary_kernel<T, SymlogOp>, p, p.n, 256, e, "symlog");
}
template <typename T> void symexp_fwd(const UnaryParams<T>& p, const Exec& e) {
  launch_1d(unary_kernel<T, SymexpOp>, p, p.n, 256, e, "symexp");
}

template void symlog_fwd<float>(const UnaryParams<float>&, const Exec&);
template void symlog_fwd<double>(const UnaryParams<double>&, const Exec&);
template void symexp_fwd<float>(const UnaryParams<float>&, const Exec&);
template void symexp_fwd<double>(const UnaryParams<double>&, const Exec&);

}}  // namespace dx::cuda
