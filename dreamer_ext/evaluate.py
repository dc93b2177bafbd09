"""Evaluate a checkpoint: ``python -m dreamer_ext.evaluate --checkpoint PATH --episodes N [--json OUT]``.

``PATH`` is a checkpoint file or a run directory (its newest checkpoint). The agent samples its policy (``--eval_policy
sample``, the authors' protocol) or takes its mode (``mode``) in fresh copies of the run's environment, seeded apart
from the training and in-training eval envs.
Prints the mean return ± the half-width of its 95% Student-t confidence interval; ``--json`` writes every episode's
return and length with the summary.

The episode runner :func:`~dreamer_ext.loop.run_episodes` is shared with the training program's periodic evaluation.
Exit status: 0 done, 2 invalid command line (including a device that is not available), 1 run-time error (an
unreadable or incompatible checkpoint, an unwritable ``--json``, an environment failure); errors are one line.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass

import torch

from . import cli
from .config import _distractor_check, at_least, check_fields, device_name, non_negative, one_of, option, positive
from .loop import POLICIES, env_kwargs, run_episodes, tune_cpu_allocator

PROG = "python -m dreamer_ext.evaluate"
DESCRIPTION = """Evaluate a dreamer_ext checkpoint: run N complete episodes with the sampled policy (or its mode) and print
the mean return ± the half-width of its 95% confidence interval (Student t, n-1 degrees of freedom)."""


# ------------------------------------------------------------------------------------------------------------ program
@dataclass
class EvalOptions:
    checkpoint: str = option("", "checkpoint file, or a run directory (its newest checkpoint)",
                             lambda v: None if v else "required (a checkpoint file or a run directory)")
    episodes: int = option(10, "complete episodes to run", positive)
    eval_policy: str = option("sample", "sample (the authors' protocol) | mode (greedy)", one_of(*POLICIES))
    json: str = option("", "write the returns and the summary to this JSON file")
    num_envs: int = option(0, "parallel eval envs (0: min(episodes, 8))", non_negative)
    seed: int = option(-1, "env seed (-1: the run's seed + 20000)", at_least(-1))
    device: str = option("auto", "auto | cpu | cuda | cuda:N", device_name)
    backend: str = option("", "ops backend: kernels | reference ('' = the run's)", one_of("", "kernels", "reference"))
    eval_distractor: str = option("", "distractor of the eval envs: none | gauss:SIGMA | blackout:P | video:SEED ('' = "
                                      "the run's --eval_distractor, else its --distractor)",
                                  lambda v: None if v == "" else _distractor_check(v))

    def validate(self) -> "EvalOptions":
        """Each option's own check (see :func:`~dreamer_ext.config.check_fields`); returns self."""
        check_fields(self)
        return self


class EvalError(RuntimeError):
    """A run-time problem of the evaluation (exit status 1)."""


def evaluate_checkpoint(opts: EvalOptions) -> dict:
    """Load ``opts.checkpoint``, run ``opts.episodes`` episodes, return the JSON-able result (also written if asked).

    Raises ValueError for an unavailable ``opts.device`` and :class:`EvalError` / CheckpointError at run time."""
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
        except (ImportError, ValueError) as e:
            raise EvalError(f"--backend={opts.backend or cfg.backend}: {e}") from None
        return _evaluate(opts, cfg, payload, device)


def _evaluate(opts: EvalOptions, cfg, payload: dict, device: torch.device) -> dict:
    from .agent import Agent
    from .checkpoint import restore_agent
    from .envs import make_env

    seed = cfg.seed + 20_000 if opts.seed < 0 else opts.seed
    n = opts.num_envs or min(opts.episodes, 8)
    distractor = opts.eval_distractor or cfg.eval_distractor or cfg.distractor
    try:
        env = make_env(cfg.env, seed, n, distractor=distractor, role="eval", **env_kwargs(cfg))
    except ValueError as e:
        raise EvalError(f"--eval_distractor={distractor}: {e}") from None
    try:
        torch.manual_seed(seed)
        agent = Agent(cfg, env.spec)
        restore_agent(agent, payload, env.spec, optimizer=False)
        agent.eval()
        t0 = time.time()
        out = run_episodes(agent, env, opts.episodes, device, policy=opts.eval_policy)
    finally:
        env.close()
    from .stats import mean_ci

    ci = mean_ci(out["returns"])
    result = {
        "checkpoint": os.path.abspath(payload["path"]), "env": cfg.env, "step": int(payload["step"]),
        "episodes": opts.episodes, "policy": opts.eval_policy, "distractor": distractor, "seed": seed,
        "mean": ci["mean"],
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
            raise EvalError(f"--json={opts.json}: cannot write it ({e.strerror or e})") from None
    return result


def main(argv=None) -> int:
    from .agent import resolve_device
    from .checkpoint import CheckpointError

    tune_cpu_allocator()
    opts = cli.parse_or_exit(argv, prog=PROG, description=DESCRIPTION, make_default=EvalOptions, apply_preset_fn=None)
    try:
        resolve_device(opts.device)
    except ValueError as e:  # "device: 'cuda' requested but ..."
        return cli.fail(PROG, f"--{e}", 2)
    try:
        res = evaluate_checkpoint(opts)
    except (RuntimeError, ValueError, OSError) as e:  # CheckpointError and EvalError are RuntimeErrors
        return cli.runtime_failure(PROG, e, known=(CheckpointError, EvalError))

    ci = "n/a" if res["ci95"] is None else f"{res['ci95']:.2f}"
    std = "n/a" if res["std"] is None else f"{res['std']:.2f}"
    print(f"checkpoint: {res['checkpoint']} (env {res['env']}, step {res['step']})")
    print(f"return: {res['mean']:.2f} ± {ci} (95% CI, {res['episodes']} episodes, {res['policy']} policy, distractor "
          f"{res['distractor']}; std {std})")
    if opts.json:
        print(f"wrote {opts.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
