"""Each op against its pure-PyTorch reference, eager and under torch.compile, in one run.

Sizes are time-major (T, B) with K = 255 bins; N = T*B elements. The references
(dreamer_ext/ops/reference.py) are the fastest plain-PyTorch formulations we know, so "eager / kernel"
is the gain over what a careful PyTorch user would write. Differentiable ops are timed forward only and
forward + backward. The ratio table in RESULTS.md is made from this run's JSON by bench/report.py
(reference time / kernel time, same process):

    pytest bench/test_ops_bench.py --benchmark-json=bench/ops.json
    python bench/report.py bench/ops.json --out bench/RESULTS.md    # replaces only the marked op table

Options (bench/conftest.py): --bench-device cpu|cuda, --no-compile, --threads N.
"""
import functools

import pytest
import torch

from dreamer_ext import _C, ops
from dreamer_ext.ops import reference as ref

SIZES = [(15, 1024), (64, 16), (15, 16384), (64, 1024)]
IMPLS = ["kernel", "ref_eager", "ref_compile"]
K = 255


@functools.lru_cache(maxsize=None)
def _compiled(fn):
    return torch.compile(fn, dynamic=False)


def _pick(impl, kernel_fn, ref_fn, with_compile):
    if impl == "kernel":
        return kernel_fn
    if impl == "ref_eager":
        return ref_fn
    if not with_compile:
        pytest.skip("--no-compile")
    return _compiled(ref_fn)


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _run(benchmark, group, fn, device, *args):
    def call():
        out = fn(*args)
        _sync(device)
        return out
    call()  # warm-up (and compile)
    benchmark.group = group
    benchmark.extra_info.update(torch=torch.__version__, threads=torch.get_num_threads(), device=device,
                                device_name=torch.cuda.get_device_name(0) if device == "cuda" else None,
                                cpu_kernels=_C.build_info().get("cpu_kernels"))
    benchmark.pedantic(call, rounds=15 if device == "cpu" else 100, iterations=3, warmup_rounds=2)


def _inputs(size, device):
    g = torch.Generator().manual_seed(0)
    T, B = size
    x = (torch.randn(T, B, generator=g) * 10).to(device)
    return x


def _fwd_bwd(fn):
    """fn's forward and backward, as a training step runs them (fn's first argument gets the gradient)."""
    def step(x, *rest):
        x.grad = None
        out = fn(x, *rest).mean()
        out.backward()
        return out
    return step


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"T{s[0]}xB{s[1]}")
@pytest.mark.parametrize("op", ["symlog", "symexp"])
def test_unary(benchmark, bench_device, with_compile, op, size, impl):
    x = _inputs(size, bench_device)
    fn = _pick(impl, getattr(ops, op), getattr(ref, op), with_compile)
    _run(benchmark, f"{op} {size}", fn, bench_device, x)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"T{s[0]}xB{s[1]}")
@pytest.mark.parametrize("op", ["symlog", "symexp"])
def test_unary_fwd_bwd(benchmark, bench_device, with_compile, op, size, impl):
    x = (_inputs(size, bench_device) * 0.5).requires_grad_()  # symexp's gradient stays finite
    fn = _pick(impl, getattr(ops, op), getattr(ref, op), with_compile)
    _run(benchmark, f"{op} fwd+bwd {size}", _fwd_bwd(fn), bench_device, x)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"T{s[0]}xB{s[1]}")
def test_twohot(benchmark, bench_device, with_compile, size, impl):
    x = ops.symlog(_inputs(size, bench_device))
    bins = torch.linspace(-20, 20, K, device=bench_device)
    fn = _pick(impl, ops.twohot, ref.twohot, with_compile)
    _run(benchmark, f"twohot {size}", fn, bench_device, x, bins)


def _ce_inputs(size, device, requires_grad):
    target = ops.symlog(_inputs(size, device))
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(*size, K, generator=g).to(device).requires_grad_(requires_grad)
    bins = torch.linspace(-20, 20, K, device=device)
    return logits, target, bins


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"T{s[0]}xB{s[1]}")
def test_twohot_cross_entropy_fwd(benchmark, bench_device, with_compile, size, impl):
    fn = _pick(impl, ops.twohot_cross_entropy, ref.twohot_cross_entropy, with_compile)
    _run(benchmark, f"twohot_cross_entropy fwd {size}", fn, bench_device, *_ce_inputs(size, bench_device, False))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"T{s[0]}xB{s[1]}")
def test_twohot_cross_entropy_fwd_bwd(benchmark, bench_device, with_compile, size, impl):
    fn = _pick(impl, ops.twohot_cross_entropy, ref.twohot_cross_entropy, with_compile)
    _run(benchmark, f"twohot_cross_entropy fwd+bwd {size}", _fwd_bwd(fn), bench_device,
         *_ce_inputs(size, bench_device, True))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"T{s[0]}xB{s[1]}")
def test_lambda_return(benchmark, bench_device, with_compile, size, impl):
    T, B = size
    g = torch.Generator().manual_seed(0)
    r = torch.randn(T, B, generator=g).to(bench_device)
    c = (torch.rand(T, B, generator=g) > 0.05).float().to(bench_device)
    v = torch.randn(T + 1, B, generator=g).to(bench_device)
    fn = _pick(impl, ops.lambda_return, ref.lambda_return, with_compile)
    _run(benchmark, f"lambda_return {size}", fn, bench_device, r, c, v, 0.997, 0.95)
