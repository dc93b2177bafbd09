import pytest
import torch
import torch.nn.functional as F

from dreamer_ext.config import RSSMConfig
from dreamer_ext.rssm import RSSM


def make(discrete=True, blocks=4, deter=32):
    torch.manual_seed(0)
    cfg = RSSMConfig(deter=deter, hidden=16, stoch=4, classes=5, blocks=blocks)
    return RSSM(cfg, embed_dim=7, act_dim=3, discrete=discrete)


def inputs(B=2, T=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    embed = torch.randn(B, T, 7, generator=g)
    act = F.one_hot(torch.randint(0, 3, (B, T), generator=g), 3).float()
    first = torch.zeros(B, T, dtype=torch.bool)
    first[:, 0] = True
    return embed, act, first


def test_observe_shapes_and_onehot():
    r = make()
    embed, act, first = inputs()
    post, last = r.observe(embed, act, first)
    assert post["h"].shape == (2, 5, 32) and post["z"].shape == (2, 5, 4, 5)
    assert post["post_logits"].shape == post["prior_logits"].shape == (2, 5, 4, 5)
    z = post["z"].detach()
    assert torch.equal(z.sum(-1), torch.ones(2, 5, 4)) and set(z.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(last["h"], post["h"][:, -1])
    assert r.feat({"h": post["h"], "z": post["z"]}).shape == (2, 5, 32 + 20)


def test_is_first_resets_state():
    """The state after a reset equals the state computed from scratch, whatever came before."""
    r = make()
    embed, act, first = inputs(B=2, T=6)
    first[:, 3] = True
    u = torch.rand(2, 6, 4)
    post, _ = r.observe(embed, act, first, uniforms=u)
    scratch, _ = r.observe(embed[:, 3:], act[:, 3:], first[:, 3:], uniforms=u[:, 3:])
    torch.testing.assert_close(post["h"][:, 3:], scratch["h"])
    torch.testing.assert_close(post["z"][:, 3:], scratch["z"])
    # a garbage carry is also wiped by is_first
    carry = {"h": torch.randn(2, 32) * 5, "z": torch.rand(2, 4, 5)}
    again, _ = r.observe(embed[:, 3:], act[:, 3:], first[:, 3:], carry, uniforms=u[:, 3:])
    torch.testing.assert_close(again["h"], scratch["h"])
    # without the reset flag the history matters
    first2 = first.clone()
    first2[:, 3] = False
    other, _ = r.observe(embed, act, first2, uniforms=u)
    assert not torch.allclose(other["h"][:, 3], post["h"][:, 3])


def test_prev_action_masked_on_first():
    r = make()
    embed, act, first = inputs(B=1, T=1)
    u = torch.rand(1, 1, 4)
    a, _ = r.observe(embed, act, first, uniforms=u)
    b, _ = r.observe(embed, act * 0 + 7.0, first, uniforms=u)
    torch.testing.assert_close(a["h"], b["h"])


def test_gru_gates_and_block_structure():
    """h' = u·c + (1−u)·h; with zero gate weights, r = c-branch = σ(0), c = tanh(r·0) = 0, u = σ(−1)."""
    r = make(blocks=4)
    with torch.no_grad():
        r.gru.weight.zero_()
        r.gru.bias.zero_()
    h = torch.randn(3, 32)
    out = r.core(h, torch.zeros(3, 4, 5), torch.zeros(3, 3))
    torch.testing.assert_close(out, (1 - torch.sigmoid(torch.tensor(-1.0))) * h)
    # gate layer is block-diagonal: gates of block i see only the i-th slice of the hidden layer
    r2 = make(blocks=4)
    assert r2.gru.weight.shape == (4, 32 // 4, 3 * 32 // 4)
    assert r2.dyn[0]["lin"].weight.shape == (4, 32 // 4 + 3 * 16, 32 // 4)


def test_dense_gru_when_one_block():
    r = make(blocks=1)
    assert r.gru.weight.shape == (1, 32, 96)
    embed, act, first = inputs()
    post, _ = r.observe(embed, act, first)
    assert torch.isfinite(post["h"]).all()


def test_continuous_action_scaling():
    r = make(discrete=False)
    h, z = torch.randn(2, 32), torch.zeros(2, 4, 5)
    a = torch.tensor([[0.5, -3.0, 2.0], [0.5, -1.0, 1.0]])
    # |a| > 1 is divided by |a|: both rows see the same scaled action
    out = r.core(h[:1].expand(2, 32), z, a)
    torch.testing.assert_close(out[0], out[1])


def test_imagine_shapes_and_injected_uniforms():
    r = make()
    N, H = 6, 4
    start = {"h": torch.randn(N, 32), "z": F.one_hot(torch.randint(0, 5, (N, 4)), 5).float()}
    calls = []

    def policy(feat, u):
        calls.append(feat.shape)
        idx = (u * 3).long().clamp(max=2)
        return F.one_hot(idx, 3).float()

    uni = {"latent": torch.rand(H, N, 4), "action": torch.rand(H, N)}
    with torch.no_grad():
        t1 = r.imagine(policy, start, H, uni)
        t2 = r.imagine(policy, start, H, uni)
    assert t1["feat"].shape == (H + 1, N, 32 + 20) and t1["action"].shape == (H, N, 3)
    assert len(calls) == 2 * H and calls[0] == (N, 52)
    torch.testing.assert_close(t1["feat"], t2["feat"])
    torch.testing.assert_close(t1["h"][0], start["h"])
    # the latent follows the inverse-CDF of the prior probabilities at each step
    probs = torch.softmax(r.prior_logits(t1["h"][1]), -1) * 0.99 + 0.01 / 5
    idx = (probs.cumsum(-1) <= uni["latent"][0].unsqueeze(-1)).sum(-1).clamp(max=4)
    assert torch.equal(t1["z"][1].argmax(-1), idx)
    with pytest.raises(ValueError, match="horizon"):
        r.imagine(policy, start, 0)


def test_kl_terms_and_stop_gradients():
    r = make()
    q = torch.randn(3, 4, 5, requires_grad=True)
    p = torch.randn(3, 4, 5, requires_grad=True)
    dyn, rep = r.kl(q, p)
    torch.testing.assert_close(dyn, rep)
    assert (dyn > 0).all()
    gq = torch.autograd.grad(dyn.sum(), q, allow_unused=True)[0]
    assert gq is None or gq.abs().sum() == 0
    gp = torch.autograd.grad(rep.sum(), p, allow_unused=True)[0]
    assert gp is None or gp.abs().sum() == 0
    same, _ = r.kl(q, q)
    assert same.abs().max() < 1e-5


def test_bad_inputs():
    r = make()
    embed, act, first = inputs()
    with pytest.raises(ValueError, match="prev_action"):
        r.observe(embed, act[:, :3], first)
    with pytest.raises(ValueError, match="deter"):
        RSSM(RSSMConfig(deter=30, hidden=8, stoch=2, classes=3, blocks=4), 4, 2)
