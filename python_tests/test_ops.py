"""dreamer_ext.ops against the pure-PyTorch references (float64 ground truth).

Tolerances: float64 kernels match the float64 reference to ~1e-12; float32 kernels match it to a
relative 2e-6 elementwise (λ-return 1e-5), as the kernel contract states.

Random inputs are replayable: generators are seeded with ``seed_of(...)`` (a CRC of the parameters, not
``hash()``, which Python randomises per process), torch's global RNG is seeded per test from the test's
id, and hypothesis runs derandomized.
"""
import math
import os
import subprocess
import sys
import zlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dreamer_ext import ops
from dreamer_ext.ops import reference as ref

def seed_of(*parts) -> int:
    """A seed that depends only on ``parts`` (their repr), identical in every process and run."""
    return zlib.crc32(repr(parts).encode())


@pytest.fixture(autouse=True)
def _replayable_global_rng(request):
    """Seeds torch's global RNG from the test id, so tests drawing without a generator replay exactly."""
    torch.manual_seed(seed_of(request.node.nodeid))


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
SHAPES = [(), (0,), (1,), (7,), (3, 5), (2, 3, 17), (15, 1024), (1, 1, 1, 33)]
BINS_SYMLOG = torch.linspace(-20.0, 20.0, 255, dtype=torch.float64)


def rel_close(actual, expected, rtol, atol=0.0):
    actual, expected = actual.double().cpu(), expected.double().cpu()
    same_nan = torch.isnan(actual) == torch.isnan(expected)
    assert bool(same_nan.all()), "NaN pattern differs"
    ok = torch.isnan(expected) | (actual == expected) | ((actual - expected).abs() <= atol + rtol * expected.abs())
    if not bool(ok.all()):
        bad = (~ok).nonzero()[0].tolist()
        raise AssertionError(f"mismatch at {bad}: {actual[tuple(bad)].item()} vs {expected[tuple(bad)].item()}")


def noncontig(t):
    """The same values as ``t`` in a view that is not contiguous (strided slice of a wider buffer)."""
    wide = torch.empty(*t.shape, 3, dtype=t.dtype, device=t.device)
    wide[..., 1] = t
    v = wide[..., 1]
    assert t.dim() == 0 or t.numel() <= 1 or not v.is_contiguous()
    return v


def offset_view(t):
    """Contiguous values starting one element into their storage (misaligned for vector loads)."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    buf[1:] = t.reshape(-1)
    return buf[1:].view(t.shape)


# ---- symlog / symexp ---------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["symlog", "symexp"])
def test_unary_matches_reference(name, dtype, shape, device):
    g = torch.Generator().manual_seed(seed_of(name, shape))
    scale = 30.0 if name == "symlog" else 8.0
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype).to(device)
    expected = getattr(ref, name)(x.double())
    rtol = 2e-6 if dtype == torch.float32 else 1e-13
    for view in (x, noncontig(x), offset_view(x)):
        out = getattr(ops, name)(view)
        assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
        rel_close(out, expected, rtol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_unary_special_values(dtype):
    tiny = torch.finfo(dtype).tiny
    vals = torch.tensor([0.0, -0.0, 1.0, -1.0, math.inf, -math.inf, math.nan, tiny, -tiny, tiny / 8, 1e-30, 1e30,
                         0.34657359, 0.3465736, -0.3465735, 88.0, 88.72, 89.0, 1e-8, 3e38], dtype=dtype)
    rtol = 2e-6 if dtype == torch.float32 else 1e-13
    rel_close(ops.symlog(vals), ref.symlog(vals.double()).to(dtype), rtol)
    rel_close(ops.symexp(vals), ref.symexp(vals.double()).to(dtype), rtol)
    assert torch.isinf(ops.symexp(torch.tensor([100.0, -100.0], dtype=dtype))).all() or dtype == torch.float64


def test_symlog_float32_whole_range():
    """Random bit patterns over every finite float32 exponent (the polynomial's full domain)."""
    g = torch.Generator().manual_seed(0)
    bits = torch.randint(0, 0x7F800000, (200_000,), generator=g, dtype=torch.int64).to(torch.int32)
    x = bits.view(torch.float32) * torch.where(torch.rand(200_000, generator=g) < 0.5, -1.0, 1.0)
    rel_close(ops.symlog(x), ref.symlog(x.double()), 2e-6)


def test_symexp_float32_whole_range():
    g = torch.Generator().manual_seed(1)
    x = torch.cat([torch.empty(100_000).uniform_(-88.7, 88.7, generator=g),
                   torch.empty(100_000).uniform_(-1.0, 1.0, generator=g),
                   torch.empty(10_000).uniform_(-1e-3, 1e-3, generator=g)])
    rel_close(ops.symexp(x), ref.symexp(x.double()), 2e-6)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, width=64))
def test_symexp_inverts_symlog(v):
    x = torch.tensor([v], dtype=torch.float64)
    back = ops.symexp(ops.symlog(x))
    assert abs(back.item() - v) <= 1e-9 * max(1.0, abs(v))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_unary_half_types_upcast(dtype):
    x = (torch.randn(64) * 10).to(dtype)
    out = ops.symlog(x)
    assert out.dtype == dtype
    rel_close(out, ref.symlog(x.double()).to(dtype), 1e-2)


@pytest.mark.parametrize("name", ["symlog", "symexp"])
def test_unary_gradcheck(name):
    x = (torch.randn(4, 7, dtype=torch.float64) * 2).requires_grad_()
    assert torch.autograd.gradcheck(getattr(ops, name), (x,))


# ---- twohot ---------------------------------------------------------------------------------------------
def make_bins(kind, dtype, device="cpu"):
    if kind == "symlog":
        return BINS_SYMLOG.to(dtype).to(device)
    if kind == "symexp":
        return ref.symexp(torch.linspace(-20, 20, 255, dtype=torch.float64)).to(dtype).to(device)
    if kind == "two":
        return torch.tensor([-1.0, 2.5], dtype=dtype, device=device)
    g = torch.Generator().manual_seed(3)
    return torch.sort(torch.randn(41, generator=g, dtype=torch.float64) * 5).values.to(dtype).to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bins_kind", ["symlog", "symexp", "two", "random"])
def test_twohot_matches_reference(bins_kind, dtype, shape, device):
    bins = make_bins(bins_kind, dtype, device)
    g = torch.Generator().manual_seed(seed_of(bins_kind, shape))
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * bins.abs().max().double().cpu() * 0.7).to(dtype)
    if x.numel() >= 4:  # values exactly on bins and beyond both ends
        flat = x.view(-1)
        flat[0], flat[1] = bins[0].cpu(), bins[-1].cpu()
        flat[2], flat[3] = bins[-1].cpu() * 3 + 1, bins[0].cpu() * 3 - 1
    x = x.to(device)
    expected = ref.twohot(x.double(), bins.double())
    for view in (x, noncontig(x), offset_view(x)):
        out = ops.twohot(view, bins)
        assert out.shape == (*shape, bins.shape[0]) and out.dtype == dtype
        rel_close(out, expected, 1e-12 if dtype == torch.float64 else 2e-6, atol=1e-6 if dtype == torch.float32 else 0)


def test_twohot_exactly_on_every_bin():
    bins = BINS_SYMLOG.float()
    out = ops.twohot(bins, bins)
    assert torch.equal(out, torch.eye(255))


def test_twohot_nan_row():
    out = ops.twohot(torch.tensor([1.0, math.nan, -3.0]), BINS_SYMLOG.float())
    assert torch.isnan(out[1]).all() and not torch.isnan(out[[0, 2]]).any()


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.floats(min_value=-30, max_value=30, allow_nan=False, width=64))
def test_twohot_property_decodes_to_clamped_value(v):
    bins = BINS_SYMLOG
    w = ops.twohot(torch.tensor([v], dtype=torch.float64), bins)[0]
    assert abs(w.sum().item() - 1.0) < 1e-12
    assert (w >= 0).all() and int((w > 0).sum()) <= 2
    nz = w.nonzero().view(-1)
    assert nz.numel() == 1 or nz[1] - nz[0] == 1
    assert abs((w * bins).sum().item() - min(max(v, -20.0), 20.0)) < 1e-9


def test_twohot_half_types_upcast():
    x = torch.randn(9).bfloat16()
    out = ops.twohot(x, BINS_SYMLOG.float())
    assert out.dtype == torch.bfloat16 and out.shape == (9, 255)


# ---- twohot cross-entropy ---------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(0,), (1,), (5,), (3, 7), (15, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bins_kind", ["symlog", "symexp", "random"])
def test_twohot_ce_matches_reference(bins_kind, dtype, shape, device):
    bins = make_bins(bins_kind, dtype, device)
    K = bins.shape[0]
    g = torch.Generator().manual_seed(seed_of(bins_kind, shape, 7))
    logits = (torch.randn(*shape, K, generator=g, dtype=torch.float64) * 3).to(dtype).to(device)
    target = (torch.randn(shape, generator=g, dtype=torch.float64) * bins.abs().max().double().cpu() * 0.6)
    if target.numel() >= 2:
        target.view(-1)[0], target.view(-1)[1] = 1e9, -1e9
    target = target.to(dtype).to(device)
    l64 = logits.double().requires_grad_()
    exp_loss = ref.twohot_cross_entropy(l64, target.double(), bins.double())
    weights = torch.randn(shape, dtype=torch.float64, device=device)
    (exp_grad,) = torch.autograd.grad((exp_loss * weights).sum(), l64) if exp_loss.numel() else (torch.zeros_like(l64),)
    rtol = 1e-12 if dtype == torch.float64 else 2e-5
    for view in (logits, noncontig(logits), offset_view(logits)):
        lv = view.detach().requires_grad_()
        loss = ops.twohot_cross_entropy(lv, target, bins)
        assert loss.shape == shape and loss.dtype == dtype
        rel_close(loss.detach(), exp_loss.detach(), rtol, atol=1e-5 if dtype == torch.float32 else 0)
        if loss.numel():
            (grad,) = torch.autograd.grad((loss * weights.to(dtype)).sum(), lv)
            rel_close(grad, exp_grad, rtol, atol=1e-6 if dtype == torch.float32 else 1e-15)


def test_twohot_ce_stable_for_huge_logits():
    logits = torch.tensor([[1e4, -1e4, 0.0], [-1e30, 5.0, 1e30]])
    bins = torch.tensor([-1.0, 0.0, 1.0])
    target = torch.tensor([-1.0, 1.0])
    out = ops.twohot_cross_entropy(logits, target, bins)
    rel_close(out, ref.twohot_cross_entropy(logits.double(), target.double(), bins.double()), 1e-6)
    assert torch.isfinite(out).all()


def test_twohot_ce_nan_target_gives_nan_loss():
    out = ops.twohot_cross_entropy(torch.zeros(2, 255), torch.tensor([0.0, math.nan]), BINS_SYMLOG.float())
    assert not torch.isnan(out[0]) and torch.isnan(out[1])


def test_twohot_ce_gradcheck():
    logits = torch.randn(3, 4, 9, dtype=torch.float64, requires_grad=True)
    bins = torch.linspace(-2, 2, 9, dtype=torch.float64)
    target = torch.randn(3, 4, dtype=torch.float64) * 2
    assert torch.autograd.gradcheck(lambda lg: ops.twohot_cross_entropy(lg, target, bins), (logits,))


def test_twohot_ce_target_gets_no_gradient():
    target = torch.randn(4, requires_grad=True)
    loss = ops.twohot_cross_entropy(torch.randn(4, 255, requires_grad=True), target, BINS_SYMLOG.float())
    loss.sum().backward()
    assert target.grad is None


# ---- λ-return -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (15, 1024), (15, 3, 5), (64, 16), (4, 0), (0, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lambda_return_matches_reference(dtype, shape, device):
    g = torch.Generator().manual_seed(seed_of(shape))
    T = shape[0]
    reward = torch.randn(shape, generator=g, dtype=torch.float64)
    cont = (torch.rand(shape, generator=g, dtype=torch.float64) > 0.2).double()  # includes cont = 0
    value = torch.randn((T + 1, *shape[1:]), generator=g, dtype=torch.float64) * 10
    expected = ref.lambda_return(reward, cont, value, 0.997, 0.95)
    args = [t.to(dtype).to(device) for t in (reward, cont, value)]
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    for views in (args, [noncontig(a) for a in args], [offset_view(a) for a in args]):
        out = ops.lambda_return(*views, 0.997, 0.95)
        assert out.shape == shape and out.dtype == dtype
        rel_close(out, expected, rtol, atol=1e-5 if dtype == torch.float32 else 1e-12)


@pytest.mark.parametrize("lam", [0.0, 1.0, 0.5])
def test_lambda_return_edge_lambdas(lam):
    reward, cont, value = torch.randn(6, 4, dtype=torch.float64), torch.ones(6, 4, dtype=torch.float64), torch.randn(7, 4, dtype=torch.float64)
    out = ops.lambda_return(reward, cont, value, 0.9, lam)
    if lam == 0.0:  # one-step TD targets
        rel_close(out, reward + 0.9 * value[1:], 1e-12)
    elif lam == 1.0:  # discounted Monte Carlo return bootstrapped at the end
        exp = value[6]
        for t in reversed(range(6)):
            exp = reward[t] + 0.9 * exp
            rel_close(out[t], exp, 1e-12)
    else:
        rel_close(out, ref.lambda_return(reward, cont, value, 0.9, lam), 1e-12)


def test_lambda_return_detaches_inputs():
    value = torch.randn(4, 3, requires_grad=True)
    out = ops.lambda_return(torch.randn(3, 3), torch.ones(3, 3), value, 0.99, 0.95)
    assert not out.requires_grad


# ---- torch.library integration --------------------------------------------------------------------------
def test_opcheck_all_ops():
    x = torch.randn(3, 5, dtype=torch.float64)
    bins = torch.linspace(-3, 3, 11, dtype=torch.float64)
    logits = torch.randn(3, 5, 11, dtype=torch.float64, requires_grad=True)
    rets = (torch.randn(4, 6), torch.rand(4, 6), torch.randn(5, 6))
    ns = torch.ops.dreamer_ext
    cases = [
        (ns.symlog.default, (x.clone().requires_grad_(),)),
        (ns.symexp.default, (x.clone().requires_grad_(),)),
        (ns.twohot.default, (x, bins)),
        (ns.twohot_ce_fwd.default, (logits, x, bins)),
        (ns.twohot_ce_bwd.default, (torch.randn(3, 5, dtype=torch.float64), logits.detach(), x, bins,
                                    torch.randn(3, 5, dtype=torch.float64))),
        (ns.lambda_return.default, (*rets, 0.99, 0.95)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


def test_torch_compile_fullgraph():
    bins = torch.linspace(-20, 20, 255)

    def f(x, logits, r, c, v):
        y = ops.symexp(ops.symlog(x))
        loss = ops.twohot_cross_entropy(logits, ops.symlog(x), bins)
        w = ops.twohot(ops.symlog(x), bins)
        return y, loss, w.sum(-1), ops.lambda_return(r, c, v, 0.99, 0.95)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    args = (torch.randn(8), torch.randn(8, 255, requires_grad=True), torch.randn(5, 8), torch.rand(5, 8),
            torch.randn(6, 8))
    got, want = compiled(*args), f(*args)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-6)
    got[1].sum().backward()
    assert args[1].grad is not None and torch.isfinite(args[1].grad).all()


def test_backend_switch_routes_to_reference(monkeypatch):
    calls = []
    monkeypatch.setattr(ref, "symlog", lambda x: calls.append("ref") or torch.zeros_like(x))
    ops.set_backend("reference")
    assert ops.get_backend() == "reference"
    assert torch.equal(ops.symlog(torch.ones(3)), torch.zeros(3)) and calls == ["ref"]
    ops.set_backend("kernels")
    assert torch.allclose(ops.symlog(torch.ones(3)), torch.full((3,), math.log(2.0)))
    assert calls == ["ref"]


def test_backend_report_names_every_op():
    rep = ops.backend_report()
    assert set(rep) == set(ops.OP_NAMES) and all("C++" in v for v in rep.values())


# ---- bad input ----------------------------------------------------------------------------------------------
BINS = torch.linspace(-1, 1, 5)


@pytest.mark.parametrize("call, exc, words", [
    (lambda: ops.symlog(torch.arange(3)), TypeError, "x must be a floating"),
    (lambda: ops.symexp([1.0, 2.0]), TypeError, "x must be a torch.Tensor"),
    (lambda: ops.twohot(torch.randn(3), torch.tensor([0.0, 2.0, 1.0])), ValueError, "strictly increasing"),
    (lambda: ops.twohot(torch.randn(3), torch.tensor([0.0, math.nan, 1.0])), ValueError, "strictly increasing"),
    (lambda: ops.twohot(torch.randn(3), torch.ones(2, 2)), ValueError, "bins must be a 1-D"),
    (lambda: ops.twohot(torch.randn(3), torch.ones(1)), ValueError, "at least 2"),
    (lambda: ops.twohot(torch.randn(3), torch.linspace(0, 1, 5, device="meta")), ValueError, "bins is on meta"),
    (lambda: ops.twohot(torch.randn(3), torch.arange(5)), TypeError, "bins must be a floating"),
    (lambda: ops.twohot_cross_entropy(torch.randn(3, 4), torch.randn(3), BINS), ValueError, "K = len(bins) = 5"),
    (lambda: ops.twohot_cross_entropy(torch.randn(3, 5), torch.randn(4), BINS), ValueError, "target must have shape (3,)"),
    (lambda: ops.twohot_cross_entropy(torch.randn(3, 5), torch.randn(3, device="meta"), BINS), ValueError, "target is on meta"),
    (lambda: ops.lambda_return(torch.randn(3, 2), torch.ones(3, 2), torch.randn(3, 2), 0.9, 0.9), ValueError, "value must have shape (4, 2)"),
    (lambda: ops.lambda_return(torch.randn(3, 2), torch.ones(3, 1), torch.randn(4, 2), 0.9, 0.9), ValueError, "cont must have the shape"),
    (lambda: ops.lambda_return(torch.randn(3, 2), torch.ones(3, 2), torch.randn(4, 2), torch.tensor(0.9), 0.9), TypeError, "gamma must be a Python float"),
    (lambda: ops.lambda_return(torch.randn(3, 2), torch.ones(3, 2), torch.randn(4, 2), 0.9, 1.5), ValueError, "lam must be in [0, 1]"),
    (lambda: ops.lambda_return(torch.tensor(1.0), torch.tensor(1.0), torch.tensor(1.0), 0.9, 0.9), ValueError, "time-major"),
    (lambda: ops.lambda_return(torch.randn(3, 2), torch.ones(3, 2, dtype=torch.bool), torch.randn(4, 2), 0.9, 0.9), TypeError, "cont must be a floating"),
    (lambda: ops.set_backend("triton"), ValueError, "backend must be one of"),
])
def test_bad_input_errors(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    assert words in str(info.value)


def test_bins_changed_in_place_are_checked_again():
    bins = torch.linspace(-1, 1, 5)
    ops.twohot(torch.zeros(2), bins)  # validated and cached
    bins[1] = 5.0  # no longer increasing
    with pytest.raises(ValueError, match="strictly increasing"):
        ops.twohot(torch.zeros(2), bins)


@pytest.mark.parametrize("backend", ["kernels", "reference"])
def test_twohot_ce_minus_inf_logit_on_zero_weight_bin(backend):
    ops.set_backend(backend)
    bins = torch.tensor([0.0, 1.0, 2.0, 3.0])
    logits = torch.tensor([[0.0, -math.inf, 0.0, 0.0], [0.0, 0.0, -math.inf, 0.0]])
    loss = ops.twohot_cross_entropy(logits, torch.tensor([2.5, 1.0]), bins)
    # row 0: all weight on bins 2 and 3, both logit 0, three finite logits -> log(3); row 1: weight 1 on bin 1
    assert torch.allclose(loss, torch.full((2,), math.log(3.0)))


def test_bins_that_collapse_in_the_compute_dtype_raise():
    bins = torch.tensor([0.0, 1.0, 1.0 + 1e-10], dtype=torch.float64)  # increasing in float64, not in float32
    with pytest.raises(ValueError, match="strictly increasing"):
        ops.twohot(torch.tensor([1.0]), bins)
    with pytest.raises(ValueError, match="strictly increasing"):
        ops.twohot_cross_entropy(torch.zeros(1, 3), torch.tensor([1.0]), bins)
    assert torch.isfinite(ops.twohot(torch.tensor([1.0], dtype=torch.float64), bins)).all()


@pytest.mark.parametrize("dtypes", [(torch.float32, torch.float32, torch.float16), (torch.float64, torch.float32, torch.float16),
                                    (torch.float16, torch.float16, torch.float16), (torch.bfloat16, torch.float32, torch.float32)])
def test_lambda_return_dtype_same_on_both_backends(dtypes):
    r, c, v = (torch.randn(4, 3).to(dtypes[0]), torch.ones(4, 3).to(dtypes[1]), torch.randn(5, 3).to(dtypes[2]))
    got = {}
    for backend in ("kernels", "reference"):
        ops.set_backend(backend)
        got[backend] = ops.lambda_return(r, c, v, 0.99, 0.95)
    assert got["kernels"].dtype == got["reference"].dtype
    assert torch.allclose(got["kernels"].float(), got["reference"].float(), atol=2e-2, rtol=1e-2)


def test_kernel_impls_refuse_mixed_devices_instead_of_crashing():
    from dreamer_ext.ops import _kernels
    cpu, meta = torch.zeros(2), torch.zeros(2, device="meta")
    with pytest.raises(ValueError, match="one device"):
        _kernels._twohot_ce_fwd_impl(torch.zeros(2, 3), meta, torch.arange(3.0))
    with pytest.raises(ValueError, match="one device"):
        _kernels._lambda_return_impl(cpu[None], cpu[None], meta.expand(2, 2), 0.9, 0.9)
    with pytest.raises(ValueError, match="one device"):
        _kernels._twohot_impl(cpu, torch.arange(3.0, device="meta"))


def test_use_backend_switches_for_a_block_and_restores():
    assert ops.get_backend() == "kernels"
    with ops.use_backend("reference"):
        assert ops.get_backend() == "reference"
    assert ops.get_backend() == "kernels"
    with pytest.raises(RuntimeError, match="boom"):
        with ops.use_backend("reference"):
            raise RuntimeError("boom")
    assert ops.get_backend() == "kernels"
    with pytest.raises(ValueError, match="backend must be one of"):
        with ops.use_backend("cuda-magic"):
            pass
    assert ops.get_backend() == "kernels"


def test_seeds_do_not_depend_on_the_process():
    """seed_of gives the same seed under different PYTHONHASHSEEDs (hash() of a str differs between them)."""
    code = "import sys; sys.path.insert(0, sys.argv[1]); from test_ops import seed_of; print(seed_of('symlog', (3, 5)))"
    here = os.path.dirname(os.path.abspath(__file__))
    seeds = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run([sys.executable, "-c", code, here], capture_output=True, text=True, env=env, timeout=120)
        assert out.returncode == 0, out.stderr
        seeds.add(int(out.stdout.strip()))
    assert seeds == {seed_of("symlog", (3, 5))}


def test_launch_passes_the_tensors_device_index(monkeypatch):
    """_launch hands the C++ launch the tensor's own CUDA device index (the C++ side makes it current)."""
    from types import SimpleNamespace

    from dreamer_ext.ops import _kernels
    seen = []

    def current_stream(dev):
        seen.append(dev)
        return SimpleNamespace(cuda_stream=1234)

    monkeypatch.setattr(torch.cuda, "current_stream", current_stream)
    fake = SimpleNamespace(is_cuda=True, dtype=torch.float32, device=torch.device("cuda", 1))
    assert _kernels._launch(fake, False) == (0, True, 1, 1234, 1)
    assert seen == [torch.device("cuda", 1)]  # the stream of that device, not of the current one
    assert _kernels._launch(torch.zeros(1, dtype=torch.float64), False)[1:] == (False, torch.get_num_threads(), 0, -1)


def test_bindings_refuse_a_device_that_does_not_fit_the_call():
    from dreamer_ext import _C
    x, y = torch.randn(4), torch.empty(4)
    with pytest.raises(ValueError, match="device: a CPU call takes device -1, got 0"):
        _C.symlog(x.data_ptr(), y.data_ptr(), 4, 0, False, 1, 0, 0)
    with pytest.raises(ValueError, match=r"device: a CUDA call needs the tensors' device index \(>= 0\), got -1"):
        _C.twohot(x.data_ptr(), x.data_ptr(), y.data_ptr(), 0, 2, 0, True, 1, 0, -1)


# ---- the references themselves (they are the oracles above, and fast rather than literal) ---------------------
def _literal_twohot(x, bins):
    """The contract, one value at a time."""
    K = len(bins)
    out = torch.zeros(*x.shape, K, dtype=torch.float64)
    flat, rows = x.reshape(-1).tolist(), out.view(-1, K)
    for i, v in enumerate(flat):
        if math.isnan(v):
            rows[i] = math.nan
        elif v <= bins[0]:
            rows[i, 0] = 1.0
        elif v >= bins[-1]:
            rows[i, K - 1] = 1.0
        else:
            k = max(j for j in range(K) if bins[j] <= v)
            rows[i, k] = (bins[k + 1] - v) / (bins[k + 1] - bins[k])
            rows[i, k + 1] = 1.0 - rows[i, k]
    return out


def test_references_match_the_literal_definitions():
    bins = [-3.0, -1.0, 0.0, 0.5, 2.0]
    b = torch.tensor(bins, dtype=torch.float64)
    x = torch.tensor([[-5.0, -3.0, -2.0, -1.0, 0.25], [0.5, 1.9, 2.0, 7.0, math.nan], [math.inf, -math.inf, 0.0, 1e-300, -0.7]],
                     dtype=torch.float64)
    rel_close(ref.twohot(x, b), _literal_twohot(x, bins), 1e-15)

    logits = torch.randn(3, 5, 5, dtype=torch.float64)
    logits[0, 0, 3] = -math.inf  # on a zero-weight bin: contributes 0
    lit = -(torch.where(_literal_twohot(x, bins) == 0, 0.0, _literal_twohot(x, bins) * torch.log_softmax(logits, -1))).sum(-1)
    lit[torch.isnan(x)] = math.nan
    rel_close(ref.twohot_cross_entropy(logits, x, b), lit, 1e-13)

    T, M = 6, 4
    r, v = torch.randn(T, M, dtype=torch.float64), torch.randn(T + 1, M, dtype=torch.float64)
    c = (torch.rand(T, M) > 0.3).double()
    lit = torch.empty(T, M, dtype=torch.float64)
    nxt = v[T]
    for t in reversed(range(T)):
        nxt = r[t] + 0.97 * c[t] * ((1 - 0.8) * v[t + 1] + 0.8 * nxt)
        lit[t] = nxt
    rel_close(ref.lambda_return(r, c, v, 0.97, 0.8), lit, 1e-13, atol=1e-14)
    assert ref.lambda_return(r[:0], c[:0], v[:1], 0.97, 0.8).shape == (0, M)


def test_reference_cross_entropy_gradient_is_softmax_minus_twohot_and_nan_rows():
    bins = torch.linspace(-2, 2, 9, dtype=torch.float64)
    logits = torch.randn(4, 9, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0.3, -5.0, math.nan, 1.75], dtype=torch.float64)
    ref.twohot_cross_entropy(logits, target, bins).sum().backward()
    want = torch.softmax(logits.detach(), -1) - ref.twohot(target, bins)
    assert torch.isnan(logits.grad[2]).all()  # a NaN target poisons its whole row, as the kernels do
    rel_close(logits.grad[[0, 1, 3]], want[[0, 1, 3]], 1e-13, atol=1e-15)
