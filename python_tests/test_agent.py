import io
import math

import pytest
import torch

from dreamer_ext.agent import Agent
from tiny_agent_config import image_vector_spec, random_batch, tiny_config, vector_spec

REQUIRED = ["loss/total", "loss/rec", "loss/rew", "loss/con", "loss/dyn", "loss/rep", "kl/dyn", "kl/rep",
            "loss/actor", "loss/critic", "actor/entropy", "ent/post", "ent/prior", "ret/scale",
            "grad_norm/world_model", "grad_norm/actor", "grad_norm/critic", "opt/skipped"]


def test_train_step_image_and_vector():
    torch.manual_seed(0)
    spec = image_vector_spec()
    agent = Agent(tiny_config(), spec)
    assert agent.device == torch.device("cpu")
    before = {k: v.detach().clone() for k, v in agent.state_dict().items()}
    batch = random_batch(spec, B=2, T=5)
    m = agent.train_step(batch)
    for k in REQUIRED:
        assert k in m and isinstance(m[k], float) and math.isfinite(m[k]), k
    assert m["opt/skipped"] == 0.0
    after = agent.state_dict()
    changed = {k.split(".")[0] + "." + k.split(".")[1] for k in before
               if before[k].dtype.is_floating_point and not torch.equal(before[k], after[k])}
    for mod in ("wm.encoders", "wm.rssm", "wm.decoders", "behavior.actor", "behavior.critic",
                "behavior.slow_critic"):
        assert mod in changed, mod
    # the zero-initialised reward and critic heads predict exactly 0 at first (raw-space bins, paired sum), so the
    # imagined returns, and with them the return scale, move from the second update on
    assert torch.equal(after["behavior.retnorm.scale"], before["behavior.retnorm.scale"])
    m2 = agent.train_step(batch)
    assert math.isfinite(m2["loss/total"])
    assert not torch.equal(agent.state_dict()["behavior.retnorm.scale"], before["behavior.retnorm.scale"])


def test_train_step_continuous_vector_only():
    torch.manual_seed(0)
    spec = vector_spec(discrete=False, act_dim=2)
    agent = Agent(tiny_config(norm="layer", optim={"kind": "adam"}), spec)
    m = agent.train_step(random_batch(spec, B=3, T=4))
    assert all(math.isfinite(v) for v in m.values())


def test_train_step_rejects_bad_batch():
    spec = vector_spec()
    agent = Agent(tiny_config(), spec)
    batch = random_batch(spec)
    del batch["reward"]
    with pytest.raises(ValueError, match="reward"):
        agent.train_step(batch)
    batch = random_batch(spec)
    batch["action"] = batch["action"][..., :2]
    with pytest.raises(ValueError, match="action"):
        agent.train_step(batch)


def _obs(spec, B, seed=0):
    g = torch.Generator().manual_seed(seed)
    obs = {}
    for k, (shape, dtype) in spec.obs.items():
        obs[k] = (torch.randint(0, 256, (B, *shape), dtype=torch.uint8, generator=g) if dtype == "uint8"
                  else torch.randn(B, *shape, generator=g))
    obs["is_first"] = torch.ones(B, dtype=torch.bool)
    return obs


def test_policy_discrete_onehot_and_carry():
    torch.manual_seed(0)
    spec = image_vector_spec(discrete=True, act_dim=4)
    agent = Agent(tiny_config(), spec)
    carry = agent.initial_carry(3)
    assert carry["h"].shape == (3, 32) and carry["z"].shape == (3, 4, 4) and carry["action"].shape == (3, 4)
    obs = _obs(spec, 3)
    a, carry = agent.policy(obs, carry)
    assert a.shape == (3, 4) and torch.equal(a.sum(-1), torch.ones(3)) and set(a.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(carry["action"], a) and not a.requires_grad
    with pytest.raises(ValueError, match="sample"):
        agent.policy(obs, carry, sample="greedy")


@pytest.mark.parametrize("discrete", [True, False])
def test_eval_mode_takes_the_actors_mode_and_train_mode_samples(discrete):
    """The eval action is the mode of the actor's distribution at the new state (no reseeding between the calls, so
    a sampling eval mode would fail: 16 rows of a near-uniform 4-way policy all equal to its mode by chance has
    probability 4^-16)."""
    torch.manual_seed(0)
    spec = vector_spec(discrete=discrete, act_dim=4)
    agent = Agent(tiny_config(), spec)
    obs = _obs(spec, 16, seed=1)
    for sample, want_equal in ((False, True), (True, False)):
        action, carry = agent.policy(obs, agent.initial_carry(16), sample=sample)
        with torch.no_grad(), agent.autocast():  # the same compute precision as the policy's
            mode_action = agent.behavior.actor(agent.wm.rssm.feat(carry)).mode()
        if discrete:
            assert torch.equal(action, mode_action) == want_equal, sample
        else:  # the fused step rounds differently from the autocast actor (~1e-4); a sample is ~0.1 away
            assert torch.allclose(action, mode_action.clamp(-1, 1), atol=2e-3, rtol=0) == want_equal, sample


def test_policy_reset_by_is_first():
    torch.manual_seed(0)
    spec = vector_spec()
    agent = Agent(tiny_config(), spec)
    obs = _obs(spec, 2)
    garbage = {"h": torch.randn(2, 32) * 3, "z": torch.rand(2, 4, 4), "action": torch.rand(2, 3)}
    torch.manual_seed(5)
    _, c1 = agent.policy(obs, garbage)
    torch.manual_seed(5)
    _, c2 = agent.policy(obs, agent.initial_carry(2))
    torch.testing.assert_close(c1["h"], c2["h"])
    torch.testing.assert_close(c1["z"], c2["z"])
    obs["is_first"][:] = False
    torch.manual_seed(5)
    _, c3 = agent.policy(obs, garbage)
    assert not torch.allclose(c3["h"], c2["h"])


def test_policy_continuous_bounds():
    torch.manual_seed(0)
    spec = vector_spec(discrete=False, act_dim=2)
    agent = Agent(tiny_config(), spec)
    a, _ = agent.policy(_obs(spec, 64), agent.initial_carry(64))
    assert a.shape == (64, 2) and a.abs().max() <= 1.0 and a.std() > 0


def test_param_count():
    agent = Agent(tiny_config(), vector_spec())
    pc = agent.param_count()
    assert pc["total"] == sum(v for k, v in pc.items() if k != "total")
    n_slow = sum(p.numel() for p in agent.behavior.slow_critic.parameters())
    assert pc["total"] == sum(p.numel() for p in agent.parameters()) - n_slow
    assert pc["critic"] == n_slow


def test_checkpoint_round_trip_resumes_identically():
    torch.manual_seed(0)
    spec = vector_spec()
    a1 = Agent(tiny_config(), spec)
    batch = random_batch(spec, B=2, T=4)
    a1.train_step(batch)
    buf = io.BytesIO()
    torch.save(a1.checkpoint_state(), buf)
    buf.seek(0)
    a2 = Agent(tiny_config(), spec)
    a2.load_checkpoint_state(torch.load(buf))
    torch.manual_seed(3)
    m1 = a1.train_step(batch)
    torch.manual_seed(3)
    m2 = a2.train_step(batch)
    assert m1["loss/total"] == m2["loss/total"]
    for (k, v1), v2 in zip(a1.state_dict().items(), a2.state_dict().values()):
        assert torch.equal(v1, v2), k


def test_small_acting_batches_run_on_one_thread_and_restore_the_count(monkeypatch):
    from dreamer_ext import agent as agent_mod
    torch.manual_seed(0)
    spec = vector_spec()
    agent = Agent(tiny_config(), spec)
    seen = []
    real = agent_mod.fused_act
    monkeypatch.setattr(agent_mod, "fused_act", lambda *a, **k: (seen.append(torch.get_num_threads()), real(*a, **k))[1])
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for n in (1, 16, 17, 40):
            agent.policy(_obs(spec, n), agent.initial_carry(n))
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert seen == [1, 1, 2, 2]   # one thread per 16 environments, at most torch's count
