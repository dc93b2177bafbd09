"""Base class of world-model objectives (see the package docstring for the contract)."""
from __future__ import annotations

from torch import nn


class Objective(nn.Module):
    """``objective(wm, data, post) -> (terms, metrics)``; subclasses implement :meth:`forward`."""

    name = "base"

    def forward(self, wm, data: dict, post: dict) -> tuple[dict, dict]:  # pragma: no cover - abstract
        raise NotImplementedError

    def model_parameters(self, wm) -> list:
        """Parameters of ``wm`` that the model optimiser updates (default: everything but this objective's own)."""
        own = {id(p) for p in self.parameters()}
        return [p for p in wm.parameters() if id(p) not in own]

    def after_update(self, wm, data: dict, metrics: dict, ok: bool) -> None:
        """Called after the optimiser step on the same batch; default does nothing."""
