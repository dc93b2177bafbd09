"""Output distributions with a common surface: ``.loss(target)``, ``.pred()``, ``.entropy()``.

All losses are per element (no reduction over batch/time): the caller averages. Sampling takes optional uniforms
``u ~ U[0,1)`` so a fused kernel can reproduce identical samples (inverse-CDF sampling).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import ops

__all__ = ["f32", "make_bins", "TwoHot", "Bernoulli", "OneHotDist", "BoundedNormal", "MSE", "ImageMSE",
           "categorical_sample", "categorical_kl"]


def f32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in at least float32: what the model computes in fp32 (norms, gates, distributions, losses) whatever the
    matmuls' dtype; a float64 model (the data-parallel equivalence test) stays float64."""
    return x if x.dtype == torch.float64 else x.float()


def make_bins(num: int = 255, limit: float = 20.0, space: str = "symlog", device=None) -> torch.Tensor:
    """Twohot bins ``[num]``: ``linspace(-limit, limit)`` (space "symlog", bins live in symlog space) or
    ``symexp(linspace(...))`` (space "symexp", V2 raw-space bins)."""
    if space not in ("symlog", "symexp"):
        raise ValueError(f"space: expected 'symlog' or 'symexp', got {space!r}")
    if num % 2:  # exactly symmetric with an exact zero bin
        half = torch.linspace(-limit, 0.0, (num + 1) // 2, device=device, dtype=torch.float32)
        b = torch.cat([half, -half[:-1].flip(0)])
    else:
        b = torch.linspace(-limit, limit, num, device=device, dtype=torch.float32)
    return ops.symexp(b) if space == "symexp" else b


class TwoHot:
    """Discrete regression head over ``bins[K]``; ``logits[..., K]``.

    ``space`` says where the bins live. "symlog": loss = CE(logits, twohot(symlog(y))), pred = symexp(Σ softmax·bins).
    "symexp": loss = CE(logits, twohot(y)) over raw bins, pred = Σ softmax·bins.
    """

    def __init__(self, logits: torch.Tensor, bins: torch.Tensor, space: str = "symlog"):
        if logits.shape[-1] != bins.shape[0]:
            raise ValueError(f"logits: last dim {logits.shape[-1]} != number of bins {bins.shape[0]}")
        if space not in ("symlog", "symexp"):
            raise ValueError(f"space: expected 'symlog' or 'symexp', got {space!r}")
        self.logits, self.bins, self.space = f32(logits), bins, space

    def pred(self) -> torch.Tensor:
        """Expected value in raw space ``[...]`` (summed outside-in, see :func:`paired_mean`)."""
        m = paired_mean(torch.softmax(self.logits, -1), self.bins)
        return ops.symexp(m) if self.space == "symlog" else m

    def loss(self, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy against the twohot encoding of raw ``target[...]`` -> ``[...]``."""
        t = f32(target.detach())
        if self.space == "symlog":
            t = ops.symlog(t)
        return ops.twohot_cross_entropy(self.logits, t, self.bins)

    def entropy(self) -> torch.Tensor:
        logp = torch.log_softmax(self.logits, -1)
        return -(logp.exp() * logp).sum(-1)


def paired_mean(probs: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """``Σ_k probs[..., k]·bins[k]`` with bin k added to its mirror bin K−1−k first.

    Raw-space (symexp) bins reach ±4.9e8: a left-to-right float32 sum of a uniform softmax over symmetric bins gives
    about −0.26 instead of 0, so a zero-initialised reward or critic head would not predict 0. Adding mirror pairs
    first makes symmetric mass cancel exactly; the value is the same mathematically for any bins.
    """
    K, m = bins.shape[0], bins.shape[0] // 2
    lo = (probs[..., :m] * bins[:m]).flip(-1)           # bins m-1 .. 0
    hi = probs[..., K - m:] * bins[K - m:]              # bins K-m .. K-1, the mirrors of lo
    out = (lo + hi).sum(-1)
    if K % 2:
        out = out + probs[..., m] * bins[m]
    return out


class Bernoulli:
    """``logits[...]``; loss = binary cross-entropy, pred = mode (1 where p > 0.5), mean = p."""

    def __init__(self, logits: torch.Tensor):
        self.logits = f32(logits)

    def mean(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    def pred(self) -> torch.Tensor:
        return (self.logits > 0).float()

    def loss(self, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(self.logits, f32(target).to(self.logits.dtype), reduction="none")

    def entropy(self) -> torch.Tensor:
        p = torch.sigmoid(self.logits)
        return F.binary_cross_entropy_with_logits(self.logits, p, reduction="none")


def unimix_logits(logits: torch.Tensor, unimix: float) -> torch.Tensor:
    """Log-probs of ``(1-u)·softmax(logits) + u/K`` over the last dim (fp32)."""
    logits = f32(logits)
    if unimix <= 0:
        return torch.log_softmax(logits, -1)
    probs = torch.softmax(logits, -1) * (1.0 - unimix) + unimix / logits.shape[-1]
    return torch.log(probs)


def categorical_sample(probs: torch.Tensor, uniform: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse-CDF sample of ``probs[..., K]`` -> one-hot ``[..., K]`` (no gradient).

    ``uniform[...]`` in [0, 1): index = #{k : cumsum(probs)_k <= u}, clamped to K−1. Drawn with torch.rand if None.
    """
    if uniform is None:
        uniform = torch.rand(probs.shape[:-1], device=probs.device, dtype=probs.dtype)
    elif uniform.shape != probs.shape[:-1]:
        raise ValueError(f"uniform: expected shape {tuple(probs.shape[:-1])}, got {tuple(uniform.shape)}")
    cdf = probs.detach().cumsum(-1)
    idx = (cdf <= uniform.unsqueeze(-1).to(cdf.dtype)).sum(-1).clamp_(max=probs.shape[-1] - 1)
    return F.one_hot(idx, probs.shape[-1]).to(probs.dtype)


def categorical_kl(logp_q: torch.Tensor, logp_p: torch.Tensor) -> torch.Tensor:
    """KL[q‖p] from log-probs ``[..., G, K]`` summed over the last two dims -> ``[...]`` (fp32)."""
    logp_q, logp_p = f32(logp_q), f32(logp_p)
    return (logp_q.exp() * (logp_q - logp_p)).sum((-2, -1))


class OneHotDist:
    """Categorical with unimix over the last dim of ``logits[..., K]``; samples are one-hot with straight-through
    gradients (``onehot + p − sg(p)``)."""

    def __init__(self, logits: torch.Tensor, unimix: float = 0.0):
        self.logp = unimix_logits(logits, unimix)
        self.probs = self.logp.exp()

    def sample(self, uniform: torch.Tensor | None = None) -> torch.Tensor:
        onehot = categorical_sample(self.probs, uniform)
        return onehot + (self.probs - self.probs.detach())  # exact one-hot values, gradient of probs

    def mode(self) -> torch.Tensor:
        idx = self.probs.argmax(-1)
        onehot = F.one_hot(idx, self.probs.shape[-1]).to(self.probs.dtype)
        return onehot + (self.probs - self.probs.detach())

    pred = mode

    def log_prob(self, onehot: torch.Tensor) -> torch.Tensor:
        return (onehot.detach() * self.logp).sum(-1)

    def entropy(self) -> torch.Tensor:
        return -(self.probs * self.logp).sum(-1)

    def loss(self, onehot: torch.Tensor) -> torch.Tensor:
        return -self.log_prob(onehot)


class BoundedNormal:
    """Continuous actor: Normal(tanh(μ), σ) with ``σ = (max−min)·sigmoid(s+2) + min`` per dim of ``[..., A]``;
    log-prob and entropy summed over A."""

    def __init__(self, mean: torch.Tensor, std_raw: torch.Tensor, min_std: float = 0.1, max_std: float = 1.0):
        self.mean = torch.tanh(f32(mean))
        self.std = (max_std - min_std) * torch.sigmoid(f32(std_raw) + 2.0) + min_std

    def sample(self, uniform: torch.Tensor | None = None) -> torch.Tensor:
        """Reparameterised sample ``[..., A]``; ``uniform[..., A]`` maps to normals through erfinv."""
        if uniform is None:
            eps = torch.randn_like(self.mean)
        else:
            if uniform.shape != self.mean.shape:
                raise ValueError(f"uniform: expected shape {tuple(self.mean.shape)}, got {tuple(uniform.shape)}")
            u = uniform.to(self.mean.dtype).clamp(1e-6, 1 - 1e-6)
            eps = math.sqrt(2.0) * torch.erfinv(2.0 * u - 1.0)
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        return self.mean

    pred = mode

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        z = (f32(x.detach()) - self.mean) / self.std
        return (-0.5 * z * z - torch.log(self.std) - 0.5 * math.log(2 * math.pi)).sum(-1)

    def entropy(self) -> torch.Tensor:
        return (0.5 + 0.5 * math.log(2 * math.pi) + torch.log(self.std)).sum(-1)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        return -self.log_prob(x)


class MSE:
    """Vector decoder in symlog space: ``pred[..., D]``; loss ``Σ_D scale·(f − symlog(y))²`` (V2: scale 1; the notes:
    ½); pred() = symexp(f)."""

    def __init__(self, pred: torch.Tensor, symlog: bool = True, scale: float = 1.0):
        self.f, self.symlog, self.scale = f32(pred), symlog, scale

    def pred(self) -> torch.Tensor:
        return ops.symexp(self.f) if self.symlog else self.f

    def loss(self, target: torch.Tensor) -> torch.Tensor:
        t = f32(target.detach())
        t = ops.symlog(t) if self.symlog else t
        return (self.scale * (self.f - t) ** 2).sum(-1)

    def entropy(self) -> torch.Tensor:
        return torch.zeros_like(self.f[..., 0])


class ImageMSE:
    """Image decoder output ``mean[..., H, W, C]`` in [0, 1]; loss = squared error summed over pixels against x/255."""

    def __init__(self, mean: torch.Tensor):
        self.mean = f32(mean)  # the loss is fp32 whatever the decoder computed in

    def pred(self) -> torch.Tensor:
        return self.mean

    def loss(self, target: torch.Tensor) -> torch.Tensor:
        t = f32(target.detach()) * (1.0 / 255.0)
        return ((self.mean - t) ** 2).sum((-3, -2, -1))

    def entropy(self) -> torch.Tensor:
        return torch.zeros_like(self.mean[..., 0, 0, 0])
