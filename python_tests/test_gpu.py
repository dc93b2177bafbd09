"""Real-GPU checks (marked ``gpu``; they run whenever a CUDA device is visible).

The CUDA paths of the op-vs-reference sweeps live in test_ops.py (its DEVICES include "cuda" when
available); here: repeat-and-compare for races, inputs that become ready on a side stream only after a
delay, CUDA graph capture, large sizes, and a second device.
"""
import os

import pytest
import torch

from dreamer_ext import _C, ops
from dreamer_ext.ops import reference as ref

from test_ops import _replayable_global_rng, rel_close  # noqa: F401 (fixture)

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


def test_ops_run_on_the_current_stream():
    """Inputs are written on a side stream only after a long GPU sleep there, and the ops run on that stream.

    A kernel launched on any other stream would not wait for the sleep and would read the NaN the buffers
    held before, so its result would differ. (``bins`` is validated and cached by the first call: the
    check syncs, and a sync inside the side-stream block would hide a wrong stream.)
    """
    if os.environ.get("CUDA_LAUNCH_BLOCKING") == "1":
        pytest.skip("CUDA_LAUNCH_BLOCKING=1 makes every launch synchronous, so a wrong stream cannot show")
    args = _inputs()
    expected = _all_ops(*args)
    x, logits, bins, r, c, v = args
    bufs = [torch.full_like(t, float("nan")) for t in (x, logits, r, c, v)]
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(200_000_000)  # ~0.1 s of spinning on the side stream
        for buf, src in zip(bufs, (x, logits, r, c, v)):
            buf.copy_(src, non_blocking=True)
        bx, blogits, br, bc, bv = bufs
        got = _all_ops(bx, blogits, bins, br, bc, bv)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    for a, b in zip(expected, got):
        assert torch.equal(a, b)


def test_ops_capture_in_a_cuda_graph():
    """Every op captures into a CUDA graph (a launch on another stream would break the capture) and the
    replay gives the eager results bitwise."""
    if os.environ.get("CUDA_LAUNCH_BLOCKING") == "1":
        pytest.skip("stream capture and CUDA_LAUNCH_BLOCKING=1 do not mix")
    args = _inputs()
    expected = _all_ops(*args)  # validates bins outside the capture
    warm = torch.cuda.Stream()
    warm.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(warm):  # warm-up on a side stream, as torch.cuda.graphs asks
        for _ in range(2):
            _all_ops(*args)
    torch.cuda.current_stream().wait_stream(warm)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        got = _all_ops(*args)
    for out in got:
        out.fill_(float("nan"))
    graph.replay()
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
    """Tensors on cuda:1 run on device 1 while device 0 is current, and device 0 stays current."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    torch.cuda.set_device(0)
    x, logits, bins, r, c, v = _inputs(B=1000, device="cuda:1")
    got = _all_ops(x, logits, bins, r, c, v)
    assert torch.cuda.current_device() == 0
    want = (ref.symlog(x.double()), ref.symexp(x.double()), ref.twohot(x.double(), bins.double()),
            ref.twohot_cross_entropy(logits.double(), x.double(), bins.double()),
            ref.lambda_return(r.double(), c.double(), v.double(), 0.997, 0.95))
    for a, b, tol in zip(got, want, (2e-6, 2e-6, 2e-6, 2e-5, 1e-5)):
        assert a.device == torch.device("cuda", 1)
        rel_close(a, b, tol, atol=1e-5)


# ---- the fused rollout and acting step (csrc/cuda/rollout.cu) ------------------------------------------------------
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", [0, 1, 2], ids=["discrete", "continuous", "layernorm"])
def test_cuda_rollout_matches_the_pytorch_twin(case, bf16):
    from test_rollout import model, starts
    kw = [dict(), dict(discrete=False, act_dim=2), dict(norm="layer")][case]
    agent, W = model(**kw)
    st = starts(agent.wm.rssm, 300)
    h0, z0 = st["h"].cuda(), st["z"].argmax(-1).to(torch.int32).cuda()
    weights = [None if w is None else w.cuda() for w in W.get(bf16)]
    args = (h0, z0, weights, W.dims(300, 15, bf16), W.floats(), 11)
    h, z, a = ops.rollout(*args)
    again = ops.rollout(*args)
    assert all(torch.equal(x, y) for x, y in zip((h, z, a), again))  # no races: repeat runs are bitwise equal
    with ops.use_backend("reference"):
        hr, zr, ar = ops.rollout(*args)
    assert (z == zr).float().mean() >= (0.99 if bf16 else 0.999)
    rows = (z == zr).all(-1).all(0)
    assert rows.float().mean() >= 0.5
    tol = 2e-3 if bf16 else 1e-4
    torch.testing.assert_close(h[:, rows], hr[:, rows], atol=tol, rtol=0)
    torch.testing.assert_close(a[:, rows], ar[:, rows], atol=2 * tol, rtol=0)


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_cuda_phase_kernels_are_bitwise_the_row_owned_kernel(bf16):
    """At deter >= 1024 a rollout of 1024 rows takes the phase kernels and one of 1023 rows the row-owned kernel; the
    first 1023 rows draw the same Philox numbers and are summed in the same order, so they agree bit for bit."""
    from test_rollout import model, starts
    agent, W = model(rssm={"deter": 1024, "blocks": 8, "hidden": 64}, actor={"units": 64})
    st = starts(agent.wm.rssm, 1024)
    h0, z0 = st["h"].cuda(), st["z"].argmax(-1).to(torch.int32).cuda()
    weights = [None if w is None else w.cuda() for w in W.get(bf16)]
    phases = ops.rollout(h0, z0, weights, W.dims(1024, 15, bf16), W.floats(), 13)
    row = ops.rollout(h0[:1023], z0[:1023], weights, W.dims(1023, 15, bf16), W.floats(), 13)
    assert all(torch.equal(x[:, :1023], y) for x, y in zip(phases, row))
    with ops.use_backend("reference"):
        hr, zr, _ = ops.rollout(h0, z0, weights, W.dims(1024, 15, bf16), W.floats(), 13)
    assert (phases[1] == zr).float().mean() >= (0.99 if bf16 else 0.999)


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_cuda_acting_step_matches_the_pytorch_twin(bf16):
    from dreamer_ext.fused_rollout import RolloutWeights
    from test_rollout import act_inputs, assert_acting_agrees, model
    agent, _ = model()
    W = RolloutWeights(agent.wm.rssm, agent.behavior.actor, "post")
    n = 65
    inputs = [t.cuda() for t in act_inputs(agent, n)]
    weights = [None if w is None else w.cuda() for w in W.get(bf16)]
    args = (*inputs, weights, W.dims(n, 1, bf16), W.floats(), 99, True)
    out = ops.act(*args)
    with ops.use_backend("reference"):
        ref = ops.act(*args)
    assert_acting_agrees(out, ref, tol=2e-3 if bf16 else 1e-4, agreement=0.99 if bf16 else 0.999)


def test_one_rank_nccl_smoke_run(tmp_path):
    """The NCCL path on a one-GPU machine: torchrun with one process and DREAMER_EXT_DIST=1 runs every collective
    through NCCL on the GPU while a tiny agent trains, checkpoints and finishes."""
    import subprocess
    import sys
    from test_dist import ROOT, TINY_RUN, free_port
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT, "DREAMER_EXT_DIST": "1"}
    args = [a for a in TINY_RUN if not a.startswith("--device")] + ["--device=cuda", "--steps=120",
                                                                    f"--logdir={tmp_path / 'run'}"]
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", "--master_addr=127.0.0.1",
                        f"--master_port={free_port()}", "-m", "dreamer_ext.train", *args], env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "data parallel: 1 process(es), nccl" in p.stdout and "done: steps=120" in p.stdout
