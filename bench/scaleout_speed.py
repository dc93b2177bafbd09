"""Speed of the two ways out of one process, measured with the real training program (issue 12's evidence):

1. env workers: Atari env steps per second at a low train ratio with the envs stepped in the training process
   (``--env_workers=0``) and in worker processes overlapping the updates (``--env_workers=N``);
2. data parallel: updates per second of 1 process with batch B against ``torchrun`` with 2 gloo ranks of batch B/2
   each (the same global batch).

Usage: ``PYTHONPATH=. python bench/scaleout_speed.py [--steps 3000] [--env ALE/Asterix-v5] [--num_envs 1]
[--train_ratio 32] [--preset size1m]``. Prints one markdown table; each row is a fresh run of
``python -m dreamer_ext.train`` (its own ``done:`` line gives steps/s and updates/s over the whole run, start-up
excluded). Run it on a quiet machine: other processes on the cores change every number.
"""
import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd: list[str], threads: int) -> dict:
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": str(threads)}
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    m = re.search(r"done: steps=(\d+) updates=(\d+) .*seconds=([\d.]+) steps_per_s=([\d.]+) updates_per_s=([\d.]+)",
                  p.stdout)
    if p.returncode != 0 or m is None:
        raise SystemExit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-2000:]}")
    return {"steps": int(m[1]), "updates": int(m[2]), "seconds": float(m[3]), "steps_per_s": float(m[4]),
            "updates_per_s": float(m[5])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--env", default="ALE/Asterix-v5")
    ap.add_argument("--num_envs", type=int, default=1)
    ap.add_argument("--train_ratio", type=float, default=32)
    ap.add_argument("--preset", default="size1m")
    ap.add_argument("--batch_size", type=int, default=16)
    args = ap.parse_args()
    common = [f"--env={args.env}", f"--preset={args.preset}", f"--steps={args.steps}", "--eval_every=0",
              "--checkpoint_every=0", "--tensorboard=false", "--media_every=0", "--device=cpu",
              f"--train_ratio={args.train_ratio}", f"--num_envs={args.num_envs}"]
    train = [sys.executable, "-m", "dreamer_ext.train"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (0, args.num_envs):
            r = run(train + common + [f"--env_workers={workers}", f"--batch_size={args.batch_size}",
                                      f"--logdir={tmp}/w{workers}"], threads=2)
            rows.append((f"1 process, --env_workers={workers}, batch {args.batch_size}", r))
        half = args.batch_size // 2
        r = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                 f"--master_port={free_port()}", "-m", "dreamer_ext.train"] + common +
                [f"--batch_size={half}", f"--logdir={tmp}/ddp"], threads=1)
        rows.append((f"2 gloo ranks x batch {half} (torchrun)", r))
    print(f"{args.env}, {args.preset}, train ratio {args.train_ratio:g}, {args.steps} env steps, num_envs "
          f"{args.num_envs}\n")
    print("| setup | env steps / s | updates / s | updates | seconds |")
    print("|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['steps_per_s']:.1f} | {r['updates_per_s']:.3f} | {r['updates']} | {r['seconds']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
