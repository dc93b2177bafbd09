"""Shared driver of the learning scripts: run the real training program with a task's settings, print the final return.

Only the preset, train_ratio, num_envs, the step budget and a task's ``options`` (e.g. the classic-control learning
rate, see the README's differences from the authors) differ per task; everything else is the Config default. Extra
command-line options are appended (e.g. ``--device=cuda``, ``--logdir=...``, ``--seed=1``) and win over the task's.
"""
from __future__ import annotations

import os
import sys

# One OpenMP thread unless the caller says otherwise: on small shared CPU machines 2+ spinning threads can be many times
# slower for size1m. Must happen before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dreamer_ext import cli  # noqa: E402
from dreamer_ext.loop import tune_cpu_allocator  # noqa: E402
from dreamer_ext.train import DESCRIPTION, train  # noqa: E402


def run(env: str, preset: str, steps: int, train_ratio: float, num_envs: int, argv: list[str] | None = None,
        options: tuple[str, ...] = ()) -> float:
    task = [f"--env={env}", f"--preset={preset}", f"--steps={steps}", f"--train_ratio={train_ratio}",
            f"--num_envs={num_envs}", "--eval_every=5000", "--eval_episodes=10", "--log_every=1000", *options]
    extra = sys.argv[1:] if argv is None else argv
    cfg = cli.parse_or_exit(task + list(extra), prog=os.path.basename(sys.argv[0]), description=DESCRIPTION)
    tune_cpu_allocator()
    out = train(cfg)
    ret = float(out.get("eval_return", float("nan")))
    print(f"final_eval_return={ret:.3f}", flush=True)
    return ret
