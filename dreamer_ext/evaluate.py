"""Evaluate a checkpoint: ``python -m dreamer_ext.evaluate --checkpoint PATH --episodes N [--json OUT]``.

``PATH`` is a checkpoint file or a run directory (its newest checkpoint). The agent acts with the mode of its policy
(``mode="eval"``) in fresh copies of the run's environment, seeded apart from the training and in-training eval envs.
Prints the mean return ± the half-width of its 95% Student-t confidence interval; ``--json`` writes every episode's
return and length with the summary.

The episode runner :func:`run_episodes` is shared with the training program's periodic evaluation.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from . import cli

PROG = "python -m dreamer_ext.evaluate"
DESCRIPTION = """Evaluate a dreamer_ext checkpoint: run N complete episodes with the policy's mode and print the mean return
± the half-width of its 95% confidence interval (Student t, n-1 degrees of freedom)."""


# ----------------------------------------------------------------------------------------------------------- helpers
def to_torch(arrays: dict, device: torch.device) -> dict[str, torch.Tensor]:
    """numpy dict -> torch dict on ``device`` (dtypes preserved: uint8 images, float32 vectors, bool flags)."""
    return {k: torch.as_tensor(np.ascontiguousarray(v)).to(device, non_blocking=True) for k, v in arrays.items()}


def env_kwargs(cfg) -> dict:
    """Constructor arguments of a run's environments (action repeat applies to Atari only)."""
    from .envs.atari import is_atari_id

    return {"repeat": cfg.action_repeat} if is_atari_id(cfg.env) else {}


def run_episodes(agent, env, episodes: int, device: torch.device, record: int = 0, record_key: str | None = None) -> dict:
    """Run exactly ``episodes`` complete episodes with ``mode="eval"``.

    Env ``i`` runs episodes ``i, i + n, ...`` (n = ``env.num_envs``), so short episodes are not favoured. Returns
    ``returns``/``lengths`` (lists, in completion order) and ``frames``: when ``record > 0``, the observations
    ``record_key`` (uint8 ``[t, H, W, 3]``, t <= ``record``) of env 0's first episode, else None.
    """
    if episodes < 1:
        raise ValueError(f"episodes: must be positive, got {episodes}")
    n = env.num_envs
    quota = np.array([len(range(i, episodes, n)) for i in range(n)])
    returns, lengths, frames = [], [], []
    recording = record > 0 and record_key is not None
    ep_ret, ep_len = np.zeros(n), np.zeros(n, np.int64)
    obs = env.reset()
    carry = agent.initial_carry(n)
    while (quota > 0).any():
        if recording and len(frames) < record:
            frames.append(np.array(obs[record_key][0], copy=True))
        with torch.no_grad():
            action, carry = agent.policy(to_torch(obs, device), carry, mode="eval")
        obs = env.step(action.detach().cpu().numpy().astype(np.float32))
        ep_ret += obs["reward"]
        ep_len += ~obs["is_first"]
        for i in np.flatnonzero(obs["is_last"]):
            if recording and i == 0:
                if len(frames) < record:
                    frames.append(np.array(obs[record_key][0], copy=True))
                recording = False
            if quota[i] > 0:
                returns.append(float(ep_ret[i]))
                lengths.append(int(ep_len[i]))
                quota[i] -= 1
            ep_ret[i], ep_len[i] = 0.0, 0
    return {"returns": returns, "lengths": lengths, "frames": np.stack(frames) if frames else None}


def summarize(returns: list[float], lengths: list[int]) -> dict:
    """The scalars the training program logs for an evaluation (``eval_return`` = mean return)."""
    r = np.asarray(returns, np.float64)
    return {"eval_return": float(r.mean()), "eval_return_std": float(r.std()), "eval_return_min": float(r.min()),
            "eval_return_max": float(r.max()), "eval_length": float(np.mean(lengths))}


# ------------------------------------------------------------------------------------------------------------ program
@dataclass
class EvalOptions:
    checkpoint: str = field(default="", metadata={"help": "checkpoint file, or a run directory (its newest checkpoint)"})
    episodes: int = field(default=10, metadata={"help": "complete episodes to run"})
    json: str = field(default="", metadata={"help": "write the returns and the summary to this JSON file"})
    num_envs: int = field(default=0, metadata={"help": "parallel eval envs (0: min(episodes, 8))"})
    seed: int = field(default=-1, metadata={"help": "env seed (-1: the run's seed + 20000)"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda"})
    backend: str = field(default="", metadata={"help": "ops backend: kernels | reference ('' = the run's)"})

    def validate(self) -> "EvalOptions":
        if not self.checkpoint:
            raise ValueError("checkpoint: required (a checkpoint file or a run directory)")
        if self.episodes < 1:
            raise ValueError(f"episodes: must be positive, got {self.episodes}")
        if self.num_envs < 0:
            raise ValueError(f"num_envs: must be >= 0, got {self.num_envs}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device: expected auto|cpu|cuda, got {self.device!r}")
        if self.backend not in ("", "kernels", "reference"):
            raise ValueError(f"backend: expected kernels|reference, got {self.backend!r}")
        return self


def evaluate_checkpoint(opts: EvalOptions) -> dict:
    """Load ``opts.checkpoint``, run ``opts.episodes`` episodes, return the JSON-able result (also written if asked)."""
    from . import ops
    from .agent import resolve_device
    from .checkpoint import checkpoint_config, load_checkpoint

    device = resolve_device(opts.device)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # the agent is built on the current CUDA device
    payload = load_checkpoint(opts.checkpoint, map_location="cpu")
    cfg = checkpoint_config(payload)
    cfg.device = str(device.type)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(ops.use_backend(opts.backend or cfg.backend))
        except ImportError as e:
            raise ValueError(f"backend: {e}") from None
        return _evaluate(opts, cfg, payload, device)


def _evaluate(opts: EvalOptions, cfg, payload: dict, device: torch.device) -> dict:
    from .agent import Agent
    from .checkpoint import restore_agent
    from .envs import make_env

    seed = cfg.seed + 20_000 if opts.seed < 0 else opts.seed
    n = opts.num_envs or min(opts.episodes, 8)
    env = make_env(cfg.env, seed, n, **env_kwargs(cfg))
    try:
        torch.manual_seed(seed)
        agent = Agent(cfg, env.spec)
        restore_agent(agent, payload, env.spec, optimizer=False)
        agent.eval()
        t0 = time.time()
        out = run_episodes(agent, env, opts.episodes, device)
    finally:
        env.close()
    from .stats import mean_ci

    ci = mean_ci(out["returns"])
    result = {
        "checkpoint": os.path.abspath(payload["path"]), "env": cfg.env, "step": int(payload["step"]),
        "episodes": opts.episodes, "seed": seed, "mean": ci["mean"],
        "ci95": ci["ci"] if math.isfinite(ci["ci"]) else None,  # undefined for one episode
        "std": ci["std"] if math.isfinite(ci["std"]) else None,
        "returns": out["returns"], "lengths": out["lengths"], "seconds": round(time.time() - t0, 2),
    }
    if opts.json:
        from .checkpoint import atomic_write

        text = json.dumps(result, indent=2, allow_nan=False)
        try:
            os.makedirs(os.path.dirname(os.path.abspath(opts.json)), exist_ok=True)
            atomic_write(opts.json, lambda f: f.write(text.encode() + b"\n"))
        except OSError as e:  # a directory, an unwritable place, ...
            raise ValueError(f"--json={opts.json}: cannot write it ({e.strerror or e})") from None
    return result


def main(argv=None) -> int:
    from .checkpoint import CheckpointError

    opts = cli.parse_or_exit(argv, prog=PROG, description=DESCRIPTION, make_default=EvalOptions, apply_preset_fn=None)
    try:
        res = evaluate_checkpoint(opts)
    except (CheckpointError, ValueError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, ValueError) else 1

    ci = "n/a" if res["ci95"] is None else f"{res['ci95']:.2f}"
    std = "n/a" if res["std"] is None else f"{res['std']:.2f}"
    print(f"checkpoint: {res['checkpoint']} (env {res['env']}, step {res['step']})")
    print(f"return: {res['mean']:.2f} ± {ci} (95% CI, {res['episodes']} episodes; std {std})")
    if opts.json:
        print(f"wrote {opts.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
