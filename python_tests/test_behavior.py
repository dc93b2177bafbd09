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


def _setup(discrete=True, horizon=4, imag=None):
    torch.manual_seed(0)
    cfg = tiny_config(imag={"horizon": horizon, **(imag or {})})
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
    terms, m, _ = beh.loss(wm, start, torch.ones(6))
    assert set(terms) == {"actor", "critic"} and all(t.shape == (cfg.imag.horizon, 6) for t in terms.values())
    (terms["actor"].mean() + terms["critic"].mean()).backward()
    assert all(p.grad is None for p in wm.parameters())
    assert start["h"].grad is None
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in beh.actor.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in beh.critic.parameters())
    assert all(p.grad is None for p in beh.slow_critic.parameters())
    assert all(torch.isfinite(v) for v in m.values())


@pytest.mark.parametrize("contdisc", [True, False])
def test_behavior_matches_manual_computation(contdisc):
    """Recompute returns, weights and both losses by hand from the same imagined trajectory. V2 (contdisc): the
    continue probability of every state, start included, is the discount and no extra γ; notes: ĉ_0 from the data,
    the hard 0/1 continue of the head times γ."""
    cfg, wm, beh, start = _setup(horizon=3, imag={"contdisc": contdisc})
    H, N = 3, 6
    uni = {"latent": torch.rand(H, N, 4), "action": torch.rand(H, N)}
    # give the critic / reward / continue heads non-trivial outputs
    with torch.no_grad():
        for p in list(beh.critic.out.parameters()) + list(wm.reward_out.parameters()):
            p.normal_(0, 0.3)
        wm.cont_out.weight.normal_(0, 1.0)
        beh.slow_critic.load_state_dict(beh.critic.state_dict())
        for p in beh.slow_critic.out.parameters():
            p.add_(0.1)
        beh.retnorm.scale.fill_(50.0)  # a scale above 1 so the advantage is actually divided
    start_cont = torch.tensor([1.0, 1, 1, 0, 1, 1])
    terms, m, start_return = beh.loss(wm, start, start_cont, uniforms=uni)
    traj = beh.imagine(wm, start, H, uni)
    f = traj["feat"]
    g = cfg.imag.gamma
    with torch.no_grad():
        r = wm.reward(f[1:]).pred()
        if contdisc:
            c, disc = torch.sigmoid(wm.cont(f).logits), 1.0
            assert ((c > 0.05) & (c < 0.95)).any()  # soft probabilities, not 0/1
        else:
            c, disc = torch.cat([start_cont[None], (wm.cont(f[1:]).logits > 0).float()]), g
        v = beh.critic(f).pred()
        vs = beh.slow_critic(f[:H]).pred()
        R = torch.zeros(H + 1, N)
        R[H] = v[H]
        for t in range(H - 1, -1, -1):
            R[t] = r[t] + disc * c[t + 1] * ((1 - cfg.imag.lam) * v[t + 1] + cfg.imag.lam * R[t + 1])
        R = R[:H]
        w = torch.cumprod(disc * c, 0)[:H]
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
    torch.testing.assert_close(start_return, R[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(terms["actor"].mean(), actor, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(terms["critic"].mean(), critic, rtol=1e-5, atol=1e-6)
    if not contdisc:
        assert (w[:, 3] == 0).all()  # terminal start state carries no weight


def test_replay_lambda_return_hand_computed():
    """One sequence, T = 4: r = (·, 1, 2, 3), a terminal at step 2, γ = 0.5, λ = 0.5, boot = (10, 20, 30, 40)."""
    from dreamer_ext.behavior import replay_lambda_return

    r = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    term = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    last = term.clone()
    boot = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    R = replay_lambda_return(r, term, last, boot, 0.5, 0.5)
    R2 = 3 + 0.5 * (0.5 * 40 + 0.5 * 40)     # R_3 = boot_3 = 40
    R1 = 2 + 0.0                              # step 2 is terminal: nothing after it counts
    R0 = 1 + 0.5 * (0.5 * 20 + 0.5 * R1)
    torch.testing.assert_close(R, torch.tensor([[R0, R1, R2]]))
    # a truncation (is_last without terminal) bootstraps from boot but does not read past the boundary
    R = replay_lambda_return(r, torch.zeros(1, 4), last, boot, 0.5, 0.5)
    R1 = 2 + 0.5 * 30                         # λ' = 0 at the boundary: all weight on boot_2
    torch.testing.assert_close(R[0, 1], torch.tensor(R1))


def test_replay_value_loss_terms_and_gradients():
    cfg, wm, beh, _ = _setup()
    with torch.no_grad():
        beh.critic.out.weight.normal_(0, 0.3)  # zero-initialised: no gradient would reach feat otherwise
    B, T = 2, 5
    feat = torch.randn(B, T, wm.rssm.feat_dim, requires_grad=True)
    data = {"reward": torch.randn(B, T), "is_terminal": torch.zeros(B, T, dtype=torch.bool),
            "is_last": torch.zeros(B, T, dtype=torch.bool)}
    data["is_last"][1, 2] = True
    boot = torch.randn(B, T)
    term, m = beh.replay_value_loss(feat, data, boot)
    assert term.shape == (B, T - 1) and term[1, 2] == 0  # weight 1 − is_last
    term.sum().backward()
    assert feat.grad is not None and feat.grad[:, -1].abs().sum() == 0 and feat.grad[:, :-1].abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in beh.critic.parameters())
    assert all(p.grad is None for p in beh.slow_critic.parameters())


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


def test_actor_unimix_switch_and_continuous_bounds():
    cfg, wm, beh, start = _setup(discrete=True)
    assert cfg.actor.unimix == 0.0  # V2: a plain categorical
    with torch.no_grad():
        beh.actor.out.weight.normal_(0, 30.0)  # peaked logits
    feat = torch.randn(5, wm.rssm.feat_dim) * 100
    assert beh.actor(feat).probs.min() < 1e-4
    torch.manual_seed(0)
    cfg = tiny_config(actor={"unimix": 0.01})  # the notes' switch: a 1% uniform floor
    mixed = Behavior(cfg, wm.rssm.feat_dim, 3, True)
    mixed.actor.load_state_dict(beh.actor.state_dict())
    assert mixed.actor(feat).probs.min() >= 0.01 / 3 - 1e-6
    cfg, wm, beh, start = _setup(discrete=False)
    d = beh.actor(torch.randn(5, wm.rssm.feat_dim) * 100)
    assert d.mean.abs().max() <= 1 and d.std.min() >= 0.1 - 1e-6 and d.std.max() <= 1.0 + 1e-6
