"""Base class of world-model objectives (see the package docstring for the contract), with the terms they share."""
from __future__ import annotations

import torch
from torch import nn


class Objective(nn.Module):
    """``objective(wm, data, post) -> (terms, metrics)``; subclasses implement :meth:`forward`."""

    name = "base"

    def __init__(self, config):
        super().__init__()
        # continue target (1 - terminal) times gamma with V2's contdisc, else (1 - terminal)
        self.cont_scale = float(config.imag.gamma) if config.imag.contdisc else 1.0

    def reward_and_continue(self, wm, data: dict, feat: torch.Tensor) -> dict:
        """``rew``: twohot cross-entropy of the reward head; ``con``: Bernoulli log-loss of the continue head (each
        ``[B, T]``)."""
        return {"rew": wm.reward(feat).loss(data["reward"]),
                "con": wm.cont(feat).loss((1.0 - data["is_terminal"].float()) * self.cont_scale)}

    @staticmethod
    def decoder_loss(wm, data: dict, feat: torch.Tensor, metrics: dict, prefix: str) -> torch.Tensor:
        """Sum over observation keys of each decoder's loss on ``feat`` (``[B, T]``); each key's mean goes into
        ``metrics`` as ``loss/<prefix>_<key>``."""
        total = torch.zeros_like(feat[..., 0])
        for key, dist in wm.decode(feat).items():
            l = dist.loss(data[key])
            metrics[f"loss/{prefix}_{key}"] = l.detach().mean()
            total = total + l
        return total

    def forward(self, wm, data: dict, post: dict) -> tuple[dict, dict]:  # pragma: no cover - abstract
        raise NotImplementedError

    def model_parameters(self, wm) -> list:
        """Parameters of ``wm`` that the model optimiser updates (default: everything but this objective's own)."""
        own = {id(p) for p in self.parameters()}
        return [p for p in wm.parameters() if id(p) not in own]

    def after_update(self, wm, data: dict, metrics: dict, ok: bool) -> None:
        """Called after the optimiser step on the same batch; default does nothing."""
