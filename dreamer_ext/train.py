"""Train DreamerV3: ``python -m dreamer_ext.train --env=CartPole-v1 --preset=size1m --steps=30000``.

One readable loop, top to bottom (CleanRL style):

1. parse the config (every Config field is a ``--dotted.option``; ``--help`` lists them),
2. resolve the device, set the ops backend, seed everything,
3. make ``num_envs`` train environments and a separate eval environment,
4. write ``config.json`` into the run directory, build the agent and the replay,
5. loop: act -> step envs -> add to replay -> train (keeping the train ratio) -> evaluate -> log.

Units
-----
* **env steps** = policy steps summed over all training environments: one agent decision in one environment is one env step
  (with action repeat k on Atari, one env step = k emulator frames). ``--steps``, ``--eval_every`` and ``--log_every`` count
  env steps. With ``--num_envs=N`` every loop iteration adds N env steps.
* **train ratio** = replayed steps / env steps. One update replays ``batch_size x batch_length`` steps, so the loop performs
  ``train_ratio / (batch_size * batch_length)`` updates per env step, accumulating the fractional part. Training starts once
  ``batch_size x batch_length`` steps are stored (the first qualifying iteration does one update).

Outputs in the run directory: ``config.json`` (resolved config), ``metrics.jsonl`` (one JSON object per line with ``step`` and
scalars: train losses averaged since the last log, ``episode_return``, ``eval_return``). Checkpoints / TensorBoard / resume
hook in at the ``Logger`` and ``TrainState`` seams below.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import re
import sys
import time

import numpy as np
import torch

from . import cli, ops
from .agent import resolve_device
from .config import Config, config_to_dict
from .envs import make_env
from .envs.atari import is_atari_id
from .replay import Replay

PROG = "python -m dreamer_ext.train"
DESCRIPTION = """Train a DreamerV3 agent on a gymnasium or Atari (ALE/<Game>-v5, Atari100k protocol) environment.

Units: "env steps" (--steps, --eval_every, --log_every) are policy steps summed over all --num_envs training environments
(one agent decision in one env = 1 env step; on Atari one env step = --action_repeat frames; --action_repeat applies to ALE
envs only). --train_ratio = replayed steps per env step, i.e. train_ratio / (batch_size * batch_length) updates per env step.
--preset is applied first, then the other options, in any order."""


# ---------------------------------------------------------------------------------------------------------------- helpers
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def env_kwargs(cfg: Config) -> dict:
    """Constructor arguments for the environments (action repeat only applies to Atari)."""
    return {"repeat": cfg.action_repeat} if is_atari_id(cfg.env) else {}


def default_logdir(cfg: Config) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", cfg.env)
    return os.path.join("runs", f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-s{cfg.seed}")


def to_torch(arrays: dict, device: torch.device) -> dict[str, torch.Tensor]:
    """numpy dict -> torch dict on ``device`` (dtypes preserved: uint8 images, float32 vectors, bool flags)."""
    return {k: torch.as_tensor(np.ascontiguousarray(v)).to(device, non_blocking=True) for k, v in arrays.items()}


class Logger:
    """Appends scalars to ``metrics.jsonl``. (TensorBoard slots in here.)"""

    def __init__(self, logdir: str):
        self.path = os.path.join(logdir, "metrics.jsonl")
        self._file = open(self.path, "a", buffering=1)

    def write(self, step: int, scalars: dict) -> None:
        row = {"step": int(step), "time": round(time.time(), 3)}
        row.update({k: float(v) for k, v in scalars.items()})
        self._file.write(json.dumps(row) + "\n")

    def close(self) -> None:
        self._file.close()


@dataclasses.dataclass
class TrainState:
    """Loop counters (everything a resume needs besides agent and replay)."""

    step: int = 0  # env steps so far (summed over envs)
    updates: int = 0  # agent.train_step calls
    update_budget: float = 0.0  # fractional updates owed to keep the train ratio
    training: bool = False  # whether training has started (>= B*T steps stored)
    episodes: int = 0
    next_eval: int = 0
    last_eval: int = -1  # env step of the last evaluation
    next_log: int = 0


def evaluate(agent, env, episodes: int, device: torch.device) -> dict:
    """Run exactly ``episodes`` complete episodes with ``mode="eval"``; env i runs episodes i, i+n, ... (no bias to short
    episodes). Returns mean/std/min/max return and mean length."""
    n = env.num_envs
    quota = np.array([len(range(i, episodes, n)) for i in range(n)])
    returns, lengths = [], []
    ep_ret, ep_len = np.zeros(n), np.zeros(n, np.int64)
    obs = env.reset()
    carry = agent.initial_carry(n)
    while (quota > 0).any():
        with torch.no_grad():
            action, carry = agent.policy(to_torch(obs, device), carry, mode="eval")
        obs = env.step(action.detach().cpu().numpy().astype(np.float32))
        ep_ret += obs["reward"]
        ep_len += ~obs["is_first"]
        for i in np.flatnonzero(obs["is_last"]):
            if quota[i] > 0:
                returns.append(ep_ret[i])
                lengths.append(ep_len[i])
                quota[i] -= 1
            ep_ret[i], ep_len[i] = 0.0, 0
    r = np.array(returns, np.float64)
    return {
        "eval_return": float(r.mean()),
        "eval_return_std": float(r.std()),
        "eval_return_min": float(r.min()),
        "eval_return_max": float(r.max()),
        "eval_length": float(np.mean(lengths)),
    }


# ------------------------------------------------------------------------------------------------------------------- main
def train(cfg: Config) -> dict:
    """Run the whole training described by ``cfg``; returns the last eval metrics (empty if none ran)."""
    from tqdm import tqdm

    from .agent import Agent

    # ---- device, kernels, seeds ----
    device = resolve_device(cfg.device)
    try:
        ops.set_backend(cfg.backend)
    except (ImportError, ValueError) as e:
        raise cli.CLIError(f"--backend={cfg.backend}: {e}") from None
    seed_everything(cfg.seed)

    # ---- environments (eval: up to 8 parallel copies, seeds disjoint from the train envs') ----
    try:
        envs = make_env(cfg.env, cfg.seed, cfg.num_envs, **env_kwargs(cfg))
        eval_envs = make_env(cfg.env, cfg.seed + 10_000, max(1, min(cfg.eval_episodes, 8)), **env_kwargs(cfg))
    except ValueError as e:
        raise cli.CLIError(f"--env={cfg.env}: {e}") from None
    spec = envs.spec

    # ---- run directory ----
    logdir = cfg.logdir or default_logdir(cfg)
    os.makedirs(logdir, exist_ok=True)
    cfg.logdir = logdir
    with open(os.path.join(logdir, "config.json"), "w") as f:
        json.dump(config_to_dict(cfg), f, indent=2, sort_keys=True)
    logger = Logger(logdir)

    # ---- agent and replay ----
    agent = Agent(cfg, spec)
    params = agent.param_count()
    B, T, N = cfg.batch_size, cfg.batch_length, cfg.num_envs
    replay = Replay(cfg.replay_capacity, T, online=cfg.replay_online, seed=cfg.seed)
    print(f"logdir: {logdir}", flush=True)
    print(f"device: {device} (torch threads: {torch.get_num_threads()})", flush=True)
    print(f"backend: {ops.get_backend()}", flush=True)
    print(f"env: {cfg.env} obs={spec.obs} act_dim={spec.act_dim} discrete={spec.discrete} num_envs={N}", flush=True)
    print("params: " + " ".join(f"{k}={v:,}" for k, v in params.items()), flush=True)
    print(f"train: steps={cfg.steps} train_ratio={cfg.train_ratio} updates/env-step={cfg.train_ratio / (B * T):.4g} "
          f"(B={B}, T={T}, starts after {B * T} stored steps)", flush=True)

    # ---- loop ----
    st = TrainState(next_eval=cfg.eval_every, next_log=cfg.log_every)
    obs = envs.reset()
    carry = agent.initial_carry(N)
    ep_ret, ep_len = np.zeros(N), np.zeros(N, np.int64)
    last_return = float("nan")
    eval_metrics: dict = {}
    train_sums: dict[str, float] = {}
    train_count = 0
    t_start = time.time()
    t_log, updates_log, step_log = t_start, 0, 0
    tty = sys.stderr.isatty()
    bar = tqdm(total=cfg.steps, unit="step", dynamic_ncols=True, mininterval=1.0 if tty else 30.0, file=sys.stderr)

    while st.step < cfg.steps:
        # act: the action taken at obs_t is stored with obs_t (zeroed at is_last: the env resets and ignores it)
        with torch.no_grad():
            action, carry = agent.policy(to_torch(obs, device), carry, mode="train")
        action = action.detach().cpu().numpy().astype(np.float32)
        action[obs["is_last"]] = 0.0
        replay.add_batch({**obs, "action": action})

        # step the environments
        obs = envs.step(action)
        st.step += N
        bar.update(N)
        ep_ret += obs["reward"]
        ep_len += ~obs["is_first"]
        for i in np.flatnonzero(obs["is_last"]):
            last_return = float(ep_ret[i])
            st.episodes += 1
            logger.write(st.step, {"episode_return": ep_ret[i], "episode_length": ep_len[i]})
            ep_ret[i], ep_len[i] = 0.0, 0

        # train: keep replayed steps / env steps = train_ratio
        if not st.training and len(replay) >= B * T and replay.num_windows() > 0:
            st.training, st.update_budget = True, 1.0
        elif st.training:
            st.update_budget += N * cfg.train_ratio / (B * T)
        while st.training and st.update_budget >= 1.0:
            batch = to_torch(replay.sample(B), device)
            metrics = agent.train_step(batch)
            st.updates += 1
            st.update_budget -= 1.0
            for k, v in metrics.items():
                train_sums[k] = train_sums.get(k, 0.0) + float(v)
            train_count += 1

        # evaluate
        if cfg.eval_every and st.step >= st.next_eval:
            st.next_eval += cfg.eval_every
            eval_metrics = evaluate(agent, eval_envs, cfg.eval_episodes, device)
            st.last_eval = st.step
            logger.write(st.step, eval_metrics)
            tqdm.write(f"step={st.step} eval_return={eval_metrics['eval_return']:.2f}", file=sys.stdout)
            sys.stdout.flush()

        # log
        if st.step >= st.next_log or st.step >= cfg.steps:
            st.next_log += cfg.log_every
            now = time.time()
            rates = {
                "updates_per_s": (st.updates - updates_log) / max(now - t_log, 1e-9),
                "steps_per_s": (st.step - step_log) / max(now - t_log, 1e-9),
                "updates": st.updates,
                "episodes": st.episodes,
            }
            t_log, updates_log, step_log = now, st.updates, st.step
            means = {f"train/{k}": v / train_count for k, v in train_sums.items()} if train_count else {}
            logger.write(st.step, {**means, **rates, **{k: v for k, v in replay.stats().items()}})
            train_sums, train_count = {}, 0
            bar.set_postfix({"upd/s": f"{rates['updates_per_s']:.2f}", "ret": f"{last_return:.1f}",
                             "upd": st.updates}, refresh=False)

    bar.close()
    if cfg.eval_every and st.last_eval != st.step:  # final evaluation
        eval_metrics = evaluate(agent, eval_envs, cfg.eval_episodes, device)
        logger.write(st.step, eval_metrics)
    elapsed = time.time() - t_start
    summary = {"steps": st.step, "updates": st.updates, "episodes": st.episodes, "seconds": round(elapsed, 1),
               "steps_per_s": round(st.step / elapsed, 2), "updates_per_s": round(st.updates / elapsed, 3)}
    print("done: " + " ".join(f"{k}={v}" for k, v in summary.items()), flush=True)
    if eval_metrics:
        print(f"final eval_return={eval_metrics['eval_return']:.3f} (mean of {cfg.eval_episodes} eval episodes)", flush=True)
    logger.close()
    envs.close()
    eval_envs.close()
    return {**summary, **eval_metrics}


def main(argv=None) -> int:
    cfg = cli.parse_or_exit(argv, prog=PROG, description=DESCRIPTION)
    try:
        resolve_device(cfg.device)
    except ValueError as e:
        print(f"{PROG}: error: --{e}", file=sys.stderr)
        return 2
    try:
        train(cfg)
    except cli.CLIError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
