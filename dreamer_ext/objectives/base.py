"""Base class of world-model objectives (see the package docstring for the contract)."""
from __future__ import annotations

import torch
from torch import nn


class Objective(nn.Module):
    """``objective(wm, data, post) -> (loss, metrics)``; subclasses implement :meth:`forward`."""

    name = "base"

    def forward(self, wm, data: dict, post: dict) -> tuple[torch.Tensor, dict]:  # pragma: no cover - abstract
        raise NotImplementedError

    def model_parameters(self, wm) -> list:
        """Parameters of ``wm`` that the model optimiser updates (default: everything but this objective's own)."""
        own = {id(p) for p in self.parameters()}
        return [p for p in wm.parameters() if id(p) not in own]

    def after_update(self, wm, data: dict, metrics: dict, ok: bool) -> None:
        """Called after the optimiser step on the same batch; default does nothing."""

    @staticmethod
    def combine(terms: dict, scales: dict) -> torch.Tensor:
        """``Σ_k scales[k] · mean(terms[k])`` over the keys of ``scales``."""
        loss = None
        for k, s in scales.items():
            v = s * terms[k].mean()
            loss = v if loss is None else loss + v
        return loss
