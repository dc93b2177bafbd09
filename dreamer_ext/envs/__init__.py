"""Environments as the agent sees them: ``make_env(env_id, seed, num_envs)`` -> :class:`VecEnv`.

Every step (including a reset) yields a dict of numpy arrays with a leading env axis ``[N, ...]``:

* ``"image"`` uint8 ``[N, 64, 64, 3]`` and/or ``"vector"`` float32 ``[N, D]``,
* ``"reward"`` float32 ``[N]`` -- reward received on arriving at this observation (0 on a reset step),
* ``"is_first"`` bool ``[N]`` -- this observation starts an episode (a reset is its own step),
* ``"is_last"`` bool ``[N]`` -- the episode ended here (terminated or truncated); the next step is a reset,
* ``"is_terminal"`` bool ``[N]`` -- the episode ended by termination (not by a time limit).

Actions go in as float32 ``[N, act_dim]`` (one-hot for discrete spaces, [-1, 1] for continuous ones). The action sent for an
env whose last observation had ``is_last`` is ignored: that env resets instead (gymnasium 1.x "next-step" autoreset, which
matches the reset-is-its-own-step convention exactly, so no transition is lost or duplicated).
"""
from __future__ import annotations

import functools

import gymnasium as gym
import numpy as np

from . import catch
from .atari import Atari100k, is_atari_id
from .adapter import Blackout, DreamerAdapter, PixelNoise
from .distractors import Distractor, VideoBackground, apply_distractor, parse_distractor
from .spec import EnvSpec

__all__ = ["EnvSpec", "VecEnv", "make_env", "make_single_env", "env_spec", "Atari100k", "PixelNoise", "Blackout",
           "VideoBackground", "Distractor", "parse_distractor", "apply_distractor"]

catch.register()  # dreamer_ext/Catch-v0


def make_single_env(
    env_id: str,
    seed: int | None = None,
    size: tuple[int, int] = (64, 64),
    noise_std: float = 0.0,
    blackout_prob: float = 0.0,
    distractor: str = "none",
    role: str = "train",
    **env_kwargs,
) -> gym.Env:
    """One adapted environment (dict observations, agent-convention actions), without the vector bookkeeping.

    ``ALE/...`` ids get the Atari100k protocol (:class:`Atari100k`, ``env_kwargs`` go to it), any other id goes to
    ``gymnasium.make(env_id, **env_kwargs)``. ``seed`` seeds the distractor wrappers; the env itself is seeded at reset.
    ``distractor``: a spec of :func:`~dreamer_ext.envs.distractors.parse_distractor` (``role`` train/eval picks the
    video distractor's seed stream).
    """
    d = parse_distractor(distractor)
    if not isinstance(env_id, str) or not env_id:
        raise ValueError(f"env_id: expected a non-empty gymnasium id string, got {env_id!r}")
    try:
        base = Atari100k(env_id, size=size, **env_kwargs) if is_atari_id(env_id) else gym.make(env_id, **env_kwargs)
    except gym.error.Error as e:
        raise ValueError(f"env_id: cannot make {env_id!r}: {e}") from e
    env = DreamerAdapter(base, size)
    if noise_std:
        env = PixelNoise(env, noise_std, seed=None if seed is None else seed + 7919)
    if blackout_prob:
        env = Blackout(env, blackout_prob, seed=None if seed is None else seed + 104729)
    return apply_distractor(env, d, seed, role)


def env_spec(env) -> EnvSpec:
    """The :class:`EnvSpec` of an adapted single env or a :class:`VecEnv`."""
    if isinstance(env, VecEnv):
        return env.spec
    adapter = env
    while not isinstance(adapter, DreamerAdapter):
        if not hasattr(adapter, "env"):
            raise ValueError("env: not built by make_env/make_single_env (no DreamerAdapter inside)")
        adapter = adapter.env
    return EnvSpec(obs=adapter.obs_conv.obs_spec, act_dim=adapter.act_conv.act_dim, discrete=adapter.act_conv.discrete)


def _build(env_id, seed, size, noise_std, blackout_prob, distractor, role, env_kwargs):
    return make_single_env(env_id, seed, size, noise_std, blackout_prob, distractor, role, **env_kwargs)


_DEAD_WORKER = (EOFError, BrokenPipeError, ConnectionResetError)  # a worker process that is gone


class VecEnv:
    """``num_envs`` adapted environments stepped together (gymnasium Sync/AsyncVectorEnv, next-step autoreset).

    ``reset()`` and ``step(action)`` return the dict described in the module docstring. Episode bookkeeping: an env whose
    previous step had ``is_last`` is reset by the gymnasium vector env on this call; we mark that step ``is_first`` with
    reward 0.
    """

    def __init__(self, env_fns, spec: EnvSpec, seed: int | None, asynchronous: bool = False):
        mode = gym.vector.AutoresetMode.NEXT_STEP
        if asynchronous:
            self._envs = gym.vector.AsyncVectorEnv(env_fns, autoreset_mode=mode)
        else:
            self._envs = gym.vector.SyncVectorEnv(env_fns, autoreset_mode=mode)
        self.spec = spec
        self.num_envs = len(env_fns)
        self.asynchronous = bool(asynchronous)
        self._pending = None
        self._seed = seed
        self._done = np.zeros(self.num_envs, bool)
        self._started = False

    def reset(self) -> dict[str, np.ndarray]:
        """Reset every env (seeded with ``seed + i`` on the first reset). All rows have ``is_first=True``."""
        seed = self._seed if not self._started else None
        obs, _ = self._envs.reset(seed=seed)
        self._started = True
        n = self.num_envs
        self._done[:] = False
        return self._pack(obs, np.zeros(n, np.float32), np.ones(n, bool), np.zeros(n, bool), np.zeros(n, bool))

    def step(self, action: np.ndarray) -> dict[str, np.ndarray]:
        """``action`` float32 ``[N, act_dim]`` -> next observation dict (``[N, ...]``)."""
        self.step_async(action)
        return self.step_wait()

    def step_async(self, action: np.ndarray) -> None:
        """Send ``action`` (float32 ``[N, act_dim]``) to the envs; with worker processes they step while the caller
        goes on. :meth:`step_wait` returns the observations. In-process envs step inside :meth:`step_wait`."""
        if not self._started:
            raise RuntimeError("VecEnv.step called before reset()")
        if self._pending is not None:
            raise RuntimeError("VecEnv.step_async called twice without step_wait")
        action = np.asarray(action, dtype=np.float32)
        if action.shape != (self.num_envs, self.spec.act_dim):
            raise ValueError(f"action: expected shape ({self.num_envs}, {self.spec.act_dim}), got {action.shape}")
        if self.asynchronous:
            try:
                self._envs.step_async(action)
            except _DEAD_WORKER as e:
                raise self._worker_died(e) from None
        self._pending = action

    def step_wait(self) -> dict[str, np.ndarray]:
        """The observations after the action of :meth:`step_async`. A worker's exception is raised here (as a
        RuntimeError naming the worker's error), and so is a worker process that died."""
        if self._pending is None:
            raise RuntimeError("VecEnv.step_wait called without step_async")
        action, self._pending = self._pending, None
        if not self.asynchronous:
            obs, reward, terminated, truncated, _ = self._envs.step(action)
        else:
            try:
                obs, reward, terminated, truncated, _ = self._envs.step_wait()
            except _DEAD_WORKER as e:
                raise self._worker_died(e) from None
            except Exception as e:  # gymnasium re-raises the worker's own exception type here
                raise RuntimeError(f"env worker: {type(e).__name__}: {e}") from e
        is_first = self._done.copy()  # these envs were just reset by the vector env (their action was ignored)
        reward = np.where(is_first, 0.0, reward).astype(np.float32)
        terminated = np.asarray(terminated, bool) & ~is_first
        is_last = (terminated | np.asarray(truncated, bool)) & ~is_first
        self._done = is_last.copy()
        return self._pack(obs, reward, is_first, is_last, terminated)

    def _worker_died(self, e: Exception) -> RuntimeError:
        return RuntimeError(f"env worker: a worker process of {self.spec} died ({type(e).__name__}); see its error "
                            f"above")

    @staticmethod
    def _pack(obs, reward, is_first, is_last, is_terminal) -> dict[str, np.ndarray]:
        out = {k: np.asarray(v) for k, v in obs.items()}
        out["reward"] = reward
        out["is_first"] = is_first
        out["is_last"] = is_last
        out["is_terminal"] = is_terminal
        return out

    def close(self) -> None:
        self._envs.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def make_env(
    env_id: str,
    seed: int | None = 0,
    num_envs: int = 1,
    *,
    size: tuple[int, int] = (64, 64),
    asynchronous: bool = False,
    noise_std: float = 0.0,
    blackout_prob: float = 0.0,
    distractor: str = "none",
    role: str = "train",
    **env_kwargs,
) -> VecEnv:
    """Make ``num_envs`` copies of ``env_id`` behind one :class:`VecEnv` (env ``i`` seeded with ``seed + i``).

    Args:
        env_id: any gymnasium id with image (H x W x 3 uint8) and/or vector (Box) observations (or a Dict of those) and a
            Discrete or bounded Box action space; ``ALE/<Game>-v5`` ids use the Atari100k protocol.
        seed: base seed (None: unseeded).
        num_envs: number of parallel environments (>= 1).
        size: image size (height, width) after resizing.
        asynchronous: step the envs in subprocesses (gymnasium AsyncVectorEnv) instead of in this process.
        noise_std: Gaussian pixel noise distractor, standard deviation in uint8 units (0 = off).
        blackout_prob: probability that a frame is blacked out (0 = off).
        distractor: a distractor spec (``none``, ``gauss:SIGMA``, ``blackout:P``, ``video:SEED``; see
            :mod:`dreamer_ext.envs.distractors`), applied after ``noise_std``/``blackout_prob``.
        role: ``train`` or ``eval``: the ``video`` distractor's seed stream (the two never share a background video).
        env_kwargs: passed to the environment constructor.
    Raises:
        ValueError naming the argument for bad input, including unsupported observation/action spaces.
    """
    if not isinstance(num_envs, int) or isinstance(num_envs, bool) or num_envs < 1:
        raise ValueError(f"num_envs: must be an integer >= 1, got {num_envs!r}")
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size: must be (height, width) with positive entries, got {size!r}")
    if not (noise_std >= 0):
        raise ValueError(f"noise_std: must be >= 0, got {noise_std}")
    if not (0.0 <= blackout_prob <= 1.0):
        raise ValueError(f"blackout_prob: must be in [0, 1], got {blackout_prob}")
    # Build one env here to validate the spaces and read the spec (errors surface in this process, not a worker).
    probe = make_single_env(env_id, seed, size, noise_std, blackout_prob, distractor, role, **env_kwargs)
    spec = env_spec(probe)
    fns = [
        functools.partial(
            _build, env_id, None if seed is None else seed + i, size, noise_std, blackout_prob, distractor, role,
            dict(env_kwargs)
        )
        for i in range(num_envs)
    ]
    if asynchronous:
        probe.close()
        return VecEnv(fns, spec, seed, asynchronous=True)
    first = probe
    fns[0] = lambda: first
    return VecEnv(fns, spec, seed, asynchronous=False)
