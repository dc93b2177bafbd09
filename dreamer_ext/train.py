"""Train DreamerV3: ``python -m dreamer_ext.train --env=CartPole-v1 --preset=size1m --steps=30000``.

One readable loop, top to bottom (CleanRL style):

1. parse the config (every Config field is a ``--dotted.option``; ``--help`` lists them); with ``--resume`` the saved
   config of the run is the base and the options given on the command line are applied on top,
2. resolve the device, set the ops backend, seed everything,
3. make ``num_envs`` train environments and a separate eval environment,
4. build the agent and the replay; on resume load them, the counters and the RNG states from the newest checkpoint,
5. loop: act -> step envs -> add to replay -> train (keeping the train ratio) -> evaluate -> log -> checkpoint.

Units
-----
* **env steps** = policy steps summed over all training environments: one agent decision in one environment is one env step
  (with action repeat k on Atari, one env step = k emulator frames). ``--steps``, ``--eval_every``, ``--log_every``,
  ``--checkpoint_every`` and ``--media_every`` count env steps. With ``--num_envs=N`` every loop iteration adds N env steps.
* **train ratio** = replayed steps / env steps. One update replays ``batch_size x batch_length`` steps, so the loop performs
  ``train_ratio / (batch_size * batch_length)`` updates per env step, accumulating the fractional part. Training starts once
  ``batch_size x batch_length`` steps are stored (the first qualifying iteration does one update).

Run directory
-------------
``config.json`` (resolved config), ``metrics.jsonl`` (one JSON object per line: ``step``, ``time`` and scalars),
TensorBoard event files (the same scalars under the same names, reconstruction images ``recon/<key>`` and eval episode
GIFs ``eval/episode``), ``checkpoints/ckpt-<step>.pt`` and ``replay/chunk-<uid>.npz`` (see :mod:`dreamer_ext.checkpoint`).
On resume, rows and events logged after the checkpoint (by the run that was stopped) are dropped, so the logs describe
exactly the training that the resumed state went through.

Stopping: SIGTERM or Ctrl-C writes a checkpoint at the next loop iteration and exits (a second Ctrl-C stops at once).
A SIGKILL loses only what happened since the last checkpoint.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import re
import signal
import sys
import threading
import time

import numpy as np
import torch

from . import cli, ops
from .agent import resolve_device
from .checkpoint import Checkpointer, CheckpointError, RunLock, atomic_write, checkpoint_config, list_checkpoints, \
    load_checkpoint, restore_agent, rng_state, set_rng_state
from .config import Config, config_from_dict, config_to_dict
from .envs import make_env
from .evaluate import env_kwargs, run_episodes, summarize, to_torch
from .replay import Replay
from .runlog import RunLogger

__all__ = ["train", "main", "TrainState", "seed_everything", "env_kwargs", "to_torch", "parse_args"]

PROG = "python -m dreamer_ext.train"
DESCRIPTION = """Train a DreamerV3 agent on a gymnasium or Atari (ALE/<Game>-v5, Atari100k protocol) environment.

Units: "env steps" (--steps, --eval_every, --log_every, --checkpoint_every, --media_every) are policy steps summed over all
--num_envs training environments (one agent decision in one env = 1 env step; on Atari one env step = --action_repeat
frames; --action_repeat applies to ALE envs only). --train_ratio = replayed steps per env step, i.e.
train_ratio / (batch_size * batch_length) updates per env step. --preset is applied first, then the other options.
--resume continues the run in --logdir from its newest checkpoint, with its saved config plus the options given here."""

REPLAY_CHUNK = 256  # steps per replay chunk: the unit written once to replay/ (partial chunks ride in each checkpoint)
_ENV_SEED_STRIDE = 1_000_003  # train envs of the k-th resume are seeded seed + k * stride (fresh episodes, no repeats)


# ---------------------------------------------------------------------------------------------------------------- helpers
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def default_logdir(cfg: Config) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", cfg.env)
    return os.path.join("runs", f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-s{cfg.seed}")


@dataclasses.dataclass
class TrainState:
    """Loop counters (everything a resume needs besides agent, replay and RNG states)."""

    step: int = 0  # env steps so far (summed over envs)
    updates: int = 0  # agent.train_step calls (skipped ones included)
    skipped_updates: int = 0  # updates skipped because a loss or gradient was non-finite
    update_budget: float = 0.0  # fractional updates owed to keep the train ratio
    training: bool = False  # whether training has started (>= B*T steps stored)
    episodes: int = 0
    next_eval: int = 0
    last_eval: int = -1  # env step of the last evaluation
    next_log: int = 0
    next_checkpoint: int = 0
    next_media: int = 0  # reconstruction images
    next_video: int = 0  # eval episode GIF (taken at the first evaluation at or after this step)
    resumes: int = 0  # how many times this run was resumed
    train_seconds: float = 0.0  # wall time spent in the loop, over all segments of the run


class _StopRequest:
    """SIGTERM / SIGINT -> finish the current iteration, checkpoint, exit. A second SIGINT stops at once."""

    def __init__(self):
        self.signum: int | None = None
        self._old: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


def parse_args(argv=None) -> tuple[Config, str | None]:
    """Command line -> (config, checkpoint to resume from or None). Raises cli.CLIError / CheckpointError.

    Without ``--resume`` this is the plain generated CLI. With ``--resume`` and a checkpoint in ``--logdir``, the
    checkpoint's config is the base and the given options override it (the preset cannot change).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = cli.parse(argv, prog=PROG, description=DESCRIPTION)
    if not cfg.resume:
        return cfg, None
    if not cfg.logdir:
        raise cli.CLIError("--resume: needs --logdir (the run directory to continue)")
    if not list_checkpoints(cfg.logdir):
        return cfg, None
    head = load_checkpoint(cfg.logdir, mmap=True)  # only the config is needed here
    path, saved_dict, saved = head["path"], head["config"], checkpoint_config(head)
    del head
    if any(a == "--preset" or a.startswith("--preset=") for a in argv) and cfg.preset != saved.preset:
        raise cli.CLIError(f"--preset: the run in {cfg.logdir} uses {saved.preset}; a resumed run keeps its preset")
    resumed = cli.parse(argv, make_default=lambda: config_from_dict(saved_dict), apply_preset_fn=None,
                        prog=PROG, description=DESCRIPTION)
    resumed.logdir, resumed.resume = cfg.logdir, True
    return resumed, path


def _next_multiple(step: int, every: int) -> int:
    """The first multiple of ``every`` after ``step``."""
    return (step // every + 1) * every


def _config_changes(old: dict, new: dict) -> list[str]:
    skip = {"resume", "logdir"}
    return [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in sorted(new.items()) if k not in skip and old.get(k) != v]


# ------------------------------------------------------------------------------------------------------------------- main
def train(cfg: Config, resume_from: str | None = None) -> dict:
    """Run (or, with ``cfg.resume``, continue) the training described by ``cfg``; returns the last eval metrics plus a
    summary. ``resume_from``: the checkpoint to continue from (default with ``cfg.resume``: the newest of
    ``cfg.logdir``). The run directory is locked against a second process for the duration."""
    # ---- device, kernels (the caller's ops backend is restored on return), run-directory lock ----
    resolve_device(cfg.device)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(ops.use_backend(cfg.backend))
        except (ImportError, ValueError) as e:
            raise cli.CLIError(f"--backend={cfg.backend}: {e}") from None
        cfg.logdir = cfg.logdir or default_logdir(cfg)
        stack.callback(RunLock(cfg.logdir).release)
        return _train(cfg, resume_from)


def _train(cfg: Config, resume_from: str | None) -> dict:
    from tqdm import tqdm

    from .agent import Agent

    device = resolve_device(cfg.device)
    logdir = cfg.logdir

    # ---- the checkpoint to resume from ----
    existing = list_checkpoints(logdir)
    if existing and not cfg.resume:
        raise cli.CLIError(f"--logdir={logdir}: holds checkpoints of an earlier run; pass --resume to continue it "
                           f"or choose another --logdir")
    if resume_from is None and cfg.resume and existing:
        resume_from = existing[-1][1]
    payload = load_checkpoint(resume_from) if resume_from else None
    if payload is not None:
        changes = _config_changes(payload["config"], config_to_dict(cfg))
        print(f"resume: {payload['path']} (step {payload['step']})"
              + (f"; changed options: {', '.join(changes)}" if changes else ""), flush=True)
    elif cfg.resume:
        print(f"resume: no checkpoint in {logdir}; starting a new run", flush=True)

    # ---- counters; the periodic schedules follow the current intervals (from step 0, or the resume step) ----
    st = TrainState()
    if payload is not None:
        try:
            st = TrainState(**payload["train_state"])
        except TypeError as e:
            raise CheckpointError(f"checkpoint {payload['path']!r}: malformed train state ({e})") from None
        st.resumes += 1
    st.next_eval = _next_multiple(st.step, cfg.eval_every) if cfg.eval_every else 0
    st.next_log = _next_multiple(st.step, cfg.log_every)
    st.next_checkpoint = _next_multiple(st.step, cfg.checkpoint_every) if cfg.checkpoint_every else cfg.steps

    # ---- seeds, environments (eval: up to 8 parallel copies, seeds disjoint from the train envs') ----
    seed_everything(cfg.seed)
    try:
        envs = make_env(cfg.env, cfg.seed + st.resumes * _ENV_SEED_STRIDE, cfg.num_envs, **env_kwargs(cfg))
        eval_envs = make_env(cfg.env, cfg.seed + 10_000 + st.resumes * _ENV_SEED_STRIDE,
                             max(1, min(cfg.eval_episodes, 8)), **env_kwargs(cfg))
    except ValueError as e:
        raise cli.CLIError(f"--env={cfg.env}: {e}") from None
    spec = envs.spec

    # ---- agent, replay, checkpointer, logger ----
    agent = Agent(cfg, spec)
    B, T, N = cfg.batch_size, cfg.batch_length, cfg.num_envs
    replay = Replay(cfg.replay_capacity, T, chunk_size=REPLAY_CHUNK, online=cfg.replay_online, seed=cfg.seed)
    ckpt = Checkpointer(logdir, keep=cfg.checkpoint_keep)
    metrics_path = os.path.join(logdir, "metrics.jsonl")
    old_size = os.path.getsize(metrics_path) if os.path.exists(metrics_path) else 0
    if payload is not None:
        restore_agent(agent, payload, spec)
        ckpt.restore_replay(payload, replay)
        try:
            set_rng_state(payload["rng"])
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:
            raise CheckpointError(f"checkpoint {payload['path']!r}: malformed RNG state ({e})") from None
        offset = payload["logs"].get("metrics_offset")
        if not isinstance(offset, int) or offset > old_size:
            print(f"warning: {metrics_path} is shorter than when the checkpoint was saved; appending to it as it is",
                  flush=True)
            offset = None
        logger = RunLogger(logdir, cfg.tensorboard, purge_step=st.step + 1, metrics_offset=offset)
    else:
        has_events = any(n.startswith("events.out.tfevents") for n in os.listdir(logdir))
        if old_size or has_events:
            print(f"note: {logdir} holds logs of a run that saved no checkpoint; they are discarded", flush=True)
        logger = RunLogger(logdir, cfg.tensorboard, purge_step=0 if has_events else None,
                           metrics_offset=0 if old_size else None)
    payload = None  # model tensors and replay data now live in the agent and the replay
    text = json.dumps(config_to_dict(cfg), indent=2, sort_keys=True) + "\n"
    atomic_write(os.path.join(logdir, "config.json"), lambda f: f.write(text.encode()))

    params = agent.param_count()
    print(f"logdir: {logdir}", flush=True)
    print(f"device: {device} (torch threads: {torch.get_num_threads()})", flush=True)
    print(f"backend: {ops.get_backend()}", flush=True)
    print(f"env: {cfg.env} obs={spec.obs} act_dim={spec.act_dim} discrete={spec.discrete} num_envs={N}", flush=True)
    print("params: " + " ".join(f"{k}={v:,}" for k, v in params.items()), flush=True)
    print(f"train: steps={cfg.steps} train_ratio={cfg.train_ratio} updates/env-step={cfg.train_ratio / (B * T):.4g} "
          f"(B={B}, T={T}, starts after {B * T} stored steps)", flush=True)

    def save_checkpoint() -> str:
        logger.flush()
        path = ckpt.save(st.step, {
            "config": config_to_dict(cfg), "spec": dataclasses.asdict(spec), "agent": agent.checkpoint_state(),
            "train_state": dataclasses.asdict(st), "rng": rng_state(),
            "logs": {"metrics_offset": logger.jsonl_offset()},
            "saved_at": time.time(), "torch_version": str(torch.__version__),
        }, replay)
        return path

    # ---- loop ----
    image_key = agent.wm.image_keys[0] if agent.wm.image_keys else None
    obs = envs.reset()
    carry = agent.initial_carry(N)
    ep_ret, ep_len = np.zeros(N), np.zeros(N, np.int64)
    last_return = float("nan")
    eval_metrics: dict = {}
    last_batch = None
    train_sums: dict[str, float] = {}
    train_count = 0
    t_start = time.time()
    t_log, updates_log, step_log, seconds_base = t_start, st.updates, st.step, st.train_seconds
    step0, updates0 = st.step, st.updates
    stopped_by = None
    tty = sys.stderr.isatty()
    bar = tqdm(total=cfg.steps, initial=min(st.step, cfg.steps), unit="step", dynamic_ncols=True,
               mininterval=1.0 if tty else 30.0, file=sys.stderr)

    with _StopRequest() as stop:
        while st.step < cfg.steps:
            if stop.signum is not None:
                stopped_by = signal.Signals(stop.signum).name
                break

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
                logger.scalars(st.step, {"episode_return": ep_ret[i], "episode_length": ep_len[i]})
                ep_ret[i], ep_len[i] = 0.0, 0

            # train: keep replayed steps / env steps = train_ratio
            if not st.training and len(replay) >= B * T and replay.num_windows() > 0:
                st.training, st.update_budget = True, 1.0
            elif st.training:
                st.update_budget += N * cfg.train_ratio / (B * T)
            while st.training and st.update_budget >= 1.0:
                last_batch = replay.sample(B)
                metrics = agent.train_step(to_torch(last_batch, device))
                st.updates += 1
                st.update_budget -= 1.0
                if metrics["opt/skipped"]:
                    st.skipped_updates += 1  # its losses are non-finite: counted, not averaged into the log
                    continue
                for k, v in metrics.items():
                    train_sums[k] = train_sums.get(k, 0.0) + float(v)
                train_count += 1

            # evaluate (with an episode GIF when one is due and observations are images)
            if cfg.eval_every and st.step >= st.next_eval:
                st.next_eval += cfg.eval_every
                video = bool(cfg.media_every and image_key and st.step >= st.next_video)
                out = run_episodes(agent, eval_envs, cfg.eval_episodes, device,
                                   record=cfg.video_frames if video else 0, record_key=image_key)
                eval_metrics = summarize(out["returns"], out["lengths"])
                st.last_eval = st.step
                logger.scalars(st.step, eval_metrics)
                if video and out["frames"] is not None:
                    logger.video(st.step, "eval/episode", out["frames"])
                    st.next_video = st.step + cfg.media_every
                tqdm.write(f"step={st.step} eval_return={eval_metrics['eval_return']:.2f}", file=sys.stdout)
                sys.stdout.flush()

            # reconstruction images of the last training batch
            if cfg.media_every and image_key and last_batch is not None and st.step >= st.next_media:
                st.next_media = st.step + cfg.media_every
                for tag, img in agent.wm.report(to_torch(last_batch, device)).items():
                    logger.image(st.step, tag, img)

            # log
            if st.step >= st.next_log or st.step >= cfg.steps:
                st.next_log += cfg.log_every
                now = time.time()
                rates = {
                    "updates_per_s": (st.updates - updates_log) / max(now - t_log, 1e-9),
                    "steps_per_s": (st.step - step_log) / max(now - t_log, 1e-9),
                    "updates": st.updates,
                    "skipped_updates": st.skipped_updates,
                    "episodes": st.episodes,
                }
                t_log, updates_log, step_log = now, st.updates, st.step
                means = {f"train/{k}": v / train_count for k, v in train_sums.items()} if train_count else {}
                logger.scalars(st.step, {**means, **rates, **replay.stats()})
                train_sums, train_count = {}, 0
                bar.set_postfix({"upd/s": f"{rates['updates_per_s']:.2f}", "ret": f"{last_return:.1f}",
                                 "upd": st.updates}, refresh=False)

            # checkpoint (last in the iteration: everything logged so far belongs to the saved state)
            st.train_seconds = seconds_base + time.time() - t_start
            if st.step >= st.next_checkpoint and st.step < cfg.steps:
                while st.next_checkpoint <= st.step:
                    st.next_checkpoint += cfg.checkpoint_every or cfg.steps
                save_checkpoint()

        bar.close()
        if stopped_by is None and cfg.eval_every and st.last_eval != st.step:  # final evaluation
            out = run_episodes(agent, eval_envs, cfg.eval_episodes, device)
            eval_metrics = summarize(out["returns"], out["lengths"])
            st.last_eval = st.step
            logger.scalars(st.step, eval_metrics)
        st.train_seconds = seconds_base + time.time() - t_start
        path = save_checkpoint()

    elapsed = time.time() - t_start
    summary = {"steps": st.step, "updates": st.updates, "skipped_updates": st.skipped_updates, "episodes": st.episodes,
               "seconds": round(elapsed, 1), "steps_per_s": round((st.step - step0) / max(elapsed, 1e-9), 2),
               "updates_per_s": round((st.updates - updates0) / max(elapsed, 1e-9), 3)}
    if stopped_by is not None:
        print(f"stopped by {stopped_by} at step {st.step}; checkpoint {path}; continue with --resume --logdir={logdir}",
              flush=True)
    else:
        print("done: " + " ".join(f"{k}={v}" for k, v in summary.items()), flush=True)
        if eval_metrics:
            print(f"final eval_return={eval_metrics['eval_return']:.3f} (mean of {cfg.eval_episodes} eval episodes)",
                  flush=True)
    print(f"checkpoint: {path}", flush=True)
    logger.close()
    envs.close()
    eval_envs.close()
    return {**summary, **eval_metrics, "checkpoint": path, "stopped_by": stopped_by}


def main(argv=None) -> int:
    try:
        cfg, resume_from = parse_args(argv)
        resolve_device(cfg.device)
    except cli.CLIError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # resolve_device: "device: ..."
        print(f"{PROG}: error: --{e}", file=sys.stderr)
        return 2
    except CheckpointError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    try:
        train(cfg, resume_from)
    except cli.CLIError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except CheckpointError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
