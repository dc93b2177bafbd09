// Declarations of every kernel entry point. dx::cpu (csrc/cpu/*.cpp) and dx::cuda (csrc/cuda/*.cu)
// have identical signatures; bindings.cpp dispatches on dtype and device.
#pragma once

#include "params.h"

#define DX_DECLARE_KERNELS(NS)                                                       \
  namespace dx { namespace NS {                                                      \
  template <typename T> void symlog_fwd(const UnaryParams<T>& p, const Exec& e);     \
  template <typename T> void symexp_fwd(const UnaryParams<T>& p, const Exec& e);     \
  template <typename T> void twohot_fwd(const TwohotParams<T>& p, const Exec& e);    \
  template <typename T> void twohot_ce_fwd(const TwohotCEParams<T>& p, const Exec& e); \
  template <typename T> void twohot_ce_bwd(const TwohotCEBwdParams<T>& p, const Exec& e); \
  template <typename T> void lambda_return_fwd(const LambdaReturnParams<T>& p, const Exec& e); \
  } }

DX_DECLARE_KERNELS(cpu)
DX_DECLARE_KERNELS(cuda)

// The fused imagination rollout and acting step (float32 or bf16 compute). The CUDA versions read p.work, a
// workspace of rollout_work_floats(p, acting) floats on the tensors' device.
#include "rollout.h"
namespace dx { namespace cpu {
void rollout_fwd(const RolloutParams& p, const Exec& e);
void act_fwd(const RolloutParams& p, const ActParams& q, const Exec& e);
} }
namespace dx { namespace cuda {
void rollout_fwd(const RolloutParams& p, const Exec& e);
void act_fwd(const RolloutParams& p, const ActParams& q, const Exec& e);
int64_t rollout_work_floats(const RolloutParams& p, bool acting);
#if defined(DX_EMU)
void set_rollout_grid(int blocks);  // tests: force the grid size (0: the launch's own choice)
// tests: force the rollout's path (0: choose by size, 1: the row-owned kernel, 2: the phase kernels) and the phase
// path's chunk of rows (0: its default)
void set_rollout_path(int path, int64_t chunk_rows);
#endif
} }
