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
from .dists import f32

__all__ = ["Norm", "trunc_init_", "initialize", "INITS", "DenseLayer", "MLP", "BlockLinear", "ImageEncoder",
           "ImageDecoder", "VectorEncoder", "VectorDecoder", "UpsampleConv"]

INITS = ("v2", "avg")
_TRUNC_STD = 0.87962566103423978  # std of a standard normal truncated to [-2, 2]


def trunc_init_(weight: torch.Tensor, fan_in: int, fan_out: int, scale: float = 1.0, kind: str = "avg") -> None:
    """Truncated-normal init (±2σ), in place. ``kind="v2"``: std ``scale / √fan_in`` (the authors' current
    'trunc_normal' with fan 'in'; ``scale`` is their outscale); ``kind="avg"``: variance ``scale / mean(fan_in,
    fan_out)`` (this project's earlier init). ``scale = 0`` gives zeros."""
    if kind not in INITS:
        raise ValueError(f"kind: expected one of {INITS}, got {kind!r}")
    std = scale / math.sqrt(fan_in) if kind == "v2" else math.sqrt(scale / ((fan_in + fan_out) / 2.0))
    with torch.no_grad():
        nn.init.trunc_normal_(weight, 0.0, 1.0, -2.0, 2.0)
        weight.mul_(std / _TRUNC_STD)


def _fans(m: nn.Module) -> tuple[int, int] | None:
    """(fan_in, fan_out) of a weight layer as the V2 init counts them: a block-linear layer's fan-in is its *full*
    input width (each output sees one block, but the authors' fan counts all blocks); a conv's includes k·k."""
    if isinstance(m, nn.Linear):
        return m.in_features, m.out_features
    if isinstance(m, BlockLinear):
        return m.inp, m.out
    if isinstance(m, nn.Conv2d):
        k = m.kernel_size[0] * m.kernel_size[1]
        return m.in_channels * k, m.out_channels * k
    return None


def initialize(module: nn.Module, kind: str = "v2") -> None:
    """(Re-)initialise every weight layer under ``module`` in place: weights truncated normal (:func:`trunc_init_`)
    scaled by the layer's ``init_scale`` attribute (its outscale: 1 by default, 0 for the zero-initialised reward
    and critic outputs, e.g. 0.01 for the actor's output), biases zero. Norm scales are left at 1.

    ``kind="avg"`` reproduces the earlier init (fans of a block-linear layer per block, variance scaling)."""
    for m in module.modules():
        fans = _fans(m)
        if fans is None:
            continue
        fan_in, fan_out = fans
        if kind == "avg" and isinstance(m, BlockLinear):
            fan_in, fan_out = fan_in // m.groups, fan_out // m.groups
        trunc_init_(m.weight, fan_in, fan_out, getattr(m, "init_scale", 1.0), kind)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


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
        xf = f32(x)
        if self.kind == "rms":
            y = F.rms_norm(xf, (self.dim,), self.weight.to(xf.dtype), 1e-4)
        else:
            y = F.layer_norm(xf, (self.dim,), self.weight.to(xf.dtype), self.bias.to(xf.dtype), 1e-3)
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


def float_dtype(module: nn.Module) -> torch.dtype:
    """The dtype inputs enter ``module`` in: float32 (bf16 compute happens under autocast), float64 for a float64
    model."""
    p = next(module.parameters(), None)
    return torch.float64 if p is not None and p.dtype == torch.float64 else torch.float32


class MLP(nn.Sequential):
    """``layers`` × DenseLayer: ``[..., inp] -> [..., units]`` (identity when layers == 0)."""

    def __init__(self, inp: int, units: int, layers: int, norm: str = "rms"):
        if layers < 0:
            raise ValueError(f"layers: must be >= 0, got {layers}")
        mods = [DenseLayer(inp if i == 0 else units, units, norm) for i in range(layers)]
        super().__init__(*mods)
        self.out_dim = units if layers else inp


def out_linear(inp: int, out: int, init: str = "normal", scale: float = 1.0) -> nn.Linear:
    """Output projection; ``init="zeros"`` for twohot reward/critic heads, else truncated normal × scale. The scale
    is kept as ``init_scale`` for :func:`initialize`."""
    layer = nn.Linear(inp, out)
    layer.init_scale = 0.0 if init == "zeros" else scale
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
        x = img.permute(0, 3, 1, 2).to(float_dtype(self))  # channels_last strides, NCHW view
        x = x * (1.0 / 255.0) - 0.5
        for conv, norm in zip(self.convs, self.norms):
            x = F.silu(norm(F.max_pool2d(conv(x), 2)))
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)


class ImageDecoder(nn.Module):
    """``[N, F] -> [N, 64, 64, C]`` in [0, 1], ``F = deter + stoch`` (``feat = concat(h, flatten(z))``).

    The 4×4×C0 input grid (C0 = d*mults[-1]): with ``bspace = g > 0`` (V2) a block-linear layer maps each of the g
    blocks of h to its own group of C0/g channels, plus ``Linear(stoch -> 2·units) -> norm -> SiLU -> Linear(-> 4·4·C0)``
    of z, and norm -> SiLU of the sum; with ``bspace = 0`` one Linear from feat -> norm -> SiLU. Then 3 × [nearest-
    upsample ×2 -> Conv k -> norm -> SiLU] with channels ``d*mults[2], d*mults[1], d*mults[0]`` (4d, 3d, 2d), then
    upsample ×2 -> Conv k to C -> sigmoid.
    """

    def __init__(self, feat_dim: int, out_shape: tuple, depth: int, mults: tuple = (2, 3, 4, 4), kernel: int = 5,
                 norm: str = "rms", deter: int = 0, bspace: int = 0, units: int = 0):
        super().__init__()
        h, w, c = out_shape
        if h != 64 or w != 64:
            raise ValueError(f"out_shape: image decoder produces 64x64 images, got {out_shape}")
        self.c0 = depth * mults[-1]
        self.bspace, self.deter = bspace, deter
        if bspace:
            if not (0 < deter < feat_dim) or deter % bspace or self.c0 % bspace or units <= 0:
                raise ValueError(f"bspace: {bspace} must divide deter={deter} (< feat_dim={feat_dim}) and the "
                                 f"{self.c0} grid channels, with units > 0 (got {units})")
            self.space_h = BlockLinear(deter, 16 * self.c0, bspace)
            self.space_z = nn.Sequential(DenseLayer(feat_dim - deter, 2 * units, norm), nn.Linear(2 * units, 16 * self.c0))
            trunc_init_(self.space_z[1].weight, 2 * units, 16 * self.c0)
            nn.init.zeros_(self.space_z[1].bias)
        else:
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

    def grid(self, feat: torch.Tensor) -> torch.Tensor:
        """``[N, F] -> [N, 4, 4, C0]`` before the norm (block b of h fills channels ``b·C0/g .. (b+1)·C0/g``)."""
        n = feat.shape[0]
        if not self.bspace:
            return self.space(feat).reshape(n, 4, 4, self.c0)
        g = self.bspace
        xh = self.space_h(feat[:, :self.deter]).reshape(n, g, 4, 4, self.c0 // g)
        xh = xh.permute(0, 2, 3, 1, 4).reshape(n, 4, 4, self.c0)          # (g h w c) -> h w (g c)
        return xh + self.space_z(feat[:, self.deter:]).reshape(n, 4, 4, self.c0)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.space_norm(self.grid(feat)))
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
        x = x.to(float_dtype(self))
        return self.mlp(ops.symlog(x) if self.symlog else x)


class VectorDecoder(nn.Module):
    """``[N, F] -> [N, D]`` prediction in symlog space (loss ``½(f − symlog(y))²`` summed over D)."""

    def __init__(self, feat_dim: int, dim: int, units: int, layers: int, norm: str = "rms"):
        super().__init__()
        self.mlp = MLP(feat_dim, units, layers, norm)
        self.out = out_linear(self.mlp.out_dim, dim)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return self.out(self.mlp(feat))
