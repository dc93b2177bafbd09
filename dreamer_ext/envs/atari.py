"""Atari 100k protocol on ale-py (as in the DreamerV3 papers).

64x64 RGB, action repeat 4, max over the last 2 frames of each repeat, no sticky actions (repeat_action_probability = 0),
minimal action set, 0..30 random no-ops at reset, no life-loss signal, no FIRE reset, no reward clipping, episodes capped at
108,000 emulator frames (27,000 agent steps; ``truncated=True`` there).
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from .adapter import ImageResizer


def is_atari_id(env_id: str) -> bool:
    """True for ``ALE/<Game>-v5`` style ids (anything under the ``ALE/`` namespace)."""
    return env_id.startswith("ALE/")


class Atari100k(gym.Env):
    """One Atari game under the Atari100k protocol.

    Observation: ``uint8 [size[0], size[1], 3]``. Action: ``Discrete(len(minimal action set))``.
    Reward: summed raw game reward over the ``repeat`` frames. ``terminated`` = game over, ``truncated`` = frame cap reached.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        env_id: str = "ALE/Asterix-v5",
        size: tuple[int, int] = (64, 64),
        repeat: int = 4,
        noop_max: int = 30,
        max_frames: int = 108_000,
        sticky: float = 0.0,
    ):
        import ale_py  # noqa: F401  (registers the ALE/ namespace)

        gym.register_envs(ale_py)
        if not is_atari_id(env_id):
            raise ValueError(f"env_id: expected an 'ALE/<Game>-v5' id, got {env_id!r}")
        if repeat < 1:
            raise ValueError(f"repeat: must be >= 1, got {repeat}")
        if noop_max < 0:
            raise ValueError(f"noop_max: must be >= 0, got {noop_max}")
        if max_frames < 1:
            raise ValueError(f"max_frames: must be >= 1, got {max_frames}")
        raw = gym.make(
            env_id,
            obs_type="rgb",
            frameskip=1,
            repeat_action_probability=float(sticky),
            full_action_space=False,
            max_num_frames_per_episode=int(max_frames),
        )
        self._raw = raw.unwrapped  # ale_py.env.AtariEnv
        self.ale = self._raw.ale
        self._actions = list(self._raw._action_set)  # minimal action set; index 0 is NOOP for every game
        self.repeat = int(repeat)
        self.noop_max = int(noop_max)
        self.max_frames = int(max_frames)
        h, w = self.ale.getScreenDims()
        self._buffers = [np.zeros((h, w, 3), np.uint8) for _ in range(2)]
        self._resize = ImageResizer((h, w), size)
        self.observation_space = spaces.Box(0, 255, (int(size[0]), int(size[1]), 3), np.uint8)
        self.action_space = spaces.Discrete(len(self._actions))

    def _obs(self, frames: int) -> np.ndarray:
        """Max over the last ``frames`` (1 or 2) captured screens, resized."""
        img = self._buffers[0] if frames == 1 else np.maximum(self._buffers[0], self._buffers[1])
        return self._resize(img)

    def reset(self, *, seed=None, options=None):
        """Reset the game and take 0..noop_max random no-ops (drawn from ``self.np_random``, seeded by ``seed``)."""
        super().reset(seed=seed)
        if seed is not None:
            self._raw.seed_game(int(seed))
            self._raw.load_game()
        self.ale.reset_game()
        noops = int(self.np_random.integers(0, self.noop_max + 1)) if self.noop_max else 0
        for _ in range(noops):
            self.ale.act(self._actions[0])
            if self.ale.game_over():
                self.ale.reset_game()
        self.ale.getScreenRGB(self._buffers[0])
        return self._obs(1), {"noops": noops}

    def step(self, action):
        """Repeat ``action`` (an int index into the minimal action set) for ``repeat`` frames or until the game ends."""
        a = self._actions[int(action)]
        reward = 0.0
        captured = 0
        for i in range(self.repeat):
            reward += self.ale.act(a)
            over = self.ale.game_over()  # with truncation
            if i >= self.repeat - 2 or over:
                # at most two captures: the second-to-last frame goes to buffer 0, the last to buffer 1
                self.ale.getScreenRGB(self._buffers[captured])
                captured += 1
            if over:
                break
        terminated = bool(self.ale.game_over(with_truncation=False))
        truncated = bool(self.ale.game_truncated()) and not terminated
        return self._obs(captured), float(reward), terminated, truncated, {"lives": self.ale.lives()}

    def close(self):
        self._raw.close()
