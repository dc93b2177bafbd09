"""Train DreamerV3: ``python -m dreamer_ext.train --env=CartPole-v1 --preset=size1m --steps=30000``.

Read it top to bottom (CleanRL style): :func:`main` parses the command line and maps errors to exit codes;
:func:`train` installs the stop handler, locks the run directory and calls :func:`setup` (device, seeds,
environments, agent, replay, logger; on resume everything restored from the newest checkpoint), then
:func:`run_loop` (act -> step envs -> store -> train at the train ratio -> media -> evaluate -> log -> checkpoint),
then :func:`finish` (final evaluation and checkpoint, summary).

Units
-----
* **env steps** = agent decisions summed over all training environments (with action repeat k on Atari, one env step =
  k emulator frames). ``--steps``, ``--eval_every``, ``--log_every``, ``--checkpoint_every`` and ``--media_every``
  count env steps. With ``--num_envs=N`` every loop iteration adds N env steps.
* **train ratio** = replayed steps / env steps. One update trains on ``batch_size x batch_length`` steps (with replay
  context each window holds one more, leading step, whose stored latent only starts the world model), so the loop
  performs ``train_ratio / (batch_size * batch_length)`` updates per env step, accumulating the fractional part.
  Training starts once ``batch_size x batch_length`` steps are stored (the first qualifying iteration does one update).

Run directory
-------------
``config.json`` (resolved config), ``metrics.jsonl`` (one JSON object per line: ``step``, ``time`` and scalars),
TensorBoard event files (the same scalars under the same names, reconstruction images ``recon/<key>`` and eval episode
GIFs ``eval/episode``), ``checkpoints/ckpt-<step>.pt``, ``replay/chunk-<uid>.npz`` and, with replay context,
``replay/latent-<uid>-<version>.npz`` (see :mod:`dreamer_ext.checkpoint`).
On resume, rows and events logged after the checkpoint (by the run that was stopped) are dropped, so the logs describe
exactly the training that the resumed state went through.

Stopping and exit codes: SIGTERM or Ctrl-C (handled from the very start, set-up included) writes a checkpoint at the
next loop iteration and exits 0; a second Ctrl-C stops at once (exit 130). A SIGKILL loses only what happened since
the last checkpoint. An invalid command line exits 2; a run-time failure (file system, checkpoint, environment, a
non-finite state that cannot be skipped) exits 1; both print one line ``<prog>: error: ...``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
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
from .checkpoint import CKPT_DIR as CKPT_SUBDIR
from .checkpoint import Checkpointer, CheckpointError, RunLock, atomic_write, checkpoint_config, list_checkpoints, \
    load_checkpoint, restore_agent, rng_state, set_rng_state
from .config import Config, config_from_dict, config_to_dict
from .dist import SINGLE, Dist, from_env
from .envs import make_env
from .loop import Episodes, Every, Mean, Projection, env_kwargs, format_duration, run_episodes, summarize, to_torch, \
    tune_cpu_allocator
from .replay import Replay
from .runlog import RunLogger

__all__ = ["train", "main", "setup", "run_loop", "finish", "Run", "TrainState", "RunError", "seed_everything",
           "parse_args", "practical_scale_note"]

PROG = "python -m dreamer_ext.train"
DESCRIPTION = """Train a DreamerV3 agent on a gymnasium or Atari (ALE/<Game>-v5, Atari100k protocol) environment.

Units: "env steps" (--steps, --eval_every, --log_every, --checkpoint_every, --media_every) are agent decisions summed
over all --num_envs training environments (one agent decision in one env = 1 env step; on Atari one env step =
--action_repeat frames; --action_repeat applies to ALE envs only). --train_ratio = replayed steps per env step, i.e.
train_ratio / (batch_size * batch_length) updates per env step. --preset is applied first, then the other options.
--resume continues the run in --logdir from its newest checkpoint, with its saved config plus the options given here.
Exit status: 0 done or stopped with a checkpoint, 2 invalid command line, 1 run-time error."""

REPLAY_CHUNK = 256  # steps per replay chunk: the unit written once to replay/ (partial chunks ride in each checkpoint)
_RANK_SEED_STRIDE = 7_919  # data-parallel rank r seeds torch, numpy and its replay with seed + r * stride
_ENV_SEED_STRIDE = 1_000_003  # train envs of the k-th resume are seeded seed + k * stride (fresh episodes, no repeats)
LONG_RUN_SECONDS = 3 * 3600  # a CPU run projected beyond this prints the practical-scale commands once
PROJECTION_MIN_UPDATES = 3  # updates timed before the projection is trusted for that note


class RunError(RuntimeError):
    """A run-time problem reported as one line (exit status 1), e.g. a run directory that cannot be created."""


# ---------------------------------------------------------------------------------------------------------------- helpers
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def default_logdir(cfg: Config) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", cfg.env)
    return os.path.join("runs", f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-s{cfg.seed}")


def make_run_dir(path: str) -> None:
    """Create the run directory (and parents); one-line :class:`RunError` naming the path when that is impossible."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise RunError(f"--logdir={path}: exists and is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, ".write-test")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise RunError(f"--logdir={path}: cannot create or write the run directory ({e.strerror or e})") from None


@dataclasses.dataclass
class TrainState:
    """Loop counters (everything a resume needs besides agent, replay and RNG states)."""

    step: int = 0  # env steps so far (summed over envs)
    updates: int = 0  # agent.train_step calls (skipped ones included)
    skipped_updates: int = 0  # updates skipped because a loss or gradient was non-finite
    update_budget: float = 0.0  # fractional updates owed to keep the train ratio
    training: bool = False  # whether training has started (>= B*T steps stored)
    episodes: int = 0
    last_eval: int = -1  # env step of the last evaluation
    resumes: int = 0  # how many times this run was resumed
    train_seconds: float = 0.0  # wall time spent in the loop, over all segments of the run

    # schedule positions saved by earlier versions; schedules now restart from the resume step
    _LEGACY = ("next_eval", "next_log", "next_checkpoint", "next_media", "next_video")

    @classmethod
    def from_dict(cls, d: dict, where: str) -> "TrainState":
        try:
            return cls(**{k: v for k, v in d.items() if k not in cls._LEGACY})
        except TypeError as e:
            raise CheckpointError(f"{where}: malformed train state ({e})") from None


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

    @property
    def name(self) -> str | None:
        return None if self.signum is None else signal.Signals(self.signum).name

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


def _config_changes(old: dict, new: dict) -> list[str]:
    skip = {"resume", "logdir"}
    return [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in sorted(new.items()) if k not in skip and old.get(k) != v]


def practical_scale_note(cfg: Config, projection: Projection, step: int) -> str:
    """The once-printed note for a CPU run projected to take longer than :data:`LONG_RUN_SECONDS`: the projection
    with its two measured parts, and commands that run the same job at a practical scale."""
    owed, left = projection.updates_owed(step), cfg.steps - step
    fit = LONG_RUN_SECONDS / (projection.per_step() + projection.rate * projection.per_update())
    base = f"{PROG} --env={cfg.env}"
    lines = [f"note: this run is projected to need {format_duration(projection.remaining(step))} more on this CPU: "
             f"{owed:,.0f} updates still owed x {projection.per_update():.2f} s each, plus {left:,} env steps x "
             f"{projection.per_step() * 1e3:.1f} ms each. The same job at a practical scale:"]
    if cfg.preset != "size1m" or cfg.train_ratio > 64:
        lines.append(f"  smaller model, fewer updates: {base} --preset=size1m --train_ratio={min(cfg.train_ratio, 64):g}")
    lines.append(f"  on a GPU:                     {base} --preset={cfg.preset} --device=cuda")
    lines.append(f"  fewer env steps (~3 h here):  {base} --preset={cfg.preset} --train_ratio={cfg.train_ratio:g} "
                 f"--steps={max(int(fit) // 1000 * 1000, 1000)}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------- set-up
@dataclasses.dataclass
class Run:
    """Everything the loop works on, made by :func:`setup`."""

    cfg: Config
    device: torch.device
    st: TrainState
    agent: object
    replay: Replay
    envs: object
    eval_envs: object
    logger: RunLogger
    ckpt: Checkpointer
    dist: Dist = SINGLE
    last_eval_metrics: dict = dataclasses.field(default_factory=dict)  # of the newest evaluation in this process

    @property
    def image_key(self) -> str | None:
        keys = self.agent.wm.image_keys
        return keys[0] if keys else None

    def save_checkpoint(self) -> str:
        """A checkpoint of this step. Data-parallel: every rank > 0 first writes its shard (its replay, RNG and
        counters) into ``<logdir>/rank<r>/``, then, after a barrier, rank 0 writes the main checkpoint (model,
        optimiser, its own shard) that names the world size; a main checkpoint therefore implies all its shards."""
        d = self.dist
        payload = {"config": config_to_dict(self.cfg), "spec": dataclasses.asdict(self.envs.spec),
                   "train_state": dataclasses.asdict(self.st), "rng": rng_state(),
                   "dist": {"rank": d.rank, "world": d.world}, "saved_at": time.time(),
                   "torch_version": str(torch.__version__)}
        if not d.is_main:
            path = self.ckpt.save(self.st.step, {**payload, "agent": {}, "logs": {"metrics_offset": 0}}, self.replay)
        d.barrier()
        if d.is_main:
            self.logger.flush()
            path = self.ckpt.save(self.st.step, {**payload, "agent": self.agent.checkpoint_state(),
                                                 "logs": {"metrics_offset": self.logger.jsonl_offset()}}, self.replay)
        d.barrier()
        return path

    def close(self) -> None:
        self.logger.close()
        self.envs.close()
        if self.eval_envs is not None:
            self.eval_envs.close()


class _QuietLogger:
    """The logger of data-parallel ranks > 0: rank 0 logs the (already averaged) metrics; the others write nothing."""

    def scalars(self, step, values): pass
    def image(self, step, tag, image): pass
    def video(self, step, tag, frames, fps=15): pass
    def flush(self): pass
    def close(self): pass
    def jsonl_offset(self): return 0


def rank_dir(logdir: str, d: Dist) -> str:
    """Where rank ``d.rank`` keeps its checkpoints and replay: the run directory for rank 0, ``<logdir>/rank<r>``
    for the others."""
    return logdir if d.is_main else os.path.join(logdir, f"rank{d.rank}")


def load_resume(cfg: Config, resume_from: str | None, d: Dist = SINGLE) -> tuple[dict | None, TrainState]:
    """The checkpoint payload to continue from (None for a fresh run) and the loop counters. A directory that holds
    checkpoints is only continued with ``--resume``. Data-parallel: see :func:`_load_shard`. A checkpoint written by
    another number of processes comes back with ``payload["reshard"]`` = the directories of its shards (rank order),
    whose replays :func:`setup` deals out (:mod:`dreamer_ext.reshard`)."""
    payload = _load_shard(cfg, resume_from, d) if d.active else _load_main(cfg, resume_from)
    if payload is None:
        return None, TrainState()
    world = payload.get("dist", {}).get("world", 1)
    if world != d.world:  # the shards sit beside the main checkpoint: <its run directory>/rank<r>
        run_dir = os.path.dirname(os.path.dirname(os.path.abspath(payload["path"])))
        payload["reshard"] = [rank_dir(run_dir, Dist(r, world)) for r in range(world)]
    st = TrainState.from_dict(payload["train_state"], f"checkpoint {payload['path']!r}")
    st.resumes += 1
    return payload, st


def _load_shard(cfg: Config, resume_from: str | None, d: Dist) -> dict | None:
    """Rank 0 picks the main checkpoint; every rank then takes the model and optimiser from it and, when it names the
    same world size, its own shard (replay, RNG, counters) of the same step from ``<logdir>/rank<r>``."""
    main = _load_main(cfg, resume_from) if d.is_main else None
    picked = d.broadcast_object(None if main is None else (main["path"], main.get("dist", {}).get("world", 1)))
    if picked is None:
        return None
    path, world = picked
    if d.is_main:
        return main
    main = load_checkpoint(path)
    if world != d.world:
        return main  # the replay is dealt out from every old shard (setup)
    run_dir = os.path.dirname(os.path.dirname(os.path.abspath(path)))  # the shards sit beside the main checkpoint
    payload = load_checkpoint(os.path.join(rank_dir(run_dir, d), CKPT_SUBDIR, os.path.basename(path)))
    payload["agent"] = main["agent"]
    return payload


def _deal_replay(cfg: Config, payload: dict, d: Dist, replay: Replay) -> None:
    """Resume with another number of processes: this rank's share of every old shard's replay (one message on rank 0).
    """
    from .reshard import deal_replay

    name = os.path.basename(payload["path"])
    shards = []
    for r, directory in enumerate(payload["reshard"]):
        shard = payload if r == 0 else load_checkpoint(os.path.join(directory, CKPT_SUBDIR, name), mmap=True)
        shards.append((directory, shard))
    info = deal_replay(shards, d.rank, d.world, cfg.num_envs, replay, rank_dir(cfg.logdir, d),
                       seed=cfg.seed + _RANK_SEED_STRIDE * d.rank + payload["step"])
    if d.is_main:
        print(f"resume: the checkpoint was written by {len(shards)} process(es), this run has {d.world}: its replay "
              f"({info['steps']:,} steps in {info['pieces']} stream pieces) is dealt out; rank 0 holds "
              f"{info['my_steps']:,} steps in {info['mine']} pieces (the next checkpoint writes them again)", flush=True)


def _load_main(cfg: Config, resume_from: str | None) -> dict | None:
    existing = list_checkpoints(cfg.logdir)
    if existing and not cfg.resume:
        raise cli.CLIError(f"--logdir={cfg.logdir}: holds checkpoints of an earlier run; pass --resume to continue it "
                           f"or choose another --logdir")
    if resume_from is None and cfg.resume and existing:
        resume_from = existing[-1][1]
    if not resume_from:
        if cfg.resume:
            print(f"resume: no checkpoint in {cfg.logdir}; starting a new run", flush=True)
        return None
    payload = load_checkpoint(resume_from)
    changes = _config_changes(payload["config"], config_to_dict(cfg))
    print(f"resume: {payload['path']} (step {payload['step']})"
          + (f"; changed options: {', '.join(changes)}" if changes else ""), flush=True)
    return payload


def open_logger(cfg: Config, payload: dict | None, st: TrainState) -> RunLogger:
    """The run's logger. On resume, rows and events logged after the checkpoint are dropped; a fresh start discards
    the logs of an earlier run that saved no checkpoint."""
    metrics_path = os.path.join(cfg.logdir, "metrics.jsonl")
    old_size = os.path.getsize(metrics_path) if os.path.exists(metrics_path) else 0
    if payload is not None:
        offset = payload["logs"].get("metrics_offset")
        if not isinstance(offset, int) or offset > old_size:
            print(f"warning: {metrics_path} is shorter than when the checkpoint was saved; appending to it as it is",
                  flush=True)
            offset = None
        return RunLogger(cfg.logdir, cfg.tensorboard, purge_step=st.step + 1, metrics_offset=offset)
    has_events = any(n.startswith("events.out.tfevents") for n in os.listdir(cfg.logdir))
    if old_size or has_events:
        print(f"note: {cfg.logdir} holds logs of a run that saved no checkpoint; they are discarded", flush=True)
    return RunLogger(cfg.logdir, cfg.tensorboard, purge_step=0 if has_events else None,
                     metrics_offset=0 if old_size else None)


def setup(cfg: Config, resume_from: str | None, d: Dist = SINGLE) -> Run:
    """Device, seeds, environments, agent, replay, checkpointer and logger; on resume (``cfg.resume``) all restored
    from ``resume_from`` (default: the newest checkpoint in ``cfg.logdir``). Data-parallel (``d``): rank r seeds its
    own train envs (disjoint from the other ranks'), holds its share of the replay capacity, and only rank 0 has eval
    envs and a logger; the agent's parameters are rank 0's (:meth:`Agent.use_dist`)."""
    from .agent import Agent

    device = resolve_device(cfg.device)
    payload, st = load_resume(cfg, resume_from, d)
    # seeds; environments (eval: up to 8 parallel copies, seeds disjoint from the train envs')
    seed_everything(cfg.seed + _RANK_SEED_STRIDE * d.rank)
    offset = st.resumes * _ENV_SEED_STRIDE + d.rank * cfg.num_envs
    try:
        envs = make_env(cfg.env, cfg.seed + offset, cfg.num_envs, distractor=cfg.distractor, role="train",
                        asynchronous=cfg.env_workers > 0, **env_kwargs(cfg))
        eval_envs = None if not d.is_main else make_env(
            cfg.env, cfg.seed + 10_000 + offset, max(1, min(cfg.eval_episodes, 8)),
            distractor=cfg.eval_distractor or cfg.distractor, role="eval", **env_kwargs(cfg))
    except ValueError as e:
        raise cli.CLIError(f"--env={cfg.env}: {e}") from None
    agent = Agent(cfg, envs.spec)
    replay = make_replay(cfg, d)
    # a rank > 0 keeps one shard more than rank 0 keeps main checkpoints: it writes the next shard before rank 0 writes
    # the next main checkpoint, so a kill in between must still leave the shard of the newest main checkpoint
    ckpt = Checkpointer(rank_dir(cfg.logdir, d), keep=cfg.checkpoint_keep + (0 if d.is_main else 1))
    if payload is not None:
        restore_agent(agent, payload, envs.spec)
        if "reshard" in payload:  # another world size: deal the replay out and seed the RNGs afresh
            _deal_replay(cfg, payload, d, replay)
            seed_everything(cfg.seed + _RANK_SEED_STRIDE * d.rank + _ENV_SEED_STRIDE * st.resumes)
        else:
            ckpt.restore_replay(payload, replay)
            try:
                set_rng_state(payload["rng"])
            except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:
                raise CheckpointError(f"checkpoint {payload['path']!r}: malformed RNG state ({e})") from None
    agent.use_dist(d)
    if d.is_main:
        logger = open_logger(cfg, payload, st)
        text = json.dumps(config_to_dict(cfg), indent=2, sort_keys=True) + "\n"
        atomic_write(os.path.join(cfg.logdir, "config.json"), lambda f: f.write(text.encode()))
    else:
        logger = _QuietLogger()
    run = Run(cfg, device, st, agent, replay, envs, eval_envs, logger, ckpt, d)
    print_banner(run)
    return run


def make_replay(cfg: Config, d: Dist = SINGLE) -> Replay:
    """The run's replay (data-parallel: this rank's shard, ``replay_capacity / world`` steps): windows of
    ``batch_length + replay_context`` steps; with replay context the stored RSSM latents
    (:data:`~dreamer_ext.agent.LATENT_KEYS`) are its mutable entries."""
    from .agent import LATENT_KEYS

    return Replay(cfg.replay_capacity // d.world, cfg.batch_length + cfg.replay_context, chunk_size=REPLAY_CHUNK,
                  online=cfg.replay_online, seed=cfg.seed + _RANK_SEED_STRIDE * d.rank,
                  mutable=LATENT_KEYS if cfg.replay_context else ())


def print_banner(run: Run) -> None:
    cfg, spec = run.cfg, run.envs.spec
    B, T = cfg.batch_size, cfg.batch_length
    print(f"logdir: {cfg.logdir}", flush=True)
    print(f"device: {run.device} (torch threads: {torch.get_num_threads()}; compute "
          f"{'bf16' if run.agent.compute_dtype == torch.bfloat16 else 'fp32'}, --precision={cfg.precision})", flush=True)
    print(f"backend: {ops.get_backend()}", flush=True)
    if run.dist.active:
        import torch.distributed as tdist
        print(f"data parallel: {run.dist.world} process(es), {tdist.get_backend()}; global batch "
              f"{cfg.batch_size * run.dist.world} x {T}", flush=True)
    print(f"env: {cfg.env} obs={spec.obs} act_dim={spec.act_dim} discrete={spec.discrete} num_envs={cfg.num_envs}",
          flush=True)
    if not env_kwargs(cfg) and cfg.action_repeat != Config().action_repeat:
        print(f"note: --action_repeat={cfg.action_repeat} applies to ALE/<Game>-v5 envs only; {cfg.env} steps once "
              f"per decision", flush=True)
    print("params: " + " ".join(f"{k}={v:,}" for k, v in run.agent.param_count().items()), flush=True)
    print(f"train: steps={cfg.steps} train_ratio={cfg.train_ratio} updates/env-step={cfg.train_ratio / (B * T):.4g} "
          f"(B={B}, T={T}, starts after {B * T} stored steps)", flush=True)


# -------------------------------------------------------------------------------------------------------------- steps
def act_and_send(run: Run, obs: dict, carry: dict) -> dict:
    """One agent decision per training env: the action taken at obs_t is stored with obs_t (zeroed at is_last: the env
    resets and ignores it), and with replay context so is the posterior state after obs_t; then the action goes to the
    envs (``step_async``: with ``--env_workers`` they step while the learner updates). Returns the recurrent carry;
    ``run.envs.step_wait()`` gives the next observations."""
    action, carry = run.agent.policy(to_torch(obs, run.device), carry, sample=True)
    action = action.cpu().numpy().astype(np.float32)
    action[obs["is_last"]] = 0.0
    step = {**obs, "action": action}
    if run.cfg.replay_context:
        step.update({k: v.numpy() for k, v in run.agent.latents(carry).items()})
    run.replay.add_batch(step)
    run.st.step += run.cfg.num_envs * run.dist.world  # env steps are global: summed over every rank's envs
    run.envs.step_async(action)
    return carry


def act_and_step(run: Run, obs: dict, carry: dict) -> tuple[dict, dict]:
    """:func:`act_and_send` and wait for the envs: returns the next observations and recurrent carry."""
    carry = act_and_send(run, obs, carry)
    return run.envs.step_wait(), carry


def updates_due(run: Run) -> int:
    """Updates to do after this iteration's env steps, keeping replayed steps / env steps = train ratio."""
    cfg, st = run.cfg, run.st
    B, T = cfg.batch_size, cfg.batch_length
    if not st.training:
        ready = len(run.replay) >= B * T and run.replay.num_windows() > 0
        if not run.dist.all_true(ready):  # data-parallel: every rank starts training at the same iteration
            return 0
        st.training, st.update_budget = True, 1.0
    else:
        st.update_budget += cfg.num_envs * cfg.train_ratio / (B * T)
    n = int(st.update_budget)
    st.update_budget -= n
    return n


def train_once(run: Run, metrics: Mean) -> dict:
    """One update on a replayed batch; its metrics go into ``metrics`` unless it was skipped (non-finite). With replay
    context the posterior states it computed replace the stored ones of the steps it trained on."""
    windows = run.replay.sample_windows(run.cfg.batch_size)
    batch = run.replay.read(windows)
    out, latents = run.agent.train_step(to_torch(batch, run.device), return_latents=True)
    if latents is not None and run.cfg.replay_context:
        run.replay.update(windows, run.cfg.replay_context, {k: v.numpy() for k, v in latents.items()})
    run.st.updates += 1
    if out["opt/skipped"]:
        run.st.skipped_updates += 1  # its losses are non-finite: counted, not averaged into the log
    else:
        metrics.add(out)
    return batch


def log_media(run: Run, batch: dict) -> None:
    """Open-loop video-prediction grids of a training batch (``recon/<key>``)."""
    from .media import video_prediction

    for tag, img in video_prediction(run.agent.wm, to_torch(batch, run.device)).items():
        run.logger.image(run.st.step, tag, img)


def evaluate(run: Run, record: bool, train_returns: list | None = None) -> tuple[dict, bool]:
    """``eval_episodes`` episodes with the ``eval_policy`` (sampled by default, as the authors evaluate), logged and
    printed (with the mean of ``train_returns``, the training episodes since the last evaluation, which is the score
    the authors report; the list is emptied); with ``record`` (and image observations) one episode's frames go to TensorBoard as a GIF.
    Returns (metrics, whether a GIF was logged)."""
    cfg, st = run.cfg, run.st
    record = record and cfg.media_every > 0 and run.image_key is not None
    out = run_episodes(run.agent, run.eval_envs, cfg.eval_episodes, run.device, policy=cfg.eval_policy,
                       record=cfg.video_frames if record else 0, record_key=run.image_key)
    metrics = summarize(out["returns"], out["lengths"])
    st.last_eval = st.step
    run.last_eval_metrics = metrics
    run.logger.scalars(st.step, metrics)
    recorded = record and out["frames"] is not None
    if recorded:
        run.logger.video(st.step, "eval/episode", out["frames"])
    line = f"step={st.step} eval_return={metrics['eval_return']:.2f} ({cfg.eval_policy} policy, {cfg.eval_episodes} episodes)"
    if train_returns:
        line += f" train_episode_return={np.mean(train_returns):.2f} (sample policy, {len(train_returns)} episodes)"
        train_returns.clear()
    _write(line)
    return metrics, recorded


class _Rates:
    """Updates and env steps per second between two logs."""

    def __init__(self, st: TrainState):
        self.time, self.updates, self.step = time.time(), st.updates, st.step

    def since(self, st: TrainState) -> dict:
        now = time.time()
        dt = max(now - self.time, 1e-9)
        out = {"updates_per_s": (st.updates - self.updates) / dt, "steps_per_s": (st.step - self.step) / dt}
        self.time, self.updates, self.step = now, st.updates, st.step
        return out


def log_train(run: Run, metrics: Mean, rates: _Rates) -> None:
    st = run.st
    run.logger.scalars(st.step, {**metrics.result("train/"), **rates.since(st), "updates": st.updates,
                                 "skipped_updates": st.skipped_updates, "episodes": st.episodes, **run.replay.stats()})


def show_progress(run: Run, bar, projection: Projection, last_return: float, noted: bool) -> bool:
    """Progress bar with the ETA of the projection; a CPU run projected beyond :data:`LONG_RUN_SECONDS` prints the
    practical-scale note once. Returns whether the note has been printed."""
    eta = projection.remaining(run.st.step)
    bar.set_postfix_str(f"ret={last_return:.1f} upd={run.st.updates} eta={format_duration(eta)}", refresh=False)
    if not noted and projection.updates >= PROJECTION_MIN_UPDATES and run.device.type == "cpu" \
            and eta > LONG_RUN_SECONDS:
        _write(practical_scale_note(run.cfg, projection, run.st.step))
        return True
    return noted


def _write(text: str) -> None:
    """A line on stdout that does not tear the progress bar (stderr)."""
    from tqdm import tqdm

    tqdm.write(text, file=sys.stdout)
    sys.stdout.flush()


# --------------------------------------------------------------------------------------------------------------- loop
def run_loop(run: Run, stop: _StopRequest) -> str | None:
    """Train until ``cfg.steps`` env steps or a stop request; returns the stopping signal's name or None."""
    from tqdm import tqdm

    cfg, st = run.cfg, run.st
    B, T = cfg.batch_size, cfg.batch_length
    evals, logs, ckpts = (Every(n, after=st.step) for n in (cfg.eval_every, cfg.log_every, cfg.checkpoint_every))
    media = Every(cfg.media_every, after=st.step, first=st.step)  # as soon as there is a batch, then periodically
    projection = Projection(cfg.steps, cfg.train_ratio / (B * T), B * T)
    rates, train_metrics, episodes, train_returns = _Rates(st), Mean(), Episodes(cfg.num_envs), []
    video_due, noted, last_return, last_batch = True, False, math.nan, None
    obs, carry = run.envs.reset(), run.agent.initial_carry(cfg.num_envs)
    seconds_base, t_start = st.train_seconds, time.time()
    d = run.dist
    with tqdm(total=cfg.steps, initial=min(st.step, cfg.steps), unit="step", dynamic_ncols=True, file=sys.stderr,
              mininterval=1.0 if sys.stderr.isatty() else 30.0, disable=not d.is_main,
              bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]") as bar:
        print(f"start: step {st.step} of {cfg.steps} (SIGTERM or Ctrl-C: checkpoint and stop)", flush=True)
        stopping = not d.all_true(stop.signum is None)  # a stop request during set-up: checkpoint at once
        while st.step < cfg.steps and not stopping:
            t0 = time.perf_counter()
            carry = act_and_send(run, obs, carry)  # the envs step (in their workers, if any) during the updates
            bar.update(cfg.num_envs * d.world)
            t1, n_updates = time.perf_counter(), updates_due(run)
            for _ in range(n_updates):
                last_batch = train_once(run, train_metrics)
            t2 = time.perf_counter()
            obs = run.envs.step_wait()
            ended = [(ret, length) for _, ret, length in episodes.add(obs)]
            stopping = stop.signum is not None
            if d.active:  # every rank's finished episodes, and one stop decision for all
                shared = d.gather_objects((ended, stopping))
                ended, stopping = [e for part, _ in shared for e in part], any(flag for _, flag in shared)
            for ret, length in ended:
                st.episodes, last_return = st.episodes + 1, ret
                run.logger.scalars(st.step, {"episode_return": ret, "episode_length": length})
                if d.is_main:  # for the next evaluation's line, which only rank 0 prints
                    train_returns.append(ret)
            projection.add(cfg.num_envs * d.world, time.perf_counter() - t0, n_updates, t2 - t1)
            if media.due(st.step, when=run.image_key is not None and last_batch is not None and d.is_main):
                log_media(run, last_batch)
                video_due = True  # the next evaluation records an episode
            if evals.due(st.step) and d.is_main:  # every due evaluation runs; it records a GIF only when one is due
                recorded = evaluate(run, video_due, train_returns)[1]
                video_due = video_due and not recorded
            if logs.due(st.step) or st.step >= cfg.steps:
                log_train(run, train_metrics, rates)
            noted = show_progress(run, bar, projection, last_return, noted)
            st.train_seconds = seconds_base + time.time() - t_start
            if ckpts.due(st.step) and st.step < cfg.steps:  # last: all logged so far belongs to the saved state
                run.save_checkpoint()
    return stop.name or ("SIGTERM" if stopping else None)  # another rank's stop request stops this one too


def finish(run: Run, stopped_by: str | None, t_start: float, step0: int, updates0: int) -> dict:
    """Final evaluation (unless stopped, or already done at this step), final checkpoint, summary. The returned
    metrics are those of the evaluation at the final step, whether the loop's own or this one."""
    cfg, st = run.cfg, run.st
    eval_metrics = {}
    if stopped_by is None and cfg.eval_every and run.dist.is_main:
        if st.last_eval != st.step:
            eval_metrics, _ = evaluate(run, record=False)
        else:
            eval_metrics = run.last_eval_metrics
    path = run.save_checkpoint()
    elapsed = time.time() - t_start
    summary = {"steps": st.step, "updates": st.updates, "skipped_updates": st.skipped_updates, "episodes": st.episodes,
               "seconds": round(elapsed, 1), "steps_per_s": round((st.step - step0) / max(elapsed, 1e-9), 2),
               "updates_per_s": round((st.updates - updates0) / max(elapsed, 1e-9), 3)}
    if stopped_by is not None:
        print(f"stopped by {stopped_by} at step {st.step}; checkpoint {path}; continue with --resume "
              f"--logdir={cfg.logdir}", flush=True)
    else:
        print("done: " + " ".join(f"{k}={v}" for k, v in summary.items()), flush=True)
        if eval_metrics:
            print(f"final eval_return={eval_metrics['eval_return']:.3f} (mean of {cfg.eval_episodes} eval episodes, "
                  f"{cfg.eval_policy} policy)", flush=True)
    print(f"checkpoint: {path}", flush=True)
    return {**summary, **eval_metrics, "checkpoint": path, "stopped_by": stopped_by}


# ------------------------------------------------------------------------------------------------------------ program
def train(cfg: Config, resume_from: str | None = None) -> dict:
    """Run (or, with ``cfg.resume``, continue) the training described by ``cfg``; returns the last eval metrics plus a
    summary. ``resume_from``: the checkpoint to continue from (default with ``cfg.resume``: the newest of
    ``cfg.logdir``). The stop handler is installed first, so a SIGTERM during set-up still ends in a checkpoint; the
    run directory is locked against a second process; the caller's ops backend is restored on return."""
    device = resolve_device(cfg.device)
    with contextlib.ExitStack() as stack:
        stop = stack.enter_context(_StopRequest())
        try:
            stack.enter_context(ops.use_backend(cfg.backend))
        except (ImportError, ValueError) as e:
            raise cli.CLIError(f"--backend={cfg.backend}: {e}") from None
        d = from_env(device)  # torchrun: this process's rank in the data-parallel group (and its GPU)
        if not d.is_main:  # rank 0 prints and logs; the others are quiet (errors still reach stderr)
            stack.enter_context(contextlib.redirect_stdout(stack.enter_context(open(os.devnull, "w"))))
        cfg.logdir = d.broadcast_object(cfg.logdir or default_logdir(cfg))
        make_run_dir(rank_dir(cfg.logdir, d))
        stack.callback(RunLock(rank_dir(cfg.logdir, d)).release)
        run = setup(cfg, resume_from, d)
        stack.callback(run.close)
        t_start, step0, updates0 = time.time(), run.st.step, run.st.updates
        stopped_by = run_loop(run, stop)
        return finish(run, stopped_by, t_start, step0, updates0)


def main(argv=None) -> int:
    """The program: exit 0 (done, or stopped with a checkpoint), 2 (invalid command line), 1 (run-time error), 130
    (a second Ctrl-C). Errors are one line; ``DREAMER_EXT_TRACEBACK=1`` re-raises them for debugging."""
    tune_cpu_allocator()
    try:
        cfg, resume_from = parse_args(argv)
        resolve_device(cfg.device)
    except cli.CLIError as e:
        return cli.fail(PROG, e, 2)
    except ValueError as e:  # resolve_device: "device: ..."
        return cli.fail(PROG, f"--{e}", 2)
    except (CheckpointError, OSError) as e:
        return cli.fail(PROG, e, 1)
    try:
        train(cfg, resume_from)
    except cli.CLIError as e:
        return cli.fail(PROG, e, 2)
    except KeyboardInterrupt:
        return cli.fail(PROG, "interrupted (second Ctrl-C); the newest checkpoint is kept", 130)
    except (RuntimeError, ValueError, OSError) as e:  # CheckpointError and RunError are RuntimeErrors
        return cli.runtime_failure(PROG, e, known=(CheckpointError, RunError))
    return 0


if __name__ == "__main__":
    sys.exit(main())
