import math

import pytest
import torch

from dreamer_ext import ops
from dreamer_ext.dists import (Bernoulli, BoundedNormal, ImageMSE, MSE, OneHotDist, TwoHot, categorical_kl,
                               categorical_sample, make_bins)


def test_bins_spaces():
    b = make_bins(255, 20.0, "symlog")
    assert b.shape == (255,) and b[0] == -20 and b[-1] == 20 and b[127] == 0
    torch.testing.assert_close(make_bins(255, 20.0, "symexp"), ops.symexp(b))
    with pytest.raises(ValueError, match="space"):
        make_bins(5, 1.0, "linear")


@pytest.mark.parametrize("mode", ["symlog", "symexp"])
def test_twohot_decodes_own_target(mode):
    bins = make_bins(255, 20.0, mode)
    y = torch.tensor([0.0, 1.0, -3.5, 250.0, -1234.5, 0.01])
    t = ops.symlog(y) if mode == "symlog" else y
    w = ops.twohot(t, bins)
    logits = torch.log(w.clamp_min(1e-30))
    d = TwoHot(logits, bins, mode)
    torch.testing.assert_close(d.pred(), y, rtol=1e-4, atol=1e-4)
    # the loss is minimised (equals the target's entropy) at those logits, and larger elsewhere
    ent = -(w * torch.log(w.clamp_min(1e-30))).sum(-1)
    torch.testing.assert_close(d.loss(y), ent, rtol=1e-4, atol=1e-4)
    other = TwoHot(torch.zeros_like(logits), bins, mode)
    assert (other.loss(y) > d.loss(y) + 1.0).all()


def test_twohot_zero_logits_predict_zero_and_shape_check():
    bins = make_bins(255, 20.0, "symlog")
    assert TwoHot(torch.zeros(4, 255), bins).pred().abs().max() < 1e-4
    with pytest.raises(ValueError, match="logits"):
        TwoHot(torch.zeros(4, 10), bins)


def test_twohot_loss_gradient_flows_to_logits():
    bins = make_bins(255, 20.0, "symlog")
    logits = torch.zeros(3, 255, requires_grad=True)
    TwoHot(logits, bins).loss(torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert logits.grad.abs().sum() > 0


def test_bernoulli():
    d = Bernoulli(torch.tensor([-2.0, 0.5, 3.0]))
    torch.testing.assert_close(d.pred(), torch.tensor([0.0, 1.0, 1.0]))
    p = torch.sigmoid(torch.tensor(0.5))
    torch.testing.assert_close(d.loss(torch.tensor([0.0, 1.0, 1.0]))[1], -torch.log(p))
    torch.testing.assert_close(d.entropy()[1], -(p * p.log() + (1 - p) * (1 - p).log()))


def test_unimix_floor_and_entropy():
    d = OneHotDist(torch.tensor([[100.0, 0.0, 0.0, 0.0]]), unimix=0.01)
    assert d.probs.min() >= 0.01 / 4 - 1e-7
    torch.testing.assert_close(d.probs.sum(-1), torch.ones(1))
    assert OneHotDist(torch.tensor([[100.0, 0.0, 0.0, 0.0]])).probs.min() < 1e-10


def test_categorical_sample_inverse_cdf():
    probs = torch.tensor([[0.2, 0.3, 0.5]]).expand(5, 3)
    u = torch.tensor([0.0, 0.19, 0.21, 0.49, 0.999])
    s = categorical_sample(probs, u)
    assert s.argmax(-1).tolist() == [0, 0, 1, 1, 2]
    # empirical frequencies with random uniforms
    torch.manual_seed(0)
    s = categorical_sample(torch.tensor([0.2, 0.3, 0.5]).expand(20000, 3))
    torch.testing.assert_close(s.mean(0), torch.tensor([0.2, 0.3, 0.5]), atol=0.02, rtol=0)
    with pytest.raises(ValueError, match="uniform"):
        categorical_sample(probs, torch.zeros(4))


def test_straight_through_gradient():
    logits = torch.randn(6, 5, requires_grad=True)
    d = OneHotDist(logits, unimix=0.01)
    s = d.sample()
    assert torch.equal(s.detach(), torch.nn.functional.one_hot(s.argmax(-1), 5).float())
    w = torch.randn(6, 5)
    (s * w).sum().backward()
    g_st = logits.grad.clone()
    logits.grad = None
    (OneHotDist(logits, unimix=0.01).probs * w).sum().backward()
    torch.testing.assert_close(g_st, logits.grad)
    assert g_st.abs().sum() > 0


def test_categorical_kl():
    lq = torch.log_softmax(torch.randn(2, 3, 4), -1)
    assert torch.allclose(categorical_kl(lq, lq), torch.zeros(2), atol=1e-6)
    lp = torch.log_softmax(torch.randn(2, 3, 4), -1)
    want = (lq.exp() * (lq - lp)).sum((-1, -2))
    torch.testing.assert_close(categorical_kl(lq, lp), want)
    assert (categorical_kl(lq, lp) > 0).all()


def test_bounded_normal():
    mean = torch.tensor([[0.0, 5.0, -5.0]])
    d = BoundedNormal(mean, torch.tensor([[-100.0, 0.0, 100.0]]))
    torch.testing.assert_close(d.mode(), torch.tanh(mean))
    torch.testing.assert_close(d.std, torch.tensor([[0.1, 0.9 * torch.sigmoid(torch.tensor(2.0)) + 0.1, 1.0]]))
    # uniforms map through the normal inverse CDF: u = 0.5 -> the mean; u = Phi(1) -> mean + std
    u = torch.full((1, 3), 0.5)
    torch.testing.assert_close(d.sample(u), d.mean)
    phi1 = 0.5 * (1 + math.erf(1 / math.sqrt(2)))
    torch.testing.assert_close(d.sample(torch.full((1, 3), phi1)), d.mean + d.std, atol=1e-4, rtol=1e-4)
    lp = d.log_prob(d.mean)
    torch.testing.assert_close(lp, (-torch.log(d.std) - 0.5 * math.log(2 * math.pi)).sum(-1))


def test_mse_symlog_and_image_mse():
    d = MSE(torch.tensor([[ops.symlog(torch.tensor(10.0)).item(), 0.0]]))
    torch.testing.assert_close(d.loss(torch.tensor([[10.0, 0.0]])), torch.zeros(1), atol=1e-6, rtol=0)
    torch.testing.assert_close(d.loss(torch.tensor([[10.0, 2.0]])), ops.symlog(torch.tensor([2.0])) ** 2)  # V2
    half = MSE(d.f, scale=0.5)  # the notes' switch (decoder.vector_half)
    torch.testing.assert_close(half.loss(torch.tensor([[10.0, 2.0]])), 0.5 * ops.symlog(torch.tensor([2.0])) ** 2)
    img = torch.full((1, 64, 64, 3), 255, dtype=torch.uint8)
    loss = ImageMSE(torch.full((1, 64, 64, 3), 0.5)).loss(img)
    torch.testing.assert_close(loss, torch.tensor([0.25 * 64 * 64 * 3]))


def test_paired_mean_is_exactly_zero_for_symmetric_mass_on_raw_bins():
    """A zero-initialised head over symexp bins (±4.9e8) must predict exactly 0, not the −0.26 of a left-to-right
    float32 sum; for other probabilities it equals the plain expectation."""
    from dreamer_ext.dists import paired_mean

    bins = make_bins(255, 20.0, "symexp")
    uniform = torch.softmax(torch.zeros(3, 255), -1)
    assert (uniform * bins).sum(-1).abs().max() > 0.01  # the naive sum is off
    assert torch.equal(paired_mean(uniform, bins), torch.zeros(3))
    assert torch.equal(TwoHot(torch.zeros(2, 255), bins, "symexp").pred(), torch.zeros(2))
    p = torch.softmax(torch.randn(5, 255, dtype=torch.float64), -1)
    torch.testing.assert_close(paired_mean(p, bins.double()), (p * bins.double()).sum(-1), rtol=1e-12, atol=1e-6)
    for K in (2, 6, 7):
        b = make_bins(K, 3.0, "symlog")
        q = torch.softmax(torch.randn(4, K), -1)
        torch.testing.assert_close(paired_mean(q, b), (q * b).sum(-1))
