"""DreamerV3 world-model objective: reconstruction + reward + continue + KL balancing with free bits.

``L = β_pred·(rec + rew + con) + β_dyn·dyn + β_rep·rep``; every term is a per-(b, t) tensor averaged over batch and
time; ``dyn = max(free, KL[sg(q)‖p])``, ``rep = max(free, KL[q‖sg(p)])`` with free bits per (b, t) element.
``rec`` is the sum over observation keys of each decoder's loss (images: squared error summed over pixels vs x/255;
vectors: symlog MSE summed over dims).
"""
from __future__ import annotations

import torch

from .base import Objective


class DreamerObjective(Objective):
    name = "dreamer"

    def __init__(self, config):
        super().__init__()
        ls = config.loss
        self.free_bits = float(ls.free_bits)
        self.scales = {"rec": ls.pred, "rew": ls.pred, "con": ls.pred, "dyn": ls.dyn, "rep": ls.rep}

    def forward(self, wm, data: dict, post: dict) -> tuple[torch.Tensor, dict]:
        """``post``: ``feat [B,T,F]``, ``post_logits``/``prior_logits [B,T,S,C]``. Returns (loss, metrics)."""
        feat = post["feat"]
        terms: dict[str, torch.Tensor] = {}
        metrics: dict[str, torch.Tensor] = {}
        rec = None
        for key, dist in wm.decode(feat).items():
            l = dist.loss(data[key])
            metrics[f"loss/rec_{key}"] = l.mean()
            rec = l if rec is None else rec + l
        terms["rec"] = rec if rec is not None else torch.zeros_like(feat[..., 0])
        terms["rew"] = wm.reward(feat).loss(data["reward"])
        terms["con"] = wm.cont(feat).loss(1.0 - data["is_terminal"].float())
        dyn, rep = wm.rssm.kl(post["post_logits"], post["prior_logits"])
        terms["dyn"] = torch.clamp(dyn, min=self.free_bits)
        terms["rep"] = torch.clamp(rep, min=self.free_bits)
        loss = self.combine(terms, self.scales)
        for k, v in terms.items():
            metrics[f"loss/{k}"] = v.mean()
        metrics["kl/dyn"] = dyn.mean()
        metrics["kl/rep"] = rep.mean()
        metrics["kl/below_free_frac"] = (dyn < self.free_bits).float().mean()
        metrics["loss/world_model"] = loss
        return loss, metrics
