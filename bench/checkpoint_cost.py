"""Cost of a checkpoint as the replay grows: seconds and bytes written per save (Atari-sized 64x64x3 frames).

Usage: ``PYTHONPATH=. python bench/checkpoint_cost.py [--steps 100000] [--every 10000] [--preset size12m]
[--replay_context 1] [--train_ratio 256]``.
Fills a replay as the training program does (same chunk size; with replay context every step also stores the RSSM
latent of ``--preset``) with ``--steps`` frames (smooth synthetic images that compress like game frames). Between saves
it rewrites the stored latents of the windows that ``--train_ratio`` updates would train on (uniformly drawn windows of
batch 16 x 64, as updates do), and every ``--every`` steps it saves a full checkpoint (model + optimiser of
``--preset`` + replay) into a temporary run directory. Each line: buffer size, seconds for the save, MiB of new files
(chunk files, latent files, the checkpoint) and the run directory's size; the last line sums it up.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dreamer_ext.agent import LATENT_KEYS, Agent  # noqa: E402
from dreamer_ext.checkpoint import Checkpointer, rng_state  # noqa: E402
from dreamer_ext.loop import tune_cpu_allocator  # noqa: E402
from dreamer_ext.config import make_config  # noqa: E402
from dreamer_ext.envs.spec import EnvSpec  # noqa: E402
from dreamer_ext.replay import Replay  # noqa: E402
from dreamer_ext.train import REPLAY_CHUNK  # noqa: E402


def files(path: str) -> dict[str, int]:
    return {os.path.join(d, f): os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--every", type=int, default=10_000)
    ap.add_argument("--preset", default="size12m")
    ap.add_argument("--replay_context", type=int, default=1, choices=(0, 1))
    ap.add_argument("--train_ratio", type=float, default=256.0)
    args = ap.parse_args()
    spec = EnvSpec(obs={"image": ((64, 64, 3), "uint8")}, act_dim=17, discrete=True)
    tune_cpu_allocator()
    cfg = make_config(args.preset, device="cpu", replay_context=args.replay_context)
    agent = Agent(cfg, spec)
    B, T, K = cfg.batch_size, cfg.batch_length, cfg.replay_context
    replay = Replay(5_000_000, T + K, chunk_size=REPLAY_CHUNK, mutable=LATENT_KEYS if K else ())
    rng = np.random.default_rng(0)
    rssm = agent.wm.rssm
    zdtype = np.uint8 if rssm.C <= 256 else np.int16
    owed = 0.0
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
            step = {"image": frame, "reward": np.float32(0), "is_first": t == 1, "is_terminal": False,
                    "is_last": False, "action": np.eye(17, dtype=np.float32)[t % 17]}
            if K:
                step["latent_h"] = rng.uniform(-1, 1, rssm.deter).astype(np.float16)
                step["latent_z"] = rng.integers(0, rssm.C, rssm.S).astype(zdtype)
            replay.add(step)
            if K and replay.num_windows() > 0:  # the latent rewrites of the updates due at this step
                owed += args.train_ratio / (B * T)
                while owed >= 1:
                    owed -= 1
                    windows = replay.sample_windows(B)
                    replay.update(windows, K, {
                        "latent_h": rng.uniform(-1, 1, (B, T, rssm.deter)).astype(np.float16),
                        "latent_z": rng.integers(0, rssm.C, (B, T, rssm.S)).astype(zdtype)})
            if t % args.every == 0:
                before = files(run)
                t0 = time.perf_counter()
                ck.save(t, {"config": {}, "spec": {}, "agent": agent.checkpoint_state(), "train_state": {},
                            "rng": rng_state(), "logs": {"metrics_offset": 0}}, replay)
                dt = time.perf_counter() - t0
                after = files(run)
                new = {p: n for p, n in after.items() if p not in before}
                part = {kind: sum(n for p, n in new.items() if os.path.basename(p).startswith(kind))
                        for kind in ("chunk-", "latent-", "ckpt-")}
                times.append(dt)
                written.append(sum(new.values()))
                print(f"replay={t:>8} steps  save={dt:6.2f} s  new files {written[-1] / 2**20:8.1f} MiB (chunks "
                      f"{part['chunk-'] / 2**20:.1f}, latents {part['latent-'] / 2**20:.1f}, checkpoint "
                      f"{part['ckpt-'] / 2**20:.1f})  run dir {sum(after.values()) / 2**20:8.1f} MiB", flush=True)
    print(f"saves={len(times)} first_save_s={times[0]:.2f} last_save_s={times[-1]:.2f} "
          f"max_save_s={max(times):.2f} mean_new_MiB={np.mean(written) / 2**20:.1f}")


if __name__ == "__main__":
    main()
