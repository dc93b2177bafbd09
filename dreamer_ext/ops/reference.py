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
import torch.nn.functional as F

__all__ = ["symlog", "symexp", "twohot", "twohot_cross_entropy", "lambda_return", "philox4x32_10", "philox_uniform",
           "sample_index", "rollout", "act"]


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


# ---------------------------------------------------------------------------------------------------- randomness
_MASK32 = 0xFFFFFFFF


def _mulhilo32(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32-bit words of ``a * b`` for a 32-bit constant ``a`` and int64 tensors ``b`` in [0, 2^32):
    the product is formed from 16-bit halves of ``b`` so nothing leaves int64."""
    p_lo = (b & 0xFFFF) * a                        # < 2^48
    p_hi = (b >> 16) * a                           # < 2^48
    t = ((p_hi & 0xFFFF) << 16) + p_lo             # < 2^49
    return (p_hi >> 16) + (t >> 32), t & _MASK32


def philox4x32_10(counter: list[torch.Tensor], key: tuple[int, int]) -> list[torch.Tensor]:
    """Philox4x32-10 on int64 tensors holding uint32 words: ``counter`` = 4 broadcastable tensors, ``key`` = 2
    ints -> 4 tensors (the twin of ``csrc/common/philox.h``)."""
    c0, c1, c2, c3 = (torch.as_tensor(c, dtype=torch.int64) for c in counter)
    k0, k1 = int(key[0]) & _MASK32, int(key[1]) & _MASK32
    for r in range(10):
        if r:
            k0, k1 = (k0 + 0x9E3779B9) & _MASK32, (k1 + 0xBB67AE85) & _MASK32
        hi0, lo0 = _mulhilo32(0xD2511F53, c0)
        hi1, lo1 = _mulhilo32(0xCD9E8D57, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return [c0, c1, c2, c3]


def philox_uniform(seed: int, steps: int, rows: int, count: int, stream: int, step0: int = 0, row0: int = 0
                   ) -> torch.Tensor:
    """The rollout's uniforms: ``out[s, r, i]`` (float32 ``[steps, rows, count]``, in [0, 1)) = word ``i % 4`` of the
    Philox block with counter ``(row0 + r, step0 + s, i // 4, stream)`` and key ``(seed low, seed high)``, as
    ``(bits >> 8) * 2^-24``."""
    s = torch.arange(steps, dtype=torch.int64).add_(step0).view(steps, 1, 1)
    r = torch.arange(rows, dtype=torch.int64).add_(row0).view(1, rows, 1)
    blocks = (count + 3) // 4
    b = torch.arange(blocks, dtype=torch.int64).view(1, 1, blocks)
    words = philox4x32_10([r, s, b, torch.tensor(stream)], (seed & _MASK32, (seed >> 32) & _MASK32))
    bits = torch.stack(torch.broadcast_tensors(*words), -1).reshape(steps, rows, blocks * 4)[..., :count]
    return (bits >> 8).to(torch.float32) * (1.0 / 16777216.0)


def sample_index(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw from ``probs[..., K]`` with ``uniform[...]``: the first k whose float32 running sum (in class
    order, one addition at a time, like the kernels) exceeds u; K−1 if none of the first K−1 does -> int64 ``[...]``.
    (``torch.cumsum`` accumulates float32 in float64 on the CPU, so it can round differently.)"""
    p = probs.detach().float()
    u = uniform.to(torch.float32)
    K = p.shape[-1]
    c = torch.zeros_like(u)
    idx = torch.zeros(u.shape, dtype=torch.int64, device=u.device)
    for k in range(K - 1):
        c = c + p[..., k]
        idx += (c <= u).long()  # the running sum is non-decreasing, so this counts the sums <= u
    return idx


# ------------------------------------------------------------------------------------------------------ rollout
class _Twin:
    """The rollout's and the acting step's networks in PyTorch, from the op's flat weight list (see
    :func:`dreamer_ext.ops.rollout_weight_shapes`); with bf16 the matmul inputs are rounded to bf16 and the weights
    unpacked to exactly their bf16 values, and everything is summed in float32, as in the kernels. Given float64
    weights and states (fp32 dims) it computes in float64: the tests' ground truth."""

    def __init__(self, weights: list, d: dict, latent_layers: int):
        self.d, self.bf16 = d, bool(d["bf16"])
        it = iter(weights)

        def take(k):
            layer = [next(it) for _ in range(k)]
            if self.bf16:
                layer[0] = unpack_bf16_pairs(layer[0])
            return layer

        self.actor, self.actor_out = [take(4) for _ in range(d["actor_layers"])], take(2)
        self.in_h, self.in_z, self.in_a = take(4), take(4), take(4)
        self.dyn, self.gru = [take(4) for _ in range(d["dyn_layers"])], take(2)
        self.latent, self.latent_out = [take(4) for _ in range(latent_layers)], take(2)

    def rnd(self, x):  # a matmul input as the kernels read it
        return x.to(torch.bfloat16).float() if self.bf16 else x

    def normed(self, y, nw, nb):
        if self.d["norm"] == 0:
            return F.rms_norm(y, (y.shape[-1],), nw, 1e-4)
        return F.layer_norm(y, (y.shape[-1],), nw, nb, 1e-3)

    def dense(self, x, layer):  # [W (K-major), b] or [W, b, norm weight, norm bias]: Linear (+ norm + SiLU)
        y = self.rnd(x) @ layer[0][:x.shape[-1]] + layer[1]
        return F.silu(self.normed(y, layer[2], layer[3])) if len(layer) == 4 else y

    def mlp(self, x, hidden, out):
        for layer in hidden:
            x = self.dense(x, layer)
        return self.dense(x, out)

    def block(self, x, layer):  # x [N, in] -> [N, out] with W [g, in/g, out/g]
        g = self.d["blocks"]
        y = torch.einsum("ngi,gio->ngo", self.rnd(x).reshape(x.shape[0], g, -1), layer[0][:, :x.shape[-1] // g])
        return y.reshape(x.shape[0], -1) + layer[1]

    def onehot(self, z):  # class indices (-1: an all-zero group) -> [N, S*C]
        C = self.d["classes"]
        return (F.one_hot(z.long().clamp(min=0), C).float() * (z >= 0).unsqueeze(-1)).reshape(z.shape[0], -1)

    def action(self, h, z, u, sample=True):
        """The actor's action on [h, onehot z] with uniforms ``u [N, 1 or A]`` (or its mode); returns the action and
        the core's input for it."""
        d, A = self.d, self.d["act_dim"]
        logits = self.mlp(torch.cat([h, self.onehot(z).to(h.dtype)], -1), self.actor, self.actor_out)
        if d["discrete"]:
            mix = self.mix_actor
            probs = torch.softmax(logits, -1) * (1.0 - mix) + mix / A
            idx = sample_index(probs, u[:, 0]) if sample else probs.argmax(-1)
            a = F.one_hot(idx, A).float()
            return a, a
        mean = torch.tanh(logits[:, :A])
        if not sample:
            a = mean
        else:
            std = (self.max_std - self.min_std) * torch.sigmoid(logits[:, A:] + 2.0) + self.min_std
            a = mean + std * (2.0 ** 0.5) * torch.erfinv(2.0 * u.clamp(1e-6, 1 - 1e-6) - 1.0)
        return a, a / a.abs().clamp(min=1.0)

    def core(self, h, z, a_in):
        n, g, D, Hd = h.shape[0], self.d["blocks"], self.d["deter"], self.d["hidden"]
        x3 = torch.cat([self.dense(h, self.in_h), self.dense(self.onehot(z).to(h.dtype), self.in_z),
                        self.dense(a_in, self.in_a)], -1)
        x = torch.cat([h.reshape(n, g, D // g), x3[:, None].expand(n, g, 3 * Hd)], -1).reshape(n, -1)
        for layer in self.dyn:
            x = F.silu(self.normed(self.block(x, layer), layer[2], layer[3]))
        r, c, u = self.block(x, self.gru).reshape(n, g, 3, D // g).unbind(2)
        upd = torch.sigmoid(u - 1.0)
        return (upd * torch.tanh(torch.sigmoid(r) * c) + (1.0 - upd) * h.reshape(n, g, D // g)).reshape(n, D)

    def sample_latent(self, x, u):
        n, S, C = x.shape[0], self.d["stoch"], self.d["classes"]
        probs = torch.softmax(self.mlp(x, self.latent, self.latent_out).reshape(n, S, C), -1)
        probs = probs * (1.0 - self.mix_rssm) + self.mix_rssm / C
        return sample_index(probs, u).to(torch.int32)

    def set_floats(self, floats):
        self.mix_rssm, self.mix_actor, self.min_std, self.max_std = (float(v) for v in floats)


ROLLOUT_DIMS = ("n", "horizon", "deter", "blocks", "hidden", "stoch", "classes", "act_dim", "discrete", "norm",
                "actor_layers", "actor_units", "dyn_layers", "prior_layers", "bf16")
ACT_DIMS = ROLLOUT_DIMS + ("embed_dim", "post_layers")


def unpack_bf16_pairs(w: torch.Tensor) -> torch.Tensor:
    """bf16 k-pairs ``[..., ceil(K/2), O, 2]`` -> float32 ``[..., 2 ceil(K/2), O]`` (exactly the bf16 values; an odd K
    leaves one zero row at the end)."""
    return w.transpose(-1, -2).reshape(*w.shape[:-3], -1, w.shape[-2]).float()


def rollout(h0: torch.Tensor, z0: torch.Tensor, weights: list, dims: list, floats: list, seed: int, row0: int = 0,
            feat: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fused imagination rollout, step by step in PyTorch (see :func:`dreamer_ext.ops.rollout` for the
    arguments). One-hot inputs are built as pure one-hot tensors; the uniforms come from :func:`philox_uniform`
    and the draws from :func:`sample_index`, so the kernels sample the same classes wherever the probabilities
    agree. Returns (h ``[H+1, N, deter]``, z ``[H+1, N, stoch]`` int32 class indices, a ``[H, N, act_dim]``); with
    ``feat`` the first is [h, one-hot z] ``[H+1, N, deter + stoch * classes]``."""
    d = dict(zip(ROLLOUT_DIMS, (int(v) for v in dims)))
    net = _Twin(weights, d, d["prior_layers"])
    net.set_floats(floats)
    n, S, A = d["n"], d["stoch"], d["act_dim"]
    h, z = h0.float(), z0.to(torch.int32)
    hs, zs, acts = [h], [z], []
    for t in range(d["horizon"]):
        ua = philox_uniform(seed, 1, n, 1 if d["discrete"] else A, 1, t, row0)[0].to(h.device)
        a, a_in = net.action(h, z, ua)
        h = net.core(h, z, a_in)
        z = net.sample_latent(h, philox_uniform(seed, 1, n, S, 0, t, row0)[0].to(h.device))
        hs.append(h), zs.append(z), acts.append(a)
    h, z = torch.stack(hs), torch.stack(zs)
    return (feat_of(h, z, d["classes"]) if feat else h), z, torch.stack(acts)


def feat_of(h: torch.Tensor, z: torch.Tensor, classes: int) -> torch.Tensor:
    """[h, one-hot z] (the rollout's feat layout) from h ``[..., D]`` and int32 class indices ``z [..., S]``."""
    onehot = F.one_hot(z.long(), classes).to(h.dtype)
    return torch.cat([h, onehot.reshape(*onehot.shape[:-2], -1)], -1)


def act(h: torch.Tensor, z: torch.Tensor, prev_action: torch.Tensor, is_first: torch.Tensor, embed: torch.Tensor,
        weights: list, dims: list, floats: list, seed: int, sample: bool = True
        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fused acting step in PyTorch (see :func:`dreamer_ext.ops.act`)."""
    d = dict(zip(ACT_DIMS, (int(v) for v in dims)))
    net = _Twin(weights, d, d["post_layers"])
    net.set_floats(floats)
    n, S, A = d["n"], d["stoch"], d["act_dim"]
    keep = ~is_first.bool()
    h = h.float() * keep[:, None]
    z = torch.where(keep[:, None], z.to(torch.int32), torch.full_like(z, -1, dtype=torch.int32))
    prev = prev_action.float() * keep[:, None]
    a_in = prev if d["discrete"] else prev / prev.abs().clamp(min=1.0)
    h = net.core(h, z, a_in)
    z = net.sample_latent(torch.cat([h, embed.float()], -1), philox_uniform(seed, 1, n, S, 0, 0)[0].to(h.device))
    ua = philox_uniform(seed, 1, n, 1 if d["discrete"] else A, 1, 0)[0].to(h.device)
    a, _ = net.action(h, z, ua, sample)
    return h, z, a
