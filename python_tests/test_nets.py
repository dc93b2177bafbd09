import pytest
import torch
import torch.nn.functional as F

from dreamer_ext.nets import (MLP, BlockLinear, ImageDecoder, ImageEncoder, Norm, UpsampleConv, VectorDecoder,
                              VectorEncoder)


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
