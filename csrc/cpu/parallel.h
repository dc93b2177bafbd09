// Static-partition parallel loop for the CPU kernels (OpenMP when the build found it).
#pragma once
// Grains are set so that a call with less than ~50-100 µs of single-thread work stays on one thread:
// waking a second OpenMP thread costs more than that on a loaded machine.

#include <algorithm>
#include <cstdint>
#if defined(_OPENMP)
#include <omp.h>
#endif

namespace dx { namespace cpu {

// Calls f(begin, end) on disjoint ranges covering [0, n). Runs serially when the work is below
// `grain` items per extra thread, so small calls pay no thread wake-up.
template <typename F> void parallel_for(int64_t n, int64_t grain, int nthreads, const F& f) {
  if (n <= 0) return;
  int64_t teams = std::min<int64_t>(std::max(nthreads, 1), std::max<int64_t>(n / std::max<int64_t>(grain, 1), 1));
#if defined(_OPENMP)
  if (teams > 1) {
#pragma omp parallel num_threads(int(teams))
    {
      const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
      const int64_t chunk = (n + nt - 1) / nt;
      const int64_t b = t * chunk, e = std::min(n, b + chunk);
      if (b < e) f(b, e);
    }
    return;
  }
#endif
  f(int64_t(0), n);
}

}}  // namespace dx::cpu

// Float hot loops are compiled three times, for x86-64-v4 (AVX-512), x86-64-v3 (AVX2 + FMA) and the
// baseline, and the loader picks one per machine (GCC function multi-versioning). Elsewhere: a single
// version.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(DX_NO_MULTIVERSION)
#define DX_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define DX_MULTIVERSION
#endif

// Bodies called from a DX_MULTIVERSION function must be inlined into each clone, otherwise both
// clones call one baseline copy.
#if defined(__GNUC__)
#define DX_INLINE inline __attribute__((always_inline))
#else
#define DX_INLINE inline
#endif
