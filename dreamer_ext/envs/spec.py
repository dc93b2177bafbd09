"""What the agent needs to know about an environment, independent of gymnasium."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class EnvSpec:
    """Observation and action layout as the agent sees it.

    obs: name -> (shape, dtype string). ``"image"`` is ``(H, W, 3)`` ``"uint8"``; ``"vector"`` is ``(D,)`` ``"float32"``.
    act_dim: number of discrete actions, or the size of the continuous action vector.
    discrete: True -> actions are one-hot float32 ``[act_dim]``; False -> float32 ``[act_dim]`` in ``[-1, 1]``.
    """

    obs: dict = field(default_factory=dict)
    act_dim: int = 1
    discrete: bool = True
