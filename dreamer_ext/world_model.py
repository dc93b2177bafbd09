"""World model: encoders + RSSM + decoders + reward/continue heads; the loss is delegated to an objective.

Observation keys come from the :class:`EnvSpec`: 3-d uint8 shapes ``(64, 64, C)`` go to the CNN encoder/decoder,
1-d float shapes ``(D,)`` to the symlog MLP encoder and symlog-MSE decoder. Embeddings of all keys are concatenated
(sorted key order).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .config import Config
from .dists import Bernoulli, ImageMSE, MSE, TwoHot, make_bins
from .envs.spec import EnvSpec
from .nets import MLP, ImageDecoder, ImageEncoder, VectorDecoder, VectorEncoder, out_linear
from .objectives import make_objective
from .rssm import RSSM

__all__ = ["WorldModel", "shift_actions"]


def shift_actions(action: torch.Tensor) -> torch.Tensor:
    """``action[B, T, A]`` taken at obs_t -> ``prev_action[B, T, A]`` (zeros at t=0, action_{t−1} after)."""
    return torch.cat([torch.zeros_like(action[:, :1]), action[:, :-1]], 1)


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
            decoders[key] = ImageDecoder(F_, tuple(spec.obs[key][0]), dc.cnn_depth, tuple(dc.cnn_mults), dc.kernel, norm)
        for key in self.vector_keys:
            decoders[key] = VectorDecoder(F_, spec.obs[key][0][0], dc.mlp_units, dc.mlp_layers, norm)
        self.decoders = nn.ModuleDict(decoders)
        hc = config.heads
        self.reward_mlp = MLP(F_, hc.units, hc.reward_layers, norm)
        self.reward_out = out_linear(self.reward_mlp.out_dim, hc.num_bins, init="zeros")
        self.cont_mlp = MLP(F_, hc.units, hc.cont_layers, norm)
        self.cont_out = out_linear(self.cont_mlp.out_dim, 1)
        self.bins_mode = hc.bins
        self.register_buffer("bins", make_bins(hc.num_bins, hc.bin_range, hc.bins), persistent=False)
        self.objective = make_objective(config.objective, config)

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
            out[key] = ImageMSE(y) if key in self.image_keys else MSE(y, symlog=True)
        return out

    def reward(self, feat: torch.Tensor) -> TwoHot:
        """Reward head on ``feat[..., F]`` (twohot over 255 bins)."""
        return TwoHot(self.reward_out(self.reward_mlp(feat)), self.bins, self.bins_mode)

    def cont(self, feat: torch.Tensor) -> Bernoulli:
        """Continue head on ``feat[..., F]`` (Bernoulli, target 1 − terminal)."""
        return Bernoulli(self.cont_out(self.cont_mlp(feat)).squeeze(-1))

    # ------------------------------------------------------------------ training
    def observe(self, data: dict, carry: dict | None = None) -> tuple[dict, dict]:
        """Encode and filter a batch ``[B, T, ...]``; returns (post with ``feat``, last state)."""
        embed = self.encode(data)
        prev_action = shift_actions(data["action"].float())
        post, last = self.rssm.observe(embed, prev_action, data["is_first"].bool(), carry)
        post["feat"] = self.rssm.feat(post)
        return post, last

    def loss(self, data: dict, carry: dict | None = None) -> tuple[torch.Tensor, dict, dict]:
        """World-model loss on ``data`` (see :mod:`dreamer_ext.objectives`). Returns (loss, post, metrics)."""
        post, _ = self.observe(data, carry)
        loss, metrics = self.objective(self, data, post)
        with torch.no_grad():
            metrics["ent/post"] = self.rssm.entropy(post["post_logits"]).mean()
            metrics["ent/prior"] = self.rssm.entropy(post["prior_logits"]).mean()
        return loss, post, metrics

    # ------------------------------------------------------------------ media summaries
    @torch.no_grad()
    def report(self, data: dict, context: int = 5, max_rows: int = 4, max_frames: int = 16) -> dict:
        """Open-loop video-prediction grids, one per image observation key (``{}`` when there is none).

        ``data``: a batch ``{key: [B, T, ...], "action": [B, T, A], "is_first": [B, T]}`` (tensors or arrays; image
        keys uint8 ``[B, T, H, W, C]``). For the first ``min(B, max_rows)`` sequences: the posterior is filtered over
        steps ``0..context-1`` from the zero state (like :meth:`observe` without a carry), then the prior is rolled out
        from the last posterior state with the batch's actions (``rssm.img_step(state, action[:, t-1])``; where
        ``is_first[:, t]`` the state and action are zeroed first, as in ``obs_step``). Latents are sampled (global
        torch RNG).

        Returns ``{"recon/<key>": uint8 [rows·3·H, F·W, 3]}``: per sequence three strips stacked vertically — ground
        truth, model frames (posterior reconstruction for t < context, open-loop prediction after), and
        ``|truth − model|``. F ≤ ``max_frames`` columns: every context step is shown when ``context < max_frames``,
        then ``max_frames − context`` open-loop steps evenly spread over ``context..T−1`` (the last one included when
        there are two or more); otherwise ``max_frames`` steps evenly spread over ``0..T−1``. 1-channel images are
        shown grey, 3-channel ones as RGB, others by their first channel in grey. Does not change parameters or the
        module's mode.
        """
        if not self.image_keys:
            return {}
        for name, v in (("context", context), ("max_rows", max_rows), ("max_frames", max_frames)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {v!r}")
        for key in (*self.encoders.keys(), "action", "is_first"):
            if key not in data:
                raise ValueError(f"data: missing key {key!r}")
        device = self.rssm.gru.weight.device
        action = torch.as_tensor(data["action"])
        if action.dim() != 3:
            raise ValueError(f"data['action']: expected [B, T, A], got shape {tuple(action.shape)}")
        B, T = action.shape[:2]
        n, ctx = min(B, int(max_rows)), min(int(context), T)
        batch = {k: torch.as_tensor(data[k])[:n].to(device) for k in (*self.encoders.keys(), "action", "is_first")}
        batch["action"] = batch["action"].float()
        batch["is_first"] = batch["is_first"].bool()
        post, state = self.observe({k: v[:, :ctx] for k, v in batch.items()})
        feats = [post["feat"]]                                              # [n, ctx, F]
        for t in range(ctx, T):
            keep = (~batch["is_first"][:, t]).float()
            h, z = state["h"] * keep[:, None], state["z"] * keep[:, None, None]
            state = self.rssm.img_step({"h": h, "z": z}, batch["action"][:, t - 1] * keep[:, None])
            feats.append(self.rssm.feat(state)[:, None])
        idx = _report_frames(T, ctx, int(max_frames))
        feat = torch.cat(feats, 1)[:, idx]                                  # [n, F', feat]
        out = {}
        for key in self.image_keys:
            truth = batch[key][:, idx].cpu()                                # [n, F', H, W, C] uint8
            if truth.dtype != torch.uint8 or truth.dim() != 5:
                raise ValueError(f"data[{key!r}]: expected uint8 [B, T, H, W, C], got {truth.dtype} "
                                 f"{tuple(torch.as_tensor(data[key]).shape)}")
            mean = self.decoders[key](feat.reshape(-1, feat.shape[-1])).float()
            model = (mean * 255.0).round().clamp(0, 255).to(torch.uint8).cpu().reshape(truth.shape)
            error = (truth.int() - model.int()).abs().to(torch.uint8)
            strips = torch.stack([_to_rgb(truth), _to_rgb(model), _to_rgb(error)], 1)  # [n, 3, F', H, W, 3]
            n_, s_, f_, H, W, _ = strips.shape
            grid = strips.permute(0, 1, 3, 2, 4, 5).reshape(n_ * s_ * H, f_ * W, 3)
            out[f"recon/{key}"] = grid.numpy()
        return out


def _report_frames(T: int, context: int, max_frames: int) -> list:
    """Time indices shown by :meth:`WorldModel.report` (see there): at most ``max_frames`` sorted indices in [0, T)."""
    if T <= max_frames:
        return list(range(T))
    if context < max_frames:
        rest = np.linspace(context, T - 1, max_frames - context).round().astype(int).tolist()
        return list(range(context)) + rest
    return np.linspace(0, T - 1, max_frames).round().astype(int).tolist()


def _to_rgb(x: torch.Tensor) -> torch.Tensor:
    """``[..., C]`` uint8 -> ``[..., 3]``: RGB kept, otherwise channel 0 repeated (grey)."""
    return x if x.shape[-1] == 3 else x[..., :1].expand(*x.shape[:-1], 3)
