// Dense two-hot encoding on the CPU: each output row is written exactly once.
#include <algorithm>
#include <limits>

#include "../common/dx_math.h"
#include "../common/kernels.h"
#include "parallel.h"

namespace dx { namespace cpu {

template <typename T> void twohot_fwd(const TwohotParams<T>& p, const Exec& e) {
  const int64_t K = p.K;
  parallel_for(p.n, std::max<int64_t>(1, (1 << 18) / std::max<int64_t>(K, 1)), e.nthreads, [&](int64_t b, int64_t end) {
    for (int64_t i = b; i < end; ++i) {
      T* row = p.out + i * K;
      const TwohotPos<T> pos = twohot_pos(p.x[i], p.bins, K);
      if (pos.w_lo != pos.w_lo) {
        std::fill(row, row + K, std::numeric_limits<T>::quiet_NaN());
        continue;
      }
      std::fill(row, row + K, T(0));
      row[pos.lo] = pos.w_lo;
      row[pos.lo + 1] = T(1) - pos.w_lo;
    }
  });
}

template void twohot_fwd<float>(const TwohotParams<float>&, const Exec&);
template void twohot_fwd<double>(const TwohotParams<double>&, const Exec&);

}}  // namespace dx::cpu
