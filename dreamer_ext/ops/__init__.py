"""dreamer_ext's kernels as PyTorch functions.

=========================================  =====================================================================
``symlog(x)``, ``symexp(x)``               elementwise, any shape; differentiable
``twohot(x, bins)``                        ``x[...]``, strictly increasing ``bins[K]`` -> ``[..., K]``; no gradient
``twohot_cross_entropy(logits, target,     ``logits[..., K]``, ``target[...]`` -> loss ``[...]``, fused (no two-hot
bins)``                                    tensor built); differentiable w.r.t. ``logits``
``lambda_return(reward, cont, value,       time-major ``reward[T, ...]``, ``cont[T, ...]``, ``value[T+1, ...]`` ->
gamma, lam)``                              ``R[T, ...]``; no gradient (targets)
``rollout(h0, z0, weights, dims, floats,   the fused imagination rollout (actor, sampling, block-GRU core, prior,
seed)``                                    latent sampling for H steps); float32, CPU; no gradient
=========================================  =====================================================================

float32 and float64 run natively; float16/bfloat16 inputs are computed in float32 and cast back.
Non-contiguous inputs are copied to contiguous memory first. ``bins`` (and the twohot CE ``target``)
are cast to the dtype of ``x`` / ``logits``.

Backends: ``"kernels"`` (the compiled C++/CUDA ops registered as ``torch.ops.dreamer_ext.*``) or
``"reference"`` (the pure-PyTorch twins in :mod:`dreamer_ext.ops.reference`). Pick with
``set_backend(name)`` or the environment variable ``DREAMER_EXT_BACKEND`` (read at import).
"""
from __future__ import annotations

import contextlib
import os
import weakref

import torch

from . import reference

__all__ = ["symlog", "symexp", "twohot", "twohot_cross_entropy", "lambda_return", "rollout", "rollout_weight_shapes",
           "ROLLOUT_DIMS", "act", "ActPlan", "act_weight_shapes", "ACT_DIMS", "pack_bf16_pairs", "set_backend", "get_backend",
           "use_backend", "backend_report", "OP_NAMES"]

OP_NAMES = ("symlog", "symexp", "twohot", "twohot_cross_entropy", "lambda_return", "rollout", "act")
_CPU_ONLY = ("rollout", "act")  # no CUDA kernels yet: CUDA tensors take the PyTorch loops
_BACKENDS = ("kernels", "reference")
_NATIVE = (torch.float32, torch.float64)
_UPCAST = (torch.float16, torch.bfloat16)
_FLOATS = frozenset(_NATIVE + _UPCAST)

def weight_ptrs(weights: list) -> list[int]:
    """The kernels' weight pointers (0 for an absent tensor)."""
    return [0 if w is None else w.data_ptr() for w in weights]


_kernel_module = None    # dreamer_ext.ops._kernels once loaded
_kernels_error = None    # why it could not be loaded


def _load_kernels():
    global _kernel_module, _kernels_error
    if _kernel_module is None and _kernels_error is None:
        try:
            from . import _kernels as k
            _kernel_module = k
        except ImportError as e:  # the compiled module is missing (e.g. running from a source tree)
            _kernels_error = e
    return _kernel_module


def set_backend(name: str) -> None:
    """Route every op to ``"kernels"`` (compiled) or ``"reference"`` (pure PyTorch)."""
    global _backend
    if name not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {name!r}")
    if name == "kernels" and _load_kernels() is None:
        raise ImportError(f"the compiled kernels (dreamer_ext._C) could not be loaded: {_kernels_error}; "
                          "install the package with `pip install .` or use backend='reference'")
    _backend = name


def get_backend() -> str:
    """The active backend name: ``"kernels"`` or ``"reference"``."""
    return _backend


@contextlib.contextmanager
def use_backend(name: str):
    """``with use_backend(name):`` switch the backend for a block and restore the previous one afterwards."""
    before = _backend
    set_backend(name)
    try:
        yield
    finally:
        set_backend(before)


_backend = "kernels"
set_backend(os.environ.get("DREAMER_EXT_BACKEND", "kernels").strip().lower() or "kernels")


def backend_report() -> dict:
    """Which implementation each op uses for CPU and CUDA tensors under the active backend."""
    if _backend == "reference":
        return {op: "reference (pure PyTorch)" for op in OP_NAMES}
    from .. import _C
    cuda = "CUDA kernel" if _C.has_cuda() else "unavailable (built without CUDA)"
    return {op: f"CPU: C++ kernel; CUDA: {'PyTorch loop (no CUDA kernel yet)' if op in _CPU_ONLY else cuda}"
            for op in OP_NAMES}


# ---- validation ------------------------------------------------------------------------------------
def _check_tensor(name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _NATIVE and t.dtype not in _UPCAST:
        raise TypeError(f"{name} must be a floating tensor (float32, float64, float16 or bfloat16), got {t.dtype}")


def _check_same_device(ref_name: str, ref: torch.Tensor, name: str, t: torch.Tensor) -> None:
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}; put them on the same device")


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float32 if t.dtype in _UPCAST else t.dtype


# id(bins) -> (weakref to that tensor, its version counter) for bins already checked to be increasing.
_validated_bins: dict = {}


def _check_bins(bins, x_name: str, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Validates ``bins`` and returns them detached in ``dtype``, the dtype the op computes in.

    Monotonicity is checked after that cast, so bins that collapse when rounded (e.g. float64 bins closer
    than float32 can represent) raise instead of silently producing NaN rows.
    """
    _check_tensor("bins", bins)
    if bins.dim() != 1 or bins.shape[0] < 2:
        raise ValueError(f"bins must be a 1-D tensor with at least 2 entries, got shape {tuple(bins.shape)}")
    _check_same_device(x_name, x, "bins", bins)
    cast = bins.detach().to(dtype)
    if torch.compiler.is_compiling():
        return cast
    # Monotonicity costs a reduction (and a device sync on CUDA): check each bins tensor once per compute dtype,
    # again after any in-place change (its version counter moves). The weakref makes a recycled id() miss the cache.
    key = (id(bins), dtype)
    hit = _validated_bins.get(key)
    if hit is not None and hit[0]() is bins and hit[1] == bins._version:
        return cast
    if not bool((cast[1:] > cast[:-1]).all()):
        raise ValueError(f"bins must be strictly increasing (and free of NaN) in {dtype}, the dtype the op computes in")
    if len(_validated_bins) > 64:
        _validated_bins.clear()
    _validated_bins[key] = (weakref.ref(bins), bins._version)
    return cast


# ---- public ops --------------------------------------------------------------------------------------
def _eager_direct(*tensors) -> bool:
    """True when the dispatcher would add nothing: eager mode and no gradient to record (grad mode off,
    or no input needs one).

    Then the impl registered for the op is called directly, saving the dispatcher and autograd
    round trip (several microseconds, which matters for the small tensors of acting).
    """
    if torch.is_grad_enabled():
        for t in tensors:
            if t.requires_grad:
                return False
    return not torch.compiler.is_compiling()


def _unary(op_name: str, x):
    if not isinstance(x, torch.Tensor) or x.dtype not in _NATIVE:
        _check_tensor("x", x)
    if _backend == "reference":
        return getattr(reference, op_name)(x)
    if x.dtype in _UPCAST:
        return _unary(op_name, x.float()).to(x.dtype)
    if _eager_direct(x):
        return getattr(_kernel_module, "_" + op_name + "_impl")(x)
    return getattr(torch.ops.dreamer_ext, op_name)(x)


def symlog(x: torch.Tensor) -> torch.Tensor:
    """``sign(x) * log(1 + |x|)`` elementwise. ``x``: any shape. Differentiable."""
    return _unary("symlog", x)


def symexp(x: torch.Tensor) -> torch.Tensor:
    """``sign(x) * (exp(|x|) - 1)`` elementwise (inverse of symlog). Differentiable."""
    return _unary("symexp", x)


def twohot(x: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Two-hot weights ``[..., K]`` of ``x[...]`` over strictly increasing ``bins[K]``.

    For ``bins[k] <= x < bins[k+1]``: weight ``(bins[k+1]-x)/(bins[k+1]-bins[k])`` on k, the rest on k+1;
    ``x <= bins[0]`` puts all weight on bin 0, ``x >= bins[-1]`` on bin K-1; NaN gives a NaN row.
    Not differentiable (an encoding of targets).
    """
    _check_tensor("x", x)
    if _backend == "reference":
        return reference.twohot(x.detach(), _check_bins(bins, "x", x, x.dtype))
    dt = _compute_dtype(x)
    bc = _check_bins(bins, "x", x, dt)
    xc = x.detach().to(dt)
    out = _kernel_module._twohot_impl(xc, bc) if _eager_direct() else torch.ops.dreamer_ext.twohot(xc, bc)
    return out.to(x.dtype)


def twohot_cross_entropy(logits: torch.Tensor, target: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """``-sum_k twohot(target, bins)_k * log_softmax(logits)_k`` -> ``[...]``.

    ``logits[..., K]``, ``target[...]`` (same leading shape), ``bins[K]``. Differentiable w.r.t. ``logits``
    (gradient ``softmax - twohot``); ``target`` and ``bins`` are treated as constants.
    """
    _check_tensor("logits", logits)
    _check_tensor("target", target)
    _check_same_device("logits", logits, "target", target)
    dt = logits.dtype if _backend == "reference" else _compute_dtype(logits)
    bc = _check_bins(bins, "logits", logits, dt)
    if logits.dim() < 1 or logits.shape[-1] != bins.shape[0]:
        raise ValueError(f"logits must have shape [..., K] with K = len(bins) = {bins.shape[0]}, "
                         f"got {tuple(logits.shape)}")
    if tuple(target.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"target must have shape {tuple(logits.shape[:-1])} (logits without its last dim), "
                         f"got {tuple(target.shape)}")
    if _backend == "reference":
        return reference.twohot_cross_entropy(logits, target.detach(), bc)
    lc, tc = logits.to(dt), target.detach().to(dt)
    if _eager_direct(lc):
        loss, _ = _kernel_module._twohot_ce_fwd_impl(lc, tc, bc)
    else:
        loss, _ = torch.ops.dreamer_ext.twohot_ce_fwd(lc, tc, bc)
    return loss.to(logits.dtype)


def lambda_return(reward: torch.Tensor, cont: torch.Tensor, value: torch.Tensor, gamma: float,
                  lam: float) -> torch.Tensor:
    """Time-major λ-returns ``R[T, ...]`` from ``reward[T, ...]``, ``cont[T, ...]``, ``value[T+1, ...]``.

    ``R_t = reward_t + gamma * cont_t * ((1 - lam) * value_{t+1} + lam * R_{t+1})``, ``R_T = value_T``.
    No gradient flows (the result is a regression target).
    """
    # Ordered so the common call (three float tensors of one dtype on one device, plain floats) reads each
    # tensor attribute once: at (15, 1024) the kernel takes a few microseconds, so the checks must not.
    if not (type(reward) is torch.Tensor and type(cont) is torch.Tensor and type(value) is torch.Tensor):
        _check_tensor("reward", reward)
        _check_tensor("cont", cont)
        _check_tensor("value", value)
    rd, cd, vd = reward.dtype, cont.dtype, value.dtype
    if rd not in _FLOATS or cd not in _FLOATS or vd not in _FLOATS:
        _check_tensor("reward", reward)
        _check_tensor("cont", cont)
        _check_tensor("value", value)
    dev = reward.device
    if cont.device != dev:
        _check_same_device("reward", reward, "cont", cont)
    if value.device != dev:
        _check_same_device("reward", reward, "value", value)
    shape = reward.shape
    nd = len(shape)
    if nd < 1:
        raise ValueError(f"reward must be time-major with at least 1 dim [T, ...], got shape {tuple(shape)}")
    if cont.shape != shape:
        raise ValueError(f"cont must have the shape of reward {tuple(shape)}, got {tuple(cont.shape)}")
    vshape = value.shape  # compared entry by entry: slicing a torch.Size costs more than this whole check
    ok = len(vshape) == nd and vshape[0] == shape[0] + 1
    for i in range(1, nd if ok else 1):
        if vshape[i] != shape[i]:
            ok = False
            break
    if not ok:
        want = (shape[0] + 1, *shape[1:])
        raise ValueError(f"value must have shape {want} ([T+1, ...] for reward [T, ...]), got {tuple(vshape)}")
    if type(gamma) is not float and (isinstance(gamma, torch.Tensor) or not isinstance(gamma, (int, float))):
        raise TypeError(f"gamma must be a Python float, got {type(gamma).__name__}")
    if type(lam) is not float and (isinstance(lam, torch.Tensor) or not isinstance(lam, (int, float))):
        raise TypeError(f"lam must be a Python float, got {type(lam).__name__}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    # the result has the promoted dtype of the three inputs on both backends
    out_dt = rd if (rd == cd and rd == vd) else torch.promote_types(torch.promote_types(rd, cd), vd)
    if _backend == "reference":
        return reference.lambda_return(reward.detach().to(out_dt), cont.detach().to(out_dt), value.detach().to(out_dt),
                                       gamma, lam)
    dt = torch.float32 if out_dt in _UPCAST else out_dt
    if rd != dt:
        reward = reward.to(dt)
    if cd != dt:
        cont = cont.to(dt)
    if vd != dt:
        value = value.to(dt)
    if torch.compiler.is_compiling():
        out = torch.ops.dreamer_ext.lambda_return(reward.detach(), cont.detach(), value.detach(), float(gamma), float(lam))
    else:  # eager: straight to the launch (the kernel reads raw memory, so no autograd to detach from)
        out = _kernel_module._lambda_return_run(reward, cont, value, gamma, lam)
    return out if out.dtype == out_dt else out.to(out_dt)


# ---- the fused imagination rollout -------------------------------------------------------------------
ROLLOUT_DIMS, ACT_DIMS = reference.ROLLOUT_DIMS, reference.ACT_DIMS  # the names of the rollout's / acting step's dims



def pack_bf16_pairs(w: torch.Tensor) -> torch.Tensor:
    """A K-major matmul weight ``[..., K, O]`` as bf16 k-pairs ``[..., ceil(K/2), O, 2]`` (an odd K gets a zero
    row): the layout the bf16 rollout kernel reads."""
    w = w.detach().to(torch.bfloat16)
    if w.shape[-2] % 2:
        w = torch.cat([w, w.new_zeros(*w.shape[:-2], 1, w.shape[-1])], -2)
    return w.reshape(*w.shape[:-2], w.shape[-2] // 2, 2, w.shape[-1]).transpose(-1, -2).contiguous()


def rollout_weight_shapes(dims) -> list[tuple[str, tuple | None]]:
    """``[(name, shape), ...]`` of the rollout's weights in the order the op takes them; ``None`` marks an absent
    tensor (the LayerNorm offsets under RMSNorm). Matmul weights (the ``.W`` entries) are K-major float32
    ``[in, out]`` (block-linear: ``[g, in/g, out/g]``), or with ``bf16`` the bf16 k-pairs of those
    (:func:`pack_bf16_pairs`); the rest is float32."""
    d = dict(zip(ROLLOUT_DIMS, (int(v) for v in dims)))
    return _bf16_shapes(d, _rollout_shapes(d, "prior", d["prior_layers"], 0))


def act_weight_shapes(dims) -> list[tuple[str, tuple | None]]:
    """The acting step's weights (:func:`act`): the rollout's actor and core, then the posterior MLP (its first
    layer reads ``[h', embed]``) and output layer in place of the prior's."""
    d = dict(zip(ACT_DIMS, (int(v) for v in dims)))
    return _bf16_shapes(d, _rollout_shapes(d, "post", d["post_layers"], d["embed_dim"]))


def _bf16_shapes(d: dict, out: list) -> list:
    if d["bf16"]:
        out = [(k, None if s is None else (*s[:-2], (s[-2] + 1) // 2, s[-1], 2) if k.endswith(".W") else s)
               for k, s in out]
    return out


def _rollout_shapes(d: dict, latent: str, latent_layers: int, embed_dim: int) -> list:
    D, g, Hd, S, C, A = d["deter"], d["blocks"], d["hidden"], d["stoch"], d["classes"], d["act_dim"]
    U, layer_norm = d["actor_units"], d["norm"] == 1
    out = []

    def dense(name, i, o):
        out.extend([(f"{name}.W", (i, o)), (f"{name}.b", (o,)), (f"{name}.norm.w", (o,)),
                    (f"{name}.norm.b", (o,) if layer_norm else None)])

    for l in range(d["actor_layers"]):
        dense(f"actor.{l}", D + S * C if l == 0 else U, U)
    out.extend([("actor_out.W", (U, A if d["discrete"] else 2 * A)), ("actor_out.b", (A if d["discrete"] else 2 * A,))])
    dense("in_h", D, Hd)
    dense("in_z", S * C, Hd)
    dense("in_a", A, Hd)
    first = g * (D // g + 3 * Hd)
    for l in range(d["dyn_layers"]):
        i = first if l == 0 else D
        out.extend([(f"dyn.{l}.W", (g, i // g, D // g)), (f"dyn.{l}.b", (D,)), (f"dyn.{l}.norm.w", (D,)),
                    (f"dyn.{l}.norm.b", (D,) if layer_norm else None)])
    i = D if d["dyn_layers"] else first
    out.extend([("gru.W", (g, i // g, 3 * D // g)), ("gru.b", (3 * D,))])
    for l in range(latent_layers):
        dense(f"{latent}.{l}", D + embed_dim if l == 0 else Hd, Hd)
    i = Hd if latent_layers else D + embed_dim
    out.extend([(f"{latent}_out.W", (i, S * C)), (f"{latent}_out.b", (S * C,))])
    return out


# weight lists already checked (keyed by the tensors' ids, the model dims and the device), so the acting step does
# not re-check ~40 tensors every call; an entry goes when any of its tensors is freed (its id can then be reused).
_checked_weights: dict = {}


# dims lists already checked (tuple of ints -> their dict): the acting step runs this every env step
_checked_dims: dict = {}
_INT_ONLY = {int}


def _check_model_dims(dims, names) -> dict:
    key = (tuple(dims), names)
    hit = _checked_dims.get(key)
    if hit is not None and set(map(type, dims)) == _INT_ONLY:  # 1.0 hashes like 1: the types are checked every call
        return hit
    d = _check_model_dims_uncached(dims, names)
    d["_model_key"] = tuple(v for k, v in d.items() if k not in ("n", "horizon"))
    if len(_checked_dims) >= 64:
        _checked_dims.pop(next(iter(_checked_dims)))
    _checked_dims[key] = d
    return d


def _check_model_dims_uncached(dims, names) -> dict:
    if len(dims) != len(names) or not all(isinstance(v, int) and not isinstance(v, bool) for v in dims):
        raise ValueError(f"dims: expected {len(names)} ints {names}, got {dims!r}")
    d = dict(zip(names, dims))
    if d["horizon"] < 1 or d["n"] < 0 or min(d[k] for k in ("deter", "blocks", "hidden", "stoch", "classes",
                                                             "act_dim", "actor_units")) < 1:
        raise ValueError(f"dims: horizon, sizes and counts must be positive, got {d}")
    if d["deter"] % d["blocks"]:
        raise ValueError(f"dims: deter={d['deter']} is not divisible by blocks={d['blocks']}")
    if d["norm"] not in (0, 1) or d["discrete"] not in (0, 1) or d["bf16"] not in (0, 1):
        raise ValueError(f"dims: norm, discrete and bf16 must be 0 or 1, got {d['norm']}, {d['discrete']}, {d['bf16']}")
    if d["bf16"] and (d["deter"] % 2 or (d["deter"] // d["blocks"]) % 2):
        raise ValueError(f"dims: bf16 compute needs an even deter and deter/blocks, got {d['deter']}/{d['blocks']}")
    for k in ("actor_layers", "prior_layers", "post_layers"):
        if k in d and not 1 <= d[k] <= 8:
            raise ValueError(f"dims: {k} must be in [1, 8], got {d[k]}")
    if not 0 <= d["dyn_layers"] <= 8:
        raise ValueError(f"dims: dyn_layers must be in [0, 8], got {d['dyn_layers']}")
    return d


def _check_state_and_weights(d: dict, h0, z0, weights, shapes_of, floats, seed, z_min: int) -> list | None:
    """The state tensors every call; the weights (``shapes_of()`` gives their expected shapes) only for a list of
    tensors not checked before. Returns the weights' data pointers when the list was checked before (it is then
    contiguous and detached as it is), else None."""
    if len(floats) != 4:
        raise ValueError(f"floats: expected [rssm_unimix, actor_unimix, min_std, max_std], got {floats!r}")
    if not isinstance(seed, int) or not 0 <= seed < 2 ** 63:
        raise ValueError(f"seed: expected an int in [0, 2^63), got {seed!r}")
    n, D, S, C = d["n"], d["deter"], d["stoch"], d["classes"]
    if not isinstance(h0, torch.Tensor) or h0.dtype != torch.float32 or tuple(h0.shape) != (n, D):
        raise ValueError(f"h0: expected a float32 tensor [{n}, {D}], got "
                         f"{getattr(h0, 'dtype', type(h0).__name__)} {tuple(getattr(h0, 'shape', ()))}")
    if not isinstance(z0, torch.Tensor) or z0.dtype != torch.int32 or tuple(z0.shape) != (n, S):
        raise ValueError(f"z0: expected int32 class indices [{n}, {S}], got "
                         f"{getattr(z0, 'dtype', type(z0).__name__)} {tuple(getattr(z0, 'shape', ()))}")
    _check_same_device("h0", h0, "z0", z0)
    if _backend == "reference" or z0.device.type != "cpu":  # the CPU kernels check the range as they read
        _check_class_range("z0", z0, z_min, C)
    return _check_weights(d, weights, shapes_of, h0.device)


def _check_class_range(name: str, z: torch.Tensor, z_min: int, classes: int) -> None:
    lo_hi = torch.aminmax(z) if z.numel() else None
    if lo_hi is not None and (int(lo_hi.min) < z_min or int(lo_hi.max) >= classes):
        raise ValueError(f"{name}: class indices must lie in [{z_min}, {classes})")


def _check_weights(d: dict, weights, shapes_of, device: torch.device) -> list | None:
    """The weights against ``shapes_of()``, only for a list of tensors not checked before; returns their data
    pointers when it was checked before (it is then contiguous and detached as it is), else None."""
    key = (tuple(map(id, weights)), d["_model_key"], device)  # _model_key: the dims that fix the weights' shapes
    hit = _checked_weights.get(key)
    if hit is not None:  # the same tensors checked before (e.g. one packing, used every acting step)
        return hit[1]
    shapes = shapes_of()
    if len(weights) != len(shapes):
        raise ValueError(f"weights: expected {len(shapes)} tensors ({[k for k, _ in shapes]}), got {len(weights)}")
    for (name, shape), w in zip(shapes, weights):
        if shape is None:
            if w is not None:
                raise ValueError(f"weights[{name}]: must be None with RMSNorm (norm=0)")
            continue
        want = torch.bfloat16 if d["bf16"] and name.endswith(".W") else torch.float32
        if not isinstance(w, torch.Tensor) or w.dtype != want or tuple(w.shape) != shape:
            raise ValueError(f"weights[{name}]: expected {str(want)[6:]} {shape}, got "
                             f"{getattr(w, 'dtype', type(w).__name__)} {tuple(getattr(w, 'shape', ()))}")
        if w.device != device:
            raise ValueError(f"weights[{name}] is on {w.device} but the state is on {device}; put them on the same device")
    if all(w is None or (w.is_contiguous() and not w.requires_grad) for w in weights):
        if len(_checked_weights) >= 8:
            _checked_weights.pop(next(iter(_checked_weights)))
        # forget the list as soon as any of its tensors is freed: a new tensor could then reuse that id
        _checked_weights[key] = ([weakref.finalize(w, _checked_weights.pop, key, None) for w in weights if w is not None],
                                 weight_ptrs(weights))
    return None


def _check_rollout(h0, z0, weights, dims, floats, seed) -> list | None:
    d = _check_model_dims(dims, ROLLOUT_DIMS)
    return _check_state_and_weights(d, h0, z0, weights, lambda: rollout_weight_shapes(dims), floats, seed, 0)


def rollout(h0: torch.Tensor, z0: torch.Tensor, weights: list, dims: list, floats: list, seed: int, row0: int = 0,
            feat: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused imagination rollout: from start states ``h0 [N, deter]`` (float32) and ``z0 [N, stoch]`` (int32 class
    indices), run the actor, sample an action, step the block-GRU core, run the prior and sample the next latent,
    ``horizon`` times. ``weights``: the tensors named by :func:`rollout_weight_shapes` (contiguous after this call);
    ``dims``: ints named by :data:`ROLLOUT_DIMS` (``bf16``: matmuls on bf16-rounded inputs and bf16 weights with
    float32 accumulation, everything else float32); ``floats``: [rssm_unimix, actor_unimix, min_std, max_std];
    ``seed``: the Philox key and ``row0`` the Philox row of start state 0 (the uniforms of start state r at step t
    are :func:`reference.philox_uniform`'s for row ``row0 + r``; data-parallel ranks pass their first global row so
    that the draws do not depend on how the rows are split). Returns (h ``[H+1, N, deter]``, z ``[H+1, N, stoch]``
    int32, a ``[H, N, act_dim]``: one-hot or continuous). ``feat``: the first output is instead the feature the
    actor and critic read, [h, one-hot z] ``[H+1, N, deter + stoch * classes]`` (the CPU kernel writes it in place,
    which spares behaviour learning a one-hot and a concatenation over the whole trajectory). No gradient.
    """
    if not isinstance(row0, int) or row0 < 0 or row0 + h0.shape[0] > 2 ** 32:
        raise ValueError(f"row0: expected an int >= 0 with row0 + N <= 2^32, got {row0!r}")
    ptrs = _check_rollout(h0, z0, weights, list(dims), list(floats), seed)
    if ptrs is None:
        weights = _detached(weights)
    h0, z0 = h0.detach().contiguous(), z0.contiguous()
    if not isinstance(feat, bool):
        raise ValueError(f"feat: expected a bool, got {feat!r}")
    if _backend == "reference":
        return reference.rollout(h0, z0, weights, dims, floats, seed, row0, feat)
    if torch.compiler.is_compiling():
        return torch.ops.dreamer_ext.rollout(h0, z0, weights, list(dims), [float(f) for f in floats], seed, row0, feat)
    return _kernel_module._rollout_impl(h0, z0, weights, list(dims), [float(f) for f in floats], seed, row0, feat,
                                        ptrs=ptrs)


def _detached(weights: list) -> list:
    """The weights as the kernels read them: detached and contiguous."""
    return [None if w is None else w.detach().contiguous() for w in weights]


def act(h: torch.Tensor, z: torch.Tensor, prev_action: torch.Tensor, is_first: torch.Tensor, embed: torch.Tensor,
        weights: list, dims: list, floats: list, seed: int, sample: bool = True
        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused acting step for ``n`` environments: where ``is_first [n]`` (bool) the carry is reset to zeros; then the
    core on (``h [n, deter]``, ``z [n, stoch]`` int32 class indices, -1 marking an all-zero group as in a zero
    carry, ``prev_action [n, act_dim]``), the posterior latent on ``[h', embed [n, embed_dim]]`` and the actor's
    action on ``[h', z']``, sampled (``sample``) or its mode. ``weights``: named by :func:`act_weight_shapes`;
    ``dims``: :data:`ACT_DIMS` (``horizon`` = 1); the uniforms are those of step 0 of :func:`rollout` for row i.
    Returns (h' ``[n, deter]``, z' ``[n, stoch]`` int32, action ``[n, act_dim]``). No gradient."""
    dims = list(dims)
    d = _check_model_dims(dims, ACT_DIMS)
    if d["horizon"] != 1:
        raise ValueError(f"dims: the acting step takes horizon 1, got {d['horizon']}")
    ptrs = _check_state_and_weights(d, h, z, weights, lambda: act_weight_shapes(dims), list(floats), seed, -1)
    if ptrs is None:
        weights = _detached(weights)
    n, A, E = d["n"], d["act_dim"], d["embed_dim"]
    for name, t, shape in (("prev_action", prev_action, (n, A)), ("embed", embed, (n, E))):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.float32 or tuple(t.shape) != shape:
            raise ValueError(f"{name}: expected a float32 tensor {list(shape)}, got "
                             f"{getattr(t, 'dtype', type(t).__name__)} {tuple(getattr(t, 'shape', ()))}")
        _check_same_device("h", h, name, t)
    if not isinstance(is_first, torch.Tensor) or is_first.dtype != torch.bool or tuple(is_first.shape) != (n,):
        raise ValueError(f"is_first: expected a bool tensor [{n}], got "
                         f"{getattr(is_first, 'dtype', type(is_first).__name__)} {tuple(getattr(is_first, 'shape', ()))}")
    args = (h.detach().contiguous(), z.contiguous(), prev_action.detach().contiguous(), is_first.contiguous(),
            embed.detach().contiguous())
    if _backend == "reference":
        return reference.act(*args, weights, dims, floats, seed, bool(sample))
    if torch.compiler.is_compiling():
        return torch.ops.dreamer_ext.act(*args, weights, dims, [float(f) for f in floats], seed, bool(sample))
    return _kernel_module._act_impl(*args, weights, dims, [float(f) for f in floats], seed, bool(sample), ptrs=ptrs)


def _bad_tensor(name: str, t, what: str) -> ValueError:
    return ValueError(f"{name}: expected {what}, got {getattr(t, 'dtype', type(t).__name__)} "
                      f"{tuple(getattr(t, 'shape', ()))}{'' if getattr(t, 'is_cpu', True) else ' on ' + str(t.device)}")


class ActPlan:
    """The acting step of :func:`act` with its weights, dims and floats checked once: a call then checks and passes
    only the step's own tensors, which is what an environment step at batch 1 needs (the checks of :func:`act` cost
    more than the size1m kernel). ``dims``: :data:`ACT_DIMS` with ``n`` = 0 (each call's batch is ``h``'s rows).

    ``plan(h, z, prev_action, is_first, embed, seed, sample)`` takes :func:`act`'s arguments and returns
    (h' ``[n, deter]``, z' ``[n, stoch]`` int32, z' one-hot ``[n, stoch, classes]`` float32, action ``[n, act_dim]``),
    bitwise :func:`act`'s. CPU tensors on the kernels backend run the C++ kernel on parameter structs built once
    (it also writes the one-hot); anything else (the reference backend, CUDA, tracing) goes through :func:`act`.
    The plan holds its weight tensors: they must not be changed in place while it is in use."""

    def __init__(self, weights: list, dims: list, floats: list):
        dims = list(dims)
        d = _check_model_dims(dims, ACT_DIMS)
        if d["n"] != 0 or d["horizon"] != 1:
            raise ValueError(f"dims: a plan takes n = 0 (the batch is each call's) and horizon 1, got n={d['n']}, "
                             f"horizon={d['horizon']}")
        floats = [float(f) for f in floats]
        if len(floats) != 4:
            raise ValueError(f"floats: expected [rssm_unimix, actor_unimix, min_std, max_std], got {floats!r}")
        first = next((w for w in weights if isinstance(w, torch.Tensor)), None)
        if first is None:
            raise ValueError("weights: expected the acting step's tensors, got none")
        shapes = act_weight_shapes(dims)
        if _check_weights(d, weights, lambda: shapes, first.device) is None:
            weights = _detached(weights)
        self.weights, self.dims, self.floats, self.device = list(weights), dims, floats, first.device
        self._sizes = (d["deter"], d["stoch"], d["classes"], d["act_dim"], d["embed_dim"])
        self._kernel = None
        if first.device.type == "cpu" and _load_kernels() is not None:
            self._kernel = _kernel_module.act_plan(dims, floats, weight_ptrs(self.weights))

    def __call__(self, h: torch.Tensor, z: torch.Tensor, prev_action: torch.Tensor, is_first: torch.Tensor,
                 embed: torch.Tensor, seed: int, sample: bool = True, threads: int | None = None):
        """``threads``: how many threads the C++ kernel may use (default: torch's count). At fewer rows than that
        (one row block each) a large model's step (>= 4 MB of weights) shares its matmuls' columns over them;
        the result does not depend on it."""
        if self._kernel is None or _backend != "kernels" or torch.compiler.is_compiling():
            return self._through_act(h, z, prev_action, is_first, embed, seed, sample)
        D, S, C, A, E = self._sizes
        f32 = torch.float32
        if not isinstance(h, torch.Tensor) or h.dtype is not f32 or h.dim() != 2 or h.shape[1] != D or not h.is_cpu:
            raise _bad_tensor("h", h, f"a float32 CPU tensor [n, {D}]")
        n = h.shape[0]
        if not isinstance(z, torch.Tensor) or z.dtype is not torch.int32 or z.shape != (n, S) or not z.is_cpu:
            raise _bad_tensor("z", z, f"int32 class indices [{n}, {S}] on the CPU")
        if (not isinstance(prev_action, torch.Tensor) or prev_action.dtype is not f32 or prev_action.shape != (n, A)
                or not prev_action.is_cpu):
            raise _bad_tensor("prev_action", prev_action, f"a float32 CPU tensor [{n}, {A}]")
        if not isinstance(embed, torch.Tensor) or embed.dtype is not f32 or embed.shape != (n, E) or not embed.is_cpu:
            raise _bad_tensor("embed", embed, f"a float32 CPU tensor [{n}, {E}]")
        if (not isinstance(is_first, torch.Tensor) or is_first.dtype is not torch.bool or is_first.shape != (n,)
                or not is_first.is_cpu):
            raise _bad_tensor("is_first", is_first, f"a bool CPU tensor [{n}]")
        if not isinstance(seed, int) or not 0 <= seed < 2 ** 63:
            raise ValueError(f"seed: expected an int in [0, 2^63), got {seed!r}")
        if threads is None:
            threads = torch.get_num_threads()
        elif not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads: expected an int >= 1, got {threads!r}")
        return _kernel_module.act_planned(self._kernel, n, self._sizes, h.contiguous(), z.contiguous(),
                                          prev_action.contiguous(), is_first.contiguous(), embed.contiguous(), seed,
                                          sample is True or bool(sample), threads)

    def _through_act(self, h, z, prev_action, is_first, embed, seed, sample):
        n = h.shape[0] if isinstance(h, torch.Tensor) and h.dim() == 2 else -1
        dims = [max(n, 0)] + self.dims[1:]
        hn, zn, a = act(h, z, prev_action, is_first, embed, self.weights, dims, self.floats, seed, sample)
        return hn, zn, torch.nn.functional.one_hot(zn.long(), self._sizes[2]).to(hn.dtype), a
