"""The RePo objective (dreamer_ext/objectives/repo.py): the dual step's direction and clamp, no reconstruction gradient
into the encoder or RSSM, the probe's own optimiser, skip coupling, the loss table, alarms, and the checkpoint round
trip of beta and its optimiser."""
import io
import math

import pytest
import torch

from dreamer_ext.agent import Agent
from dreamer_ext.objectives import RepoObjective
from tiny_agent_config import image_vector_spec, random_batch, tiny_config, vector_spec


def repo_agent(spec=None, **repo):
    torch.manual_seed(0)
    spec = spec or vector_spec()
    return Agent(tiny_config(objective="repo", repo=repo), spec), spec


def log_beta(agent) -> float:
    return float(agent.wm.objective.log_beta.detach())


@pytest.mark.parametrize("eps, rises", [(1e-3, True), (5.0, False)])
def test_dual_step_raises_beta_over_budget_and_lowers_it_under(eps, rises):
    agent, spec = repo_agent(eps=eps, beta_init=0.1)
    before = log_beta(agent)
    for i in range(3):
        m = agent.train_step(random_batch(spec, seed=i))
        assert m["opt/skipped"] == 0 and m["repo/dual_skipped"] == 0
        kl = m["repo/kl_bal"]
        assert (kl > eps) == rises  # the batch really is over (under) budget
    after = log_beta(agent)
    assert (after > before) if rises else (after < before)
    # Adam moves log beta by about lr per step
    assert abs(after - before) == pytest.approx(3 * 1e-3, rel=0.2)


def test_beta_is_clamped_and_the_clamp_is_counted():
    agent, spec = repo_agent(eps=1e-3, beta_init=5.0, beta_max=5.5, beta_lr=0.5)
    for i in range(4):
        m = agent.train_step(random_batch(spec, seed=i))
    assert math.exp(log_beta(agent)) == pytest.approx(5.5, rel=1e-6)
    assert m["repo/at_clamp_updates"] >= 2 and m["repo/beta_after"] == pytest.approx(5.5, rel=1e-6)
    lo, _ = repo_agent(eps=5.0, beta_init=2e-4, beta_min=1e-4, beta_lr=0.5)
    for i in range(4):
        lo.train_step(random_batch(spec, seed=i))
    assert math.exp(log_beta(lo)) == pytest.approx(1e-4, rel=1e-6)


def test_no_reconstruction_gradient_reaches_the_encoder_or_the_rssm():
    agent, spec = repo_agent(spec=image_vector_spec())
    data, carry = agent._prepare(random_batch(spec))
    terms, post, _ = agent.wm.loss(data, carry)
    terms["probe"].mean().backward()
    for name, p in agent.wm.named_parameters():
        if name.startswith("decoders."):
            continue
        assert p.grad is None or not p.grad.any(), name
    assert any(p.grad is not None and p.grad.any() for p in agent.wm.decoders.parameters())
    # while the continue and KL terms do train the encoder and the RSSM (the reward head's output starts at zero)
    agent.wm.zero_grad()
    terms, _, _ = agent.wm.loss(data, carry)
    (terms["con"] + terms["kl"]).mean().backward()
    assert any(p.grad is not None and p.grad.any() for p in agent.wm.encoders.parameters())
    assert any(p.grad is not None and p.grad.any() for p in agent.wm.rssm.parameters())


def test_probe_and_beta_have_their_own_optimisers():
    agent, spec = repo_agent()
    in_model = {id(p) for ps in agent.opt.modules.values() for p in ps}
    assert not any(id(p) in in_model for p in agent.wm.decoders.parameters())
    assert id(agent.wm.objective.log_beta) not in in_model
    # every other world-model parameter is in the model optimiser
    others = [p for n, p in agent.wm.named_parameters() if not n.startswith("decoders.") and "log_beta" not in n]
    assert all(id(p) in in_model for p in others)
    dec = [p.detach().clone() for p in agent.wm.decoders.parameters()]
    agent.train_step(random_batch(spec))
    assert any(not torch.equal(a, p) for a, p in zip(dec, agent.wm.decoders.parameters()))  # the probe stepped
    assert all(p.grad is None for p in agent.wm.decoders.parameters())  # and left no gradient to pile up
    assert isinstance(agent.wm.objective.probe_opt, torch.optim.Adam)


def test_a_skipped_model_step_skips_the_dual_and_probe_steps():
    agent, spec = repo_agent(eps=1e-3)
    agent.train_step(random_batch(spec))
    lb, dec = log_beta(agent), [p.detach().clone() for p in agent.wm.decoders.parameters()]
    bad = random_batch(spec, seed=3)
    bad["reward"][0, 2] = float("nan")
    m = agent.train_step(bad)
    assert m["opt/skipped"] == 1 and m["repo/dual_skipped"] == 1
    assert log_beta(agent) == lb
    assert all(torch.equal(a, p) for a, p in zip(dec, agent.wm.decoders.parameters()))
    assert m["repo/alarms"] >= 1
    m = agent.train_step(random_batch(spec, seed=4))  # and it recovers
    assert m["opt/skipped"] == 0 and log_beta(agent) != lb


def test_loss_table_and_metrics():
    agent, spec = repo_agent(eps=2.0, beta_init=0.01)
    m = agent.train_step(random_batch(spec))
    for k in ("loss/rew", "loss/con", "loss/kl", "loss/probe", "kl/dyn", "kl/rep", "repo/violation", "repo/beta",
              "repo/beta_violation", "repo/kl_above_eps_frac", "repo/max_logit", "ent/post", "ent/prior"):
        assert k in m and math.isfinite(m[k]), k
    assert "loss/rec" not in m and "loss/dyn" not in m  # no reconstruction term, no free-bits KL terms
    kl_bal = 5 / 6 * m["kl/dyn"] + 1 / 6 * m["kl/rep"]
    assert m["repo/kl_bal"] == pytest.approx(kl_bal, rel=1e-5)
    assert m["repo/violation"] == pytest.approx(kl_bal - 2.0, rel=1e-5)
    assert m["loss/kl"] == pytest.approx(0.01 * (kl_bal - 2.0), rel=1e-4)  # sg(beta) (KL_bal - eps), before the step
    assert 0.0 <= m["repo/kl_above_eps_frac"] <= 1.0


def test_kl_ema_smooths_the_dual_steps_kl():
    agent, spec = repo_agent(kl_ema=0.9)
    obj = agent.wm.objective
    assert math.isnan(float(obj.kl_ema))
    m1 = agent.train_step(random_batch(spec, seed=0))
    assert float(obj.kl_ema) == pytest.approx(m1["repo/kl_bal"], rel=1e-6)  # the first value starts the EMA
    m2 = agent.train_step(random_batch(spec, seed=1))
    assert float(obj.kl_ema) == pytest.approx(0.9 * m1["repo/kl_bal"] + 0.1 * m2["repo/kl_bal"], rel=1e-5)


def test_alarms_fire_on_large_kl(capsys):
    agent, spec = repo_agent(eps=1e-3)
    m = agent.train_step(random_batch(spec))
    assert m["repo/kl_bal"] > 10 * 1e-3 and m["repo/alarms"] >= 1
    assert "warning: repo: KL_bal" in capsys.readouterr().err


def test_checkpoint_round_trip_of_beta_and_its_optimiser():
    agent, spec = repo_agent(eps=1e-3, beta_init=0.05)
    for i in range(2):
        agent.train_step(random_batch(spec, seed=i))
    buf = io.BytesIO()
    torch.save(agent.checkpoint_state(), buf)  # as a checkpoint file holds it (the live state would be shared)
    buf.seek(0)
    other, _ = repo_agent(eps=1e-3, beta_init=0.05)
    other.load_checkpoint_state(torch.load(buf, weights_only=True))  # as checkpoint.py loads
    a, b = agent.wm.objective, other.wm.objective
    assert log_beta(agent) == log_beta(other) and a.updates == b.updates == 2
    sa, sb = a.beta_opt.state_dict()["state"][0], b.beta_opt.state_dict()["state"][0]
    assert all(torch.equal(sa[k], sb[k]) for k in ("exp_avg", "exp_avg_sq"))
    # both continue identically, including the probe's optimiser (restored before its first use)
    batch = random_batch(spec, seed=9)
    torch.manual_seed(1)
    ma = agent.train_step(batch)
    torch.manual_seed(1)
    mb = other.train_step(batch)
    assert ma["repo/beta_after"] == mb["repo/beta_after"]
    assert all(torch.equal(p, q) for p, q in zip(agent.wm.decoders.parameters(), other.wm.decoders.parameters()))


def test_repo_is_an_objective_module():
    agent, _ = repo_agent()
    assert isinstance(agent.wm.objective, RepoObjective)
    assert math.exp(log_beta(agent)) == pytest.approx(1e-3, rel=1e-6)  # the default init survives the model init


def test_the_probes_pixel_sum_loss_raises_no_alarm(capsys):
    agent, _ = repo_agent(spec=image_vector_spec(), eps=3.0)  # an image probe's loss is in the thousands at first
    m = agent.train_step(random_batch(image_vector_spec()))
    assert m["loss/probe"] > 1e3 and m["loss/total"] > 1e3
    assert m["repo/alarms"] == 0 and "warning: repo" not in capsys.readouterr().err
