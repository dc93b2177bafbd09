"""Helpers shared by the programs' loops (``train`` and ``evaluate``): tensors in, episodes, schedules, metric
averages, the run-time projection, and process set-up.

- :func:`to_torch`, :func:`env_kwargs`: numpy batches to the device, the environments' constructor arguments;
- :class:`Episodes`: per-environment running return and length, shared by training and evaluation;
- :func:`run_episodes` / :func:`summarize`: exactly N complete evaluation episodes and their scalars;
- :class:`Every`: the one schedule helper (eval, log, media, checkpoint);
- :class:`Mean`: the one metric aggregator;
- :class:`Projection`: remaining time from the measured env-step rate *and* the measured update cost;
- :func:`tune_cpu_allocator`: process-wide glibc malloc settings, called by the programs' entry points.
"""
from __future__ import annotations

import ctypes
import math
import os
import sys

import numpy as np
import torch

__all__ = ["to_torch", "env_kwargs", "Episodes", "run_episodes", "summarize", "Every", "Mean", "Projection",
           "format_duration", "tune_cpu_allocator"]


# ------------------------------------------------------------------------------------------------------ tensors, envs
def to_torch(arrays: dict, device: torch.device) -> dict[str, torch.Tensor]:
    """numpy dict -> torch dict on ``device`` (dtypes preserved: uint8 images, float32 vectors, bool flags)."""
    return {k: torch.as_tensor(np.ascontiguousarray(v)).to(device, non_blocking=True) for k, v in arrays.items()}


def env_kwargs(cfg) -> dict:
    """Constructor arguments of a run's environments (action repeat applies to Atari only)."""
    from .envs.atari import is_atari_id

    return {"repeat": cfg.action_repeat} if is_atari_id(cfg.env) else {}


# ----------------------------------------------------------------------------------------------------------- episodes
class Episodes:
    """Running return and length of each of ``n`` environments.

    :meth:`add` takes one batched env output (``reward [n]``, ``is_first [n]``, ``is_last [n]``) and returns the
    episodes that ended with it as ``(env index, return, length)``; a reset observation (``is_first``) adds no length.
    """

    def __init__(self, n: int):
        self.ret = np.zeros(n)
        self.len = np.zeros(n, np.int64)

    def add(self, obs: dict) -> list[tuple[int, float, int]]:
        self.ret += obs["reward"]
        self.len += ~np.asarray(obs["is_first"], bool)
        done = []
        for i in np.flatnonzero(obs["is_last"]):
            done.append((int(i), float(self.ret[i]), int(self.len[i])))
            self.ret[i], self.len[i] = 0.0, 0
        return done


POLICIES = ("sample", "mode")  # how an evaluation acts: sample the actor (the authors' protocol) or take its mode


def run_episodes(agent, env, episodes: int, device: torch.device, policy: str = "sample", record: int = 0,
                 record_key: str | None = None) -> dict:
    """Run exactly ``episodes`` complete episodes; ``policy`` "sample" draws actions from the actor, "mode" takes the
    most likely one (deterministic given the state; in deterministic games it can loop until the frame cap).

    Env ``i`` runs episodes ``i, i + n, ...`` (n = ``env.num_envs``), so short episodes are not favoured. Returns
    ``returns``/``lengths`` (lists, in completion order) and ``frames``: when ``record > 0``, the observations
    ``record_key`` (uint8 ``[t, H, W, 3]``, t <= ``record``) of env 0's first episode, else None.
    """
    if episodes < 1:
        raise ValueError(f"episodes: must be positive, got {episodes}")
    if policy not in POLICIES:
        raise ValueError(f"policy: expected one of {POLICIES}, got {policy!r}")
    n = env.num_envs
    quota = np.array([len(range(i, episodes, n)) for i in range(n)])
    returns, lengths, frames = [], [], []
    recording = record > 0 and record_key is not None
    tracker = Episodes(n)
    obs = env.reset()
    carry = agent.initial_carry(n)
    while (quota > 0).any():
        if recording and len(frames) < record:
            frames.append(np.array(obs[record_key][0], copy=True))
        with torch.no_grad():
            action, carry = agent.policy(to_torch(obs, device), carry, sample=policy == "sample")
        obs = env.step(action.detach().cpu().numpy().astype(np.float32))
        for i, ret, length in tracker.add(obs):
            if recording and i == 0:
                if len(frames) < record:
                    frames.append(np.array(obs[record_key][0], copy=True))
                recording = False
            if quota[i] > 0:
                returns.append(ret)
                lengths.append(length)
                quota[i] -= 1
    return {"returns": returns, "lengths": lengths, "frames": np.stack(frames) if frames else None}


def summarize(returns: list[float], lengths: list[int]) -> dict:
    """The scalars the training program logs for an evaluation (``eval_return`` = mean return)."""
    r = np.asarray(returns, np.float64)
    return {"eval_return": float(r.mean()), "eval_return_std": float(r.std()), "eval_return_min": float(r.min()),
            "eval_return_max": float(r.max()), "eval_length": float(np.mean(lengths))}


# ---------------------------------------------------------------------------------------------- schedules, metrics
class Every:
    """Fires at the multiples of ``every`` env steps: ``due(step)`` is True once for each multiple reached (several
    multiples passed at once fire once). ``every=0`` never fires. ``after``: the step the schedule starts from (a
    resumed run passes its step, so the schedule follows the current interval). ``first``: an earlier first firing
    step (e.g. 0: as soon as possible)."""

    def __init__(self, every: int, after: int = 0, first: int | None = None):
        if every < 0:
            raise ValueError(f"every: must be >= 0, got {every}")
        self.every = every
        self.next = (after // every + 1) * every if every else math.inf
        if every and first is not None:
            self.next = min(self.next, first)

    def due(self, step: int, when: bool = True) -> bool:
        """Whether the schedule fires at ``step`` (``when=False`` postpones it to a later call)."""
        if not when or step < self.next:
            return False
        self.next = (step // self.every + 1) * self.every
        return True


class Mean:
    """Averages of scalar metrics since the last :meth:`result` (each key over the values it got)."""

    def __init__(self):
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def add(self, metrics: dict) -> None:
        for k, v in metrics.items():
            self._sums[k] = self._sums.get(k, 0.0) + float(v)
            self._counts[k] = self._counts.get(k, 0) + 1

    def result(self, prefix: str = "") -> dict[str, float]:
        """``{prefix + key: mean}``, then starts over."""
        out = {prefix + k: s / self._counts[k] for k, s in self._sums.items()}
        self._sums, self._counts = {}, {}
        return out


# ---------------------------------------------------------------------------------------------------- projection
def format_duration(seconds: float) -> str:
    """``3725 -> '1 h 02 min'``, ``95 -> '1 min 35 s'``, ``7 -> '7 s'``; ``'?'`` when unknown."""
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"


class Projection:
    """Remaining run time = env steps left × measured seconds per env step (acting, env, replay, evaluation: all but
    updates) + updates still owed × measured seconds per update.

    Updates owed follow the train ratio: ``updates_per_step`` per env step from where training starts (``start``
    stored steps) to ``total``. Until an update has been timed the projection is unknown (``nan``), because acting
    alone says nothing about the much larger update cost.
    """

    def __init__(self, total: int, updates_per_step: float, start: int):
        self.total, self.rate, self.start = total, updates_per_step, start
        self.step_seconds = 0.0  # time outside updates
        self.steps = 0
        self.update_seconds = 0.0
        self.updates = 0

    def add(self, steps: int, seconds: float, updates: int, update_seconds: float) -> None:
        """Account one loop iteration: ``steps`` env steps in ``seconds`` of which ``update_seconds`` were spent in
        ``updates`` updates."""
        self.steps += steps
        self.step_seconds += max(seconds - update_seconds, 0.0)
        self.updates += updates
        self.update_seconds += update_seconds

    def per_step(self) -> float:
        return self.step_seconds / self.steps if self.steps else math.nan

    def per_update(self) -> float:
        return self.update_seconds / self.updates if self.updates else math.nan

    def updates_owed(self, step: int) -> float:
        return max(self.total - max(step, self.start), 0) * self.rate

    def remaining(self, step: int) -> float:
        """Projected seconds from ``step`` to the end (``nan`` until an update and an env step were timed)."""
        left = max(self.total - step, 0)
        if left == 0:
            return 0.0
        if not self.updates_owed(step):
            return left * self.per_step()
        return left * self.per_step() + self.updates_owed(step) * self.per_update()


# ------------------------------------------------------------------------------------------------- process set-up
# glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1  # free memory at the top of the heap is returned to the OS above this size
M_TOP_PAD = -2         # extra bytes requested from the OS whenever the heap grows
M_MMAP_MAX = -4        # how many blocks may be served by mmap (0: none, they come from the heap)
TRIM_THRESHOLD = 2**31 - 1  # effectively never trim
TOP_PAD = 256 << 20         # grow the heap in 256 MiB steps
_ALLOC_TUNED = False


def tune_cpu_allocator() -> bool:
    """Keep freed memory inside the process (glibc only): no mmap for big blocks, no heap trimming, 256 MiB top pad.

    Large CPU tensors otherwise go through mmap/munmap on every allocation and each update pays page faults for
    gigabytes of fresh memory (measured: imagination at size12m 12.8 s -> 1.4 s). Process-wide, so only the programs'
    entry points call it (``train``, ``evaluate``, the bench scripts), never a library constructor. Idempotent; set
    ``DREAMER_EXT_MALLOC_TUNE=0`` to skip. Returns whether the settings are in effect.
    """
    global _ALLOC_TUNED
    if _ALLOC_TUNED or os.environ.get("DREAMER_EXT_MALLOC_TUNE", "1") == "0" or not sys.platform.startswith("linux"):
        return _ALLOC_TUNED
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(M_MMAP_MAX, 0) and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) \
            and libc.mallopt(M_TOP_PAD, TOP_PAD)
    except (OSError, AttributeError):
        return False
    _ALLOC_TUNED = bool(ok)
    return _ALLOC_TUNED
