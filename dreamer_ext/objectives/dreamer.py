"""DreamerV3 world-model objective: reconstruction, reward, continue and KL balancing with free bits.

Terms (each a per-(b, t) tensor ``[B, T]``; the agent's loss table scales and averages them):

- ``rec``: sum over observation keys of each decoder's loss (images: squared error summed over pixels vs x/255;
  vectors: symlog MSE summed over dims),
- ``rew``: twohot cross-entropy of the reward head, ``con``: Bernoulli log-loss of the continue head (target
  ``(1 − is_terminal)·γ`` with ``imag.contdisc`` (V2), else ``1 − is_terminal``),
- ``dyn = max(free, KL[sg(q)‖p])`` and ``rep = max(free, KL[q‖sg(p)])`` with ``free = loss.free_bits`` nats.
"""
from __future__ import annotations

import torch

from .base import Objective


class DreamerObjective(Objective):
    name = "dreamer"
    terms = ("rec", "rew", "con", "dyn", "rep")

    def __init__(self, config):
        super().__init__(config)
        self.free_bits = float(config.loss.free_bits)

    def forward(self, wm, data: dict, post: dict) -> tuple[dict, dict]:
        """``post``: ``feat [B,T,F]``, ``post_logits``/``prior_logits [B,T,S,C]``. Returns (terms, metrics)."""
        feat = post["feat"]
        metrics: dict[str, torch.Tensor] = {}
        dyn, rep = wm.rssm.kl(post["post_logits"], post["prior_logits"])
        terms = {
            "rec": self.decoder_loss(wm, data, feat, metrics, "rec"),
            **self.reward_and_continue(wm, data, feat),
            "dyn": torch.clamp(dyn, min=self.free_bits),
            "rep": torch.clamp(rep, min=self.free_bits),
        }
        metrics["kl/dyn"] = dyn.detach().mean()
        metrics["kl/rep"] = rep.detach().mean()
        metrics["kl/below_free_frac"] = (dyn.detach() < self.free_bits).float().mean()
        return terms, metrics
