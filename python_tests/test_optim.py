import pytest
import torch

from dreamer_ext.config import OptimConfig
from dreamer_ext.optim import LaProp, Optimizer, agc_, warmup_lr


def test_agc_clips_per_tensor():
    p1 = torch.full((4,), 1.0)          # ‖θ‖ = 2
    p2 = torch.zeros(3)                 # ‖θ‖ = 0 -> floor 1e-3
    g1 = torch.full((4,), 10.0)         # ‖g‖ = 20 > 0.3·2
    g2 = torch.full((3,), 1e-5)         # ‖g‖ ≈ 1.7e-5 < 0.3·1e-3: untouched
    agc_([p1, p2], [g1, g2], 0.3, 1e-3)
    assert torch.linalg.vector_norm(g1).item() == pytest.approx(0.6, rel=1e-5)
    torch.testing.assert_close(g2, torch.full((3,), 1e-5))
    g3 = torch.full((3,), 1.0)
    agc_([p2], [g3], 0.3, 1e-3)
    assert torch.linalg.vector_norm(g3).item() == pytest.approx(3e-4, rel=1e-5)


def test_warmup_schedule():
    assert warmup_lr(4e-5, 1, 1000) == pytest.approx(4e-8)
    assert warmup_lr(4e-5, 500, 1000) == pytest.approx(2e-5)
    assert warmup_lr(4e-5, 5000, 1000) == 4e-5
    assert warmup_lr(4e-5, 1, 0) == 4e-5


def test_laprop_first_steps_match_formula():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5) * 10)
    opt = LaProp([p], lr=0.1, eps=1e-20, beta1=0.9, beta2=0.999, agc=0.0, warmup=4)
    g1 = torch.randn(5)
    start = p.detach().clone()
    p.grad = g1.clone()
    opt.step()
    # step 1: v̂ = g², u = sign(g), m̂ = u, lr_1 = 0.1/4
    torch.testing.assert_close(p.detach(), start - 0.025 * torch.sign(g1))
    g2 = torch.randn(5)
    p.grad = g2.clone()
    before = p.detach().clone()
    opt.step()
    v = 0.999 * 0.001 * g1 ** 2 + 0.001 * g2 ** 2
    u1 = torch.sign(g1)
    u2 = g2 / torch.sqrt(v / (1 - 0.999 ** 2))
    m = 0.9 * 0.1 * u1 + 0.1 * u2
    torch.testing.assert_close(p.detach(), before - 0.05 * m / (1 - 0.9 ** 2))


def test_laprop_agc_limits_update_input():
    p = torch.nn.Parameter(torch.ones(4))
    opt = LaProp([p], lr=1.0, agc=0.3, warmup=0)
    p.grad = torch.full((4,), 100.0)
    opt.step()
    # the clipped gradient is stored in p.grad (in place), scaled to norm 0.3·‖θ‖ = 0.6
    assert torch.linalg.vector_norm(p.grad).item() == pytest.approx(0.6, rel=1e-5)


def test_optimizer_skips_nonfinite_and_reports_norms():
    a = torch.nn.Linear(3, 2)
    b = torch.nn.Linear(2, 1)
    opt = Optimizer(OptimConfig(warmup=0, lr=0.1), {"world_model": list(a.parameters()), "actor": list(b.parameters())})
    before = [p.detach().clone() for p in a.parameters()]
    for p in a.parameters():
        p.grad = torch.ones_like(p)
    next(iter(b.parameters())).grad = torch.full((1, 2), float("nan"))
    m = opt.step()
    assert m["opt/skipped"].item() == 1.0 and opt.steps == 0
    assert all(torch.equal(x, y) for x, y in zip(before, a.parameters()))
    for p in list(a.parameters()) + list(b.parameters()):
        p.grad = torch.ones_like(p)
    m = opt.step()
    assert m["opt/skipped"].item() == 0.0 and opt.steps == 1
    assert m["grad_norm/world_model"].item() == pytest.approx((6 + 2) ** 0.5)
    assert not all(torch.equal(x, y) for x, y in zip(before, a.parameters()))


def test_adam_v1_switch_clips_globally():
    lin = torch.nn.Linear(3, 2)
    cfg = OptimConfig(kind="adam", warmup=0, model_clip=1.0)
    opt = Optimizer(cfg, {"world_model": list(lin.parameters())})
    assert isinstance(opt.opts["world_model"], torch.optim.Adam)
    assert opt.opts["world_model"].param_groups[0]["lr"] == 1e-4
    for p in lin.parameters():
        p.grad = torch.full_like(p, 10.0)
    opt.step()
    total = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in lin.parameters()]))
    assert total.item() == pytest.approx(1.0, rel=1e-4)
    sd = opt.state_dict()
    opt2 = Optimizer(cfg, {"world_model": list(lin.parameters())})
    opt2.load_state_dict(sd)
    assert opt2.steps == 1
    with pytest.raises(ValueError, match="kind"):
        Optimizer(OptimConfig(kind="sgd"), {"world_model": list(lin.parameters())})
