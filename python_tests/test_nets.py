import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dreamer_ext.nets import (MLP, BlockLinear, ImageDecoder, ImageEncoder, Norm, UpsampleConv, VectorDecoder,
                              VectorEncoder)
from tiny_agent_config import image_vector_spec, tiny_config


def test_rmsnorm_matches_formula():
    torch.manual_seed(0)
    n = Norm(8, "rms")
    with torch.no_grad():
        n.weight.copy_(torch.linspace(0.5, 2.0, 8))
    x = torch.randn(3, 8) * 1e-3  # small values make eps (1e-4) visible
    want = x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-4) * n.weight
    torch.testing.assert_close(n(x), want)
    assert not hasattr(n, "bias")


def test_layernorm_v1_switch():
    n = Norm(6, "layer")
    x = torch.randn(4, 6) * 0.01
    want = F.layer_norm(x, (6,), eps=1e-3)
    torch.testing.assert_close(n(x), want)
    with pytest.raises(ValueError, match="kind"):
        Norm(4, "batch")


def test_rmsnorm_fp32_for_half_input():
    n = Norm(4)
    x = torch.tensor([[1e3, 2e3, -1e3, 5e2]], dtype=torch.bfloat16)
    y = n(x)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()


def test_block_linear_is_block_diagonal():
    torch.manual_seed(0)
    g, inp, out = 4, 12, 8
    bl = BlockLinear(inp, out, g)
    assert bl.weight.shape == (g, inp // g, out // g)
    x = torch.randn(5, inp)
    # equals a dense layer with a block-diagonal matrix
    dense = torch.block_diag(*bl.weight)  # [inp, out]
    torch.testing.assert_close(bl(x), x @ dense + bl.bias)
    # output block i depends only on input block i
    jac = torch.autograd.functional.jacobian(lambda v: bl(v), x[0])  # [out, inp]
    for i in range(g):
        for j in range(g):
            blk = jac[i * 2:(i + 1) * 2, j * 3:(j + 1) * 3]
            assert (blk.abs().sum() > 0) == (i == j)


def test_block_linear_bad_groups():
    with pytest.raises(ValueError, match="groups"):
        BlockLinear(10, 8, 4)


def test_mlp_layers_and_shapes():
    m = MLP(7, 5, 3)
    assert len(m) == 3 and m(torch.randn(2, 4, 7)).shape == (2, 4, 5)
    assert MLP(7, 5, 0).out_dim == 7


@pytest.mark.parametrize("k", [3, 5])
def test_upsample_conv_equals_literal_definition(k):
    torch.manual_seed(1)
    u = UpsampleConv(6, 4, k)
    x = torch.randn(2, 6, 4, 5)
    torch.testing.assert_close(u(x), u.reference(x), atol=1e-5, rtol=1e-5)
    # gradients wrt the k×k weights agree too
    g1 = torch.autograd.grad(u(x).square().sum(), u.conv.weight)[0]
    g2 = torch.autograd.grad(u.reference(x).square().sum(), u.conv.weight)[0]
    torch.testing.assert_close(g1, g2, atol=1e-4, rtol=1e-4)


def test_image_encoder_shapes_and_scaling():
    torch.manual_seed(0)
    enc = ImageEncoder((64, 64, 3), depth=2)
    assert [c.out_channels for c in enc.convs] == [4, 6, 8, 8]
    assert all(c.kernel_size == (5, 5) and c.stride == (1, 1) for c in enc.convs)
    img = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8)
    e = enc(img)
    assert e.shape == (3, 4 * 4 * 8) and enc.out_dim == 128
    with pytest.raises(ValueError, match="in_shape"):
        ImageEncoder((32, 32, 3), depth=2)


def test_image_encoder_batch_independent():
    torch.manual_seed(0)
    enc = ImageEncoder((64, 64, 3), depth=2)
    img = torch.randint(0, 256, (4, 64, 64, 3), dtype=torch.uint8)
    torch.testing.assert_close(enc(img)[1:2], enc(img[1:2]), atol=1e-5, rtol=1e-5)


def test_image_decoder_shape_range_and_channels():
    dec = ImageDecoder(20, (64, 64, 3), depth=2)
    assert [c.conv.out_channels for c in dec.convs] == [8, 6, 4] and dec.out.conv.out_channels == 3
    y = dec(torch.randn(5, 20))
    assert y.shape == (5, 64, 64, 3) and y.min() >= 0 and y.max() <= 1


def test_vector_encoder_symlog():
    enc = VectorEncoder(3, 8, 2, symlog=True)
    raw = VectorEncoder(3, 8, 2, symlog=False)
    raw.load_state_dict(enc.state_dict())
    x = torch.tensor([[100.0, -50.0, 3.0]])
    from dreamer_ext import ops
    torch.testing.assert_close(enc(x), raw(ops.symlog(x)))
    assert VectorDecoder(8, 3, 8, 2)(torch.randn(2, 8)).shape == (2, 3)


# ------------------------------------------------------------------------------------------------ V2 init, bspace
def test_v2_init_std_is_outscale_over_sqrt_full_fan_in():
    """V2: truncated normal with std = outscale / sqrt(fan_in), where a block-linear layer's fan-in is its full input
    width; the earlier 'avg' init (kept as a switch) used per-block fans and variance scaling."""
    from dreamer_ext.nets import BlockLinear, initialize, out_linear

    torch.manual_seed(0)
    lin, blk = nn.Linear(400, 300), BlockLinear(512, 1536, 8)
    head, zero = out_linear(256, 200, scale=0.01), out_linear(256, 255, init="zeros")
    model = nn.ModuleList([lin, blk, head, zero])
    initialize(model, "v2")
    assert lin.weight.std().item() == pytest.approx(1 / 400 ** 0.5, rel=0.03)
    assert blk.weight.std().item() == pytest.approx(1 / 512 ** 0.5, rel=0.03)  # full fan-in, not 512/8
    assert head.weight.std().item() == pytest.approx(0.01 / 256 ** 0.5, rel=0.05)
    assert lin.weight.abs().max() <= 2 / 0.8796 / 400 ** 0.5  # a unit normal cut at ±2, then scaled
    assert torch.count_nonzero(zero.weight) == 0 and torch.count_nonzero(lin.bias) == 0
    initialize(model, "avg")
    assert blk.weight.std().item() == pytest.approx((1 / ((64 + 192) / 2)) ** 0.5, rel=0.03)
    assert head.weight.std().item() == pytest.approx((0.01 / ((256 + 200) / 2)) ** 0.5, rel=0.05)
    with pytest.raises(ValueError, match="kind"):
        initialize(model, "xavier")


def test_agent_init_switch_changes_the_gru_and_actor_scales():
    from dreamer_ext.agent import Agent

    spec = image_vector_spec()
    torch.manual_seed(0)
    v2 = Agent(tiny_config(), spec)
    torch.manual_seed(0)
    old = Agent(tiny_config(init="avg"), spec)
    # per-block fans: std sqrt(2 / (in/g + out/g)) under 'avg' against 1 / sqrt(in) under V2
    g, (inp, out) = v2.wm.rssm.gru.groups, (v2.wm.rssm.gru.inp, v2.wm.rssm.gru.out)
    ratio = (2 * inp * g / (inp + out)) ** 0.5
    assert ratio > 1.3
    assert (old.wm.rssm.gru.weight.std() / v2.wm.rssm.gru.weight.std()).item() == pytest.approx(ratio, rel=0.1)
    assert old.behavior.actor.out.weight.std() > 5 * v2.behavior.actor.out.weight.std()
    assert torch.equal(v2.behavior.slow_critic.out.weight, v2.behavior.critic.out.weight)


def test_bspace_decoder_maps_each_deter_block_to_its_channel_group():
    """With bspace = g, deter block b only influences grid channels b·C0/g .. (b+1)·C0/g; z feeds every channel."""
    from dreamer_ext.nets import ImageDecoder

    torch.manual_seed(0)
    deter, stoch, depth = 32, 16, 2
    dec = ImageDecoder(deter + stoch, (64, 64, 3), depth, (2, 3, 4, 4), 5, "rms", deter=deter, bspace=4, units=8)
    c0 = depth * 4
    feat = torch.randn(1, deter + stoch, requires_grad=True)
    grid = dec.grid(feat)                                   # [1, 4, 4, C0]
    for b in range(4):
        g = torch.autograd.grad(grid[..., b * c0 // 4:(b + 1) * c0 // 4].sum(), feat, retain_graph=True)[0][0]
        block = slice(b * deter // 4, (b + 1) * deter // 4)
        assert g[block].abs().sum() > 0
        others = torch.cat([g[:block.start], g[block.stop:deter]])
        assert others.abs().sum() == 0
        assert g[deter:].abs().sum() > 0
    assert dec(feat.detach()).shape == (1, 64, 64, 3)
    with pytest.raises(ValueError, match="bspace"):
        ImageDecoder(deter + stoch, (64, 64, 3), depth, (2, 3, 4, 4), 5, "rms", deter=deter, bspace=3, units=8)


def test_bspace_parameter_count_at_size12m():
    from dreamer_ext.config import make_config
    from dreamer_ext.nets import ImageDecoder

    def space_params(bspace):
        cfg = make_config("size12m", decoder={"bspace": bspace})
        d = ImageDecoder(cfg.rssm.deter + 32 * cfg.rssm.classes, (64, 64, 3), cfg.decoder.cnn_depth,
                         tuple(cfg.decoder.cnn_mults), 5, "rms", deter=cfg.rssm.deter, bspace=bspace,
                         units=cfg.decoder.mlp_units)
        return sum(p.numel() for n, p in d.named_parameters() if n.startswith("space"))

    assert round(space_params(8) / 1e6, 2) == 1.05 and round(space_params(0) / 1e6, 1) == 2.6
