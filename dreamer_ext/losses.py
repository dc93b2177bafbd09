"""The loss table: every loss term of an update by name, one scale per term, the total computed once.

Terms are per-element tensors (``[B, T]`` for the world model, ``[H, N]`` for the behaviour terms); scales come from
:func:`dreamer_ext.config.loss_scales` (the fields of ``LossConfig``). The total is ``Σ_k scale_k · mean(term_k)``.
A new term (e.g. a replay-value loss or a RePo term) plugs in by producing it under a new key and adding a
``LossConfig`` field of the same name.
"""
from __future__ import annotations

import torch

__all__ = ["total_loss"]


def total_loss(terms: dict[str, torch.Tensor], scales: dict[str, float]) -> tuple[torch.Tensor, dict]:
    """``(Σ_k scales[k] · terms[k].mean(), {"loss/<k>": mean, "loss/total": total})`` (metrics detached).

    Raises ValueError when the terms and the scales do not name the same keys.
    """
    if set(terms) != set(scales):
        missing, extra = sorted(set(scales) - set(terms)), sorted(set(terms) - set(scales))
        raise ValueError(f"terms: must name exactly the scaled loss terms {sorted(scales)}; "
                         f"missing {missing}, without a scale {extra}")
    means = {k: terms[k].mean() for k in scales}
    total = sum(scales[k] * means[k] for k in scales)
    metrics = {f"loss/{k}": v.detach() for k, v in means.items()}
    metrics["loss/total"] = total.detach()
    return total, metrics
