"""The CUDA kernels' own source (csrc/cuda/*.cu), run on the CPU through the SIMT emulation
(csrc/emu/simt.h, module dreamer_ext._emu), against the float64 references.

Sizes are chosen so launches have several blocks, partial last blocks, and (for the warp-per-row
kernels) rows that do not fill the last block: the cases where indexing bugs hide. The emulation caps
grids at 3 blocks, so inputs larger than 3 blocks' worth also go round the kernels' grid-stride loops.

Also here: the emulation's own primitives (__shared__, __syncthreads, the shuffles, atomicAdd) through
the small test kernels of csrc/emu/selftest.cu, launches from two Python threads at once, and the
device guard around every launch.
"""
import math
import threading

import pytest
import torch

from dreamer_ext.ops import _kernels as K
from dreamer_ext.ops import reference as ref

from test_ops import _replayable_global_rng, make_bins, noncontig, rel_close  # noqa: F401 (fixture)

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
@pytest.mark.parametrize("shape", [(1,), (3, 7), (37,), (2, 31)])
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
@pytest.mark.parametrize("rows", [1, 4, 6, 13, 30])
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
@pytest.mark.parametrize("shape", [(1, 1), (15, 130), (5, 3, 7), (3, 500)])
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


# ---- the emulation's primitives, through csrc/emu/selftest.cu -------------------------------------------
@pytest.mark.parametrize("n", [1, 128, 129, 1000])
def test_emu_shared_memory_block_sum(emu, n):
    """2-D blocks reduce in __shared__ memory with __syncthreads between levels; one atomicAdd per block."""
    x = torch.randint(-50, 50, (n,), dtype=torch.int32).float()  # integers: the sum is exact in any order
    out = torch.full((1,), 7.0)
    emu.selftest_block_sum(x.data_ptr(), n, out.data_ptr())
    assert out.item() == 7.0 + x.sum().item()


@pytest.mark.parametrize("width", [32, 16, 4])
def test_emu_shfl_down_sum(emu, width):
    n = 96
    x = torch.randint(-50, 50, (n,), dtype=torch.int32).float()
    out = torch.full((n // width,), math.nan)
    emu.selftest_warp_down_sum(x.data_ptr(), n, width, out.data_ptr())
    assert torch.equal(out, x.view(-1, width).sum(1))


@pytest.mark.parametrize("src, width", [(0, 32), (5, 32), (37, 32), (3, 8), (9, 8)])
def test_emu_shfl_broadcast(emu, src, width):
    n = 96
    x = torch.randn(n, dtype=torch.float64)
    out = torch.full((n,), math.nan, dtype=torch.float64)
    emu.selftest_warp_broadcast(x.data_ptr(), n, src, width, out.data_ptr())
    lane = torch.arange(n)
    assert torch.equal(out, x[lane // width * width + src % width])


@pytest.mark.parametrize("mask, width", [(1, 32), (16, 32), (31, 32), (4, 8), (8, 8)])
def test_emu_shfl_xor(emu, mask, width):
    n = 64
    x = torch.arange(n, dtype=torch.int64) * 10 + 3
    out = torch.full((n,), -1, dtype=torch.int64)
    emu.selftest_warp_xor(x.data_ptr(), n, mask, width, out.data_ptr())
    lane = torch.arange(n) % 32
    src = lane ^ mask
    # a source in a later segment of `width` lanes returns the caller's own value (CUDA's rule)
    own = (src // width) > (lane // width)
    expected = torch.where(own, x, x[(torch.arange(n) // 32) * 32 + src])
    assert torch.equal(out, expected)


def test_emu_atomic_add_histogram(emu):
    n = 5000
    bucket = torch.randint(0, 7, (n,), dtype=torch.int32)
    counts = torch.zeros(7, dtype=torch.int32)
    emu.selftest_histogram(bucket.data_ptr(), n, counts.data_ptr())
    assert torch.equal(counts, torch.bincount(bucket, minlength=7).int())


# ---- launches from two Python threads at once -------------------------------------------------------------
def _in_two_threads(jobs, timeout=300):
    """Runs the two callables concurrently (released together) and returns their results; a hang fails."""
    start = threading.Barrier(len(jobs))
    results, errors = [None] * len(jobs), []

    def run(i, job):
        try:
            start.wait()
            results[i] = job()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i, j), daemon=True) for i, j in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "emulated launches from two threads hung"
    assert not errors, errors
    return results


def test_emu_concurrent_launches_of_different_kernels(emu):
    """Two kernels with warp shuffles run at the same time; each keeps its own launch state."""
    bins = make_bins("symlog", torch.float32)
    logits, target = torch.randn(40, 255), torch.randn(40) * 8
    x = torch.randn(50) * 8
    want_ce = K._twohot_ce_fwd_impl(logits, target, bins, mod=emu, emulate=True)
    want_th = K._twohot_impl(x, bins, mod=emu, emulate=True)

    def ce():
        return [K._twohot_ce_fwd_impl(logits, target, bins, mod=emu, emulate=True) for _ in range(4)]

    def th():
        return [K._twohot_impl(x, bins, mod=emu, emulate=True) for _ in range(4)]

    got_ce, got_th = _in_two_threads([ce, th])
    for loss, lse in got_ce:
        assert torch.equal(loss, want_ce[0]) and torch.equal(lse, want_ce[1])
    for w in got_th:
        assert torch.equal(w, want_th)


def test_emu_concurrent_launches_of_one_shared_memory_kernel(emu):
    """The same __shared__-memory kernel launched from two threads: its statics must not be shared."""
    xs = [torch.randint(-50, 50, (1000,), dtype=torch.int32).float() for _ in range(2)]

    def job(x):
        sums = []
        for _ in range(3):
            out = torch.zeros(1)
            emu.selftest_block_sum(x.data_ptr(), x.numel(), out.data_ptr())
            sums.append(out.item())
        return sums

    got = _in_two_threads([lambda: job(xs[0]), lambda: job(xs[1])])
    for x, sums in zip(xs, got):
        assert sums == [x.sum().item()] * 3


# ---- the device guard around every launch ------------------------------------------------------------------
def _emu_symlog(emu, x, y, device, cuda=True):
    emu.symlog(x.data_ptr(), y.data_ptr(), x.numel(), 0, cuda, 1, 0, device)


def test_emu_launch_runs_on_the_tensors_device_and_restores_the_current_one(emu):
    assert emu.emulated_devices() >= 2
    x, y = torch.randn(300), torch.empty(300)
    emu.set_device(0)
    _emu_symlog(emu, x, y, device=1)
    assert emu.last_launch_device() == 1  # launched with device 1 current ...
    assert emu.current_device() == 0      # ... and the caller's device is back
    rel_close(y, ref.symlog(x.double()), 2e-6)
    emu.set_device(1)
    _emu_symlog(emu, x, y, device=0)
    assert emu.last_launch_device() == 0 and emu.current_device() == 1
    emu.set_device(0)


@pytest.mark.parametrize("op", ["symlog", "twohot", "twohot_ce_fwd", "twohot_ce_bwd", "lambda_return"])
def test_emu_every_op_launches_on_the_given_device(emu, op):
    bins = make_bins("two", torch.float32)
    x, y, loss = torch.randn(6), torch.empty(6, 2), torch.empty(6)
    lg = torch.randn(6, 2)
    calls = {
        "symlog": lambda d: emu.symlog(x.data_ptr(), loss.data_ptr(), 6, 0, True, 1, 0, d),
        "twohot": lambda d: emu.twohot(x.data_ptr(), bins.data_ptr(), y.data_ptr(), 6, 2, 0, True, 1, 0, d),
        "twohot_ce_fwd": lambda d: emu.twohot_ce_fwd(lg.data_ptr(), x.data_ptr(), bins.data_ptr(), loss.data_ptr(),
                                                     y.data_ptr(), 6, 2, 0, True, 1, 0, d),
        "twohot_ce_bwd": lambda d: emu.twohot_ce_bwd(x.data_ptr(), lg.data_ptr(), x.data_ptr(), bins.data_ptr(),
                                                     x.data_ptr(), y.data_ptr(), 6, 2, 0, True, 1, 0, d),
        "lambda_return": lambda d: emu.lambda_return(x.data_ptr(), x.data_ptr(), lg.data_ptr(), y.data_ptr(), 3, 2,
                                                     0.9, 0.9, 0, True, 1, 0, d),
    }
    emu.set_device(0)
    calls[op](1)
    assert emu.last_launch_device() == 1 and emu.current_device() == 0


def test_emu_bad_device_is_refused(emu):
    x, y = torch.randn(4), torch.empty(4)
    emu.set_device(0)
    with pytest.raises(RuntimeError, match=r"cudaSetDevice\(5\).*invalid device"):
        _emu_symlog(emu, x, y, device=5)
    assert emu.current_device() == 0
    with pytest.raises(ValueError, match="device: a CUDA call needs the tensors' device index"):
        _emu_symlog(emu, x, y, device=-1)
    with pytest.raises(ValueError, match="device: a CPU call takes device -1"):
        _emu_symlog(emu, x, y, device=0, cuda=False)


# ---- work per row ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("op", ["twohot", "twohot_ce_fwd", "twohot_ce_bwd"])
def test_emu_kernels_search_the_bins_once_per_row(emu, op):
    """The bin search runs once per row, not once per output element (K = 255 per row here)."""
    rows, bins = 37, make_bins("symlog", torch.float32)
    x, logits = torch.randn(rows) * 8, torch.randn(rows, 255)
    _, lse = K._twohot_ce_fwd_impl(logits, x, bins, mod=emu, emulate=True)
    run = {
        "twohot": lambda: K._twohot_impl(x, bins, mod=emu, emulate=True),
        "twohot_ce_fwd": lambda: K._twohot_ce_fwd_impl(logits, x, bins, mod=emu, emulate=True),
        "twohot_ce_bwd": lambda: K._twohot_ce_bwd_impl(torch.ones(rows), logits, x, bins, lse, mod=emu, emulate=True),
    }[op]
    before = emu.bin_searches()
    run()
    assert emu.bin_searches() - before == rows


@pytest.mark.parametrize("values", ["integers", "normal"])
def test_emu_tensor_core_step_follows_the_ptx_fragment_layout(emu, values):
    """One warp's m16n8k16 bf16 step (csrc/cuda/mma.h): every lane loads its A, B and C fragments in the PTX layout
    and the result lands where the layout says. Integer-valued inputs make every sum exact, so the layout is checked
    exactly; with normal inputs the float32 sums agree with float64 to rounding."""
    g = torch.Generator().manual_seed(5)
    if values == "integers":
        a, b = (torch.randint(-8, 9, s, generator=g).float() for s in ((16, 16), (16, 8)))
        c = torch.randint(-100, 101, (16, 8), generator=g).float()
    else:
        a, b, c = torch.randn(16, 16, generator=g), torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)
    a16, b16 = a.to(torch.bfloat16), b.to(torch.bfloat16)
    d = torch.full((16, 8), math.nan)
    emu.selftest_mma_bf16(a16.view(torch.int16).data_ptr(), b16.view(torch.int16).data_ptr(), c.data_ptr(), d.data_ptr())
    want = c.double() + a16.double() @ b16.double()
    if values == "integers":
        assert torch.equal(d.double(), want)
    else:
        torch.testing.assert_close(d.double(), want, atol=1e-5, rtol=1e-5)
