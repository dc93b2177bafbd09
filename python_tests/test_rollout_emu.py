"""The CUDA rollout and acting kernels (csrc/cuda/rollout.cu) run on the CPU through the SIMT emulation
(dreamer_ext._emu): against the PyTorch twin on shared Philox uniforms, against the C++ CPU kernel, and bitwise
across grid sizes. Shapes are small (the emulation runs every GPU thread as an OS thread) but cover partial tiles
(N not a multiple of the 16-row tile), more tiles than blocks (the grid-stride loop), continuous actions, LayerNorm,
no dyn layer / a dense GRU, two dyn layers, and bf16 compute."""
import pytest
import torch

from dreamer_ext import ops
from dreamer_ext.fused_rollout import RolloutWeights
from dreamer_ext.ops import _kernels as K

from test_rollout import CASES, act_inputs, assert_acting_agrees, assert_agrees_with_twin, model, starts

pytestmark = pytest.mark.emu


@pytest.fixture
def grid(emu):
    """Sets the emulated launches' grid size for one test and restores the launch's own choice afterwards."""
    yield emu.set_rollout_grid
    emu.set_rollout_grid(0)


def emulated_rollout(emu, W, start, horizon, seed, bf16=False):
    h0, z0 = start["h"], start["z"].argmax(-1).to(torch.int32)
    args = (h0, z0, W.get(bf16), W.dims(h0.shape[0], horizon, bf16), W.floats(), seed)
    got = K._rollout_impl(*args, mod=emu, emulate=True)
    with ops.use_backend("reference"):
        ref = ops.rollout(*args)
    return got, ref, args


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("n", [1, 37])
def test_emulated_cuda_rollout_matches_the_pytorch_twin(emu, case, n, bf16):
    kw = dict(CASES[case])
    agent, W = model(discrete=kw.pop("discrete", True), act_dim=kw.pop("act_dim", 3), **kw)
    out, ref, _ = emulated_rollout(emu, W, starts(agent.wm.rssm, n), 3, seed=321 + n, bf16=bf16)
    assert out[0].shape == (4, n, agent.wm.rssm.deter) and out[1].dtype == torch.int32 and out[2].shape[:2] == (3, n)
    assert_agrees_with_twin(out, ref, bf16, bf16_agreement=0.99)


@pytest.mark.parametrize("deter, blocks, hidden", [(24, 2, 12), (32, 4, 20)])
def test_emulated_cuda_bf16_widths_that_are_not_multiples_of_8(emu, deter, blocks, hidden):
    """The tensor-core paths take 8-column groups: a block width of 12 (the core's layers fall back to the column
    loops) and layer widths of 20 (the dense layers' last group is partly outside the layer) still match the twin."""
    agent, W = model(rssm={"deter": deter, "blocks": blocks, "hidden": hidden}, actor={"units": hidden})
    out, ref, _ = emulated_rollout(emu, W, starts(agent.wm.rssm, 19), 3, seed=5, bf16=True)
    assert_agrees_with_twin(out, ref, True, bf16_agreement=0.99)


def test_emulated_cuda_rollout_offsets_its_philox_rows(emu):
    agent, W = model()
    start = starts(agent.wm.rssm, 21)
    h0, z0 = start["h"], start["z"].argmax(-1).to(torch.int32)
    whole = K._rollout_impl(h0, z0, W.get(), W.dims(21, 3), W.floats(), 5, mod=emu, emulate=True)
    part = K._rollout_impl(h0[17:], z0[17:], W.get(), W.dims(4, 3), W.floats(), 5, row0=17, mod=emu, emulate=True)
    assert torch.equal(part[1], whole[1][:, 17:]) and torch.equal(part[2], whole[2][:, 17:])
    torch.testing.assert_close(part[0], whole[0][:, 17:], atol=0, rtol=0)


def test_emulated_cuda_rollout_agrees_with_the_cpu_kernel_on_a_preset_shape(emu):
    agent, W = model(act_dim=5, preset="size1m")
    (h, z, a), _, args = emulated_rollout(emu, W, starts(agent.wm.rssm, 18), 3, seed=9)
    hc, zc, ac = ops.rollout(*args)  # the C++ CPU kernel
    assert torch.equal(z, zc) and torch.equal(a, ac)
    torch.testing.assert_close(h, hc, atol=1e-5, rtol=0)


def test_emulated_cuda_rollout_is_bitwise_equal_across_grid_sizes(emu, grid):
    agent, W = model(discrete=False, act_dim=2)
    start = starts(agent.wm.rssm, 35)  # 3 tiles of 16 rows, the last partial
    outs = []
    for blocks in (1, 2, 3, 5):
        grid(blocks)
        (h, z, a), _, _ = emulated_rollout(emu, W, start, 2, seed=3)
        outs.append((h, z, a))
    for other in outs[1:]:
        assert all(torch.equal(x, y) for x, y in zip(outs[0], other))


def test_emulated_cuda_workspace_is_sized_by_the_grid(emu, grid):
    agent, W = model()
    dims = W.dims(50, 4, False)
    grid(1)
    one = emu.rollout_work_floats(dims)
    grid(3)
    three = emu.rollout_work_floats(dims)
    assert one > 0 and three == 3 * one
    grid(0)
    assert emu.rollout_work_floats(W.dims(0, 4, False)) == 0


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("sample", [True, False], ids=["sample", "mode"])
@pytest.mark.parametrize("case", [0, 1, 2], ids=["discrete", "continuous", "layernorm"])
def test_emulated_cuda_acting_step_matches_the_pytorch_twin(emu, case, sample, bf16):
    kw = [dict(), dict(discrete=False, act_dim=2), dict(norm="layer")][case]
    agent, _ = model(**kw)
    W = RolloutWeights(agent.wm.rssm, agent.behavior.actor, "post")
    n = 21
    args = (*act_inputs(agent, n), W.get(bf16), W.dims(n, 1, bf16), W.floats(), 99, sample)
    rssm = agent.wm.rssm
    onehot = torch.full((n, rssm.S, rssm.C), float("nan"))
    out = K._act_impl(*args, mod=emu, emulate=True, z_onehot=onehot)
    with ops.use_backend("reference"):
        ref = ops.act(*args)
    assert_acting_agrees(out, ref, tol=1e-3 if bf16 else 2e-6, agreement=0.99 if bf16 else 1.0)
    assert torch.equal(onehot, torch.nn.functional.one_hot(out[1].long(), rssm.C).float())  # the plan's extra output


def test_emulated_cuda_acting_resets_where_is_first(emu):
    agent, _ = model()
    W = RolloutWeights(agent.wm.rssm, agent.behavior.actor, "post")
    h, z, prev, _, embed = act_inputs(agent, 6)
    first = torch.ones(6, dtype=torch.bool)
    base = K._act_impl(h, z, prev, first, embed, W.get(), W.dims(6, 1), W.floats(), 5, True, mod=emu, emulate=True)
    other = K._act_impl(h * 0 + 0.7, (z + 1) % 4, prev.roll(1, -1), first, embed, W.get(), W.dims(6, 1), W.floats(),
                        5, True, mod=emu, emulate=True)
    assert all(torch.equal(x, y) for x, y in zip(base, other))


def test_emulated_cuda_rollout_gives_the_feat_layout_by_concatenation(emu):
    """The CUDA kernel writes h rows deter apart only: with feat=True its wrapper concatenates [h, one-hot z], so the
    result is the CPU kernel's feat layout; the kernel itself refuses the in-place layout."""
    agent, W = model()
    start = starts(agent.wm.rssm, 5)
    h0, z0 = start["h"], start["z"].argmax(-1).to(torch.int32)
    args = (h0, z0, W.get(), W.dims(5, 3), W.floats(), 8)
    h, z, a = K._rollout_impl(*args, mod=emu, emulate=True)
    feat, zf, af = K._rollout_impl(*args, feat=True, mod=emu, emulate=True)
    assert torch.equal(feat, K.feat_of(h, z, agent.wm.rssm.C)) and torch.equal(zf, z) and torch.equal(af, a)
    work, *launch = K._device_args(h0, emu, args[3], True)
    with pytest.raises(ValueError, match="feat layout"):
        emu.rollout(list(args[3]), list(args[4]), 8, 0, K.weight_ptrs(args[2]), h0.data_ptr(), z0.data_ptr(),
                    feat.data_ptr(), z.data_ptr(), a.data_ptr(), *launch, True)


# ---- the phase kernels (the path of large rollouts: a kernel per layer over 64-row x 32-column tiles) ----

@pytest.fixture
def path(emu):
    """Forces the emulated rollout's path (1: row-owned, 2: phases) and the phase path's chunk of rows for one test,
    and restores the choice by size afterwards."""
    yield emu.set_rollout_path
    emu.set_rollout_path(0, 0)


PHASE_CASES = [  # (model, bf16, chunk rows): chunk 0 is the emulation's default of 80 (70 rows: one chunk of two
    (CASES[0], False, 0),  # 64-row tiles, the second partial); 48 makes a second chunk of 22 rows
    (CASES[1], True, 48),
    (CASES[2], False, 48),
    (CASES[4], True, 0),
    (dict(rssm={"deter": 24, "blocks": 2, "hidden": 12}, actor={"units": 20}), True, 0),  # widths not multiples of 8
    (CASES[3], False, 0),
]


@pytest.mark.parametrize("case", range(len(PHASE_CASES)))
def test_emulated_phase_kernels_are_bitwise_the_row_owned_kernel(emu, path, case):
    """Every output is summed in the same order on both paths (bias, k-blocks, gathers), so the phase kernels give the
    row-owned kernel's rollout bit for bit: 70 rows in 64-row tiles (16-row tiles for the norms and samples), one or
    two chunks, discrete and continuous actions, LayerNorm, two dyn layers, a dense GRU, fp32 and bf16, and widths
    that are not multiples of 8 (the column fallbacks in bf16)."""
    kw, bf16, chunk = dict(PHASE_CASES[case][0]), *PHASE_CASES[case][1:]
    agent, W = model(discrete=kw.pop("discrete", True), act_dim=kw.pop("act_dim", 3), **kw)
    start = starts(agent.wm.rssm, 70)
    path(1)
    row, ref, _ = emulated_rollout(emu, W, start, 2, seed=17, bf16=bf16)
    dims = W.dims(70, 2, bf16)
    row_work = emu.rollout_work_floats(dims)
    path(2, chunk)
    assert emu.rollout_work_floats(dims) != row_work  # the phase path's own workspace: the path was switched
    got, _, _ = emulated_rollout(emu, W, start, 2, seed=17, bf16=bf16)
    assert all(torch.equal(x, y) for x, y in zip(got, row))
    assert_agrees_with_twin(row, ref, bf16, bf16_agreement=0.99)


def test_emulated_phase_kernels_match_the_pytorch_twin_and_offset_philox_rows(emu, path):
    agent, W = model(discrete=False, act_dim=2)
    start = starts(agent.wm.rssm, 67)
    path(2, 32)  # three chunks: each draws the uniforms of its own rows
    out, ref, _ = emulated_rollout(emu, W, start, 3, seed=23)
    assert_agrees_with_twin(out, ref, False, bf16_agreement=1.0)
    h0, z0 = start["h"], start["z"].argmax(-1).to(torch.int32)
    part = K._rollout_impl(h0[40:], z0[40:], W.get(), W.dims(27, 3), W.floats(), 23, row0=40, mod=emu, emulate=True)
    assert all(torch.equal(x, y[:, 40:]) for x, y in zip(part, out))


def test_emulated_phase_workspace_is_sized_by_the_chunk(emu, path):
    agent, W = model()
    dims = W.dims(100, 4, False)
    path(2, 20)
    twenty = emu.rollout_work_floats(dims)
    path(2, 40)
    forty = emu.rollout_work_floats(dims)
    path(2, 0)
    whole = emu.rollout_work_floats(dims)  # the emulation's default chunk (80 rows)
    assert 0 < twenty < forty < whole
    assert emu.rollout_work_floats(W.dims(10, 4, False)) < twenty  # a rollout smaller than the chunk
    with pytest.raises(ValueError, match="path"):
        emu.set_rollout_path(3)
    with pytest.raises(ValueError, match="chunk_rows"):
        emu.set_rollout_path(2, -1)


def test_rollouts_choose_the_phase_kernels_by_size(emu):
    """Large rollouts (N >= 1024 rows at deter >= 1024) take the phase path, whose workspace is a chunk of rows and
    does not grow with the grid; smaller ones keep the row-owned kernel's workspace of one slice per block."""
    agent, W = model(rssm={"deter": 1024, "blocks": 8, "hidden": 16}, actor={"units": 16})
    small, large = W.dims(1023, 2, False), W.dims(1024, 2, False)
    try:
        sizes = {}
        for blocks in (1, 3):
            emu.set_rollout_grid(blocks)
            sizes[blocks] = emu.rollout_work_floats(small), emu.rollout_work_floats(large)
    finally:
        emu.set_rollout_grid(0)
    assert sizes[3][0] == 3 * sizes[1][0]  # row-owned: per block
    assert sizes[3][1] == sizes[1][1] > sizes[1][0]  # phases: the default chunk of 80 rows, whatever the grid
