"""Recurrent state-space model (DreamerV3 V2 block-GRU core, 32×C one-hot latents with unimix).

State (the explicit carry) is a dict ``{"h": [B, deter], "z": [B, S, C]}``; ``feat = concat(h, flatten(z))``.

Core ``h' = f(h, z, a)``: h, z and a each go through their own ``Linear(hidden) -> norm -> SiLU``; the 3·hidden vector
is given to every block together with that block's slice of h (``[B, g, deter/g + 3·hidden]``); ``dyn_layers`` ×
[BlockLinear -> norm over all of h -> SiLU]; BlockLinear to 3·deter, split per block into r, c, u:
``r = σ(r)``, ``c = tanh(r·c)``, ``u = σ(u − 1)``, ``h' = u·c + (1 − u)·h``.

:meth:`RSSM.imagine` is the PyTorch imagination loop; the fused kernel (:mod:`dreamer_ext.fused_rollout`) computes the
same steps and, given the same uniforms (``uniforms=``), samples the same classes up to rounding at a boundary.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import RSSMConfig
from .dists import categorical_kl, categorical_sample, f32, unimix_logits
from .nets import MLP, BlockLinear, DenseLayer, Norm, float_dtype, out_linear

__all__ = ["RSSM"]

State = dict  # {"h": [B, deter], "z": [B, S, C]} (+ optional "logits": [B, S, C])


class RSSM(nn.Module):
    """RSSM with explicit carry.

    Args:
        cfg: :class:`RSSMConfig` (deter, hidden, stoch S, classes C, blocks g, unimix, prior/post layers).
        embed_dim: size E of the observation embedding.
        act_dim: action size A.
        norm: "rms" | "layer".
        discrete: whether actions are one-hot (continuous ones are scaled by ``1/sg(max(1, |a|))``).
    """

    def __init__(self, cfg: RSSMConfig, embed_dim: int, act_dim: int, norm: str = "rms", discrete: bool = True):
        super().__init__()
        if cfg.deter % cfg.blocks:
            raise ValueError(f"cfg.deter: {cfg.deter} not divisible by cfg.blocks={cfg.blocks}")
        if embed_dim <= 0 or act_dim <= 0:
            raise ValueError(f"embed_dim/act_dim: must be positive, got {embed_dim}/{act_dim}")
        self.cfg, self.discrete = cfg, discrete
        self.deter, self.hidden, self.S, self.C, self.g = cfg.deter, cfg.hidden, cfg.stoch, cfg.classes, cfg.blocks
        self.unimix = cfg.unimix
        self.act_dim, self.embed_dim = act_dim, embed_dim
        self.stoch_dim = self.S * self.C
        self.feat_dim = self.deter + self.stoch_dim
        g, D, Hd = self.g, self.deter, self.hidden
        # core
        self.in_h = DenseLayer(D, Hd, norm)
        self.in_z = DenseLayer(self.stoch_dim, Hd, norm)
        self.in_a = DenseLayer(act_dim, Hd, norm)
        dyn = []
        for i in range(cfg.dyn_layers):
            inp = g * (D // g + 3 * Hd) if i == 0 else D
            dyn.append(nn.ModuleDict(dict(lin=BlockLinear(inp, D, g), norm=Norm(D, norm))))
        self.dyn = nn.ModuleList(dyn)
        gate_in = D if cfg.dyn_layers else g * (D // g + 3 * Hd)
        self.gru = BlockLinear(gate_in, 3 * D, g)
        # prior / posterior
        self.prior_mlp = MLP(D, Hd, cfg.prior_layers, norm)
        self.prior_out = out_linear(self.prior_mlp.out_dim, self.stoch_dim)
        self.post_mlp = MLP(D + embed_dim, Hd, cfg.post_layers, norm)
        self.post_out = out_linear(self.post_mlp.out_dim, self.stoch_dim)

    # ------------------------------------------------------------------ state helpers
    def initial(self, batch_size: int, device=None) -> State:
        """Zero state ``{"h": [B, deter], "z": [B, S, C]}``."""
        if device is None:
            device = self.gru.weight.device
        dtype = float_dtype(self)
        return {"h": torch.zeros(batch_size, self.deter, device=device, dtype=dtype),
                "z": torch.zeros(batch_size, self.S, self.C, device=device, dtype=dtype)}

    def pack(self, state: State) -> dict[str, torch.Tensor]:
        """Compact copy of a state for the replay (replay context): ``{"h": float16 [..., deter], "z": class indices
        [..., S]}`` (uint8 when C <= 256, else int16). ``h`` is a convex mix of tanh outputs, so it lies in [-1, 1],
        where float16 keeps 11 significant bits (more than the bf16 the model computes in); ``z`` is one-hot, so its
        indices hold it exactly."""
        idx = state["z"].detach().argmax(-1)
        return {"h": state["h"].detach().to(torch.float16),
                "z": idx.to(torch.uint8 if self.C <= 256 else torch.int16)}

    def unpack(self, h: torch.Tensor, z: torch.Tensor) -> State:
        """Inverse of :meth:`pack`: ``h[..., deter]`` (any float dtype), ``z[..., S]`` class indices -> float32 state
        ``{"h": [..., deter], "z": one-hot [..., S, C]}``."""
        if h.shape[-1] != self.deter or z.shape[-1] != self.S or h.shape[:-1] != z.shape[:-1]:
            raise ValueError(f"h, z: expected [..., {self.deter}] and [..., {self.S}] with equal leading dims, got "
                             f"{tuple(h.shape)} and {tuple(z.shape)}")
        dtype = float_dtype(self)
        return {"h": h.to(dtype), "z": F.one_hot(z.long(), self.C).to(dtype)}

    def feat(self, state: State) -> torch.Tensor:
        """``concat(h, flatten(z))``: ``[..., deter + S·C]``."""
        z = state["z"]
        return torch.cat([state["h"], z.reshape(*z.shape[:-2], self.stoch_dim)], -1)

    # ------------------------------------------------------------------ single steps
    def core(self, h: torch.Tensor, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Block-GRU step: ``h[B, deter], z[B, S, C], a[B, A] -> h'[B, deter]``."""
        if not self.discrete:
            a = a / torch.clamp(a.abs(), min=1.0).detach()
        B, g = h.shape[0], self.g
        x = torch.cat([self.in_h(h), self.in_z(z.reshape(B, self.stoch_dim)), self.in_a(a)], -1)  # [B, 3H]
        x = torch.cat([h.reshape(B, g, -1), x.unsqueeze(1).expand(B, g, x.shape[-1])], -1).reshape(B, -1)
        for d in self.dyn:
            x = F.silu(d["norm"](d["lin"](x)))
        gates = f32(self.gru(x)).reshape(B, g, 3, -1)            # per block: r, c, u (gate math and h in fp32)
        r, c, u = gates.unbind(2)
        r = torch.sigmoid(r)
        c = torch.tanh(r * c)
        u = torch.sigmoid(u - 1.0)
        hg = f32(h).reshape(B, g, -1)
        return (u * c + (1.0 - u) * hg).reshape(B, self.deter)

    def prior_logits(self, h: torch.Tensor) -> torch.Tensor:
        """``h[..., deter] -> logits[..., S, C]`` (raw; unimix applied when sampling / in KL)."""
        return self.prior_out(self.prior_mlp(h)).reshape(*h.shape[:-1], self.S, self.C)

    def post_logits(self, h: torch.Tensor, embed: torch.Tensor) -> torch.Tensor:
        """``h[..., deter], embed[..., E] -> logits[..., S, C]``."""
        return self.post_out(self.post_mlp(torch.cat([h, embed], -1))).reshape(*h.shape[:-1], self.S, self.C)

    def sample(self, logits: torch.Tensor, uniform: torch.Tensor | None = None) -> torch.Tensor:
        """One-hot straight-through sample of unimix categoricals: ``logits[..., S, C] -> z[..., S, C]``;
        ``uniform[..., S]`` optional."""
        probs = unimix_logits(logits, self.unimix).exp()
        onehot = categorical_sample(probs, uniform)
        return onehot + (probs - probs.detach())  # forward value exactly one-hot

    def _mask(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return x * keep.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)

    def obs_step(self, state: State, prev_action: torch.Tensor, embed: torch.Tensor, is_first: torch.Tensor,
                 uniform: torch.Tensor | None = None) -> State:
        """One filtering step. ``state``; ``prev_action[B, A]``, ``embed[B, E]``, ``is_first[B]`` (bool).

        Where is_first, h, z and prev_action are zeroed first. Returns the posterior state
        ``{"h": [B, deter], "z": [B, S, C], "logits": [B, S, C]}`` (posterior logits)."""
        keep = ~is_first.bool()
        h = self._mask(state["h"], keep)
        z = self._mask(state["z"], keep)
        a = self._mask(prev_action, keep)
        h = self.core(h, z, a)
        logits = self.post_logits(h, embed)
        z = self.sample(logits, uniform)
        return {"h": h, "z": z, "logits": logits}

    def img_step(self, state: State, action: torch.Tensor, uniform: torch.Tensor | None = None) -> State:
        """One prior step: ``state, action[B, A] -> {h, z, logits}`` with z sampled from the prior."""
        h = self.core(state["h"], state["z"], action)
        logits = self.prior_logits(h)
        return {"h": h, "z": self.sample(logits, uniform), "logits": logits}

    # ------------------------------------------------------------------ sequences
    def observe(self, embed: torch.Tensor, prev_action: torch.Tensor, is_first: torch.Tensor,
                carry: State | None = None, uniforms: torch.Tensor | None = None) -> tuple[dict, State]:
        """Scan the posterior over time.

        Args: ``embed[B, T, E]``, ``prev_action[B, T, A]`` (action taken before obs_t), ``is_first[B, T]``, carry
        (state before t=0; zeros if None), optional ``uniforms[B, T, S]``.
        Returns (``{"h": [B,T,deter], "z": [B,T,S,C], "post_logits": [B,T,S,C], "prior_logits": [B,T,S,C]}``,
        last state ``{h, z}``). Prior logits are computed from h_t in one batched call after the scan.
        """
        if embed.dim() != 3 or prev_action.dim() != 3 or is_first.dim() != 2:
            raise ValueError("embed/prev_action/is_first: expected [B,T,E], [B,T,A], [B,T]")
        B, T = embed.shape[:2]
        if prev_action.shape[:2] != (B, T) or is_first.shape != (B, T):
            raise ValueError(f"prev_action/is_first: leading dims must be {(B, T)}")
        state = carry if carry is not None else self.initial(B, embed.device)
        hs, zs, ls = [], [], []
        for t in range(T):
            u = uniforms[:, t] if uniforms is not None else None
            state = self.obs_step(state, prev_action[:, t], embed[:, t], is_first[:, t], u)
            hs.append(state["h"]), zs.append(state["z"]), ls.append(state["logits"])
        h = torch.stack(hs, 1)
        out = {"h": h, "z": torch.stack(zs, 1), "post_logits": torch.stack(ls, 1)}
        out["prior_logits"] = self.prior_logits(h)
        return out, {"h": state["h"], "z": state["z"]}

    def imagine(self, policy_fn: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor], start: State,
                horizon: int, uniforms: dict | None = None) -> dict:
        """Roll the prior forward from ``start`` (``{"h": [N, deter], "z": [N, S, C]}``) for ``horizon`` steps.

        ``policy_fn(feat[N, F], uniform or None) -> action[N, A]`` is called on states 0..H−1; the action at step t
        drives the transition to state t+1. ``uniforms`` (optional) = ``{"latent": [H, N, S], "action": [H, N, ...]}``.
        Returns ``{"feat": [H+1, N, F], "h": [H+1, N, deter], "z": [H+1, N, S, C], "action": [H, N, A]}``.
        Call under ``torch.no_grad()`` for behaviour learning (the world model gets no gradient from it).
        """
        if horizon < 1:
            raise ValueError(f"horizon: must be >= 1, got {horizon}")
        hs, zs, acts = [start["h"]], [start["z"]], []
        state = {"h": start["h"], "z": start["z"]}
        for t in range(horizon):
            ua = uniforms["action"][t] if uniforms is not None else None
            ul = uniforms["latent"][t] if uniforms is not None else None
            a = policy_fn(self.feat(state), ua)
            state = self.img_step(state, a, ul)
            hs.append(state["h"]), zs.append(state["z"]), acts.append(a)
        h, z = torch.stack(hs), torch.stack(zs)
        return {"h": h, "z": z, "feat": self.feat({"h": h, "z": z}), "action": torch.stack(acts)}

    # ------------------------------------------------------------------ losses
    def kl(self, post_logits: torch.Tensor, prior_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Balanced KL terms from raw logits ``[..., S, C]`` (fp32, unimix applied, summed over S and C):
        returns (dyn = KL[sg(q)‖p], rep = KL[q‖sg(p)]), each ``[...]`` — no free bits here."""
        lq = unimix_logits(post_logits, self.unimix)
        lp = unimix_logits(prior_logits, self.unimix)
        dyn = categorical_kl(lq.detach(), lp)
        rep = categorical_kl(lq, lp.detach())
        return dyn, rep

    def entropy(self, logits: torch.Tensor) -> torch.Tensor:
        """Entropy of the unimix latent distribution summed over groups: ``[..., S, C] -> [...]``."""
        lp = unimix_logits(logits, self.unimix)
        return -(lp.exp() * lp).sum((-2, -1))
