"""The loss table: one dict of per-element terms, one dict of scales from LossConfig, one total."""
import dataclasses

import pytest
import torch

from dreamer_ext.agent import Agent
from dreamer_ext.config import BEHAVIOR_TERMS, OBJECTIVE_TERMS, LossConfig, loss_scales
from dreamer_ext.losses import total_loss
from tiny_agent_config import random_batch, tiny_config, vector_spec


def test_total_is_the_scaled_sum_of_term_means():
    terms = {"a": torch.tensor([[1.0, 3.0]]), "b": torch.tensor([4.0, 6.0, 8.0])}
    total, m = total_loss(terms, {"a": 2.0, "b": 0.5})
    assert total.item() == pytest.approx(2.0 * 2.0 + 0.5 * 6.0)
    assert m["loss/a"].item() == 2.0 and m["loss/b"].item() == 6.0 and m["loss/total"].item() == total.item()


@pytest.mark.parametrize("terms, named", [({"a": torch.ones(2)}, "missing \\['b'\\]"),
                                          ({"a": torch.ones(2), "b": torch.ones(2), "c": torch.ones(1)},
                                           "without a scale \\['c'\\]")])
def test_terms_and_scales_must_name_the_same_keys(terms, named):
    with pytest.raises(ValueError, match=named):
        total_loss(terms, {"a": 1.0, "b": 1.0})


def test_scales_are_the_objectives_terms_and_the_behaviour_terms():
    cfg = tiny_config(loss={"rep": 0.25, "critic": 0.5, "repval": 0.3})
    scales = loss_scales(cfg)
    assert set(scales) == {"rec", "rew", "con", "dyn", "rep", "actor", "critic", "repval"}
    assert scales["rep"] == 0.25 and scales["critic"] == 0.5 and scales["rec"] == 1.0
    repo = loss_scales(tiny_config(objective="repo", loss={"kl": 2.0, "repval": 0.3}))
    assert set(repo) == {"rew", "con", "kl", "probe", "actor", "critic", "repval"}
    assert repo["kl"] == 2.0
    # every LossConfig field but free_bits is some objective's or the behaviour's term
    used = {t for ts in OBJECTIVE_TERMS.values() for t in ts} | set(BEHAVIOR_TERMS)
    assert used == {f.name for f in dataclasses.fields(LossConfig)} - {"free_bits"}


def _step_with_grads(agent, spec):
    """One train step; returns (metrics, the gradients the optimiser saw, by parameter name)."""
    grads = {}
    real_step = agent.opt.step

    def spy(allow=True):
        grads.update({n: p.grad.clone() for n, p in agent.named_parameters() if p.grad is not None})
        return real_step(allow=allow)

    agent.opt.step = spy
    torch.manual_seed(1)
    return agent.train_step(random_batch(spec, B=2, T=5)), grads


def _grads(scales_override):
    torch.manual_seed(0)
    spec = vector_spec()
    return _step_with_grads(Agent(tiny_config(loss=scales_override, optim={"warmup": 1}), spec), spec)


def test_agent_total_is_computed_once_from_the_table_and_each_scale_acts_on_its_term():
    m, g = _grads({})
    scales = loss_scales(tiny_config())
    assert m["loss/total"] == pytest.approx(sum(s * m[f"loss/{k}"] for k, s in scales.items()), rel=1e-5)
    # a zero actor scale removes exactly the actor's gradients; the world model's are untouched
    m0, g0 = _grads({"actor": 0.0})
    actor = [n for n in g if n.startswith("behavior.actor.")]
    assert actor and all(n not in g0 or g0[n].abs().sum() == 0 for n in actor)
    wm = [n for n in g if n.startswith("wm.")]
    assert wm and all(torch.equal(g[n], g0[n]) for n in wm)
    # doubling the reward scale doubles the reward head's gradient (it only gets the reward term)
    m2, g2 = _grads({"rew": 2.0})
    torch.testing.assert_close(g2["wm.reward_out.weight"], 2 * g["wm.reward_out.weight"])


def _repval_only_grads(repval_grad):
    torch.manual_seed(0)
    spec = vector_spec()
    zero = {k: 0.0 for k in ("rec", "rew", "con", "dyn", "rep", "actor", "critic")}
    agent = Agent(tiny_config(loss={**zero, "repval": 1.0}, critic={"repval_grad": repval_grad}), spec)
    with torch.no_grad():
        agent.behavior.critic.out.weight.normal_(0, 0.3)  # zero-initialised otherwise: no gradient into feat
    return _step_with_grads(agent, spec)


def test_replay_value_loss_is_a_term_of_the_table_and_reaches_the_world_model_with_repval_grad():
    m, g = _repval_only_grads(True)
    assert m["loss/repval"] > 0 and m["loss/total"] == pytest.approx(m["loss/repval"], rel=1e-6)
    enc = [n for n in g if n.startswith("wm.encoders.") or n.startswith("wm.rssm.")]
    assert enc and any(g[n].abs().sum() > 0 for n in enc)
    assert any(g[n].abs().sum() > 0 for n in g if n.startswith("behavior.critic."))
    _, g0 = _repval_only_grads(False)
    assert all(g0[n].abs().sum() == 0 for n in g0 if n.startswith("wm."))
    assert any(g0[n].abs().sum() > 0 for n in g0 if n.startswith("behavior.critic."))


def test_zero_repval_scale_switches_the_term_off():
    torch.manual_seed(0)
    spec = vector_spec()
    agent = Agent(tiny_config(loss={"repval": 0.0}), spec)
    m = agent.train_step(random_batch(spec, B=2, T=5))
    assert "loss/repval" not in m and "repval" not in agent.scales
