"""Adapting a single gymnasium environment to the agent's conventions.

The agent sees observations as a dict with at most two entries:

* ``"image"``  ``uint8 [H, W, 3]`` (resized to ``size``, default 64x64),
* ``"vector"`` ``float32 [D]`` (all non-image Box entries flattened and concatenated in key order),

and emits actions as ``float32 [act_dim]``: a one-hot vector for ``Discrete`` spaces, or values in ``[-1, 1]`` for ``Box``
spaces (rescaled here to the space's bounds). :class:`DreamerAdapter` does both conversions for one ``gymnasium.Env``, so that
the gymnasium vector envs in :mod:`dreamer_ext.envs` can batch the already converted dicts.
"""
from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
from gymnasium import spaces

SUPPORTED_OBS = (
    "Box uint8 of shape (H, W, 3) (an RGB image), Box of shape () or (D,) (a vector, any numeric dtype), "
    "or a Dict of those (at most one image)"
)
SUPPORTED_ACT = "Discrete(n) or a Box with finite bounds"


# ----------------------------------------------------------------------------------------------------------- image resizing
def _triangle_weights(in_size: int, out_size: int) -> np.ndarray:
    """Antialiased bilinear resampling matrix ``W [out_size, in_size]`` (rows sum to 1).

    For downsampling the triangle filter is widened by the scale factor (what PIL's ``BILINEAR`` does), so every input
    pixel contributes; for upsampling it is ordinary bilinear interpolation with half-pixel centres.
    """
    scale = in_size / out_size
    width = max(scale, 1.0)
    weights = np.zeros((out_size, in_size), np.float64)
    for i in range(out_size):
        centre = (i + 0.5) * scale
        lo = max(0, int(math.floor(centre - width)))
        hi = min(in_size, int(math.ceil(centre + width)))
        j = np.arange(lo, hi)
        w = np.maximum(0.0, 1.0 - np.abs((j + 0.5 - centre) / width))
        if w.sum() == 0:  # cannot happen for width >= 1, kept as a guard
            w = np.ones_like(w)
        weights[i, lo:hi] = w / w.sum()
    return weights.astype(np.float32)


class ImageResizer:
    """Resize ``uint8 [H, W, C]`` images to ``uint8 [h, w, C]`` with an antialiased bilinear filter (two small matmuls)."""

    def __init__(self, in_hw: tuple[int, int], out_hw: tuple[int, int]):
        self.in_hw = tuple(int(x) for x in in_hw)
        self.out_hw = tuple(int(x) for x in out_hw)
        self.identity = self.in_hw == self.out_hw
        self._wy = _triangle_weights(self.in_hw[0], self.out_hw[0])  # [h, H]
        self._wxt = np.ascontiguousarray(_triangle_weights(self.in_hw[1], self.out_hw[1]).T)  # [W, w]

    def __call__(self, img: np.ndarray) -> np.ndarray:
        if tuple(img.shape[:2]) != self.in_hw:
            raise ValueError(f"img: expected spatial shape {self.in_hw}, got {img.shape[:2]}")
        if self.identity:
            return np.ascontiguousarray(img, dtype=np.uint8)
        x = img.transpose(2, 0, 1).astype(np.float32)  # [C, H, W]
        x = np.matmul(np.matmul(self._wy, x), self._wxt)  # [C, h, w]
        return np.ascontiguousarray(np.clip(np.rint(x), 0, 255).astype(np.uint8).transpose(1, 2, 0))


# ------------------------------------------------------------------------------------------------ observation conversion
def _is_image(space: spaces.Space) -> bool:
    return (
        isinstance(space, spaces.Box)
        and space.dtype == np.uint8
        and len(space.shape) == 3
        and space.shape[-1] == 3
    )


def _is_vector(space: spaces.Space) -> bool:
    return (
        isinstance(space, spaces.Box)
        and len(space.shape) <= 1
        and np.issubdtype(space.dtype, np.number)
    )


class ObsConverter:
    """Turns a raw gymnasium observation into ``{"image": uint8 [h, w, 3]}`` and/or ``{"vector": float32 [D]}``.

    Raises ``ValueError`` at construction for unsupported observation spaces, saying what is supported.
    """

    def __init__(self, space: spaces.Space, size: tuple[int, int] = (64, 64)):
        self.size = (int(size[0]), int(size[1]))
        self.image_key: str | None = None  # key within a Dict space, or "" for a bare Box
        self.vector_keys: list[str] = []  # keys within a Dict space, or [""] for a bare Box
        self.vector_dim = 0
        if isinstance(space, spaces.Dict):
            items = list(space.spaces.items())
        else:
            items = [("", space)]
        for key, sub in items:
            where = f"observation_space[{key!r}]" if key else "observation_space"
            if _is_image(sub):
                if self.image_key is not None:
                    raise ValueError(f"{where}: more than one image entry; supported observation spaces: {SUPPORTED_OBS}")
                self.image_key = key
                self._resizer = ImageResizer(sub.shape[:2], self.size)
            elif _is_vector(sub):
                self.vector_keys.append(key)
                self.vector_dim += int(np.prod(sub.shape, dtype=np.int64)) if sub.shape else 1
            else:
                raise ValueError(f"{where}: unsupported space {sub}; supported observation spaces: {SUPPORTED_OBS}")
        if self.image_key is None and not self.vector_keys:
            raise ValueError(f"observation_space: empty {space}; supported observation spaces: {SUPPORTED_OBS}")

    @property
    def obs_spec(self) -> dict:
        """name -> (shape, dtype string), as :class:`~dreamer_ext.envs.spec.EnvSpec` wants it."""
        out = {}
        if self.image_key is not None:
            out["image"] = ((self.size[0], self.size[1], 3), "uint8")
        if self.vector_keys:
            out["vector"] = ((self.vector_dim,), "float32")
        return out

    @property
    def space(self) -> spaces.Dict:
        """The converted observation space (a Dict of Boxes)."""
        out = {}
        if self.image_key is not None:
            out["image"] = spaces.Box(0, 255, (self.size[0], self.size[1], 3), np.uint8)
        if self.vector_keys:
            out["vector"] = spaces.Box(-np.inf, np.inf, (self.vector_dim,), np.float32)
        return spaces.Dict(out)

    def __call__(self, obs) -> dict[str, np.ndarray]:
        get = (lambda k: obs[k]) if isinstance(obs, dict) else (lambda k: obs)
        out = {}
        if self.image_key is not None:
            out["image"] = self._resizer(np.asarray(get(self.image_key), dtype=np.uint8))
        if self.vector_keys:
            parts = [np.asarray(get(k), dtype=np.float32).reshape(-1) for k in self.vector_keys]
            out["vector"] = np.concatenate(parts) if len(parts) > 1 else parts[0]
        return out


# ----------------------------------------------------------------------------------------------------- action conversion
class ActConverter:
    """Agent action ``float32 [act_dim]`` -> the env's action.

    Discrete(n, start): act_dim = n, the agent sends a one-hot (any scores: argmax is taken) -> ``int(argmax) + start``.
    Box(low, high): act_dim = prod(shape), the agent sends values in [-1, 1] (clipped) -> ``low + (a + 1) / 2 * (high - low)``.
    """

    def __init__(self, space: spaces.Space):
        if isinstance(space, spaces.Discrete):
            self.discrete = True
            self.act_dim = int(space.n)
            self._start = int(space.start)
        elif isinstance(space, spaces.Box) and np.issubdtype(space.dtype, np.floating):
            if not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
                raise ValueError(f"action_space: Box {space} has infinite bounds; supported action spaces: {SUPPORTED_ACT}")
            self.discrete = False
            self.act_dim = int(np.prod(space.shape, dtype=np.int64))
            self._low = space.low.astype(np.float64).reshape(-1)
            self._high = space.high.astype(np.float64).reshape(-1)
            self._shape = space.shape
            self._dtype = space.dtype
        else:
            raise ValueError(f"action_space: unsupported space {space}; supported action spaces: {SUPPORTED_ACT}")

    @property
    def space(self) -> spaces.Box:
        """The agent-side action space: one-hot in [0, 1] or continuous in [-1, 1], float32 [act_dim]."""
        if self.discrete:
            return spaces.Box(0.0, 1.0, (self.act_dim,), np.float32)
        return spaces.Box(-1.0, 1.0, (self.act_dim,), np.float32)

    def __call__(self, action):
        a = np.asarray(action, dtype=np.float32).reshape(-1)
        if a.shape != (self.act_dim,):
            raise ValueError(f"action: expected float32 [{self.act_dim}], got shape {np.shape(action)}")
        if self.discrete:
            return int(np.argmax(a)) + self._start
        a = np.clip(a.astype(np.float64), -1.0, 1.0)
        env_a = self._low + (a + 1.0) * 0.5 * (self._high - self._low)
        return env_a.reshape(self._shape).astype(self._dtype)


class DreamerAdapter(gym.Wrapper):
    """One gymnasium env with converted observations (dict of image/vector) and agent-convention actions.

    Rewards, terminations and truncations pass through unchanged (no clipping). The reset/step bookkeeping
    (``is_first`` etc.) lives in :class:`dreamer_ext.envs.VecEnv`.
    """

    def __init__(self, env: gym.Env, size: tuple[int, int] = (64, 64)):
        super().__init__(env)
        self.obs_conv = ObsConverter(env.observation_space, size)
        self.act_conv = ActConverter(env.action_space)
        self.observation_space = self.obs_conv.space
        self.action_space = self.act_conv.space

    def reset(self, *, seed=None, options=None):
        obs, info = self.env.reset(seed=seed, options=options)
        return self.obs_conv(obs), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(self.act_conv(action))
        return self.obs_conv(obs), float(reward), bool(terminated), bool(truncated), info


# ---------------------------------------------------------------------------------------------------------- distractors
class PixelNoise(gym.ObservationWrapper):
    """Adds i.i.d. Gaussian noise with standard deviation ``std`` (in uint8 units) to every image pixel, clipped to [0, 255].

    Wraps a :class:`DreamerAdapter` (dict observations with an ``"image"`` entry). ``seed`` seeds its own noise generator.
    """

    def __init__(self, env: gym.Env, std: float, seed: int | None = None):
        super().__init__(env)
        if not (std >= 0 and math.isfinite(std)):
            raise ValueError(f"std: must be a finite number >= 0, got {std}")
        if "image" not in env.observation_space.spaces:
            raise ValueError("env: PixelNoise needs an environment with image observations")
        self.std = float(std)
        self._rng = np.random.default_rng(seed)

    def observation(self, obs):
        img = obs["image"].astype(np.float32) + self._rng.normal(0.0, self.std, obs["image"].shape).astype(np.float32)
        return {**obs, "image": np.clip(np.rint(img), 0, 255).astype(np.uint8)}


class Blackout(gym.ObservationWrapper):
    """Replaces the image by an all-black frame (zeros) with probability ``prob``, independently for each frame."""

    def __init__(self, env: gym.Env, prob: float, seed: int | None = None):
        super().__init__(env)
        if not (0.0 <= prob <= 1.0):
            raise ValueError(f"prob: must be in [0, 1], got {prob}")
        if "image" not in env.observation_space.spaces:
            raise ValueError("env: Blackout needs an environment with image observations")
        self.prob = float(prob)
        self._rng = np.random.default_rng(seed)

    def observation(self, obs):
        if self._rng.random() < self.prob:
            return {**obs, "image": np.zeros_like(obs["image"])}
        return obs
