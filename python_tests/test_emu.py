"""The CUDA kernels' own source (csrc/cuda/*.cu), run on the CPU through the SIMT emulation
(csrc/emu/simt.h, module dreamer_ext._emu), against the float64 references.

Sizes are chosen so launches have several blocks, partial last blocks, and (for the warp-per-row
cross-entropy) rows that do not fill the last block: the cases where indexing bugs hide.
"""
import math

import pytest
import torch

from dreamer_ext.ops import _kernels as K
from dreamer_ext.ops import reference as ref

from test_ops import make_bins, noncontig, rel_close

pytestmark = pytest.mark.emu


def test_emu_module_is_the_emulation(emu):
    info = emu.build_info()
    assert info["emulated_cuda"] is True and emu.has_cuda()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 255, 256, 1000])
@pytest.mark.parametrize("name", ["symlog", "symexp"])
def test_emu_unary(emu, name, n, dtype):
    x = (torch.randn(n, dtype=torch.float64) * 6).to(dtype)
    x[0] = math.nan
    out = getattr(K, f"_{name}_impl")(x, mod=emu, emulate=True)
    rel_close(out, getattr(ref, name)(x.double()), 2e-6 if dtype == torch.float32 else 1e-13)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1,), (3, 7), (37,)])
@pytest.mark.parametrize("bins_kind", ["symlog", "two", "random"])
def test_emu_twohot(emu, bins_kind, shape, dtype):
    bins = make_bins(bins_kind, dtype)
    x = (torch.randn(shape, dtype=torch.float64) * 8).to(dtype)
    x.view(-1)[0] = bins[-1]
    if x.numel() > 2:
        x.view(-1)[1], x.view(-1)[2] = math.nan, -1e9
    out = K._twohot_impl(noncontig(x), bins, mod=emu, emulate=True)
    rel_close(out, ref.twohot(x.double(), bins.double()), 2e-6 if dtype == torch.float32 else 1e-12, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rows", [1, 4, 6, 13])
@pytest.mark.parametrize("bins_kind", ["symlog", "random"])
def test_emu_twohot_cross_entropy(emu, bins_kind, rows, dtype):
    bins = make_bins(bins_kind, dtype)
    Kb = bins.shape[0]
    logits = (torch.randn(rows, Kb, dtype=torch.float64) * 4).to(dtype)
    target = (torch.randn(rows, dtype=torch.float64) * 10).to(dtype)
    if rows > 2:
        target[1] = math.nan
        logits[2, 5] = math.nan
    loss, lse = K._twohot_ce_fwd_impl(logits, target, bins, mod=emu, emulate=True)
    exp_lse = torch.logsumexp(logits.double(), -1)
    exp_loss = ref.twohot_cross_entropy(logits.double(), target.double(), bins.double())
    rtol = 2e-5 if dtype == torch.float32 else 1e-12
    rel_close(loss, exp_loss, rtol, atol=1e-5)
    rel_close(lse, exp_lse, rtol)
    grad = torch.randn(rows, dtype=torch.float64).to(dtype)
    gl = K._twohot_ce_bwd_impl(grad, logits, target, bins, lse, mod=emu, emulate=True)
    l64 = logits.double().requires_grad_()
    (exp_g,) = torch.autograd.grad((ref.twohot_cross_entropy(l64, target.double(), bins.double()) * grad.double()).sum(), l64)
    rel_close(gl, exp_g, rtol, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 1), (15, 130), (5, 3, 7)])
def test_emu_lambda_return(emu, shape, dtype):
    reward = torch.randn(shape, dtype=torch.float64)
    cont = (torch.rand(shape) > 0.3).double()
    value = torch.randn((shape[0] + 1, *shape[1:]), dtype=torch.float64)
    out = K._lambda_return_impl(reward.to(dtype), cont.to(dtype), value.to(dtype), 0.99, 0.9, mod=emu, emulate=True)
    rel_close(out, ref.lambda_return(reward, cont, value, 0.99, 0.9), 1e-5 if dtype == torch.float32 else 1e-12,
              atol=1e-5)


def test_emu_repeat_is_bitwise_stable(emu):
    logits = torch.randn(9, 255)
    target = torch.randn(9) * 5
    bins = make_bins("symlog", torch.float32)
    a = K._twohot_ce_fwd_impl(logits, target, bins, mod=emu, emulate=True)
    b = K._twohot_ce_fwd_impl(logits, target, bins, mod=emu, emulate=True)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
