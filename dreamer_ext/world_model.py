"""World model: encoders + RSSM + decoders + reward/continue heads; the loss is delegated to an objective.

Observation keys come from the :class:`EnvSpec`: 3-d uint8 shapes ``(64, 64, C)`` go to the CNN encoder/decoder,
1-d float shapes ``(D,)`` to the symlog MLP encoder and symlog-MSE decoder. Embeddings of all keys are concatenated
(sorted key order).
"""
from __future__ import annotations

import torch
from torch import nn

from .config import Config
from .dists import Bernoulli, ImageMSE, MSE, TwoHot, f32, make_bins
from .envs.spec import EnvSpec
from .nets import MLP, ImageDecoder, ImageEncoder, VectorDecoder, VectorEncoder, initialize, out_linear
from .objectives import make_objective
from .rssm import RSSM

__all__ = ["WorldModel", "shift_actions"]


def shift_actions(action: torch.Tensor, first: torch.Tensor | None = None) -> torch.Tensor:
    """``action[B, T, A]`` taken at obs_t -> ``prev_action[B, T, A]``: ``first[B, A]`` (the action before the window;
    zeros if None) at t=0, action_{t−1} after."""
    head = torch.zeros_like(action[:, :1]) if first is None else first.to(action.dtype)[:, None]
    return torch.cat([head, action[:, :-1]], 1)


class WorldModel(nn.Module):
    def __init__(self, config: Config, spec: EnvSpec):
        super().__init__()
        if not spec.obs:
            raise ValueError("spec: EnvSpec.obs is empty")
        self.config, self.spec = config, spec
        norm = config.norm
        ec, dc = config.encoder, config.decoder
        self.image_keys, self.vector_keys = [], []
        encoders, embed_dim = {}, 0
        for key in sorted(spec.obs):
            shape, dtype = spec.obs[key]
            shape = tuple(shape)
            if len(shape) == 3:
                enc = ImageEncoder(shape, ec.cnn_depth, tuple(ec.cnn_mults), ec.kernel, norm)
                self.image_keys.append(key)
            elif len(shape) == 1:
                enc = VectorEncoder(shape[0], ec.mlp_units, ec.mlp_layers, norm, ec.symlog_inputs)
                self.vector_keys.append(key)
            else:
                raise ValueError(f"spec.obs[{key!r}]: unsupported shape {shape}; need (64,64,C) or (D,)")
            encoders[key] = enc
            embed_dim += enc.out_dim
        self.encoders = nn.ModuleDict(encoders)
        self.embed_dim = embed_dim
        self.rssm = RSSM(config.rssm, embed_dim, spec.act_dim, norm, spec.discrete)
        F_ = self.rssm.feat_dim
        decoders = {}
        for key in self.image_keys:
            decoders[key] = ImageDecoder(F_, tuple(spec.obs[key][0]), dc.cnn_depth, tuple(dc.cnn_mults), dc.kernel, norm,
                                         deter=config.rssm.deter, bspace=dc.bspace, units=dc.mlp_units)
        for key in self.vector_keys:
            decoders[key] = VectorDecoder(F_, spec.obs[key][0][0], dc.mlp_units, dc.mlp_layers, norm)
        self.decoders = nn.ModuleDict(decoders)
        self.vector_scale = 0.5 if dc.vector_half else 1.0  # V2: (f − symlog y)²; the notes: ½ of that
        hc = config.heads
        self.reward_mlp = MLP(F_, hc.units, hc.reward_layers, norm)
        self.reward_out = out_linear(self.reward_mlp.out_dim, hc.num_bins, init="zeros")
        self.cont_mlp = MLP(F_, hc.units, hc.cont_layers, norm)
        self.cont_out = out_linear(self.cont_mlp.out_dim, 1)
        self.bins_space = hc.bins
        self.register_buffer("bins", make_bins(hc.num_bins, hc.bin_range, hc.bins), persistent=False)
        self.objective = make_objective(config.objective, config)
        initialize(self, config.init)

    # ------------------------------------------------------------------ pieces
    def encode(self, obs: dict) -> torch.Tensor:
        """``obs[key][B, T, ...]`` -> ``embed[B, T, E]``."""
        parts = []
        for key, enc in self.encoders.items():
            if key not in obs:
                raise ValueError(f"obs: missing key {key!r}")
            x = obs[key]
            lead = x.shape[:2]
            parts.append(enc(x.reshape(-1, *x.shape[2:])).reshape(*lead, -1))
        return torch.cat(parts, -1) if len(parts) > 1 else parts[0]

    def decode(self, feat: torch.Tensor) -> dict:
        """``feat[..., F]`` -> {key: ImageMSE | MSE} over the spec's observation keys."""
        lead, out = feat.shape[:-1], {}
        flat = feat.reshape(-1, feat.shape[-1])
        for key, dec in self.decoders.items():
            y = dec(flat)
            y = y.reshape(*lead, *y.shape[1:])
            out[key] = ImageMSE(y) if key in self.image_keys else MSE(y, symlog=True, scale=self.vector_scale)
        return out

    def reward(self, feat: torch.Tensor) -> TwoHot:
        """Reward head on ``feat[..., F]`` (twohot over 255 bins)."""
        return TwoHot(self.reward_out(self.reward_mlp(feat)), self.bins, self.bins_space)

    def cont(self, feat: torch.Tensor) -> Bernoulli:
        """Continue head on ``feat[..., F]`` (Bernoulli, target 1 − terminal)."""
        return Bernoulli(self.cont_out(self.cont_mlp(feat)).squeeze(-1))

    # ------------------------------------------------------------------ training
    def observe(self, data: dict, carry: dict | None = None, uniforms: torch.Tensor | None = None
                ) -> tuple[dict, dict]:
        """Encode and filter a batch ``[B, T, ...]``; returns (post with ``feat``, last state).

        ``carry``: the state before t=0 (zeros if None) — ``{"h": [B, deter], "z": [B, S, C]}`` plus optionally
        ``"action": [B, A]``, the action taken there (replay context); is_first at t=0 still resets all three.
        ``uniforms [B, T, S]``: the posterior samples' (default: drawn with torch.rand)."""
        embed = self.encode(data)
        prev_action = shift_actions(f32(data["action"]), None if carry is None else carry.get("action"))
        state = None if carry is None else {"h": carry["h"], "z": carry["z"]}
        post, last = self.rssm.observe(embed, prev_action, data["is_first"].bool(), state, uniforms)
        post["feat"] = self.rssm.feat(post)
        return post, last

    def loss(self, data: dict, carry: dict | None = None, uniforms: torch.Tensor | None = None
             ) -> tuple[dict, dict, dict]:
        """World-model loss terms on ``data`` (see :mod:`dreamer_ext.objectives`); ``uniforms [B, T, S]`` as in
        :meth:`observe`.

        Returns (terms ``{name: [B, T]}``, unscaled, post, metrics of 0-d tensors)."""
        post, _ = self.observe(data, carry, uniforms)
        terms, metrics = self.objective(self, data, post)
        with torch.no_grad():
            metrics["ent/post"] = self.rssm.entropy(post["post_logits"]).mean()
            metrics["ent/prior"] = self.rssm.entropy(post["prior_logits"]).mean()
        return terms, post, metrics
