"""World-model objectives: the seam between the world model's outputs and its training loss.

An objective is an ``nn.Module`` (it may own parameters, e.g. a Lagrange multiplier) called as
``objective(wm, data, post) -> (terms, metrics)`` where

- ``wm`` is the :class:`~dreamer_ext.world_model.WorldModel` (heads: ``wm.decode(feat)``, ``wm.reward(feat)``,
  ``wm.cont(feat)``, KL terms: ``wm.rssm.kl(post_logits, prior_logits)``),
- ``data`` is the batch on device (obs keys ``[B, T, ...]``, ``reward [B, T]``, ``is_terminal [B, T]``, ...),
- ``post`` is :meth:`RSSM.observe`'s output plus ``feat [B, T, F]``,

and returns named per-element loss terms (``{"rec": [B, T], ...}``, the names listed in the class attribute
``terms``) and a dict of 0-d metric tensors (no host syncs). The objective applies no scales: the agent's loss table
(:mod:`dreamer_ext.losses`) multiplies each term by its scale from :class:`~dreamer_ext.config.LossConfig`, whose
fields must name exactly the terms produced, and sums the means once.

Hooks an objective may override (defaults do nothing):

- ``model_parameters(wm)``: parameters the *model* optimiser should update (default: all of ``wm`` except the
  objective's own); an objective whose probe decoder has its own optimiser excludes it here;
- ``after_update(wm, data, metrics, ok)``: called after the model optimiser step on the same batch (``ok`` is False
  when the step was skipped or non-finite), e.g. for a dual step on β; may add entries to ``metrics``.

Register new objectives in :data:`OBJECTIVES`; :func:`make_objective` builds them by name.
"""
from __future__ import annotations

from typing import Any

from .base import Objective
from .dreamer import DreamerObjective
from .repo import RepoObjective

__all__ = ["Objective", "DreamerObjective", "RepoObjective", "OBJECTIVES", "make_objective"]

OBJECTIVES: dict[str, type] = {"dreamer": DreamerObjective, "repo": RepoObjective}


def make_objective(name: str, config: Any) -> Objective:
    """Build the objective ``name`` from the full :class:`~dreamer_ext.config.Config`."""
    if name not in OBJECTIVES:
        raise ValueError(f"objective: unknown objective {name!r}; available: {sorted(OBJECTIVES)}")
    return OBJECTIVES[name](config)
