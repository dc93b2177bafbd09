"""Learning curves of finished runs as a markdown table: eval_return (mean ± std over the eval episodes)
and the mean training-episode return, per evaluation step.

    python bench/curves.py runs/cartpole_s0 [runs/pendulum_s0 ...]
"""
from __future__ import annotations

import json
import os
import sys


def curve(run_dir: str) -> list[tuple[int, float, float, float]]:
    """[(step, eval_return, eval_return_std, mean train-episode return since the previous eval)]"""
    rows, train = [], []
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            d = json.loads(line)
            if "episode_return" in d:
                train.append(d["episode_return"])
            if "eval_return" in d:
                mean_train = sum(train) / len(train) if train else float("nan")
                rows.append((d["step"], d["eval_return"], d.get("eval_return_std", float("nan")), mean_train))
                train = []
    return rows


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for run in sys.argv[1:]:
        print(f"\n`{run}`\n\n| env steps | eval_return (mean ± std) | train episodes (mean) |\n|---|---|---|")
        for step, ret, std, tr in curve(run):
            print(f"| {step:,} | {ret:.1f} ± {std:.1f} | {tr:.1f} |")


if __name__ == "__main__":
    main()
