"""A non-finite loss or gradient skips the whole update: Agent.train_step leaves every parameter, buffer and all
optimiser state bit-for-bit as it was, and the next clean batch trains normally."""
import copy
import math

import pytest
import torch

from dreamer_ext.agent import Agent
from dreamer_ext.config import OptimConfig
from dreamer_ext.optim import Optimizer
from tiny_agent_config import image_vector_spec, random_batch, tiny_config, vector_spec

NAN, INF = float("nan"), float("inf")


# ------------------------------------------------------------------------------------------------------------ helpers
def snapshot_model(agent):
    """Every parameter and buffer (persistent or not), cloned."""
    out = {f"param:{k}": v.detach().clone() for k, v in agent.named_parameters()}
    out.update({f"buffer:{k}": v.detach().clone() for k, v in agent.named_buffers()})
    out.update({f"state:{k}": v.detach().clone() for k, v in agent.state_dict().items()})
    return out


def snapshot_opt(agent):
    return copy.deepcopy(agent.opt.state_dict())  # deepcopy clones every state tensor


def assert_same(a, b, path="opt"):
    """Recursive bitwise equality of nested dicts/lists of tensors and plain values."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (path, set(a) ^ set(b))
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b)), (path, a, b)


def assert_model_unchanged(before, agent):
    after = snapshot_model(agent)
    assert set(before) == set(after)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, changed


def trained_agent(spec, **overrides):
    """An agent after one clean update, so the optimiser has state (step counts, m, v) to protect."""
    torch.manual_seed(0)
    agent = Agent(tiny_config(**overrides), spec)
    m = agent.train_step(random_batch(spec, B=2, T=5, seed=1))
    assert m["opt/skipped"] == 0.0 and agent.opt.steps == 1
    assert agent.opt.opts  # sanity: state exists for the parameters that had gradients
    assert any(len(o.state) > 0 for o in agent.opt.opts.values())
    return agent


def check_skipped_then_recovers(agent, spec, bad_batch, patch=None):
    """train_step on ``bad_batch`` (optionally inside ``patch``) must be a no-op; then a clean batch must train."""
    model_before, opt_before, steps = snapshot_model(agent), snapshot_opt(agent), agent.opt.steps
    updates, scale = int(agent.behavior.updates), agent.behavior.retnorm.scale.clone()
    if patch is None:
        m = agent.train_step(bad_batch)
    else:
        with patch():
            m = agent.train_step(bad_batch)
    assert m["opt/skipped"] == 1.0
    assert isinstance(m["opt/skipped"], float)
    assert_model_unchanged(model_before, agent)
    assert_same(opt_before, snapshot_opt(agent))
    assert agent.opt.steps == steps
    assert int(agent.behavior.updates) == updates
    assert torch.equal(agent.behavior.retnorm.scale, scale)
    assert all(p.grad is None for p in agent.parameters())  # the bad gradients are dropped, not accumulated

    # the next clean batch trains as usual
    m = agent.train_step(random_batch(spec, B=2, T=5, seed=3))
    assert m["opt/skipped"] == 0.0
    assert agent.opt.steps == steps + 1 and int(agent.behavior.updates) == updates + 1
    assert math.isfinite(m["loss/total"]) and math.isfinite(m["ret/scale"])
    after = snapshot_model(agent)
    for prefix in ("param:wm.", "param:behavior.actor.", "param:behavior.critic.", "param:behavior.slow_critic."):
        keys = [k for k in model_before if k.startswith(prefix)]
        assert keys and any(not torch.equal(model_before[k], after[k]) for k in keys), prefix
    assert all(torch.isfinite(v).all() for k, v in after.items() if v.dtype.is_floating_point), "non-finite state"
    assert torch.isfinite(agent.behavior.retnorm.scale) and not torch.equal(agent.behavior.retnorm.scale, scale)
    return m


# ------------------------------------------------------------------------------------------------------------ agent
@pytest.mark.parametrize("kind", ["laprop", "adam"])
def test_nan_reward_skips_update(kind):
    spec = vector_spec()
    agent = trained_agent(spec, optim={"kind": kind, "warmup": 1})
    bad = random_batch(spec, B=2, T=5, seed=2)
    bad["reward"][1, 2] = NAN
    check_skipped_then_recovers(agent, spec, bad)


def test_inf_vector_observation_skips_update():
    spec = vector_spec()
    agent = trained_agent(spec)
    bad = random_batch(spec, B=2, T=5, seed=2)
    bad["vector"][0, 3, 1] = INF
    check_skipped_then_recovers(agent, spec, bad)


def test_inf_vector_observation_skips_update_with_image():
    spec = image_vector_spec()
    agent = trained_agent(spec)
    bad = random_batch(spec, B=2, T=5, seed=2)
    bad["vector"][1, 0, 4] = -INF
    check_skipped_then_recovers(agent, spec, bad)


def test_finite_loss_with_nonfinite_gradient_skips_update():
    """The losses are finite but one parameter's gradient is NaN (a tensor hook rewrites it)."""
    spec = vector_spec()
    agent = trained_agent(spec)
    bad = random_batch(spec, B=2, T=5, seed=2)
    target = next(agent.behavior.critic.parameters())
    seen = {}

    class nan_grad_hook:
        def __enter__(self):
            def hook(g):
                seen["called"] = True
                return torch.full_like(g, NAN)
            self.handle = target.register_hook(hook)

        def __exit__(self, *exc):
            self.handle.remove()

    m = check_skipped_then_recovers(agent, spec, bad, patch=nan_grad_hook)
    assert seen.get("called")
    assert m["opt/skipped"] == 0.0  # the clean step after the hook was removed


def test_finite_loss_with_nonfinite_world_model_gradient_skips_update():
    spec = vector_spec()
    agent = trained_agent(spec)
    target = next(agent.wm.parameters())

    class inf_grad_hook:
        def __enter__(self):
            self.handle = target.register_hook(lambda g: g * INF)

        def __exit__(self, *exc):
            self.handle.remove()

    check_skipped_then_recovers(agent, spec, random_batch(spec, B=2, T=5, seed=2), patch=inf_grad_hook)


def test_nonfinite_loss_with_finite_gradients_skips_update(monkeypatch):
    """A NaN constant added to the actor-critic loss makes the loss non-finite but leaves every gradient finite: the
    update must still be skipped (``allow=False`` path)."""
    spec = vector_spec()
    agent = trained_agent(spec)
    real_loss = agent.behavior.loss
    grads_finite = {}

    def nan_loss(*args, **kwargs):
        terms, metrics, start_return = real_loss(*args, **kwargs)
        return {**terms, "actor": terms["actor"] + torch.tensor(NAN)}, metrics, start_return

    real_step = agent.opt.step

    def spy_step(allow=True):
        grads = [p.grad for p in agent.parameters() if p.grad is not None]
        grads_finite["all"] = bool(grads) and all(torch.isfinite(g).all() for g in grads)
        grads_finite["allow"] = allow
        return real_step(allow=allow)

    class patched:
        def __enter__(self):
            monkeypatch.setattr(agent.behavior, "loss", nan_loss)
            monkeypatch.setattr(agent.opt, "step", spy_step)

        def __exit__(self, *exc):
            monkeypatch.undo()

    check_skipped_then_recovers(agent, spec, random_batch(spec, B=2, T=5, seed=2), patch=patched)
    assert grads_finite == {"all": True, "allow": False}


def test_repeated_bad_batches_never_accumulate():
    spec = vector_spec()
    agent = trained_agent(spec)
    model_before, opt_before = snapshot_model(agent), snapshot_opt(agent)
    for seed in range(3):
        bad = random_batch(spec, B=2, T=5, seed=10 + seed)
        if seed % 2:
            bad["vector"][:, -1] = INF
        else:
            bad["reward"][:, -1] = NAN
        assert agent.train_step(bad)["opt/skipped"] == 1.0
    assert_model_unchanged(model_before, agent)
    assert_same(opt_before, snapshot_opt(agent))


# ------------------------------------------------------------------------------------------------------------ optimiser
def make_optimizer(kind):
    torch.manual_seed(0)
    a, b = torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)
    opt = Optimizer(OptimConfig(kind=kind, warmup=0, lr=0.1), {"world_model": list(a.parameters()),
                                                              "actor": list(b.parameters())})
    return opt, list(a.parameters()) + list(b.parameters())


def set_grads(params, seed):
    g = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)


@pytest.mark.parametrize("kind", ["laprop", "adam"])
def test_optimizer_step_allow_false(kind):
    opt, params = make_optimizer(kind)
    set_grads(params, 0)
    assert opt.step()["opt/skipped"].item() == 0.0 and opt.steps == 1  # create optimiser state
    p_before = [p.detach().clone() for p in params]
    s_before = copy.deepcopy(opt.state_dict())

    set_grads(params, 1)
    expected_norm = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in params[:2]])).item()
    m = opt.step(allow=False)
    assert m["opt/skipped"].item() == 1.0
    assert m["grad_norm/world_model"].item() == pytest.approx(expected_norm, rel=1e-6)  # still reported
    assert "opt/lr" not in m
    assert opt.steps == 1
    assert all(torch.equal(x, p) for x, p in zip(p_before, params))
    assert_same(s_before, copy.deepcopy(opt.state_dict()))
    assert all(p.grad is None for p in params)

    # the default still applies finite gradients, and the skipped ones were not kept around
    set_grads(params, 1)
    m = opt.step()
    assert m["opt/skipped"].item() == 0.0 and opt.steps == 2
    assert all(not torch.equal(x, p) for x, p in zip(p_before, params))
    assert all(torch.isfinite(p).all() for p in params)


@pytest.mark.parametrize("kind", ["laprop", "adam"])
@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_optimizer_step_nonfinite_grad_in_one_module(kind, bad):
    opt, params = make_optimizer(kind)
    set_grads(params, 0)
    opt.step()
    p_before = [p.detach().clone() for p in params]
    s_before = copy.deepcopy(opt.state_dict())
    set_grads(params, 1)
    params[-1].grad[0] = bad  # one element of the actor's bias
    m = opt.step(allow=True)
    assert m["opt/skipped"].item() == 1.0 and opt.steps == 1
    assert all(torch.equal(x, p) for x, p in zip(p_before, params))
    assert_same(s_before, copy.deepcopy(opt.state_dict()))


def test_optimizer_step_identical_after_skip():
    """Skipping (allow=False) between two updates gives exactly the parameters of the two updates alone."""
    opt1, params1 = make_optimizer("laprop")
    opt2, params2 = make_optimizer("laprop")
    for opt, params, skip in ((opt1, params1, False), (opt2, params2, True)):
        set_grads(params, 0)
        opt.step()
        if skip:
            set_grads(params, 5)
            opt.step(allow=False)
        set_grads(params, 1)
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(params1, params2))
    assert opt1.steps == opt2.steps == 2
