"""Visual distractors as one spec string, applied to image observations in uint8 space (clipped, seeded).

``SPEC``: ``none`` | ``gauss:SIGMA`` (Gaussian pixel noise, sigma on the 0–255 scale, fresh each frame) |
``blackout:P`` (each frame blacked out with probability P) | ``video:SEED`` (a procedural moving background: seeded
moving shapes over a scrolling texture replace the frame's background colour, i.e. its most common colour).

Every distractor draws from its own generator, seeded from the environment's seed and, for ``video``, the spec's SEED
and the role (``train`` or ``eval``): training and evaluation environments never see the same background video.
The same spec gives the same pixels whatever the world-model objective, so objectives are compared on equal terms.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from .adapter import Blackout, PixelNoise

__all__ = ["Distractor", "parse_distractor", "VideoBackground", "apply_distractor", "ROLES"]

ROLES = ("train", "eval")
KINDS = ("none", "gauss", "blackout", "video")


@dataclass(frozen=True)
class Distractor:
    kind: str            # one of KINDS
    value: float = 0.0   # gauss: sigma; blackout: probability; video: the seed (an integer)

    def __str__(self) -> str:
        if self.kind == "none":
            return "none"
        return f"{self.kind}:{int(self.value) if self.kind == 'video' else format(self.value, 'g')}"


def parse_distractor(spec: str, name: str = "distractor") -> Distractor:
    """``spec`` -> :class:`Distractor`; raises ``ValueError("<name>: ...")`` naming what was expected."""
    expected = "none | gauss:SIGMA (0-255 scale) | blackout:P (0..1) | video:SEED (integer >= 0)"
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"{name}: expected {expected}, got {spec!r}")
    text = spec.strip().lower()
    if text == "none":
        return Distractor("none")
    kind, sep, arg = text.partition(":")
    if kind not in KINDS[1:] or not sep or not arg:
        raise ValueError(f"{name}: expected {expected}, got {spec!r}")
    try:
        value = float(arg) if kind != "video" else int(arg)
    except ValueError:
        raise ValueError(f"{name}: the number in {spec!r} is not a {'integer' if kind == 'video' else 'number'}; "
                         f"expected {expected}") from None
    if kind == "gauss" and not (math.isfinite(value) and 0 <= value <= 255):
        raise ValueError(f"{name}: gauss sigma must lie in [0, 255], got {spec!r}")
    if kind == "blackout" and not 0 <= value <= 1:
        raise ValueError(f"{name}: blackout probability must lie in [0, 1], got {spec!r}")
    if kind == "video" and not 0 <= value < 2 ** 32:
        raise ValueError(f"{name}: video seed must be an integer in [0, 2^32), got {spec!r}")
    if (kind in ("gauss", "blackout")) and value == 0:
        return Distractor("none")
    return Distractor(kind, float(value))


class VideoBackground(gym.ObservationWrapper):
    """Replaces the background of every image (the pixels of its most common colour) by a procedural video: a smooth
    random texture that scrolls with a constant velocity and ``shapes`` coloured discs and boxes that move and bounce.

    The video's content comes from ``seed`` (the spec's SEED, the role and the env's own seed, see
    :func:`apply_distractor`); each episode continues the same video (it does not restart at reset).
    """

    def __init__(self, env: gym.Env, seed: int | np.random.SeedSequence, shapes: int = 6):
        super().__init__(env)
        if "image" not in env.observation_space.spaces:
            raise ValueError("env: the video distractor needs an environment with image observations")
        h, w, c = env.observation_space.spaces["image"].shape
        rng = np.random.default_rng(seed)
        # texture: bilinear upsampling of coarse random colours to twice the frame (so scrolling wraps smoothly)
        coarse = rng.uniform(0, 255, (8, 8, c))
        ys, xs = np.linspace(0, 8, 2 * h, endpoint=False), np.linspace(0, 8, 2 * w, endpoint=False)
        y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
        fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
        y1, x1 = (y0 + 1) % 8, (x0 + 1) % 8
        self.texture = ((1 - fy) * (1 - fx) * coarse[y0][:, x0] + (1 - fy) * fx * coarse[y0][:, x1] +
                        fy * (1 - fx) * coarse[y1][:, x0] + fy * fx * coarse[y1][:, x1]).astype(np.float32)
        self.scroll = rng.uniform(-1.5, 1.5, 2)
        self.pos = rng.uniform(0, [h, w], (shapes, 2))
        self.vel = rng.uniform(-2.0, 2.0, (shapes, 2))
        self.size = rng.uniform(4, 12, shapes)
        self.round = rng.random(shapes) < 0.5
        self.color = rng.uniform(0, 255, (shapes, c)).astype(np.float32)
        self.t = 0
        self._grid = np.mgrid[0:h, 0:w].astype(np.float32)

    def frame(self) -> np.ndarray:
        """The background video's current frame, uint8 ``[H, W, C]``."""
        h, w = self._grid.shape[1:]
        oy, ox = (np.floor(self.t * self.scroll).astype(int)) % [h, w]
        img = self.texture[oy:oy + h, ox:ox + w].copy()
        gy, gx = self._grid
        for p, s, r, col in zip(self.pos, self.size, self.round, self.color):
            if r:
                mask = (gy - p[0]) ** 2 + (gx - p[1]) ** 2 <= s * s
            else:
                mask = (np.abs(gy - p[0]) <= s) & (np.abs(gx - p[1]) <= s)
            img[mask] = col
        return np.clip(np.rint(img), 0, 255).astype(np.uint8)

    def _advance(self) -> None:
        h, w = self._grid.shape[1:]
        self.t += 1
        self.pos += self.vel
        for d, hi in ((0, h), (1, w)):  # bounce off the frame's edges
            out = (self.pos[:, d] < 0) | (self.pos[:, d] > hi)
            self.vel[out, d] *= -1
            self.pos[:, d] = np.clip(self.pos[:, d], 0, hi)

    def observation(self, obs):
        img = obs["image"]
        flat = img.reshape(-1, img.shape[-1]).astype(np.int64)
        code = flat[:, 0] * 65536 + flat[:, 1] * 256 + flat[:, 2] if flat.shape[1] == 3 else flat[:, 0]
        values, counts = np.unique(code, return_counts=True)
        background = (code == values[np.argmax(counts)]).reshape(img.shape[:2])
        out = img.copy()
        out[background] = self.frame()[background]
        self._advance()
        return {**obs, "image": out}


def apply_distractor(env: gym.Env, spec: str | Distractor, seed: int | None, role: str = "train") -> gym.Env:
    """Wrap an adapted env (:class:`~dreamer_ext.envs.adapter.DreamerAdapter`) with the distractor ``spec``.

    ``seed``: the env's own seed (None: unseeded noise); ``role``: ``train`` or ``eval`` (the video's seed stream)."""
    d = spec if isinstance(spec, Distractor) else parse_distractor(spec)
    if role not in ROLES:
        raise ValueError(f"role: expected one of {ROLES}, got {role!r}")
    if d.kind == "none":
        return env
    if "image" not in env.observation_space.spaces:
        raise ValueError(f"distractor: {d} needs an environment with image observations")
    if d.kind == "gauss":
        return PixelNoise(env, d.value, seed=None if seed is None else seed + 7919)
    if d.kind == "blackout":
        return Blackout(env, d.value, seed=None if seed is None else seed + 104729)
    entropy = [int(d.value), ROLES.index(role)] + ([] if seed is None else [int(seed) % 2 ** 32])
    return VideoBackground(env, np.random.SeedSequence(entropy))
