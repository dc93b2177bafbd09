import pytest
import torch

from dreamer_ext import ops
from dreamer_ext.losses import total_loss
from dreamer_ext.objectives import DreamerObjective, Objective, make_objective
from dreamer_ext.world_model import WorldModel, shift_actions
from tiny_agent_config import image_vector_spec, random_batch, tiny_config, vector_spec


def prep(batch):
    batch = dict(batch)
    batch["is_first"] = batch["is_first"].bool()
    batch["is_terminal"] = batch["is_terminal"].bool()
    return batch


def test_shift_actions():
    a = torch.arange(6.0).reshape(1, 3, 2)
    s = shift_actions(a)
    assert torch.equal(s[0, 0], torch.zeros(2)) and torch.equal(s[0, 1:], a[0, :2])


def test_loss_terms_and_combination():
    torch.manual_seed(0)
    cfg = tiny_config()
    spec = image_vector_spec()
    wm = WorldModel(cfg, spec)
    batch = prep(random_batch(spec, B=2, T=5))
    terms, post, m = wm.loss(batch)
    assert set(terms) == set(DreamerObjective.terms) == {"rec", "rew", "con", "dyn", "rep"}
    assert all(t.shape == (2, 5) and torch.isfinite(t).all() for t in terms.values())
    assert post["feat"].shape == (2, 5, wm.rssm.feat_dim)
    torch.testing.assert_close(terms["rec"].mean(), m["loss/rec_image"] + m["loss/rec_vector"])
    loss, lm = total_loss(terms, {"rec": 1.0, "rew": 1.0, "con": 1.0, "dyn": 1.0, "rep": 0.1})
    torch.testing.assert_close(loss, sum(terms[k].mean() for k in ("rec", "rew", "con", "dyn"))
                               + 0.1 * terms["rep"].mean())
    # the reward head is zero-initialised: it predicts 0 and its loss is log(255)-ish at init for any target
    assert wm.reward(post["feat"]).pred().abs().max() < 1e-4
    loss.backward()
    for name in ("encoders", "rssm", "decoders", "reward_out", "cont_out"):
        mod = getattr(wm, name)
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in mod.parameters()), name


def test_free_bits_clamp_per_element():
    torch.manual_seed(0)
    cfg = tiny_config(loss={"free_bits": 1.0})
    spec = vector_spec()
    wm = WorldModel(cfg, spec)
    batch = prep(random_batch(spec, B=2, T=4))
    post, _ = wm.observe(batch)
    # identical posterior and prior: KL = 0 -> both terms sit at the free-bits floor and give no gradient
    post["prior_logits"] = post["post_logits"].detach().clone().requires_grad_(True)
    terms, m = wm.objective(wm, batch, post)
    dyn, rep = terms["dyn"].mean(), terms["rep"].mean()
    assert m["kl/dyn"].abs() < 1e-5 and dyn.item() == pytest.approx(1.0) and rep.item() == pytest.approx(1.0)
    g = torch.autograd.grad(dyn, post["prior_logits"], allow_unused=True)[0]
    assert g is None or g.abs().sum() == 0
    # a KL above the floor in one element only gets gradient there
    pl = post["post_logits"].detach().clone()
    pl[0, 0] += torch.randn_like(pl[0, 0]) * 10
    pl.requires_grad_(True)
    post["prior_logits"] = pl
    terms, m = wm.objective(wm, batch, post)
    g = torch.autograd.grad(terms["dyn"].mean(), pl)[0]
    assert g[0, 0].abs().sum() > 0 and g[1:].abs().sum() == 0 and g[0, 1:].abs().sum() == 0


def test_symexp_bins_switch():
    cfg = tiny_config(heads={"bins": "symexp"})
    wm = WorldModel(cfg, vector_spec())
    assert wm.bins.max() > 1e8 and wm.reward(torch.zeros(2, wm.rssm.feat_dim)).space == "symexp"


def test_make_objective_registry():
    cfg = tiny_config()
    assert isinstance(make_objective("dreamer", cfg), DreamerObjective)
    with pytest.raises(ValueError, match="objective"):
        make_objective("nope", cfg)
    assert issubclass(DreamerObjective, Objective)


def test_bad_spec():
    from dreamer_ext.envs.spec import EnvSpec
    with pytest.raises(ValueError, match="spec"):
        WorldModel(tiny_config(), EnvSpec(obs={"x": ((2, 3), "float32")}, act_dim=2))


@pytest.mark.parametrize("contdisc", [True, False])
def test_continue_target(contdisc):
    """V2 ``contdisc``: the target is (1 − terminal)·γ; the notes' switch: 1 − terminal."""
    cfg = tiny_config(imag={"contdisc": contdisc, "gamma": 0.9})
    spec = vector_spec()
    wm = WorldModel(cfg, spec)
    logit = 1.5
    with torch.no_grad():
        wm.cont_out.weight.zero_()
        wm.cont_out.bias.fill_(logit)  # predicts p = sigmoid(1.5) everywhere
    batch = prep(random_batch(spec, B=2, T=5))  # exactly one terminal step out of 10
    terms, _, _ = wm.loss(batch)
    target = (1.0 - batch["is_terminal"].float()) * (0.9 if contdisc else 1.0)
    want = torch.nn.functional.binary_cross_entropy_with_logits(torch.full((2, 5), logit), target, reduction="none")
    torch.testing.assert_close(terms["con"], want)


@pytest.mark.parametrize("half", [False, True])
def test_vector_decoder_loss_scale_switch(half):
    torch.manual_seed(0)
    cfg = tiny_config(decoder={"vector_half": half})
    wm = WorldModel(cfg, vector_spec())
    feat = torch.randn(2, 3, wm.rssm.feat_dim)
    y = torch.randn(2, 3, 5) * 4
    f = wm.decoders["vector"](feat.reshape(-1, feat.shape[-1])).reshape(2, 3, 5)
    want = ((f - ops.symlog(y)) ** 2).sum(-1) * (0.5 if half else 1.0)
    torch.testing.assert_close(wm.decode(feat)["vector"].loss(y), want)
