"""The model side of the fused imagination rollout (:func:`dreamer_ext.ops.rollout`): packing the actor, the RSSM
core and the prior into the op's K-major float32 weights, once per parameter change, and a drop-in for
:meth:`RSSM.imagine <dreamer_ext.rssm.RSSM.imagine>` built on it.

The uniforms of row r at step t come from Philox (:func:`dreamer_ext.ops.reference.philox_uniform`) under a seed
drawn from torch's default generator per call, so ``torch.manual_seed`` makes a rollout reproducible, and the
PyTorch loop given the same uniforms samples the same classes wherever its probabilities round the same way.
"""
from __future__ import annotations

import operator

import torch

from . import ops

__all__ = ["RolloutWeights", "fused_imagine", "fused_act", "draw_seed", "rollout_uniforms"]


_VERSION = operator.attrgetter("_version")


def draw_seed() -> int:
    """A Philox key from torch's default CPU generator (advances it by one draw)."""
    return int(torch.randint(0, 2 ** 62, (), dtype=torch.int64))


def rollout_uniforms(seed: int, n: int, horizon: int, stoch: int, action_uniforms: int, device=None, row0: int = 0
                     ) -> dict:
    """The uniforms the fused rollout uses (start state r draws Philox row ``row0 + r``), in the layout of
    :meth:`RSSM.imagine`'s ``uniforms``: ``{"latent": [H, N, S], "action": [H, N] (discrete: action_uniforms == 1)
    or [H, N, A]}``."""
    latent = ops.reference.philox_uniform(seed, horizon, n, stoch, 0, row0=row0)
    action = ops.reference.philox_uniform(seed, horizon, n, action_uniforms, 1, row0=row0)
    if action_uniforms == 1:
        action = action[..., 0]
    return {"latent": latent.to(device), "action": action.to(device)}


def _dense(layer) -> list:
    """A DenseLayer (Linear + Norm) as [W (K-major), b, norm weight, norm bias or None]."""
    norm = layer.norm
    return [layer.linear.weight.t(), layer.linear.bias, norm.weight, norm.bias if norm.kind == "layer" else None]


class RolloutWeights:
    """The rollout op's weights for one (RSSM, actor) pair, repacked only when a parameter changed (their version
    counters or storage moved), never per call. ``latent="post"``: the acting step's weights instead (the posterior
    MLP, which also reads the observation embedding of ``embed_dim``, in the prior's place)."""

    def __init__(self, rssm, actor, latent: str = "prior"):
        if latent not in ("prior", "post"):
            raise ValueError(f"latent: expected 'prior' or 'post', got {latent!r}")
        self.rssm, self.actor, self.latent = rssm, actor, latent
        self._params = [p for m in (rssm, actor) for p in m.parameters()]
        self._cache: dict = {}  # precision -> (parameter state, packed weights)
        self._plans: dict = {}  # precision -> (packed weights, floats, ops.ActPlan) of the acting step
        self._dims: dict = {}  # (n, horizon, bf16) -> the op's dims (the modules' sizes are fixed)
        self.packs = 0  # how many times weights were packed (tests)

    def _state(self) -> tuple:
        # an in-place change bumps a version counter; `p.data = ...` moves the storage (C-level maps: this runs
        # every acting step)
        return tuple(map(_VERSION, self._params)), tuple(map(torch.Tensor.data_ptr, self._params))

    def get(self, bf16: bool = False) -> list:
        """The op's weights: float32, or with ``bf16`` the matmul weights as bf16 k-pairs
        (:func:`ops.pack_bf16_pairs`)."""
        key = self._state()
        hit = self._cache.get(bool(bf16))
        if hit is None or hit[0] != key:
            packed = []
            for w, is_mat in zip(self._layout(), self._is_matmul()):
                if w is None:
                    packed.append(None)
                elif bf16 and is_mat:
                    packed.append(ops.pack_bf16_pairs(w.float()))
                else:
                    packed.append(w.detach().float().contiguous())
            self._cache[bool(bf16)] = (key, packed)
            self.packs += 1
        return self._cache[bool(bf16)][1]

    def act_plan(self, bf16: bool = False) -> ops.ActPlan:
        """The acting step (``latent="post"``) as an :class:`ops.ActPlan` on :meth:`get`'s weights, remade when they
        are repacked."""
        packed, floats = self.get(bf16), self.floats()
        hit = self._plans.get(bool(bf16))
        if hit is None or hit[0] is not packed or hit[1] != floats:
            if self.latent != "post":
                raise ValueError("act_plan: these are the rollout's weights; the acting step's are latent='post'")
            hit = self._plans[bool(bf16)] = (packed, floats, ops.ActPlan(packed, self.dims(0, 1, bf16), floats))
        return hit[2]

    def _is_matmul(self) -> list[bool]:
        shapes = ops.act_weight_shapes if self.latent == "post" else ops.rollout_weight_shapes
        return [name.endswith(".W") for name, _ in shapes(self.dims(1, 1))]

    def _layout(self) -> list:
        r, a = self.rssm, self.actor
        out = [w for layer in a.mlp for w in _dense(layer)] + [a.out.weight.t(), a.out.bias]
        out += _dense(r.in_h) + _dense(r.in_z) + _dense(r.in_a)
        for d in r.dyn:
            out += [d["lin"].weight, d["lin"].bias, d["norm"].weight, d["norm"].bias if d["norm"].kind == "layer" else None]
        out += [r.gru.weight, r.gru.bias]
        mlp, head = (r.post_mlp, r.post_out) if self.latent == "post" else (r.prior_mlp, r.prior_out)
        out += [w for layer in mlp for w in _dense(layer)] + [head.weight.t(), head.bias]
        return out

    def dims(self, n: int, horizon: int, bf16: bool = False) -> list[int]:
        key = (n, horizon, bool(bf16))
        hit = self._dims.get(key)
        if hit is None:
            if len(self._dims) >= 16:
                self._dims.clear()
            hit = self._dims[key] = self._make_dims(n, horizon, bf16)
        return list(hit)

    def _make_dims(self, n: int, horizon: int, bf16: bool) -> list[int]:
        r, a = self.rssm, self.actor
        dims = [n, horizon, r.deter, r.g, r.hidden, r.S, r.C, a.act_dim, int(a.discrete),
                int(r.in_h.norm.kind == "layer"), len(a.mlp), a.cfg.units, len(r.dyn), len(r.prior_mlp), int(bf16)]
        return dims + [r.embed_dim, len(r.post_mlp)] if self.latent == "post" else dims

    def floats(self) -> list[float]:
        return [float(self.rssm.unimix), float(self.actor.cfg.unimix), float(self.actor.cfg.min_std),
                float(self.actor.cfg.max_std)]


def fused_imagine(weights: RolloutWeights, start: dict, horizon: int, seed: int | None = None,
                  bf16: bool = False, row0: int = 0) -> dict:
    """:meth:`RSSM.imagine` through the fused op: ``start = {"h": [N, deter], "z": [N, S, C]}`` ->
    ``{"h": [H+1, N, deter], "z": [H+1, N, S, C] one-hot, "feat": [H+1, N, F], "action": [H, N, A]}`` (no gradient;
    h and z are views of feat, which the kernel writes in place).
    ``seed``: the Philox key (default: :func:`draw_seed`); ``bf16``: bf16 matmuls (float32 accumulation); ``row0``:
    the Philox row of start state 0."""
    h0 = start["h"].detach().float().contiguous()
    z0 = start["z"].detach().argmax(-1).to(torch.int32)
    seed = draw_seed() if seed is None else seed
    feat, _, a = ops.rollout(h0, z0, weights.get(bf16), weights.dims(h0.shape[0], horizon, bf16), weights.floats(),
                             seed, row0, feat=True)
    D, S, C = weights.rssm.deter, weights.rssm.S, weights.rssm.C
    # h and the one-hot z are views of feat (its two parts; rows D + S*C apart)
    return {"h": feat[..., :D], "z": feat[..., D:].unflatten(-1, (S, C)), "feat": feat, "action": a}


def z_indices(z: torch.Tensor) -> torch.Tensor:
    """One-hot latents ``[..., S, C]`` -> int32 class indices ``[..., S]``, -1 for an all-zero group (a zero carry)."""
    idx = z.argmax(-1).to(torch.int32)
    return torch.where(z.amax(-1) > 0, idx, torch.full_like(idx, -1))


def fused_act(weights: RolloutWeights, carry: dict, embed: torch.Tensor, is_first: torch.Tensor, sample: bool,
              seed: int | None = None, bf16: bool = False, threads: int | None = None) -> tuple[torch.Tensor, dict]:
    """One acting step through :func:`ops.act` (``weights`` made with ``latent="post"``): ``carry = {"h", "z",
    "action"}`` of the previous step, ``embed [n, E]``, ``is_first [n]`` -> (action ``[n, A]``, posterior state
    ``{"h", "z" one-hot, "z_index"}``). ``z_index`` (int32 ``[n, S]``, the kernel's own output) spares the next step
    the one-hot -> index conversion: a carry that has it must hold the same latent in ``z`` (this function's output
    as it is). ``threads``: the kernel's thread count (:class:`ops.ActPlan`; default torch's)."""
    seed = draw_seed() if seed is None else seed
    zi = carry.get("z_index")
    if zi is None:
        zi = z_indices(carry["z"].detach())
    h, prev = carry["h"], carry["action"]
    f32 = torch.float32  # (conversions only where needed: this runs every environment step)
    hn, zn, z1, a = weights.act_plan(bf16)(h if h.dtype is f32 else h.float(), zi,
                                           prev if prev.dtype is f32 else prev.float(),
                                           is_first if is_first.dtype is torch.bool else is_first.bool(),
                                           embed if embed.dtype is f32 else embed.float(), seed, sample, threads)
    return a, {"h": hn, "z": z1, "z_index": zn}
