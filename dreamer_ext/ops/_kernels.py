"""torch.library registration of the compiled kernels (namespace ``dreamer_ext``).

This module turns tensors into pointers for :mod:`dreamer_ext._C`. It assumes its inputs were
validated by :mod:`dreamer_ext.ops` (dtype, device, shapes); here it only makes them contiguous,
allocates outputs, and passes the thread count (CPU) or the current stream (CUDA).
Every op has a fake (meta) implementation so ``torch.compile(fullgraph=True)`` can trace it, and the
differentiable ones have autograd formulas registered the torch.library way.
"""
from __future__ import annotations

import torch

from .. import _C
from . import weight_ptrs
from .reference import feat_of

_DTYPE_CODE = {torch.float32: 0, torch.float64: 1}

lib = torch.library.Library("dreamer_ext", "DEF")
lib.define("symlog(Tensor x) -> Tensor")
lib.define("symexp(Tensor x) -> Tensor")
lib.define("twohot(Tensor x, Tensor bins) -> Tensor")
lib.define("twohot_ce_fwd(Tensor logits, Tensor target, Tensor bins) -> (Tensor, Tensor)")
lib.define("twohot_ce_bwd(Tensor grad, Tensor logits, Tensor target, Tensor bins, Tensor lse) -> Tensor")
lib.define("lambda_return(Tensor reward, Tensor cont, Tensor value, float gamma, float lam) -> Tensor")
lib.define("rollout(Tensor h0, Tensor z0, Tensor?[] weights, int[] dims, float[] floats, int seed, int row0=0, "
           "bool feat=False) "
           "-> (Tensor, Tensor, Tensor)")
lib.define("act(Tensor h, Tensor z, Tensor prev_action, Tensor is_first, Tensor embed, Tensor?[] weights, int[] dims, "
           "float[] floats, int seed, bool sample) -> (Tensor, Tensor, Tensor)")


def _launch(t: torch.Tensor, emulate: bool) -> tuple:
    """(dtype code, use the CUDA kernel, nthreads, stream, device index) for a kernel call on ``t``'s device.

    The device index goes down to the C++ launch, which makes that device current around the launch (and
    restores the caller's), so a tensor on ``cuda:1`` never launches on device 0. CPU calls pass -1.
    ``emulate`` (tests only): run the CUDA kernel's source on CPU memory through ``dreamer_ext._emu``
    (emulated device 0).
    """
    if emulate:
        return _DTYPE_CODE[t.dtype], True, 1, 0, 0
    if t.is_cuda:
        dev = t.device
        return _DTYPE_CODE[t.dtype], True, 1, torch.cuda.current_stream(dev).cuda_stream, dev.index
    return _DTYPE_CODE[t.dtype], False, torch.get_num_threads(), 0, -1


def _same_device(*tensors: torch.Tensor) -> None:
    """Last line of defence for direct ``torch.ops.dreamer_ext.*`` calls (dreamer_ext.ops validates first):
    a pointer from another device would crash the kernel instead of raising."""
    dev = tensors[0].device
    for t in tensors:
        if t.device != dev:
            raise ValueError(f"dreamer_ext kernels need all tensors on one device, got {dev} and {t.device}")


# ---- symlog / symexp ----------------------------------------------------------------------------
# Each impl takes the kernel module as ``mod`` (dreamer_ext._C, or dreamer_ext._emu in the emulation
# tests, with ``emulate=True``); torch.library calls them with the defaults.
def _unary(fn, x: torch.Tensor, emulate: bool) -> torch.Tensor:
    x = x.contiguous()
    y = torch.empty_like(x)
    if x.is_cuda or emulate:
        fn(x.data_ptr(), y.data_ptr(), x.numel(), *_launch(x, emulate))
    else:  # the hot path for small CPU tensors: no tuple building
        fn(x.data_ptr(), y.data_ptr(), x.numel(), _DTYPE_CODE[x.dtype], False, torch.get_num_threads(), 0, -1)
    return y


def _symlog_impl(x, mod=_C, emulate=False):
    return _unary(mod.symlog, x, emulate)


def _symexp_impl(x, mod=_C, emulate=False):
    return _unary(mod.symexp, x, emulate)


# ---- twohot ----------------------------------------------------------------------------------------
def _twohot_impl(x, bins, mod=_C, emulate=False):
    _same_device(x, bins)
    x, bins = x.contiguous(), bins.contiguous()
    K = bins.shape[0]
    out = torch.empty(*x.shape, K, dtype=x.dtype, device=x.device)
    mod.twohot(x.data_ptr(), bins.data_ptr(), out.data_ptr(), x.numel(), K, *_launch(x, emulate))
    return out


# ---- twohot cross-entropy ---------------------------------------------------------------------------
def _twohot_ce_fwd_impl(logits, target, bins, mod=_C, emulate=False):
    _same_device(logits, target, bins)
    logits, target, bins = logits.contiguous(), target.contiguous(), bins.contiguous()
    K = bins.shape[0]
    loss = torch.empty(target.shape, dtype=logits.dtype, device=logits.device)
    lse = torch.empty_like(loss)
    mod.twohot_ce_fwd(logits.data_ptr(), target.data_ptr(), bins.data_ptr(), loss.data_ptr(), lse.data_ptr(),
                      target.numel(), K, *_launch(logits, emulate))
    return loss, lse


def _twohot_ce_bwd_impl(grad, logits, target, bins, lse, mod=_C, emulate=False):
    _same_device(grad, logits, target, bins, lse)
    grad, logits, target = grad.contiguous(), logits.contiguous(), target.contiguous()
    bins, lse = bins.contiguous(), lse.contiguous()
    out = torch.empty_like(logits)
    mod.twohot_ce_bwd(grad.data_ptr(), logits.data_ptr(), target.data_ptr(), bins.data_ptr(), lse.data_ptr(),
                      out.data_ptr(), target.numel(), bins.shape[0], *_launch(logits, emulate))
    return out


# ---- λ-return ----------------------------------------------------------------------------------------
def _lambda_return_run(reward, cont, value, gamma, lam, mod=_C, emulate=False):
    """The λ-return launch for inputs already checked to share a device and dtype (dreamer_ext.ops calls
    this directly in eager mode: at (15, 1024) the whole call is a few microseconds, so every Python step
    counts)."""
    if not reward.is_contiguous():
        reward = reward.contiguous()
    if not cont.is_contiguous():
        cont = cont.contiguous()
    if not value.is_contiguous():
        value = value.contiguous()
    out = torch.empty_like(reward)
    steps = reward.shape[0]
    m = reward.numel() // steps if steps else 0
    if emulate or reward.is_cuda:
        launch = _launch(reward, emulate)
    else:
        launch = (_DTYPE_CODE[reward.dtype], False, torch.get_num_threads(), 0, -1)
    mod.lambda_return(reward.data_ptr(), cont.data_ptr(), value.data_ptr(), out.data_ptr(), steps, m,
                      float(gamma), float(lam), *launch)
    return out


def _lambda_return_impl(reward, cont, value, gamma, lam, mod=_C, emulate=False):
    _same_device(reward, cont, value)
    return _lambda_return_run(reward, cont, value, gamma, lam, mod, emulate)


_IMPLS = {
    "symlog": _symlog_impl,
    "symexp": _symexp_impl,
    "twohot": _twohot_impl,
    "twohot_ce_fwd": _twohot_ce_fwd_impl,
    "twohot_ce_bwd": _twohot_ce_bwd_impl,
    "lambda_return": _lambda_return_impl,
}
for _name, _fn in _IMPLS.items():
    lib.impl(_name, _fn, "CPU")
    lib.impl(_name, _fn, "CUDA")


# ---- fake (meta) implementations for tracing ------------------------------------------------------
@torch.library.register_fake("dreamer_ext::symlog")
def _(x):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("dreamer_ext::symexp")
def _(x):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("dreamer_ext::twohot")
def _(x, bins):
    return x.new_empty((*x.shape, bins.shape[0]))


@torch.library.register_fake("dreamer_ext::twohot_ce_fwd")
def _(logits, target, bins):
    return logits.new_empty(target.shape), logits.new_empty(target.shape)


@torch.library.register_fake("dreamer_ext::twohot_ce_bwd")
def _(grad, logits, target, bins, lse):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


@torch.library.register_fake("dreamer_ext::lambda_return")
def _(reward, cont, value, gamma, lam):
    return torch.empty_like(reward, memory_format=torch.contiguous_format)


# ---- autograd -----------------------------------------------------------------------------------------
def _save_input(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _symlog_bwd(ctx, grad):
    (x,) = ctx.saved_tensors
    return grad / (1.0 + x.abs())


def _symexp_bwd(ctx, grad):
    (x,) = ctx.saved_tensors
    return grad * torch.exp(x.abs())


torch.library.register_autograd("dreamer_ext::symlog", _symlog_bwd, setup_context=_save_input)
torch.library.register_autograd("dreamer_ext::symexp", _symexp_bwd, setup_context=_save_input)


def _twohot_ce_setup(ctx, inputs, output):
    logits, target, bins = inputs
    ctx.save_for_backward(logits, target, bins, output[1])


def _twohot_ce_backward(ctx, grad_loss, grad_lse):
    # lse is an internal by-product for the backward pass; dreamer_ext.ops never returns it, so no
    # gradient flows into it.
    logits, target, bins, lse = ctx.saved_tensors
    grad_logits = torch.ops.dreamer_ext.twohot_ce_bwd(grad_loss, logits, target, bins, lse)
    return grad_logits, None, None


torch.library.register_autograd("dreamer_ext::twohot_ce_fwd", _twohot_ce_backward, setup_context=_twohot_ce_setup)


# ---- the fused imagination rollout ---------------------------------------------------------------------
def _rollout_outputs(h0, dims, feat=False):
    n, H, D, S, C, A = dims[0], dims[1], dims[2], dims[5], dims[6], dims[7]
    return (h0.new_empty(H + 1, n, D + S * C if feat else D), h0.new_empty(H + 1, n, S, dtype=torch.int32),
            h0.new_empty(H, n, A))



def _device_args(t: torch.Tensor, mod, dims, emulate: bool) -> tuple:
    """(workspace, work pointer, cuda, nthreads, stream, device) of a rollout/acting call on ``t``'s device: the CUDA
    kernels take a workspace of ``mod.rollout_work_floats(dims)`` floats on the device (kept alive by the caller)."""
    if not (emulate or t.is_cuda):
        return None, 0, False, torch.get_num_threads(), 0, -1
    work = t.new_empty(max(1, mod.rollout_work_floats(list(dims))))
    return (work, work.data_ptr()) + _launch(t, emulate)[1:]


def _rollout_impl(h0, z0, weights, dims, floats, seed, row0=0, feat=False, mod=_C, emulate=False, ptrs=None):
    """``ptrs``: the weights' pointers when the caller has them (``ops.rollout`` keeps them with a checked list).
    ``feat``: the first output is [h, one-hot z] (the CPU kernel writes it in place; CUDA concatenates after)."""
    in_place = bool(feat) and not (emulate or h0.is_cuda)
    h, z, a = _rollout_outputs(h0, dims, in_place)
    ptrs = weight_ptrs(weights) if ptrs is None else ptrs
    work, *launch = _device_args(h0, mod, dims, emulate)
    mod.rollout(list(dims), list(floats), int(seed), int(row0), ptrs, h0.data_ptr(), z0.data_ptr(), h.data_ptr(), z.data_ptr(),
                a.data_ptr(), *launch, in_place)
    if feat and not in_place:
        h = feat_of(h, z, dims[6])
    return h, z, a


lib.impl("rollout", _rollout_impl, "CPU")
lib.impl("rollout", _rollout_impl, "CUDA")


@torch.library.register_fake("dreamer_ext::rollout")
def _(h0, z0, weights, dims, floats, seed, row0=0, feat=False):
    return _rollout_outputs(h0, dims, feat)


def _act_outputs(h, dims):
    n, D, S, A = dims[0], dims[2], dims[5], dims[7]
    return h.new_empty(n, D), h.new_empty(n, S, dtype=torch.int32), h.new_empty(n, A)


def _act_impl(h, z, prev_action, is_first, embed, weights, dims, floats, seed, sample, mod=_C, emulate=False,
              ptrs=None, z_onehot=None):
    """``z_onehot``: a float32 tensor ``[n, stoch, classes]`` the kernel also writes the new latent into, one-hot."""
    h_out, z_out, a_out = _act_outputs(h, dims)
    ptrs = weight_ptrs(weights) if ptrs is None else ptrs
    first = is_first if is_first.dtype in (torch.bool, torch.uint8) else is_first.to(torch.uint8)  # 1 byte of 0/1
    work, work_ptr, cuda, nthreads, stream, device = _device_args(h, mod, dims, emulate)
    mod.act(list(dims), list(floats), int(seed), ptrs, h.data_ptr(), z.data_ptr(), prev_action.data_ptr(),
            first.data_ptr(), embed.data_ptr(), h_out.data_ptr(), z_out.data_ptr(), a_out.data_ptr(), work_ptr,
            bool(sample), cuda, nthreads, stream, device, 0 if z_onehot is None else z_onehot.data_ptr())
    return h_out, z_out, a_out


def act_plan(dims, floats, ptrs):
    """The C++ acting plan (``_C.ActPlan``) of checked dims (n = 0), floats and weight pointers."""
    return _C.ActPlan(list(dims), list(floats), ptrs)


def act_planned(plan, n, sizes, h, z, prev_action, is_first, embed, seed, sample, threads):
    """One acting step through a ``_C.ActPlan`` on checked contiguous CPU tensors: (h', z', z' one-hot, action)."""
    D, S, C, A, _ = sizes
    h_out, z_out = h.new_empty(n, D), z.new_empty(n, S)
    onehot, a_out = h.new_empty(n, S, C), h.new_empty(n, A)
    plan.run(n, seed, h.data_ptr(), z.data_ptr(), prev_action.data_ptr(), is_first.data_ptr(), embed.data_ptr(),
             h_out.data_ptr(), z_out.data_ptr(), a_out.data_ptr(), onehot.data_ptr(), sample, threads)
    return h_out, z_out, onehot, a_out


lib.impl("act", _act_impl, "CPU")
lib.impl("act", _act_impl, "CUDA")


@torch.library.register_fake("dreamer_ext::act")
def _(h, z, prev_action, is_first, embed, weights, dims, floats, seed, sample):
    return _act_outputs(h, dims)
