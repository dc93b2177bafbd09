"""Real-GPU checks (marked ``gpu``; they run whenever a CUDA device is visible).

The CUDA paths of the op-vs-reference sweeps live in test_ops.py (its DEVICES include "cuda" when
available); here: repeat-and-compare for races, a non-default stream, and large sizes.
"""
import pytest
import torch

from dreamer_ext import _C, ops
from dreamer_ext.ops import reference as ref

from test_ops import rel_close

pytestmark = pytest.mark.gpu


def test_built_with_cuda():
    assert _C.has_cuda(), "a GPU is visible but dreamer_ext._C was built without CUDA"


def _all_ops(x, logits, bins, r, c, v):
    return (ops.symlog(x), ops.symexp(x), ops.twohot(x, bins), ops.twohot_cross_entropy(logits, x, bins),
            ops.lambda_return(r, c, v, 0.997, 0.95))


def _inputs(T=15, B=4096, K=255, device="cuda"):
    g = torch.Generator(device="cpu").manual_seed(0)
    x = (torch.randn(T, B, generator=g) * 10).to(device)
    logits = torch.randn(T, B, K, generator=g).to(device)
    bins = torch.linspace(-20, 20, K, device=device)
    r, c, v = torch.randn(T, B, generator=g), (torch.rand(T, B, generator=g) > 0.1).float(), torch.randn(T + 1, B, generator=g)
    return x, logits, bins, r.to(device), c.to(device), v.to(device)


def test_repeat_calls_are_bitwise_equal():
    args = _inputs()
    first = _all_ops(*args)
    for _ in range(20):
        for a, b in zip(first, _all_ops(*args)):
            assert torch.equal(a, b)


def test_side_stream_matches_default_stream():
    args = _inputs()
    expected = _all_ops(*args)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        got = _all_ops(*args)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    for a, b in zip(expected, got):
        assert torch.equal(a, b)


def test_gpu_matches_reference_large():
    x, logits, bins, r, c, v = _inputs(T=64, B=1024)
    rel_close(ops.symlog(x), ref.symlog(x.double()), 2e-6)
    rel_close(ops.twohot(x, bins), ref.twohot(x.double(), bins.double()), 2e-6, atol=1e-6)
    lg = logits.clone().requires_grad_()
    loss = ops.twohot_cross_entropy(lg, x, bins)
    rel_close(loss, ref.twohot_cross_entropy(logits.double(), x.double(), bins.double()), 2e-5, atol=1e-5)
    loss.sum().backward()
    l64 = logits.double().requires_grad_()
    ref.twohot_cross_entropy(l64, x.double(), bins.double()).sum().backward()
    rel_close(lg.grad, l64.grad, 2e-5, atol=1e-6)
    rel_close(ops.lambda_return(r, c, v, 0.997, 0.95), ref.lambda_return(r.double(), c.double(), v.double(), 0.997, 0.95),
              1e-5, atol=1e-5)


def test_second_gpu_device_if_present():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    x = torch.randn(1000, device="cuda:1")
    rel_close(ops.symlog(x), ref.symlog(x.double()), 2e-6)
