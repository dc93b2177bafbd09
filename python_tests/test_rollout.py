"""The fused imagination rollout (CPU, float32): against its PyTorch twin and against the model's own imagination
loop on the same Philox uniforms, across model shapes, action kinds and norms; reproducibility, thread counts,
sample frequencies, weight packing and input checks."""
import math

import pytest
import torch
import torch.nn.functional as F

from dreamer_ext import ops
from dreamer_ext.agent import Agent
from dreamer_ext.config import make_config
from dreamer_ext.envs.spec import EnvSpec
from dreamer_ext.fused_rollout import RolloutWeights, fused_imagine, rollout_uniforms
from tiny_agent_config import tiny_config


def model(discrete=True, act_dim=3, preset=None, seed=0, precision="fp32", jitter=True, **overrides):
    torch.manual_seed(seed)
    spec = EnvSpec(obs={"vector": ((5,), "float32")}, act_dim=act_dim, discrete=discrete)
    cfg = make_config(preset, device="cpu", precision=precision, **overrides) if preset else \
        tiny_config(precision=precision, **overrides)
    agent = Agent(cfg, spec)
    with torch.no_grad():  # biases and norm parameters start at 0 and 1: move them, so an indexing bug shows
        for p in agent.parameters() if jitter else ():
            if p.dim() == 1:
                p.add_(torch.randn_like(p), alpha=0.1)
    return agent, RolloutWeights(agent.wm.rssm, agent.behavior.actor)


def starts(rssm, n, seed=1):
    g = torch.Generator().manual_seed(seed)
    h = torch.rand(n, rssm.deter, generator=g) * 2 - 1
    z = torch.randint(0, rssm.C, (n, rssm.S), generator=g)
    return {"h": h, "z": F.one_hot(z, rssm.C).float()}


def both_backends(W, start, horizon, seed, bf16=False):
    h0, z0 = start["h"], start["z"].argmax(-1).to(torch.int32)
    args = (h0, z0, W.get(bf16), W.dims(h0.shape[0], horizon, bf16), W.floats(), seed)
    out = ops.rollout(*args)
    with ops.use_backend("reference"):
        ref = ops.rollout(*args)
    return out, ref


@pytest.mark.parametrize("backend", ["kernels", "reference"])
@pytest.mark.parametrize("discrete", [True, False])
def test_row0_makes_the_draws_independent_of_how_rows_are_split(backend, discrete):
    """Rows r0..r0+n-1 of one rollout are what a rollout of those start states alone draws with row0 = r0 (a
    data-parallel rank's share); with row0 = 0 they would draw other samples."""
    agent, W = model(discrete=discrete, act_dim=3)
    start = starts(agent.wm.rssm, 9)
    h0, z0 = start["h"], start["z"].argmax(-1).to(torch.int32)
    dims = lambda n: W.dims(n, 4)  # noqa: E731
    with ops.use_backend(backend):
        whole = ops.rollout(h0, z0, W.get(), dims(9), W.floats(), 77)
        part = ops.rollout(h0[5:], z0[5:], W.get(), dims(4), W.floats(), 77, row0=5)
        local = ops.rollout(h0[5:], z0[5:], W.get(), dims(4), W.floats(), 77)
        # the kernel's rows are independent; a BLAS matmul's are not bitwise (its blocking depends on the row count and
        # the CPU), so on the reference backend the floats (h, continuous actions) agree to rounding
        tol = 0 if backend == "kernels" else 1e-5
        assert torch.equal(part[1], whole[1][:, 5:])  # the latent samples
        if discrete:
            assert torch.equal(part[2], whole[2][:, 5:])  # one-hot action samples
        else:
            torch.testing.assert_close(part[2], whole[2][:, 5:], atol=tol, rtol=0)
        torch.testing.assert_close(part[0], whole[0][:, 5:], atol=tol, rtol=0)
        assert not torch.equal(local[1], whole[1][:, 5:])
        with pytest.raises(ValueError, match="row0"):
            ops.rollout(h0, z0, W.get(), dims(9), W.floats(), 77, row0=-1)


CASES = [
    dict(),                                                    # V2 tiny: discrete, RMSNorm, 1 dyn layer, 4 blocks
    dict(discrete=False, act_dim=2),                           # continuous actions
    dict(norm="layer"),                                        # V1 LayerNorm
    dict(rssm={"dyn_layers": 0, "blocks": 1}),                 # no dyn layer, dense GRU
    dict(rssm={"dyn_layers": 2, "prior_layers": 1}, actor={"layers": 1, "unimix": 0.3}),
]


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("n", [1, 3, 50])
def test_kernel_matches_the_pytorch_twin(case, n, bf16):
    kw = dict(CASES[case])
    agent, W = model(discrete=kw.pop("discrete", True), act_dim=kw.pop("act_dim", 3), **kw)
    out, ref = both_backends(W, starts(agent.wm.rssm, n), 6, seed=1234 + n, bf16=bf16)
    assert out[0].shape == (7, n, agent.wm.rssm.deter) and out[1].dtype == torch.int32 and out[2].shape[:2] == (6, n)
    assert_agrees_with_twin(out, ref, bf16, bf16_agreement=0.999)


def assert_agrees_with_twin(out, ref, bf16, bf16_agreement):
    """A tiny model's rollout ``(h, z, a)`` against its PyTorch twin's. fp32: the tiny model rounds the same way
    everywhere, so identical samples and states within float32 rounding. bf16: a different float32 summation order
    can move a matmul input by one bf16 step (2^-8 relative) before it is rounded, so states agree to ~1e-3 and a
    sample may rarely flip (at least ``bf16_agreement`` of the samples agree; rows with a flip are left out)."""
    (h, z, a), (hr, zr, ar) = out, ref
    if bf16:
        assert (z == zr).float().mean() >= bf16_agreement
        rows = (z == zr).all(-1).all(0)
        h, hr, a, ar = h[:, rows], hr[:, rows], a[:, rows], ar[:, rows]
    else:
        assert torch.equal(z, zr)
    tol = 1e-3 if bf16 else 2e-6
    torch.testing.assert_close(h, hr, atol=tol, rtol=0)
    torch.testing.assert_close(a, ar, atol=2 * tol + 3e-6, rtol=0)  # one-hot: exact; continuous: erfinv approximations


@pytest.mark.parametrize("discrete", [True, False])
def test_kernel_follows_the_models_own_imagination_loop(discrete):
    agent, W = model(discrete=discrete, act_dim=3)
    rssm, n, H = agent.wm.rssm, 40, 8
    start = starts(rssm, n)
    u = rollout_uniforms(77, n, H, rssm.S, 1 if discrete else 3)
    with torch.no_grad():
        want = rssm.imagine(agent.behavior.policy_fn, start, H, u)
    got = fused_imagine(W, start, H, seed=77)
    assert set(got) == set(want)
    assert (got["z"].argmax(-1) == want["z"].argmax(-1)).float().mean() >= 0.999
    torch.testing.assert_close(got["h"], want["h"], atol=1e-5, rtol=0)
    torch.testing.assert_close(got["feat"], want["feat"], atol=1e-5, rtol=0)
    torch.testing.assert_close(got["action"], want["action"], atol=1e-5, rtol=0)


def flip_rate(z, zr, a, ar):
    """Per-draw disagreement of two free runs on shared uniforms, counted up to each row's first disagreement
    (after it the rows follow different trajectories, so later draws say nothing about the kernels)."""
    draws = torch.cat([a.argmax(-1, keepdim=True).to(torch.int32), z[1:]], -1)      # [H, N, 1 + S] in draw order
    ref = torch.cat([ar.argmax(-1, keepdim=True).to(torch.int32), zr[1:]], -1)
    same = (draws == ref).permute(1, 0, 2).reshape(z.shape[1], -1)                   # [N, H (1 + S)]
    first = torch.where(same.all(1), same.shape[1], (~same).int().argmax(1))
    compared = (first + (~same.all(1)).int()).sum().item()
    return (~same.all(1)).sum().item() / compared


@pytest.mark.parametrize("preset,n,bf16", [("size1m", 33, False), ("size1m", 33, True), ("size12m", 5, False),
                                           ("size12m", 5, True), ("size25m", 2, True)])
def test_preset_shapes_against_the_twin(preset, n, bf16):
    agent, W = model(act_dim=17, preset=preset, jitter=False)  # the initial parameters, as measured below
    (h, z, a), (hr, zr, ar) = both_backends(W, starts(agent.wm.rssm, n), 15, seed=5, bf16=bf16)
    # measured (n = 64 / 16): size1m 0 (fp32) and 3e-4 (bf16), size12m 1.3e-4 and 2e-3. In bf16 a float32
    # summation-order difference that moves one matmul input across a bf16 rounding boundary changes it by 2^-8,
    # so flips near a sampling boundary are that much likelier; a layout or indexing bug flips about half.
    assert flip_rate(z, zr, a, ar) <= (1e-2 if bf16 else 1e-3)
    rows = (z == zr).all(-1).all(0)  # rows whose samples all agree follow the same trajectory
    assert rows.any()
    torch.testing.assert_close(h[:, rows], hr[:, rows], atol=2e-3 if bf16 else 1e-4, rtol=0)
    assert torch.equal(a[:, rows], ar[:, rows])


def test_repeat_runs_and_thread_counts_are_bitwise_equal():
    agent, W = model()
    start = starts(agent.wm.rssm, 200)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = fused_imagine(W, start, 5, seed=9)
        torch.set_num_threads(2)
        two = fused_imagine(W, start, 5, seed=9)
        again = fused_imagine(W, start, 5, seed=9)
    finally:
        torch.set_num_threads(before)
    for k in one:
        assert torch.equal(one[k], two[k]) and torch.equal(two[k], again[k]), k
    other = fused_imagine(W, start, 5, seed=10)
    assert not torch.equal(other["z"], one["z"])


def test_sample_frequencies_follow_the_prior():
    agent, W = model(rssm={"unimix": 0.2})
    rssm, n = agent.wm.rssm, 6000
    one = starts(rssm, 1)
    start = {k: v.expand(n, *v.shape[1:]).contiguous() for k, v in one.items()}
    out = fused_imagine(W, start, 1, seed=3)
    # the first step's action is identical in distribution for every row; condition on the most common one
    a = out["action"][0].argmax(-1)
    keep = a == a.mode().values
    z1 = out["z"][1][keep].argmax(-1)                         # [m, S]
    with torch.no_grad():
        h1 = rssm.img_step({"h": one["h"], "z": one["z"]}, F.one_hot(a.mode().values, 3).float()[None])["h"]
        probs = torch.softmax(rssm.prior_logits(h1)[0], -1) * 0.8 + 0.2 / rssm.C   # [S, C]
    m = int(keep.sum())
    for s in range(rssm.S):
        counts = torch.bincount(z1[:, s], minlength=rssm.C).double()
        expected = probs[s].double() * m
        chi2 = ((counts - expected) ** 2 / expected).sum().item()
        dof = rssm.C - 1
        assert chi2 < dof + 5 * math.sqrt(2 * dof), (s, chi2)


def test_weights_are_packed_once_per_parameter_change():
    agent, W = model()
    start = starts(agent.wm.rssm, 4)
    fused_imagine(W, start, 2, seed=1)
    fused_imagine(W, start, 2, seed=1)
    assert W.packs == 1
    first = fused_imagine(W, start, 3, seed=1)
    with torch.no_grad():
        agent.wm.rssm.gru.weight.mul_(1.5)                    # an in-place update, as the optimiser makes
    assert W.get() is not None and W.packs == 2
    assert not torch.equal(fused_imagine(W, start, 3, seed=1)["h"], first["h"])


def test_bad_inputs_name_the_argument():
    agent, W = model()
    rssm = agent.wm.rssm
    start = starts(rssm, 4)
    h0, z0, w, dims, fl = start["h"], start["z"].argmax(-1).int(), W.get(), W.dims(4, 3), W.floats()
    with pytest.raises(ValueError, match=r"h0: expected a float32 tensor \[4, 32\]"):
        ops.rollout(h0.double(), z0, w, dims, fl, 1)
    with pytest.raises(ValueError, match=r"z0: class indices must lie in \[0, 4\)"):
        ops.rollout(h0, z0 + 4, w, dims, fl, 1)
    with pytest.raises(ValueError, match=r"z0: expected int32"):
        ops.rollout(h0, z0.long(), w, dims, fl, 1)
    bad = list(w)
    bad[0] = bad[0][:, :-1]
    with pytest.raises(ValueError, match=r"weights\[actor.0.W\]: expected float32"):
        ops.rollout(h0, z0, bad, dims, fl, 1)
    with pytest.raises(ValueError, match="weights: expected"):
        ops.rollout(h0, z0, w[:-1], dims, fl, 1)
    with pytest.raises(ValueError, match="dims: horizon"):
        ops.rollout(h0, z0, w, [4, 0] + dims[2:], fl, 1)
    with pytest.raises(ValueError, match="seed"):
        ops.rollout(h0, z0, w, dims, fl, -1)
    with pytest.raises(ValueError, match="norm.b.*None"):
        bad = list(w)
        bad[3] = torch.zeros(16)
        ops.rollout(h0, z0, bad, dims, fl, 1)


def test_registered_op_passes_opcheck():
    agent, W = model()
    start = starts(agent.wm.rssm, 3)
    args = (start["h"], start["z"].argmax(-1).int(), W.get(), W.dims(3, 2), W.floats(), 11)
    torch.library.opcheck(torch.ops.dreamer_ext.rollout.default, args,
                          test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(torch.ops.dreamer_ext.rollout.default, args + (0, True),  # row0, the feat layout
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_behavior_imagines_through_the_kernel_and_matches_the_reference_backend(precision):
    agent, _ = model(precision=precision)
    beh, wm = agent.behavior, agent.wm
    start = starts(wm.rssm, 30)
    torch.manual_seed(4)
    with agent.autocast():
        fused = beh.imagine(wm, start, 5)
    weights = beh._rollout_weights(wm)
    assert weights.packs == 1                      # the kernels backend went through the fused op
    torch.manual_seed(4)
    with ops.use_backend("reference"), agent.autocast():
        loop = beh.imagine(wm, start, 5)
    assert weights.packs == 1                      # ... and the reference backend did not
    same = (fused["z"].argmax(-1) == loop["z"].argmax(-1)).float().mean().item()
    assert same >= (0.99 if precision == "bf16" else 0.999)
    rows = (fused["z"].argmax(-1) == loop["z"].argmax(-1)).all(-1).all(0)
    tol = 2e-2 if precision == "bf16" else 1e-5    # the loop's autocast rounds matmul outputs to bf16 too
    torch.testing.assert_close(fused["h"][:, rows], loop["h"][:, rows], atol=tol, rtol=0)
    torch.manual_seed(4)
    with agent.autocast():
        again = beh.imagine(wm, start, 5)
    assert all(torch.equal(again[k], fused[k]) for k in fused)


# ---------------------------------------------------------------------------------------------- the acting step
def act_inputs(agent, n, seed=2):
    from dreamer_ext.fused_rollout import z_indices
    rssm, g = agent.wm.rssm, torch.Generator().manual_seed(seed)
    st = starts(rssm, n, seed)
    z = z_indices(st["z"])
    z[0] = -1                                                   # a zero carry (the initial state)
    prev = F.one_hot(torch.randint(0, agent.spec.act_dim, (n,), generator=g), agent.spec.act_dim).float()
    if not agent.spec.discrete:
        prev = torch.rand(n, agent.spec.act_dim, generator=g) * 4 - 2
    is_first = torch.rand(n, generator=g) < 0.3
    embed = torch.randn(n, rssm.embed_dim, generator=g)
    return st["h"], z, prev, is_first, embed


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("sample", [True, False], ids=["sample", "mode"])
@pytest.mark.parametrize("case", [0, 1, 2], ids=["discrete", "continuous", "layernorm"])
def test_acting_step_matches_the_pytorch_twin(case, sample, bf16):
    kw = [dict(), dict(discrete=False, act_dim=2), dict(norm="layer")][case]
    agent, _ = model(**kw)
    W = RolloutWeights(agent.wm.rssm, agent.behavior.actor, "post")
    n = 37
    args = (*act_inputs(agent, n), W.get(bf16), W.dims(n, 1, bf16), W.floats(), 99, sample)
    out = ops.act(*args)
    with ops.use_backend("reference"):
        ref = ops.act(*args)
    assert_acting_agrees(out, ref, tol=1e-3 if bf16 else 2e-6, agreement=0.99 if bf16 else 1.0)


def assert_acting_agrees(out, ref, tol, agreement):
    """An acting step ``(h', z', a)`` against its twin's: states within ``tol``, at least ``agreement`` of the latent
    samples equal, and the actions of the rows whose latents agree within ``2 tol`` (erfinv approximations)."""
    (h, z, a), (hr, zr, ar) = out, ref
    torch.testing.assert_close(h, hr, atol=tol, rtol=0)
    assert (z == zr).float().mean() >= agreement
    rows = (z == zr).all(-1)
    torch.testing.assert_close(a[rows], ar[rows], atol=2 * tol + 3e-6, rtol=0)


def test_acting_resets_where_is_first_and_ignores_the_carry_there():
    agent, _ = model()
    W = RolloutWeights(agent.wm.rssm, agent.behavior.actor, "post")
    h, z, prev, _, embed = act_inputs(agent, 6)
    first = torch.ones(6, dtype=torch.bool)
    base = ops.act(h, z, prev, first, embed, W.get(), W.dims(6, 1), W.floats(), 5)
    other = ops.act(h * 0 + 0.7, (z + 1) % 4, prev.roll(1, -1), first, embed, W.get(), W.dims(6, 1), W.floats(), 5)
    assert all(torch.equal(x, y) for x, y in zip(base, other))
    kept = ops.act(h, z, prev, ~first, embed, W.get(), W.dims(6, 1), W.floats(), 5)
    assert not torch.equal(kept[0], base[0])


def test_agent_policy_is_the_same_on_both_backends_for_the_same_torch_seed():
    agent, _ = model()
    obs = {"vector": torch.randn(40, 5), "is_first": torch.zeros(40, dtype=torch.bool)}
    obs["is_first"][:5] = True
    carry = agent.initial_carry(40)
    carry["h"] = torch.rand(40, agent.wm.rssm.deter) * 2 - 1
    carry["z"] = starts(agent.wm.rssm, 40)["z"]
    carry["action"] = F.one_hot(torch.randint(0, 3, (40,)), 3).float()
    torch.manual_seed(8)
    a, c = agent.policy(obs, carry)
    torch.manual_seed(8)
    with ops.use_backend("reference"):
        ar, cr = agent.policy(obs, carry)
    assert (c["z"].argmax(-1) == cr["z"].argmax(-1)).float().mean() >= 0.999
    assert (a == ar).all(-1).float().mean() >= 0.97    # a flipped latent changes that row's actor input
    torch.testing.assert_close(c["h"], cr["h"], atol=2e-6, rtol=0)


@pytest.mark.parametrize("latent", ["prior", "post"])
def test_packed_weights_cover_exactly_the_actor_the_core_and_one_latent_head(latent):
    agent, _ = model(norm="layer")
    r, a = agent.wm.rssm, agent.behavior.actor
    W = RolloutWeights(r, a, latent)
    ids = {id(t) for t in W._layout() if t is not None}
    ids |= {id(t._base) for t in W._layout() if t is not None and t._base is not None}  # transposed views
    head = [r.prior_mlp, r.prior_out] if latent == "prior" else [r.post_mlp, r.post_out]
    want = [r.in_h, r.in_z, r.in_a, r.dyn, r.gru, a, *head]
    params = [p for m in want for p in m.parameters()]
    assert all(id(p) in ids for p in params)
    other = [r.post_mlp, r.post_out] if latent == "prior" else [r.prior_mlp, r.prior_out]
    assert not any(id(p) in ids for m in other for p in m.parameters())
    assert len(W._layout()) == len((ops.act_weight_shapes if latent == "post" else ops.rollout_weight_shapes)(
        W.dims(1, 1)))


def test_registered_acting_op_passes_opcheck():
    agent, _ = model()
    W = RolloutWeights(agent.wm.rssm, agent.behavior.actor, "post")
    args = (*act_inputs(agent, 3), W.get(), W.dims(3, 1), W.floats(), 4, True)
    torch.library.opcheck(torch.ops.dreamer_ext.act.default, args, test_utils=("test_schema", "test_faketensor"))


def test_a_checked_weight_list_is_forgotten_when_any_of_its_tensors_is_freed():
    import gc
    agent, _ = model()
    W = RolloutWeights(agent.wm.rssm, agent.behavior.actor)
    h0, z0 = starts(agent.wm.rssm, 2)["h"], starts(agent.wm.rssm, 2)["z"].argmax(-1).int()
    ws = [None if w is None else w.clone() for w in W.get()]      # tensors only this list holds
    ops.rollout(h0, z0, ws, W.dims(2, 2), W.floats(), 1)
    key = tuple(map(id, ws))
    assert any(k[0] == key for k in ops._checked_weights)
    ws[-1] = ws[-1].clone()                                          # frees the last one; the first stays alive
    gc.collect()
    assert not any(k[0] == key for k in ops._checked_weights)        # its id may come back as another tensor


def test_the_fused_carry_keeps_class_indices_that_match_its_one_hot_and_give_the_same_step():
    """Agent.policy's fused carry holds the kernel's int32 class indices beside the one-hot z; the next step reads
    them instead of converting z, and the result is bitwise the step from z alone (also after a reset to zeros)."""
    agent, _ = model()
    obs = {"vector": torch.randn(7, 5), "is_first": torch.tensor([1, 0, 0, 1, 0, 0, 0], dtype=torch.bool)}
    carry = agent.initial_carry(7)
    for _ in range(3):
        _, carry = agent.policy(obs, carry)
        assert carry["z_index"].dtype == torch.int32
        assert torch.equal(carry["z_index"].long(), carry["z"].argmax(-1))
        obs["is_first"] = torch.zeros(7, dtype=torch.bool)
    without = {k: v for k, v in carry.items() if k != "z_index"}
    torch.manual_seed(3)
    a1, c1 = agent.policy(obs, carry)
    torch.manual_seed(3)
    a2, c2 = agent.policy(obs, without)
    assert torch.equal(a1, a2) and torch.equal(c1["h"], c2["h"]) and torch.equal(c1["z"], c2["z"])
    with ops.use_backend("reference"):  # the reference step ignores the indices and returns a carry without them
        _, cr = agent.policy(obs, carry)
    assert "z_index" not in cr


def test_a_checked_dims_list_still_rejects_a_float_in_place_of_an_int():
    agent, _ = model()
    W = RolloutWeights(agent.wm.rssm, agent.behavior.actor, "post")
    h, z, prev, first, embed = act_inputs(agent, 2)
    dims = W.dims(2, 1)
    ops.act(h, z, prev, first, embed, W.get(), dims, W.floats(), 5)  # cached now
    bad = [float(v) if i == 2 else v for i, v in enumerate(dims)]   # 64.0 hashes like 64
    with pytest.raises(ValueError, match="dims"):
        ops.act(h, z, prev, first, embed, W.get(), bad, W.floats(), 5)


@pytest.mark.parametrize("bf16", [False, True])
def test_a_row_gives_bitwise_the_same_result_in_a_large_and_a_small_call(bf16):
    """The CPU kernel's rows are independent: a row computed among 19 (several 6-row matmul tiles) and among 5 (one partial tile) is bitwise the same, at size12m widths (K up to 2560, columns in
    64-wide panels plus a tail), for the rollout (rows placed by row0) and the acting step (its first rows)."""
    agent, _ = model(preset="size12m")
    r, a = agent.wm.rssm, agent.behavior.actor
    W = RolloutWeights(r, a)
    start = starts(r, 19)
    h0, z0 = start["h"], start["z"].argmax(-1).to(torch.int32)
    whole = ops.rollout(h0, z0, W.get(bf16), W.dims(19, 2, bf16), W.floats(), 3)
    part = ops.rollout(h0[11:16], z0[11:16], W.get(bf16), W.dims(5, 2, bf16), W.floats(), 3, row0=11)
    assert all(torch.equal(p, w[:, 11:16]) for p, w in zip(part, whole))
    P = RolloutWeights(r, a, "post")
    h, z, prev, first, embed = act_inputs(agent, 19)
    whole = ops.act(h, z, prev, first, embed, P.get(bf16), P.dims(19, 1, bf16), P.floats(), 3, False)
    part = ops.act(h[:5], z[:5], prev[:5], first[:5], embed[:5], P.get(bf16), P.dims(5, 1, bf16), P.floats(), 3,
                   False)  # the acting step's row i draws Philox row i: the first rows share their draws
    assert all(torch.equal(p, w[:5]) for p, w in zip(part, whole))


# ------------------------------------------------------------------------------------ the acting plan (fast path)
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", [0, 1, 2], ids=["discrete", "continuous", "layernorm"])
@pytest.mark.parametrize("n", [1, 3, 19])
def test_the_acting_plan_is_bitwise_the_acting_op_and_its_one_hot_matches(n, case, bf16):
    """``ops.ActPlan`` (weights checked once, parameter structs built once in C++) gives bitwise what ``ops.act``
    gives on the same arguments, and the one-hot it writes is exactly the one-hot of its class indices."""
    kw = [dict(), dict(discrete=False, act_dim=2), dict(norm="layer")][case]
    agent, _ = model(**kw)
    W = RolloutWeights(agent.wm.rssm, agent.behavior.actor, "post")
    plan = W.act_plan(bf16)
    for sample in (True, False):
        inputs = act_inputs(agent, n, seed=n + case)
        h, z, z1, a = plan(*inputs, 41, sample)
        want = ops.act(*inputs, W.get(bf16), W.dims(n, 1, bf16), W.floats(), 41, sample)
        assert torch.equal(h, want[0]) and torch.equal(z, want[1]) and torch.equal(a, want[2])
        assert z1.shape == (n, agent.wm.rssm.S, agent.wm.rssm.C) and z1.dtype == torch.float32
        assert torch.equal(z1, F.one_hot(z.long(), agent.wm.rssm.C).float())


def test_the_acting_plan_goes_through_the_op_on_the_reference_backend():
    agent, _ = model()
    W = RolloutWeights(agent.wm.rssm, agent.behavior.actor, "post")
    inputs = act_inputs(agent, 5)
    with ops.use_backend("reference"):
        h, z, z1, a = W.act_plan()(*inputs, 7, True)
        want = ops.act(*inputs, W.get(), W.dims(5, 1), W.floats(), 7, True)
    assert torch.equal(h, want[0]) and torch.equal(z, want[1]) and torch.equal(a, want[2])
    assert torch.equal(z1, F.one_hot(z.long(), agent.wm.rssm.C).float())


def test_the_acting_plan_is_remade_when_a_parameter_changes_in_place_or_is_replaced():
    agent, _ = model()
    r = agent.wm.rssm
    W = RolloutWeights(r, agent.behavior.actor, "post")
    inputs = act_inputs(agent, 4)
    plan = W.act_plan()
    assert W.act_plan() is plan
    before = plan(*inputs, 3, False)
    with torch.no_grad():
        r.gru.weight.mul_(1.5)                      # in place: a version counter moves
    assert W.act_plan() is not plan
    changed = W.act_plan()(*inputs, 3, False)
    assert not torch.equal(changed[0], before[0])
    plan = W.act_plan()
    r.gru.weight.data = r.gru.weight.data * 1.5     # new storage, same version counter
    assert W.act_plan() is not plan
    assert not torch.equal(W.act_plan()(*inputs, 3, False)[0], changed[0])


def test_the_acting_plan_names_each_bad_argument():
    agent, _ = model()
    W = RolloutWeights(agent.wm.rssm, agent.behavior.actor, "post")
    plan = W.act_plan()
    h, z, prev, first, embed = act_inputs(agent, 4)
    good = dict(h=h, z=z, prev_action=prev, is_first=first, embed=embed)
    bad = [("h", h.double(), r"h: expected a float32 CPU tensor \[n, 32\]"),
           ("h", h[:, :-1], r"h: expected a float32 CPU tensor \[n, 32\]"),
           ("z", z.long(), r"z: expected int32 class indices \[4, "),
           ("z", z[:3], r"z: expected int32 class indices \[4, "),
           ("prev_action", prev[:, :2], r"prev_action: expected a float32 CPU tensor \[4, 3\]"),
           ("is_first", first.int(), r"is_first: expected a bool CPU tensor \[4\]"),
           ("embed", embed.bfloat16(), r"embed: expected a float32 CPU tensor \[4, "),
           ("z", torch.full_like(z, 4), r"z: class indices must lie in \[-1, 4\), row 0"),
           ("z", torch.where(torch.arange(4)[:, None] == 2, -2, z), r"z: class indices must lie in \[-1, 4\), row 2")]
    for name, value, message in bad:
        with pytest.raises(ValueError, match=message):
            plan(**{**good, name: value}, seed=1)
    with pytest.raises(ValueError, match="seed"):
        plan(**good, seed=-1)
    with pytest.raises(ValueError, match="n = 0"):
        ops.ActPlan(W.get(), W.dims(4, 1), W.floats())
    with pytest.raises(ValueError, match=r"weights\[gru.W\]: expected float32"):
        names = [name for name, _ in ops.act_weight_shapes(W.dims(0, 1))]
        ops.ActPlan([w.double() if name == "gru.W" else w for name, w in zip(names, W.get())], W.dims(0, 1),
                    W.floats())
    with pytest.raises(ValueError, match="latent='post'"):
        RolloutWeights(agent.wm.rssm, agent.behavior.actor).act_plan()
    # non-contiguous inputs are read as their values
    wide = torch.cat([embed, embed], -1)[:, :embed.shape[1]]
    assert not wide.is_contiguous()
    assert torch.equal(plan(**{**good, "embed": wide}, seed=1)[0], plan(**good, seed=1)[0])


# ----------------------------------------------------------------------- teacher-forced against float64 at N = 1023
@pytest.mark.parametrize("discrete", [True, False], ids=["discrete", "continuous"])
def test_teacher_forced_steps_match_float64_at_an_odd_large_batch(discrete):
    """Each step of a float32 kernel rollout at N = 1023 (170 full 6-row tiles and a partial one, 21 row blocks and
    a partial one), re-run in float64 from the kernel's own (h_t, z_t, a_t): the core's h_{t+1} within 2e-6, and the
    latent and action draws of the float64 probabilities with the same uniforms equal to the kernel's for at least
    99.9 % of the draws (a float32 probability can round across a sampling boundary)."""
    from dreamer_ext.ops.reference import ROLLOUT_DIMS, _Twin
    agent, W = model(discrete=discrete, act_dim=3 if discrete else 2)
    r, n, H, seed = agent.wm.rssm, 1023, 4, 31
    start = starts(r, n)
    h0, z0 = start["h"], start["z"].argmax(-1).to(torch.int32)
    dims = W.dims(n, H)
    h, z, a = ops.rollout(h0, z0, W.get(), dims, W.floats(), seed)
    d = dict(zip(ROLLOUT_DIMS, dims))
    net = _Twin([None if w is None else w.double() for w in W.get()], d, d["prior_layers"])
    net.set_floats(W.floats())
    u = rollout_uniforms(seed, n, H, r.S, 1 if discrete else 2)

    def draw(probs, uniform):  # inverse CDF in float64
        return (probs.cumsum(-1)[..., :-1] <= uniform.double().unsqueeze(-1)).sum(-1)

    latent_equal = action_equal = 0
    for t in range(H):
        ht, zt = h[t].double(), z[t]
        logits = net.mlp(torch.cat([ht, net.onehot(zt).double()], -1), net.actor, net.actor_out)
        if discrete:
            probs = torch.softmax(logits, -1) * (1 - net.mix_actor) + net.mix_actor / 3
            action_equal += (draw(probs, u["action"][t]) == a[t].argmax(-1)).sum().item()
            a_in = a[t].double()
        else:
            mean = torch.tanh(logits[:, :2])
            std = (net.max_std - net.min_std) * torch.sigmoid(logits[:, 2:] + 2.0) + net.min_std
            want = mean + std * 2.0 ** 0.5 * torch.erfinv(2.0 * u["action"][t].double().clamp(1e-6, 1 - 1e-6) - 1.0)
            torch.testing.assert_close(a[t].double(), want, atol=1e-4, rtol=0)   # erfinv's float32 approximation
            action_equal += n
            a_in = a[t].double() / a[t].double().abs().clamp(min=1.0)
        h_next = net.core(ht, zt, a_in)
        torch.testing.assert_close(h[t + 1].double(), h_next, atol=2e-6, rtol=0)  # measured: 2.1e-7
        prior = net.mlp(h[t + 1].double(), net.latent, net.latent_out).reshape(n, r.S, r.C)
        probs = torch.softmax(prior, -1) * (1 - net.mix_rssm) + net.mix_rssm / r.C
        latent_equal += (draw(probs, u["latent"][t]) == z[t + 1]).sum().item()
    assert latent_equal >= 0.999 * H * n * r.S
    assert action_equal >= 0.999 * H * n


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("discrete", [True, False], ids=["discrete", "continuous"])
def test_a_team_of_threads_on_a_large_models_few_rows_gives_bitwise_the_serial_step(discrete, bf16):
    """At size12m (>= 4 MB of weights) and fewer rows than threads, the acting kernel shares each matmul's columns
    over a team (64-column panels; thread 0 does the rest): bitwise the one-thread step, for teams of 2 and 3, at
    1 row and at 7 rows with resets."""
    agent, _ = model(preset="size12m", discrete=discrete, act_dim=5 if discrete else 3)
    P = RolloutWeights(agent.wm.rssm, agent.behavior.actor, "post")
    plan = P.act_plan(bf16)
    for n in (1, 7):
        inputs = act_inputs(agent, n, seed=n)
        one = plan(*inputs, 13, True, threads=1)
        for team in (2, 3):
            out = plan(*inputs, 13, True, threads=team)
            assert all(torch.equal(x, y) for x, y in zip(out, one)), (n, team)
    with pytest.raises(ValueError, match="threads"):
        plan(*act_inputs(agent, 1), 13, True, threads=0)


# ------------------------------------------------------------------------------------------- the feat layout
@pytest.mark.parametrize("backend", ["kernels", "reference"])
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("n", [1, 3, 50])
def test_the_feat_layout_is_h_and_the_one_hot_latents_side_by_side(n, bf16, backend):
    """``feat=True``: the first output is [h, one-hot z] (the CPU kernel writes h rows D + S*C apart and the one-hot
    after them), bitwise the concatenation of the plain outputs; z and a are unchanged."""
    from dreamer_ext.ops._kernels import feat_of
    agent, W = model(rssm={"dyn_layers": 2, "prior_layers": 1})
    r = agent.wm.rssm
    start = starts(r, n)
    h0, z0 = start["h"], start["z"].argmax(-1).to(torch.int32)
    args = (h0, z0, W.get(bf16), W.dims(n, 4, bf16), W.floats(), 9, 2)
    with ops.use_backend(backend):
        h, z, a = ops.rollout(*args)
        feat, zf, af = ops.rollout(*args, feat=True)
    assert feat.shape == (5, n, r.deter + r.S * r.C) and feat.is_contiguous()
    assert torch.equal(feat, feat_of(h, z, r.C)) and torch.equal(zf, z) and torch.equal(af, a)
    with pytest.raises(ValueError, match="feat"):
        ops.rollout(*args, feat=1)


def test_fused_imagine_returns_h_and_z_as_views_of_the_kernels_feat():
    agent, W = model()
    r = agent.wm.rssm
    start = starts(r, 6)
    out = fused_imagine(W, start, 3, seed=4)
    h, z, a = ops.rollout(start["h"], start["z"].argmax(-1).int(), W.get(), W.dims(6, 3), W.floats(), 4)
    assert torch.equal(out["h"], h) and torch.equal(out["z"], F.one_hot(z.long(), r.C).float())
    assert out["h"].data_ptr() == out["feat"].data_ptr() and torch.equal(out["action"], a)
