"""Cost of a checkpoint as the replay grows: seconds and bytes written per save (Atari-sized 64x64x3 frames).

Usage: ``PYTHONPATH=. python bench/checkpoint_cost.py [--steps 100000] [--every 10000] [--preset size12m]``.
Fills a replay with ``--steps`` frames (smooth synthetic images that compress like game frames), saving a full
checkpoint (model + optimiser of ``--preset`` + replay) every ``--every`` steps into a temporary run directory.
Each line: buffer size, seconds for the save, MiB written by that save; the last line sums it up.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dreamer_ext.agent import Agent  # noqa: E402
from dreamer_ext.checkpoint import Checkpointer, rng_state  # noqa: E402
from dreamer_ext.loop import tune_cpu_allocator  # noqa: E402
from dreamer_ext.config import make_config  # noqa: E402
from dreamer_ext.envs.spec import EnvSpec  # noqa: E402
from dreamer_ext.replay import Replay  # noqa: E402


def dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--every", type=int, default=10_000)
    ap.add_argument("--preset", default="size12m")
    args = ap.parse_args()
    spec = EnvSpec(obs={"image": ((64, 64, 3), "uint8")}, act_dim=17, discrete=True)
    tune_cpu_allocator()
    agent = Agent(make_config(args.preset, device="cpu"), spec)
    replay = Replay(5_000_000, 64)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64]
    times, written = [], []
    with tempfile.TemporaryDirectory() as run:
        ck = Checkpointer(run, keep=2)
        for t in range(1, args.steps + 1):
            frame = np.zeros((64, 64, 3), np.uint8)
            frame[..., 0] = (xx + t) % 256
            frame[..., 1] = (yy * 2 + t // 3) % 256
            sprite = rng.integers(0, 56, size=2)
            frame[sprite[0]:sprite[0] + 8, sprite[1]:sprite[1] + 8] = 255
            replay.add({"image": frame, "reward": np.float32(0), "is_first": t == 1, "is_terminal": False,
                        "is_last": False, "action": np.eye(17, dtype=np.float32)[t % 17]})
            if t % args.every == 0:
                before = dir_bytes(run)
                t0 = time.perf_counter()
                ck.save(t, {"config": {}, "spec": {}, "agent": agent.checkpoint_state(), "train_state": {},
                            "rng": rng_state(), "logs": {"metrics_offset": 0}}, replay)
                dt = time.perf_counter() - t0
                new_bytes = max(0, dir_bytes(run) - before)
                times.append(dt)
                written.append(new_bytes)
                print(f"replay={t:>8} steps  save={dt:6.2f} s  run dir grew {new_bytes / 2**20:8.1f} MiB  "
                      f"(total {dir_bytes(run) / 2**20:8.1f} MiB)", flush=True)
    print(f"saves={len(times)} first_save_s={times[0]:.2f} last_save_s={times[-1]:.2f} "
          f"max_save_s={max(times):.2f}")


if __name__ == "__main__":
    main()
