"""Pure-PyTorch twins of every kernel in :mod:`dreamer_ext.ops`.

Same signatures and semantics as the fast ops (see the op table in the README).
They are the ground truth in tests, the A/B baseline in ``bench/`` and the
backend used when ``DREAMER_EXT_BACKEND=reference``. Written for clarity, not speed.
"""
from __future__ import annotations

import torch

__all__ = ["symlog", "symexp", "twohot", "twohot_cross_entropy", "lambda_return"]


def symlog(x: torch.Tensor) -> torch.Tensor:
    """``sign(x) * log(1 + |x|)``, elementwise, any shape."""
    return torch.sign(x) * torch.log1p(torch.abs(x))


def symexp(x: torch.Tensor) -> torch.Tensor:
    """``sign(x) * (exp(|x|) - 1)``, elementwise, any shape (inverse of symlog)."""
    return torch.sign(x) * torch.expm1(torch.abs(x))


def twohot(x: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Two-hot encoding of ``x[...]`` over strictly increasing ``bins[K]`` -> ``[..., K]``.

    For ``bins[k] <= x < bins[k+1]`` the weight ``(bins[k+1]-x)/(bins[k+1]-bins[k])`` goes to k and
    the rest to k+1; values at or beyond the ends put all weight on the end bin; NaN gives a NaN row.
    """
    K = bins.shape[0]
    # index of the last bin <= x, clamped to [0, K-2]
    hi = torch.searchsorted(bins, x.detach().contiguous(), right=True)
    lo = (hi - 1).clamp(0, K - 2)
    b_lo, b_hi = bins[lo], bins[lo + 1]
    w_lo = ((b_hi - x) / (b_hi - b_lo)).clamp(0.0, 1.0)
    w_lo = torch.where(torch.isnan(x), x, w_lo)
    w_hi = 1.0 - w_lo
    out = torch.zeros(*x.shape, K, dtype=x.dtype, device=x.device)
    out.scatter_add_(-1, lo.unsqueeze(-1), w_lo.unsqueeze(-1))
    out.scatter_add_(-1, (lo + 1).unsqueeze(-1), w_hi.unsqueeze(-1))
    nan_rows = torch.isnan(x).unsqueeze(-1)
    return torch.where(nan_rows, torch.full_like(out, float("nan")), out)


def twohot_cross_entropy(logits: torch.Tensor, target: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """``-sum_k twohot(target, bins)_k * log_softmax(logits)_k``: ``logits[..., K]``, ``target[...]`` -> ``[...]``.

    Bins with zero weight contribute 0 (so a -inf logit there leaves the loss finite).
    """
    weights = twohot(target.detach(), bins).to(logits.dtype)
    # zero-weight bins contribute exactly 0, also where a logit is -inf (0 * -inf would be NaN)
    terms = torch.where(weights == 0, torch.zeros_like(weights), weights * torch.log_softmax(logits, dim=-1))
    return -terms.sum(-1)


def lambda_return(reward: torch.Tensor, cont: torch.Tensor, value: torch.Tensor,
                  gamma: float, lam: float) -> torch.Tensor:
    """Time-major λ-returns: ``reward[T,...]``, ``cont[T,...]``, ``value[T+1,...]`` -> ``R[T,...]``.

    ``R_t = reward_t + gamma * cont_t * ((1-lam) * value_{t+1} + lam * R_{t+1})`` with ``R_T = value_T``.
    """
    T = reward.shape[0]
    out = []
    nxt = value[T]
    for t in reversed(range(T)):
        nxt = reward[t] + gamma * cont[t] * ((1.0 - lam) * value[t + 1] + lam * nxt)
        out.append(nxt)
    if not out:
        return reward.new_empty(reward.shape)
    return torch.stack(out[::-1], 0)
