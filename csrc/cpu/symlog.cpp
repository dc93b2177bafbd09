// symlog / symexp on the CPU: one vectorised pass (see csrc/cuda/symlog.cu for the GPU twin).
#include "../common/dx_math.h"
#include "../common/kernels.h"
#include "parallel.h"

namespace dx { namespace cpu {

namespace {
template <typename T> DX_INLINE void symlog_range(const T* __restrict x, T* __restrict y, int64_t b, int64_t e) {
  for (int64_t i = b; i < e; ++i) y[i] = dx::symlog(x[i]);
}
template <typename T> DX_INLINE void symexp_range(const T* __restrict x, T* __restrict y, int64_t b, int64_t e) {
  for (int64_t i = b; i < e; ++i) y[i] = dx::symexp(x[i]);
}
DX_MULTIVERSION void symlog_range_f32(const float* x, float* y, int64_t b, int64_t e) { symlog_range(x, y, b, e); }
DX_MULTIVERSION void symexp_range_f32(const float* x, float* y, int64_t b, int64_t e) { symexp_range(x, y, b, e); }
void symlog_range_(const float* x, float* y, int64_t b, int64_t e) { symlog_range_f32(x, y, b, e); }
void symexp_range_(const float* x, float* y, int64_t b, int64_t e) { symexp_range_f32(x, y, b, e); }
void symlog_range_(const double* x, double* y, int64_t b, int64_t e) { symlog_range(x, y, b, e); }
void symexp_range_(const double* x, double* y, int64_t b, int64_t e) { symexp_range(x, y, b, e); }
}  // namespace

template <typename T> void symlog_fwd(const UnaryParams<T>& p, const Exec& e) {
  parallel_for(p.n, 1 << 16, e.nthreads, [&](int64_t b, int64_t end) { symlog_range_(p.x, p.y, b, end); });
}
template <typename T> void symexp_fwd(const UnaryParams<T>& p, const Exec& e) {
  parallel_for(p.n, 1 << 16, e.nthreads, [&](int64_t b, int64_t end) { symexp_range_(p.x, p.y, b, end); });
}

template void symlog_fwd<float>(const UnaryParams<float>&, const Exec&);
template void symlog_fwd<double>(const UnaryParams<double>&, const Exec&);
template void symexp_fwd<float>(const UnaryParams<float>&, const Exec&);
template void symexp_fwd<double>(const UnaryParams<double>&, const Exec&);

}}  // namespace dx::cpu
