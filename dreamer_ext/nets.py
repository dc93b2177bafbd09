"""Building blocks: norms, Linear+norm+SiLU MLPs, block-diagonal linear layers, image encoder/decoder.

Conventions: every hidden layer is ``Linear -> Norm -> SiLU``; ``Norm`` is RMSNorm (eps 1e-4, scale only, computed in
fp32) or the V1 LayerNorm (eps 1e-3). Images enter as uint8 ``[N, 64, 64, 3]``; convolutions run in channels_last
memory format (a permuted NHWC tensor already has channels_last strides, so no copy is needed).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import ops

__all__ = ["Norm", "trunc_init_", "DenseLayer", "MLP", "BlockLinear", "ImageEncoder", "ImageDecoder",
           "VectorEncoder", "VectorDecoder", "UpsampleConv"]


def trunc_init_(weight: torch.Tensor, fan_in: int, fan_out: int, scale: float = 1.0) -> None:
    """Truncated-normal init with variance ``scale / mean(fan_in, fan_out)`` (V2 'trunc_normal', fan 'avg')."""
    std = math.sqrt(scale / ((fan_in + fan_out) / 2.0)) / 0.87962566103423978
    with torch.no_grad():
        nn.init.trunc_normal_(weight, 0.0, 1.0, -2.0, 2.0)
        weight.mul_(std)


class Norm(nn.Module):
    """Normalisation over the last dimension ``[..., dim] -> [..., dim]``.

    kind ``"rms"``: RMSNorm, eps 1e-4, learnable scale only, computed in fp32 (V2).
    kind ``"layer"``: LayerNorm, eps 1e-3, scale and offset (V1).
    """

    def __init__(self, dim: int, kind: str = "rms"):
        super().__init__()
        if kind not in ("rms", "layer"):
            raise ValueError(f"kind: expected 'rms' or 'layer', got {kind!r}")
        self.kind, self.dim = kind, dim
        self.weight = nn.Parameter(torch.ones(dim))
        if kind == "layer":
            self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        xf = x.float()
        if self.kind == "rms":
            y = F.rms_norm(xf, (self.dim,), self.weight.float(), 1e-4)
        else:
            y = F.layer_norm(xf, (self.dim,), self.weight.float(), self.bias.float(), 1e-3)
        return y.to(dtype)


class DenseLayer(nn.Module):
    """``Linear(in, out) -> Norm -> SiLU``: ``[..., in] -> [..., out]``."""

    def __init__(self, inp: int, out: int, norm: str = "rms"):
        super().__init__()
        self.linear = nn.Linear(inp, out)
        trunc_init_(self.linear.weight, inp, out)
        nn.init.zeros_(self.linear.bias)
        self.norm = Norm(out, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(self.norm(self.linear(x)))


class MLP(nn.Sequential):
    """``layers`` × DenseLayer: ``[..., inp] -> [..., units]`` (identity when layers == 0)."""

    def __init__(self, inp: int, units: int, layers: int, norm: str = "rms"):
        if layers < 0:
            raise ValueError(f"layers: must be >= 0, got {layers}")
        mods = [DenseLayer(inp if i == 0 else units, units, norm) for i in range(layers)]
        super().__init__(*mods)
        self.out_dim = units if layers else inp


def out_linear(inp: int, out: int, init: str = "normal", scale: float = 1.0) -> nn.Linear:
    """Output projection; ``init="zeros"`` for twohot reward/critic heads, else truncated normal × scale."""
    layer = nn.Linear(inp, out)
    if init == "zeros":
        nn.init.zeros_(layer.weight)
    else:
        trunc_init_(layer.weight, inp, out, scale)
    nn.init.zeros_(layer.bias)
    return layer


class BlockLinear(nn.Module):
    """Block-diagonal linear map with ``groups`` blocks: ``[..., inp] -> [..., out]``.

    weight ``[g, inp/g, out/g]``, bias ``[out]``. Input block i is ``x[..., i*inp/g:(i+1)*inp/g]``; output block i is
    ``out[..., i*out/g:(i+1)*out/g] = x_i @ weight[i] + bias_i``.
    """

    def __init__(self, inp: int, out: int, groups: int):
        super().__init__()
        if inp % groups or out % groups:
            raise ValueError(f"groups: {groups} must divide inp={inp} and out={out}")
        self.inp, self.out, self.groups = inp, out, groups
        self.weight = nn.Parameter(torch.empty(groups, inp // groups, out // groups))
        self.bias = nn.Parameter(torch.zeros(out))
        trunc_init_(self.weight, inp // groups, out // groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        g = self.groups
        xg = x.reshape(-1, g, self.inp // g).transpose(0, 1)          # [g, N, i]
        y = torch.bmm(xg, self.weight).transpose(0, 1)                 # [N, g, o]
        return (y.reshape(*lead, self.out) + self.bias)


class _ChannelNorm(nn.Module):
    """Norm over channels of an NCHW (channels_last) tensor, per pixel."""

    def __init__(self, channels: int, kind: str):
        super().__init__()
        self.norm = Norm(channels, kind)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _conv(cin: int, cout: int, k: int) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, k, stride=1, padding=k // 2)
    trunc_init_(conv.weight, cin * k * k, cout * k * k)
    nn.init.zeros_(conv.bias)
    return conv


def _subpixel_maps(k: int) -> tuple[torch.Tensor, int]:
    """1-d maps ``M[p] [k_eff, k]`` folding a k-tap kernel applied to a ×2 nearest-upsampled signal into a k_eff-tap
    kernel on the original signal for output parity p (output y = 2i + p reads source i + floor((p + d)/2))."""
    m = k // 2
    e = -((m + 1) // 2)                       # smallest source offset; the range is symmetric
    k_eff = 2 * ((m + 1) // 2) + 1
    maps = torch.zeros(2, k_eff, k)
    for p in range(2):
        for d in range(-m, m + 1):
            maps[p, (p + d) // 2 - e, d + m] = 1.0
    return maps, -e


class UpsampleConv(nn.Module):
    """``nearest-upsample ×2 -> Conv2d(k, stride 1, 'same')``: ``[N, cin, H, W] -> [N, cout, 2H, 2W]``.

    Parameters are those of the plain k×k conv (``conv.weight [cout, cin, k, k]``, ``conv.bias``). The forward pass
    computes the *same function* without materialising the upsampled input: for each of the 4 output parities the
    k×k kernel folds into a k_eff×k_eff kernel (k_eff = 3 for k = 5) on the low-resolution input, and the 4 results
    are interleaved with pixel_shuffle — about 2.8× fewer FLOPs for k = 5.
    """

    def __init__(self, cin: int, cout: int, k: int):
        super().__init__()
        if k % 2 == 0:
            raise ValueError(f"k: kernel size must be odd, got {k}")
        self.conv = _conv(cin, cout, k)
        maps, pad = _subpixel_maps(k)
        self.register_buffer("maps", maps, persistent=False)
        self.pad, self.cout = pad, cout

    def folded_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Folded kernel ``[4*cout, cin, k_eff, k_eff]`` (output channel ``(2*py + px)*cout + o``), bias ``[4*cout]``."""
        w = self.conv.weight
        m = self.maps.to(w.dtype)
        # W_eff[py, px, o, i, a, b] = Σ_{y,x} M[py, a, y] · W[o, i, y, x] · M[px, b, x]
        wf = torch.einsum("pay,oiyx,qbx->pqoiab", m, w, m)
        wf = wf.reshape(4 * self.cout, w.shape[1], m.shape[1], m.shape[1])
        return wf.contiguous(memory_format=torch.channels_last), self.conv.bias.repeat(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wf, bf = self.folded_weight()
        y = F.conv2d(x, wf, bf, padding=self.pad)                       # [N, 4*cout, H, W]
        n, _, h, w = y.shape
        # interleave parities in NHWC order: [N, H, W, py, px, c] -> [N, H, py, W, px, c]
        y = y.permute(0, 2, 3, 1).reshape(n, h, w, 2, 2, self.cout).permute(0, 1, 3, 2, 4, 5)
        return y.reshape(n, 2 * h, 2 * w, self.cout).permute(0, 3, 1, 2)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The literal definition (upsample, then conv) — for tests."""
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class ImageEncoder(nn.Module):
    """uint8 ``[N, 64, 64, C]`` -> ``[N, 4*4*d*mults[-1]]``.

    ``x/255 - 0.5``, then 4 × [Conv k s1 -> MaxPool 2 -> norm -> SiLU] with channels ``d*mults``; flatten in HWC order.
    """

    def __init__(self, in_shape: tuple, depth: int, mults: tuple = (2, 3, 4, 4), kernel: int = 5, norm: str = "rms"):
        super().__init__()
        h, w, c = in_shape
        if h != 64 or w != 64:
            raise ValueError(f"in_shape: image encoder expects 64x64 images, got {in_shape}")
        chans = [c] + [depth * m for m in mults]
        self.convs = nn.ModuleList(_conv(chans[i], chans[i + 1], kernel) for i in range(len(mults)))
        self.norms = nn.ModuleList(_ChannelNorm(chans[i + 1], norm) for i in range(len(mults)))
        self.out_dim = 4 * 4 * chans[-1]
        self.to(memory_format=torch.channels_last)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = img.permute(0, 3, 1, 2).to(torch.float32)  # channels_last strides, NCHW view
        x = x * (1.0 / 255.0) - 0.5
        for conv, norm in zip(self.convs, self.norms):
            x = F.silu(norm(F.max_pool2d(conv(x), 2)))
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)


class ImageDecoder(nn.Module):
    """``[N, F] -> [N, 64, 64, C]`` in [0, 1].

    Linear to 4×4×(d*mults[-1]) -> norm -> SiLU, then 3 × [nearest-upsample ×2 -> Conv k -> norm -> SiLU] with channels
    ``d*mults[2], d*mults[1], d*mults[0]`` (4d, 3d, 2d), then upsample ×2 -> Conv k to C -> sigmoid.
    """

    def __init__(self, feat_dim: int, out_shape: tuple, depth: int, mults: tuple = (2, 3, 4, 4), kernel: int = 5,
                 norm: str = "rms"):
        super().__init__()
        h, w, c = out_shape
        if h != 64 or w != 64:
            raise ValueError(f"out_shape: image decoder produces 64x64 images, got {out_shape}")
        self.c0 = depth * mults[-1]
        self.space = nn.Linear(feat_dim, 16 * self.c0)
        trunc_init_(self.space.weight, feat_dim, 16 * self.c0)
        nn.init.zeros_(self.space.bias)
        self.space_norm = Norm(self.c0, norm)
        chans = [self.c0] + [depth * m for m in reversed(mults[:-1])]  # 4d, 4d, 3d, 2d
        self.convs = nn.ModuleList(UpsampleConv(chans[i], chans[i + 1], kernel) for i in range(len(chans) - 1))
        self.norms = nn.ModuleList(_ChannelNorm(chans[i + 1], norm) for i in range(len(chans) - 1))
        self.out = UpsampleConv(chans[-1], c, kernel)
        self.out_shape = tuple(out_shape)
        self.to(memory_format=torch.channels_last)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        n = feat.shape[0]
        x = F.silu(self.space_norm(self.space(feat).reshape(n, 4, 4, self.c0)))
        x = x.permute(0, 3, 1, 2)  # channels_last NCHW view
        for conv, norm in zip(self.convs, self.norms):
            x = F.silu(norm(conv(x)))      # upsample ×2 + conv (computed sub-pixel, see UpsampleConv)
        x = self.out(x)
        return torch.sigmoid(x).permute(0, 2, 3, 1)


class VectorEncoder(nn.Module):
    """float ``[N, D] -> [N, units]``: optional symlog, then ``layers`` × DenseLayer."""

    def __init__(self, dim: int, units: int, layers: int, norm: str = "rms", symlog: bool = True):
        super().__init__()
        self.symlog = symlog
        self.mlp = MLP(dim, units, layers, norm)
        self.out_dim = self.mlp.out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32)
        return self.mlp(ops.symlog(x) if self.symlog else x)


class VectorDecoder(nn.Module):
    """``[N, F] -> [N, D]`` prediction in symlog space (loss ``½(f − symlog(y))²`` summed over D)."""

    def __init__(self, feat_dim: int, dim: int, units: int, layers: int, norm: str = "rms"):
        super().__init__()
        self.mlp = MLP(feat_dim, units, layers, norm)
        self.out = out_linear(self.mlp.out_dim, dim)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return self.out(self.mlp(feat))
