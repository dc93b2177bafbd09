import pytest
import torch

from dreamer_ext import ops
from dreamer_ext.behavior import Behavior, ReturnNorm, trajectory_weight
from dreamer_ext.world_model import WorldModel
from tiny_agent_config import tiny_config, vector_spec


def test_return_norm_ema_and_divisor():
    rn = ReturnNorm(decay=0.99, low=5, high=95)
    r = torch.arange(101.0)  # P5 = 5, P95 = 95
    d = rn.update(r)
    assert rn.scale.item() == pytest.approx(0.01 * 90)
    assert d.item() == pytest.approx(1.0)  # max(1, 0.9)
    for _ in range(300):
        d = rn.update(r)
    assert rn.scale.item() == pytest.approx(90 * (1 - 0.99 ** 301), rel=1e-4)
    assert d.item() == pytest.approx(rn.scale.item())
    rn2 = ReturnNorm()
    rn2.update(torch.zeros(10))
    assert rn2.divisor().item() == 1.0


def test_trajectory_weight():
    cont = torch.tensor([[1.0], [1.0], [0.0], [1.0]])
    w = trajectory_weight(cont, 0.5)
    torch.testing.assert_close(w[:, 0], torch.tensor([0.5, 0.25, 0.0, 0.0]))


def _setup(discrete=True, horizon=4):
    torch.manual_seed(0)
    cfg = tiny_config(imag={"horizon": horizon})
    spec = vector_spec(discrete=discrete)
    wm = WorldModel(cfg, spec)
    beh = Behavior(cfg, wm.rssm.feat_dim, spec.act_dim, spec.discrete)
    N = 6
    start = {"h": torch.randn(N, wm.rssm.deter),
             "z": torch.nn.functional.one_hot(torch.randint(0, 4, (N, 4)), 4).float()}
    return cfg, wm, beh, start


@pytest.mark.parametrize("discrete", [True, False])
def test_behavior_loss_grads_only_actor_and_critic(discrete):
    cfg, wm, beh, start = _setup(discrete)
    start["h"].requires_grad_(True)
    terms, m = beh.loss(wm, start, torch.ones(6))
    assert set(terms) == {"actor", "critic"} and all(t.shape == (cfg.imag.horizon, 6) for t in terms.values())
    (terms["actor"].mean() + terms["critic"].mean()).backward()
    assert all(p.grad is None for p in wm.parameters())
    assert start["h"].grad is None
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in beh.actor.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in beh.critic.parameters())
    assert all(p.grad is None for p in beh.slow_critic.parameters())
    assert all(torch.isfinite(v) for v in m.values())


def test_behavior_matches_manual_computation():
    """Recompute returns, weights and both losses by hand from the same imagined trajectory."""
    cfg, wm, beh, start = _setup(horizon=3)
    H, N, A = 3, 6, 3
    uni = {"latent": torch.rand(H, N, 4), "action": torch.rand(H, N)}
    # give the critic / reward non-trivial outputs
    with torch.no_grad():
        for p in list(beh.critic.out.parameters()) + list(wm.reward_out.parameters()):
            p.normal_(0, 0.3)
        beh.slow_critic.load_state_dict(beh.critic.state_dict())
        for p in beh.slow_critic.out.parameters():
            p.add_(0.1)
        beh.retnorm.scale.fill_(50.0)  # a scale above 1 so the advantage is actually divided
    start_cont = torch.tensor([1.0, 1, 1, 0, 1, 1])
    terms, m = beh.loss(wm, start, start_cont, uniforms=uni)
    traj = beh.imagine(wm, start, H, uni)
    f = traj["feat"]
    with torch.no_grad():
        r = wm.reward(f[1:]).pred()
        c = torch.cat([start_cont[None], (wm.cont(f[1:]).logits > 0).float()])
        v = beh.critic(f).pred()
        vs = beh.slow_critic(f[:H]).pred()
        R = ops.lambda_return(r, c[1:], v, cfg.imag.gamma, cfg.imag.lam)
        w = torch.cumprod(cfg.imag.gamma * c, 0)[:H]
        # return norm is updated (EMA from 50) before use
        lo, hi = torch.quantile(R.flatten(), torch.tensor([0.05, 0.95]))
        S = 0.99 * 50.0 + 0.01 * (hi - lo)
        adv = (R - v[:H]) / max(1.0, S.item())
        pi = beh.actor(f[:H])
        logp = pi.log_prob(traj["action"])
        actor = (-w * (logp * adv + cfg.actor.entropy * pi.entropy())).mean()
        cd = beh.critic(f[:H])
        critic = (w * (cd.loss(R) + cd.loss(vs))).mean()
    assert beh.retnorm.scale.item() == pytest.approx(S.item(), rel=1e-5)
    torch.testing.assert_close(terms["actor"].mean(), actor, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(terms["critic"].mean(), critic, rtol=1e-5, atol=1e-6)
    assert (w[:, 3] == 0).all()  # terminal start state carries no weight


def test_slow_critic_ema():
    cfg, wm, beh, start = _setup()
    with torch.no_grad():
        for p in beh.critic.parameters():
            p.fill_(1.0)
        for p in beh.slow_critic.parameters():
            p.fill_(0.0)
    beh.update_slow()
    for p in beh.slow_critic.parameters():
        torch.testing.assert_close(p, torch.full_like(p, 0.02))
    beh.update_slow()
    for p in beh.slow_critic.parameters():
        torch.testing.assert_close(p, torch.full_like(p, 0.02 + 0.98 * 0.02))


def test_actor_unimix_and_continuous_bounds():
    cfg, wm, beh, start = _setup(discrete=True)
    d = beh.actor(torch.randn(5, wm.rssm.feat_dim) * 100)
    assert d.probs.min() >= 0.01 / 3 - 1e-6
    cfg, wm, beh, start = _setup(discrete=False)
    d = beh.actor(torch.randn(5, wm.rssm.feat_dim) * 100)
    assert d.mean.abs().max() <= 1 and d.std.min() >= 0.1 - 1e-6 and d.std.max() <= 1.0 + 1e-6
