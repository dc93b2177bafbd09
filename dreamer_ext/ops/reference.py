"""Pure-PyTorch twins of every kernel in :mod:`dreamer_ext.ops`.

Same signatures and semantics as the fast ops (see the op table in the README). They are the ground
truth in the tests (in float64), the backend used when ``DREAMER_EXT_BACKEND=reference``, and the
baseline in ``bench/``. So each is the fastest plain-PyTorch formulation we know, the one a careful
PyTorch user would write, not a strawman:

* ``twohot``: one ``searchsorted`` for all values, a zero tensor and two ``scatter_``; NaN rows are
  filled through their indices (a broadcast mask over ``[..., K]`` would cost a full extra pass).
* ``twohot_cross_entropy``: ``log_softmax`` and a ``gather`` of the two weighted log-probabilities; the
  ``[..., K]`` two-hot tensor is never built, and autograd's backward is gather's scatter plus
  ``log_softmax``'s fused backward.
* ``lambda_return``: the parts that do not depend on the recursion (``reward + gamma (1 - lam) cont value``
  and ``gamma lam cont``) for all steps at once, then one in-place ``addcmul_`` per step into the output.
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


def _twohot_pos(x: torch.Tensor, bins: torch.Tensor):
    """``(lo, w_lo)``: the two weighted bins are ``lo`` and ``lo + 1``, with weight ``w_lo`` on ``lo``.

    Ends clamp (``lo = 0, w_lo = 1`` at or below ``bins[0]``; ``lo = K-2, w_lo = 0`` at or above ``bins[-1]``);
    NaN gives ``w_lo = NaN``.
    """
    K = bins.shape[0]
    lo = (torch.searchsorted(bins, x.contiguous(), right=True) - 1).clamp_(0, K - 2)  # last bin <= x
    b_lo, b_hi = bins[lo], bins[lo + 1]
    w_lo = ((b_hi - x) / (b_hi - b_lo)).clamp_(0.0, 1.0)  # clamp keeps NaN
    return lo, w_lo


def twohot(x: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Two-hot encoding of ``x[...]`` over strictly increasing ``bins[K]`` -> ``[..., K]``.

    For ``bins[k] <= x < bins[k+1]`` the weight ``(bins[k+1]-x)/(bins[k+1]-bins[k])`` goes to k and
    the rest to k+1; values at or beyond the ends put all weight on the end bin; NaN gives a NaN row.
    """
    x = x.detach()
    K = bins.shape[0]
    lo, w_lo = _twohot_pos(x, bins)
    out = torch.zeros(*x.shape, K, dtype=x.dtype, device=x.device)
    out.scatter_(-1, lo.unsqueeze(-1), w_lo.unsqueeze(-1))
    out.scatter_(-1, (lo + 1).unsqueeze(-1), (1.0 - w_lo).unsqueeze(-1))
    nan_rows = torch.isnan(x).reshape(-1).nonzero().squeeze(1)
    out.view(-1, K).index_fill_(0, nan_rows, float("nan"))
    return out


def twohot_cross_entropy(logits: torch.Tensor, target: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """``-sum_k twohot(target, bins)_k * log_softmax(logits)_k``: ``logits[..., K]``, ``target[...]`` -> ``[...]``.

    Bins with zero weight contribute 0 (so a -inf logit there leaves the loss finite). A NaN target gives a
    NaN loss and a NaN gradient row; differentiable w.r.t. ``logits`` only.
    """
    lo, w_lo = _twohot_pos(target.detach().to(logits.dtype), bins.to(logits.dtype))
    log_p = torch.log_softmax(logits, dim=-1).gather(-1, torch.stack((lo, lo + 1), -1))
    w = torch.stack((w_lo, 1.0 - w_lo), -1)
    # zero-weight bins contribute exactly 0, also where the log-probability is -inf (0 * -inf would be NaN)
    return -torch.where(w != 0, w * log_p, 0.0).sum(-1)


def lambda_return(reward: torch.Tensor, cont: torch.Tensor, value: torch.Tensor,
                  gamma: float, lam: float) -> torch.Tensor:
    """Time-major λ-returns: ``reward[T,...]``, ``cont[T,...]``, ``value[T+1,...]`` -> ``R[T,...]``.

    ``R_t = reward_t + gamma * cont_t * ((1-lam) * value_{t+1} + lam * R_{t+1})`` with ``R_T = value_T``.
    """
    T = reward.shape[0]
    gc = cont * gamma
    out = torch.addcmul(reward, gc, value[1:], value=1.0 - lam)  # reward_t + gamma (1-lam) cont_t value_{t+1}
    step = gc.mul_(lam)  # gamma lam cont_t
    nxt = value[T]
    for t in range(T - 1, -1, -1):
        nxt = out[t].addcmul_(step[t], nxt)
    return out
