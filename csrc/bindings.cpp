// pybind11 module dreamer_ext._C (and, in test builds, dreamer_ext._emu): raw pointers, sizes,
// dtype codes and stream handles in; kernels out. No torch here: dreamer_ext/ops validates
// tensors, allocates outputs and passes data_ptr()s.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <vector>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "common/kernels.h"
#include "common/philox.h"
#if defined(DX_EMU)
#include "common/dx_math.h"
#include "emu/selftest.h"
#include "emu/simt.h"
#endif

#ifndef DX_MODULE_NAME
#define DX_MODULE_NAME _C
#endif
#define DX_STR2(x) #x
#define DX_STR(x) DX_STR2(x)

namespace py = pybind11;
using dx::DType;
using dx::Exec;

namespace {

#if !defined(DX_WITH_CUDA)
[[noreturn]] void no_cuda() {
  throw std::runtime_error("dreamer_ext was built without CUDA (DREAMER_EXT_CUDA=OFF or nvcc not found at build time)");
}
#endif

template <typename T> T* ptr(uintptr_t p) { return reinterpret_cast<T*>(p); }

// Which clone of the multi-versioned float loops (csrc/cpu/parallel.h) this CPU runs.
std::string cpu_kernel_level() {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(DX_NO_MULTIVERSION)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("x86-64-v4")) return "x86-64-v4 (AVX-512)";
  if (__builtin_cpu_supports("x86-64-v3")) return "x86-64-v3 (AVX2, FMA)";
  return "x86-64 baseline (SSE2)";
#else
  return "single version (no function multi-versioning on this compiler/architecture)";
#endif
}

// Calls f.template operator()<T>() for the dtype code.
template <typename F> void with_dtype(int dtype, F&& f) {
  switch (DType(dtype)) {
    case DType::f32: f(float{}); break;
    case DType::f64: f(double{}); break;
    default: throw std::invalid_argument("dtype code " + std::to_string(dtype) + " is not float32 (0) or float64 (1)");
  }
}

// Picks the CPU or CUDA implementation of one kernel with the same signature.
#if defined(DX_WITH_CUDA)
#define DX_RUN(fn, T, params, cuda, exec) ((cuda) ? dx::cuda::fn<T>(params, exec) : dx::cpu::fn<T>(params, exec))
#else
#define DX_RUN(fn, T, params, cuda, exec) ((cuda) ? no_cuda() : dx::cpu::fn<T>(params, exec))
#endif

// device: the CUDA device index of the tensors (made current around the launch), -1 for CPU calls.
Exec exec_of(bool cuda, int nthreads, uintptr_t stream, int device) {
  if (cuda && device < 0)
    throw std::invalid_argument("device: a CUDA call needs the tensors' device index (>= 0), got " + std::to_string(device));
  if (!cuda && device != -1)
    throw std::invalid_argument("device: a CPU call takes device -1, got " + std::to_string(device));
  Exec e;
  e.nthreads = nthreads;
  e.stream = stream;
  e.device = device;
  return e;
}

void unary(bool log, uintptr_t x, uintptr_t y, int64_t n, int dtype, bool cuda, int nthreads, uintptr_t stream,
           int device) {
  const Exec e = exec_of(cuda, nthreads, stream, device);
  with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const dx::UnaryParams<T> p{ptr<const T>(x), ptr<T>(y), n};
    if (log) DX_RUN(symlog_fwd, T, p, cuda, e); else DX_RUN(symexp_fwd, T, p, cuda, e);
  });
}

// How many weight pointers the rollout of these dims takes (the order of dreamer_ext.ops.rollout_weight_names).
size_t rollout_weight_count(const std::vector<int64_t>& d) {
  return size_t(4 * (d[10] + 3 + d[13] + d[12]) + 2 * 3);
}

// The rollout's parameter struct from the flat lists the Python wrapper passes (it has checked every shape).
dx::RolloutParams rollout_params(const std::vector<int64_t>& d, const std::vector<double>& f, uint64_t seed,
                                 const std::vector<uintptr_t>& w, uintptr_t h0, uintptr_t z0, uintptr_t h_out,
                                 uintptr_t z_out, uintptr_t a_out) {
  if (d.size() != 15 || f.size() != 4) throw std::invalid_argument("rollout: dims needs 15 entries and floats 4");
  dx::RolloutParams p{};
  p.n = d[0];
  p.horizon = int(d[1]);
  p.deter = int(d[2]); p.blocks = int(d[3]); p.hidden = int(d[4]); p.stoch = int(d[5]); p.classes = int(d[6]);
  p.act_dim = int(d[7]); p.discrete = d[8] != 0; p.norm = int(d[9]);
  p.actor_layers = int(d[10]);
  const int units = int(d[11]);
  p.dyn_layers = int(d[12]); p.prior_layers = int(d[13]);
  p.bf16 = d[14] != 0;
  p.rssm_unimix = float(f[0]); p.actor_unimix = float(f[1]); p.min_std = float(f[2]); p.max_std = float(f[3]);
  p.seed = seed;
  for (int v : {p.actor_layers, p.dyn_layers, p.prior_layers})
    if (v < 0 || v > dx::kRolloutMaxLayers) throw std::invalid_argument("rollout: at most 8 layers per MLP");
  const int D = p.deter, S = p.stoch, C = p.classes, A = p.act_dim, Hd = p.hidden, g = p.blocks;
  const int first = g * (D / g + 3 * Hd);
  const size_t need = rollout_weight_count(d);
  if (w.size() != need) throw std::invalid_argument("rollout: expected " + std::to_string(need) + " weight pointers");
  size_t i = 0;
  // the matmul weight slot holds float32 [in, out] or, for bf16 compute, bf16 k-pairs [ceil(in/2), out, 2]
  auto matw = [&](uintptr_t q) { return p.bf16 ? nullptr : ptr<const float>(q); };
  auto matb = [&](uintptr_t q) { return p.bf16 ? ptr<const uint16_t>(q) : nullptr; };
  auto dense = [&](int in, int out) {
    dx::DenseW L{matw(w[i]), matb(w[i]), ptr<const float>(w[i + 1]), ptr<const float>(w[i + 2]),
                 ptr<const float>(w[i + 3]), in, out};
    i += 4;
    return L;
  };
  auto linear = [&](int in, int out) {
    dx::DenseW L{matw(w[i]), matb(w[i]), ptr<const float>(w[i + 1]), nullptr, nullptr, in, out};
    i += 2;
    return L;
  };
  for (int l = 0; l < p.actor_layers; ++l) p.actor[l] = dense(l == 0 ? D + S * C : units, units);
  p.actor_out = linear(units, p.discrete ? A : 2 * A);
  p.in_h = dense(D, Hd);
  p.in_z = dense(S * C, Hd);
  p.in_a = dense(A, Hd);
  for (int l = 0; l < p.dyn_layers; ++l) {
    const dx::DenseW L = dense(l == 0 ? first : D, D);
    p.dyn[l] = dx::BlockW{L.w, L.wb, L.b, L.nw, L.nb, L.in, L.out};
  }
  const dx::DenseW G = linear(p.dyn_layers ? D : first, 3 * D);
  p.gru = dx::BlockW{G.w, G.wb, G.b, nullptr, nullptr, G.in, G.out};
  for (int l = 0; l < p.prior_layers; ++l) p.prior[l] = dense(l == 0 ? D : Hd, Hd);
  p.prior_out = linear(p.prior_layers ? Hd : D, S * C);
  p.h0 = ptr<const float>(h0); p.z0 = ptr<const int32_t>(z0);
  p.h_out = ptr<float>(h_out); p.z_out = ptr<int32_t>(z_out); p.a_out = ptr<float>(a_out);
  p.ldh = D;
  p.z_onehot = nullptr;
  return p;
}

// The acting step's own parameters beside the rollout's (whose prior slots hold the posterior MLP).
dx::ActParams act_params(const dx::RolloutParams& p, const std::vector<int64_t>& dims, uintptr_t embed,
                         uintptr_t prev_action, uintptr_t is_first, bool sample, uintptr_t z_onehot) {
  dx::ActParams q{};
  q.embed_dim = int(dims[15]);
  q.post_layers = p.prior_layers;
  for (int l = 0; l < q.post_layers; ++l) q.post[l] = p.prior[l];
  if (q.post_layers) q.post[0].in = p.deter + q.embed_dim;
  q.post_out = p.prior_out;
  q.embed = ptr<const float>(embed);
  q.prev_action = ptr<const float>(prev_action);
  q.is_first = ptr<const uint8_t>(is_first);
  q.sample = sample;
  q.z_onehot = ptr<float>(z_onehot);
  return q;
}

struct ActPlan {
  dx::RolloutParams p;
  dx::ActParams q;
};

// The acting step's dims (the rollout's 15, embed_dim, post_layers) as the rollout dims it parses: the posterior MLP
// takes the prior's place.
std::vector<int64_t> act_rollout_dims(const std::vector<int64_t>& dims) {
  if (dims.size() != 17) throw std::invalid_argument("act: dims needs 17 entries (the rollout's, embed_dim, post_layers)");
  std::vector<int64_t> rd(dims.begin(), dims.begin() + 15);
  rd[13] = dims[16];
  return rd;
}

}  // namespace

PYBIND11_MODULE(DX_MODULE_NAME, m) {
  m.doc() = "dreamer_ext kernels (torch-free): pointers and sizes in, results written in place";
  const auto nogil = py::call_guard<py::gil_scoped_release>();

  m.def("has_cuda", [] {
#if defined(DX_WITH_CUDA)
    return true;
#else
    return false;
#endif
  }, "True when the CUDA kernels were compiled into this module.");
  m.def("build_info", [] {
    py::dict d;
    d["module"] = DX_STR(DX_MODULE_NAME);
#if defined(DX_WITH_CUDA)
    d["cuda"] = true;
#else
    d["cuda"] = false;
#endif
#if defined(DX_CUDA_ARCHS)
    d["cuda_archs"] = DX_CUDA_ARCHS;
#endif
#if defined(DX_CUDA_VERSION)
    d["cuda_compiler"] = DX_CUDA_VERSION;
#endif
#if defined(_OPENMP)
    d["openmp"] = _OPENMP;
#else
    d["openmp"] = false;
#endif
#if defined(DX_EMU)
    d["emulated_cuda"] = true;
#endif
    d["compiler"] = __VERSION__;
    d["cpu_kernels"] = cpu_kernel_level();
    return d;
  });

  for (const bool log : {true, false}) {
    m.def(log ? "symlog" : "symexp", [log](uintptr_t x, uintptr_t y, int64_t n, int dtype, bool cuda, int nthreads,
                                            uintptr_t stream, int device) {
            unary(log, x, y, n, dtype, cuda, nthreads, stream, device);
          },
          py::arg("x"), py::arg("y"), py::arg("n"), py::arg("dtype"), py::arg("cuda"), py::arg("nthreads"),
          py::arg("stream"), py::arg("device"), nogil);
  }

  m.def("twohot", [](uintptr_t x, uintptr_t bins, uintptr_t out, int64_t n, int64_t K, int dtype, bool cuda,
                     int nthreads, uintptr_t stream, int device) {
    const Exec e = exec_of(cuda, nthreads, stream, device);
    with_dtype(dtype, [&](auto tag) {
      using T = decltype(tag);
      const dx::TwohotParams<T> p{ptr<const T>(x), ptr<const T>(bins), ptr<T>(out), n, K};
      DX_RUN(twohot_fwd, T, p, cuda, e);
    });
  }, py::arg("x"), py::arg("bins"), py::arg("out"), py::arg("n"), py::arg("K"), py::arg("dtype"), py::arg("cuda"),
     py::arg("nthreads"), py::arg("stream"), py::arg("device"), nogil);

  m.def("twohot_ce_fwd", [](uintptr_t logits, uintptr_t target, uintptr_t bins, uintptr_t loss, uintptr_t lse, int64_t n,
                            int64_t K, int dtype, bool cuda, int nthreads, uintptr_t stream, int device) {
    const Exec e = exec_of(cuda, nthreads, stream, device);
    with_dtype(dtype, [&](auto tag) {
      using T = decltype(tag);
      const dx::TwohotCEParams<T> p{ptr<const T>(logits), ptr<const T>(target), ptr<const T>(bins), ptr<T>(loss),
                                    ptr<T>(lse), n, K};
      DX_RUN(twohot_ce_fwd, T, p, cuda, e);
    });
  }, py::arg("logits"), py::arg("target"), py::arg("bins"), py::arg("loss"), py::arg("lse"), py::arg("n"), py::arg("K"),
     py::arg("dtype"), py::arg("cuda"), py::arg("nthreads"), py::arg("stream"), py::arg("device"), nogil);

  m.def("twohot_ce_bwd", [](uintptr_t grad, uintptr_t logits, uintptr_t target, uintptr_t bins, uintptr_t lse,
                            uintptr_t grad_logits, int64_t n, int64_t K, int dtype, bool cuda, int nthreads, uintptr_t stream,
                            int device) {
    const Exec e = exec_of(cuda, nthreads, stream, device);
    with_dtype(dtype, [&](auto tag) {
      using T = decltype(tag);
      const dx::TwohotCEBwdParams<T> p{ptr<const T>(grad), ptr<const T>(logits), ptr<const T>(target),
                                       ptr<const T>(bins), ptr<const T>(lse), ptr<T>(grad_logits), n, K};
      DX_RUN(twohot_ce_bwd, T, p, cuda, e);
    });
  }, py::arg("grad"), py::arg("logits"), py::arg("target"), py::arg("bins"), py::arg("lse"), py::arg("grad_logits"),
     py::arg("n"), py::arg("K"), py::arg("dtype"), py::arg("cuda"), py::arg("nthreads"), py::arg("stream"),
     py::arg("device"), nogil);

  m.def("lambda_return", [](uintptr_t reward, uintptr_t cont, uintptr_t value, uintptr_t out, int64_t steps, int64_t m_,
                            double gamma, double lam, int dtype, bool cuda, int nthreads, uintptr_t stream, int device) {
    const Exec e = exec_of(cuda, nthreads, stream, device);
    with_dtype(dtype, [&](auto tag) {
      using T = decltype(tag);
      const dx::LambdaReturnParams<T> p{ptr<const T>(reward), ptr<const T>(cont), ptr<const T>(value), ptr<T>(out),
                                        steps, m_, T(gamma), T(lam)};
      DX_RUN(lambda_return_fwd, T, p, cuda, e);
    });
  }, py::arg("reward"), py::arg("cont"), py::arg("value"), py::arg("out"), py::arg("steps"), py::arg("m"),
     py::arg("gamma"), py::arg("lam"), py::arg("dtype"), py::arg("cuda"), py::arg("nthreads"), py::arg("stream"),
     py::arg("device"), nogil);

  // ---- the fused imagination rollout and acting step ----
  m.def("rollout", [](std::vector<int64_t> dims, std::vector<double> fl, uint64_t seed, uint32_t row0,
                      std::vector<uintptr_t> w, uintptr_t h0, uintptr_t z0, uintptr_t h_out, uintptr_t z_out,
                      uintptr_t a_out, uintptr_t work, bool cuda, int nthreads, uintptr_t stream, int device,
                      bool feat) {
    const Exec e = exec_of(cuda, nthreads, stream, device);
    dx::RolloutParams p = rollout_params(dims, fl, seed, w, h0, z0, h_out, z_out, a_out);
    if (feat) {  // h_out is feat [H+1, n, deter + stoch * classes]: h, then the latent one-hot
      if (cuda) throw std::invalid_argument("rollout: the feat layout is CPU only (CUDA callers concatenate)");
      p.ldh = int64_t(p.deter) + int64_t(p.stoch) * p.classes;
      p.z_onehot = p.h_out + p.deter;
    }
    if (uint64_t(row0) + uint64_t(p.n) > (uint64_t(1) << 32))
      throw std::invalid_argument("rollout: row0 + n must be <= 2^32 (Philox rows are 32-bit)");
    p.rng_row0 = row0;
    p.work = ptr<float>(work);
    py::gil_scoped_release nogil_;
#if defined(DX_WITH_CUDA)
    if (cuda) return dx::cuda::rollout_fwd(p, e);
#else
    if (cuda) no_cuda();
#endif
    dx::cpu::rollout_fwd(p, e);
  }, py::arg("dims"), py::arg("floats"), py::arg("seed"), py::arg("row0"), py::arg("weights"), py::arg("h0"),
     py::arg("z0"), py::arg("h_out"), py::arg("z_out"), py::arg("a_out"), py::arg("work"), py::arg("cuda"),
     py::arg("nthreads"), py::arg("stream"), py::arg("device"), py::arg("feat") = false,
     "Fused rollout (start state r draws the Philox row row0 + r; feat: h_out is [H+1, n, deter + stoch * classes] "
     "and also receives the latents one-hot after h, CPU only). dims = [n, horizon, deter, blocks, hidden, stoch, classes, act_dim, discrete, norm, actor_layers, "
     "actor_units, dyn_layers, prior_layers, bf16]; floats = [rssm_unimix, actor_unimix, min_std, max_std]; weights = "
     "pointers in the order of dreamer_ext.ops.rollout_weight_names; work: the CUDA workspace (rollout_work_floats "
     "floats on the device; CPU calls pass 0).");

  m.def("rollout_work_floats", [](std::vector<int64_t> dims) -> int64_t {
    const bool acting = dims.size() == 17;
    const std::vector<int64_t> rd = acting ? act_rollout_dims(dims) : dims;
    if (rd.size() != 15) throw std::invalid_argument("rollout_work_floats: dims needs 15 (rollout) or 17 (act) entries");
    const std::vector<uintptr_t> none(rollout_weight_count(rd), 0);
    const dx::RolloutParams p = rollout_params(rd, {0, 0, 0, 0}, 0, none, 0, 0, 0, 0, 0);
#if defined(DX_WITH_CUDA)
    return dx::cuda::rollout_work_floats(p, acting);
#else
    (void)p;
    return 0;
#endif
  }, py::arg("dims"),
     "Floats of device workspace the CUDA rollout (15 dims) or acting step (17 dims) needs; 0 without CUDA.");

  m.def("act", [](std::vector<int64_t> dims, std::vector<double> fl, uint64_t seed, std::vector<uintptr_t> w,
                  uintptr_t h, uintptr_t z, uintptr_t prev_action, uintptr_t is_first, uintptr_t embed, uintptr_t h_out,
                  uintptr_t z_out, uintptr_t a_out, uintptr_t work, bool sample, bool cuda, int nthreads,
                  uintptr_t stream, int device, uintptr_t z_onehot) {
    const Exec e = exec_of(cuda, nthreads, stream, device);
    dx::RolloutParams p = rollout_params(act_rollout_dims(dims), fl, seed, w, h, z, h_out, z_out, a_out);
    p.work = ptr<float>(work);
    dx::ActParams q = act_params(p, dims, embed, prev_action, is_first, sample, z_onehot);
    py::gil_scoped_release nogil_;
#if defined(DX_WITH_CUDA)
    if (cuda) return dx::cuda::act_fwd(p, q, e);
#else
    if (cuda) no_cuda();
#endif
    dx::cpu::act_fwd(p, q, e);
  }, py::arg("dims"), py::arg("floats"), py::arg("seed"), py::arg("weights"), py::arg("h"), py::arg("z"),
     py::arg("prev_action"), py::arg("is_first"), py::arg("embed"), py::arg("h_out"), py::arg("z_out"), py::arg("a_out"),
     py::arg("work"), py::arg("sample"), py::arg("cuda"), py::arg("nthreads"), py::arg("stream"), py::arg("device"),
     py::arg("z_onehot") = 0,
     "Fused acting step: the rollout's dims plus [embed_dim, post_layers]; weights as the rollout's with the "
     "posterior MLP in the prior's place; work as the rollout's; z_onehot: 0, or float32 [n, stoch * classes] that "
     "also receives the new latent as one-hot.");

  // The acting step with its parameter structs built once (dims with n = 0, floats and weight pointers parsed here,
  // once): an environment step then passes only its own pointers. CPU only; the caller keeps the weights alive.
  py::class_<ActPlan>(m, "ActPlan")
      .def(py::init([](std::vector<int64_t> dims, std::vector<double> fl, std::vector<uintptr_t> w) {
             if (dims.size() != 17 || dims[0] != 0)
               throw std::invalid_argument("ActPlan: dims needs the acting step's 17 entries with n = 0");
             ActPlan plan;
             plan.p = rollout_params(act_rollout_dims(dims), fl, 0, w, 0, 0, 0, 0, 0);
             plan.q = act_params(plan.p, dims, 0, 0, 0, true, 0);
             return plan;
           }), py::arg("dims"), py::arg("floats"), py::arg("weights"))
      .def("run", [](const ActPlan& plan, int64_t n, uint64_t seed, uintptr_t h, uintptr_t z, uintptr_t prev_action,
                     uintptr_t is_first, uintptr_t embed, uintptr_t h_out, uintptr_t z_out, uintptr_t a_out,
                     uintptr_t z_onehot, bool sample, int nthreads) {
             if (n < 0) throw std::invalid_argument("ActPlan.run: n must be >= 0");
             dx::RolloutParams p = plan.p;
             p.n = n; p.seed = seed;
             p.h0 = ptr<const float>(h); p.z0 = ptr<const int32_t>(z);
             p.h_out = ptr<float>(h_out); p.z_out = ptr<int32_t>(z_out); p.a_out = ptr<float>(a_out);
             dx::ActParams q = plan.q;
             q.embed = ptr<const float>(embed); q.prev_action = ptr<const float>(prev_action);
             q.is_first = ptr<const uint8_t>(is_first); q.sample = sample; q.z_onehot = ptr<float>(z_onehot);
             Exec e;
             e.nthreads = nthreads;
             py::gil_scoped_release nogil_;
             dx::cpu::act_fwd(p, q, e);
           }, py::arg("n"), py::arg("seed"), py::arg("h"), py::arg("z"), py::arg("prev_action"), py::arg("is_first"),
           py::arg("embed"), py::arg("h_out"), py::arg("z_out"), py::arg("a_out"), py::arg("z_onehot"), py::arg("sample"),
           py::arg("nthreads"),
           "One acting step on CPU pointers (as act's; z_onehot may be 0).");

  // ---- shared randomness of the rollout (the PyTorch reference draws its uniforms here) ----
  m.def("philox4x32_10", [](std::array<uint32_t, 4> c, std::array<uint32_t, 2> k) {
    const dx::Philox4 r = dx::philox4x32_10(dx::Philox4{c[0], c[1], c[2], c[3]}, k[0], k[1]);
    return std::array<uint32_t, 4>{r.x, r.y, r.z, r.w};
  }, py::arg("counter"), py::arg("key"), "One Philox4x32-10 block: 4 counter words, 2 key words -> 4 words.");
  m.def("philox_uniform", [](uint64_t seed, int64_t steps, int64_t rows, int64_t count, uint32_t stream,
                             uint32_t step0, uintptr_t out, uint32_t row0) {
    if (steps < 0 || rows < 0 || count < 0 || int64_t(row0) + rows > (int64_t(1) << 32) || count > (int64_t(1) << 34))
      throw std::invalid_argument("philox_uniform: steps, rows, count must be >= 0 (row0 + rows <= 2^32)");
    float* o = ptr<float>(out);
    for (int64_t s = 0; s < steps; ++s)
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t i = 0; i < count; ++i)
          *o++ = dx::rollout_uniform(seed, row0 + uint32_t(r), step0 + uint32_t(s), stream, uint32_t(i));
  }, py::arg("seed"), py::arg("steps"), py::arg("rows"), py::arg("count"), py::arg("stream"), py::arg("step0"),
     py::arg("out"), py::arg("row0") = 0, nogil,
     "out[s, r, i] = the rollout's uniform i of (row row0 + r, step step0 + s, stream) under seed (float32 "
     "[steps, rows, count]).");

  m.def("sample_index", [](uintptr_t probs, uintptr_t uniform, uintptr_t out, int64_t n, int64_t K) {
    if (n < 0 || K < 1 || K > (int64_t(1) << 30)) throw std::invalid_argument("sample_index: need n >= 0 and K >= 1");
    const float* p = ptr<const float>(probs);
    const float* u = ptr<const float>(uniform);
    int64_t* o = ptr<int64_t>(out);
    for (int64_t i = 0; i < n; ++i) o[i] = dx::sample_index(p + i * K, int(K), u[i]);
  }, py::arg("probs"), py::arg("uniform"), py::arg("out"), py::arg("n"), py::arg("K"), nogil,
     "out[i] = the rollout's inverse-CDF draw from probs[i, :K] (float32) with uniform[i] (int64 out).");

#if defined(DX_EMU)
  // ---- emulation-only: the emulated current device, and the primitives' test kernels ----
  m.def("set_rollout_grid", [](int blocks) { dx::cuda::set_rollout_grid(blocks); }, py::arg("blocks"),
        "Force the emulated rollout/acting launches onto this many blocks (0: the launch's own choice).");
  m.def("set_rollout_path", [](int path, int64_t chunk_rows) { dx::cuda::set_rollout_path(path, chunk_rows); },
        py::arg("path"), py::arg("chunk_rows") = 0,
        "Force the emulated rollout onto a path (0: chosen by size, 1: the row-owned kernel, 2: the phase kernels) and "
        "the phase path's rows per chunk (0: its default).");
  m.def("emulated_devices", [] { return dx_emu::kEmulatedDevices; }, "How many CUDA devices the emulation pretends to have.");
  m.def("current_device", [] { int d = -1; cudaGetDevice(&d); return d; }, "The calling thread's emulated current device.");
  m.def("set_device", [](int d) {
    if (cudaSetDevice(d) != cudaSuccess) throw std::invalid_argument("device " + std::to_string(d) + ": no such emulated device");
  }, py::arg("device"));
  m.def("bin_searches", [] { return dx_emu::g_bin_searches.load(); },
        "How many two-hot bin searches the emulated kernels have done so far (all threads).");
  m.def("last_launch_device", [] { return dx_emu::tl_last_launch_device; },
        "The device that was current for the calling thread's last emulated launch (-1 before any).");
  m.def("selftest_block_sum", [](uintptr_t x, int64_t n, uintptr_t out) {
    dx::selftest::block_sum(ptr<const float>(x), n, ptr<float>(out));
  }, py::arg("x"), py::arg("n"), py::arg("out"), nogil);
  m.def("selftest_warp_down_sum", [](uintptr_t x, int64_t n, int width, uintptr_t out) {
    dx::selftest::warp_down_sum(ptr<const float>(x), n, width, ptr<float>(out));
  }, py::arg("x"), py::arg("n"), py::arg("width"), py::arg("out"), nogil);
  m.def("selftest_warp_broadcast", [](uintptr_t x, int64_t n, int src, int width, uintptr_t out) {
    dx::selftest::warp_broadcast(ptr<const double>(x), n, src, width, ptr<double>(out));
  }, py::arg("x"), py::arg("n"), py::arg("src"), py::arg("width"), py::arg("out"), nogil);
  m.def("selftest_warp_xor", [](uintptr_t x, int64_t n, int mask, int width, uintptr_t out) {
    dx::selftest::warp_xor(ptr<const int64_t>(x), n, mask, width, ptr<int64_t>(out));
  }, py::arg("x"), py::arg("n"), py::arg("mask"), py::arg("width"), py::arg("out"), nogil);
  m.def("selftest_histogram", [](uintptr_t bucket, int64_t n, uintptr_t counts) {
    dx::selftest::histogram(ptr<const int32_t>(bucket), n, ptr<int32_t>(counts));
  }, py::arg("bucket"), py::arg("n"), py::arg("counts"), nogil);
  m.def("selftest_mma_bf16", [](uintptr_t a, uintptr_t b, uintptr_t c, uintptr_t d) {
    dx::selftest::mma_bf16(ptr<const uint16_t>(a), ptr<const uint16_t>(b), ptr<const float>(c), ptr<float>(d));
  }, py::arg("a"), py::arg("b"), py::arg("c"), py::arg("d"), nogil,
     "d = c + a @ b by one emulated warp's tensor-core step (a [16, 16], b [16, 8] bf16 bits; c, d [16, 8] float32).");
#endif
}
