"""The distractor-robustness experiment: train one agent per (objective, train distractor, seed), evaluate each on every
eval distractor, and tabulate.

    python -m dreamer_ext.robustness --env ALE/Asterix-v5 --objectives dreamer,repo \\
        --train gauss:0,gauss:10,gauss:20 --eval gauss:0,gauss:10,gauss:20 --episodes 12 --out runs/robustness \\
        [--seeds N] [any option of python -m dreamer_ext.train, e.g. --preset=size1m --steps=30000]

Writes into ``--out``: one run directory per cell (``<objective>/train-<spec>/seed<k>``, a normal training run with its
checkpoints and logs), its evaluations (``eval-<spec>.json`` beside the run), and the summary: ``table.md`` and
``table.csv`` (per objective: train-distractor rows x eval-distractor columns, the mean return ± the half-width of its
95 % Student-t confidence interval over all episodes of all seeds) and ``heatmap.png``.

Resumable: a finished cell (``cell.json``) is not trained again and a saved evaluation of its final checkpoint is not
run again; an interrupted cell resumes from its newest checkpoint (``--resume``). One progress line per cell, with an
ETA from the cells trained so far. Exit status: 0 done, 2 invalid command line, 1 run-time error.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
import time

PROG = "python -m dreamer_ext.robustness"


def _split(text: str, name: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ValueError(f"{name}: expected a comma-separated list, got {text!r}")
    if len(set(items)) != len(items):
        raise ValueError(f"{name}: has duplicates: {text!r}")
    return items


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Own options and the pass-through train options. Raises ValueError("--option: ...")."""
    from .envs.distractors import parse_distractor
    from .objectives import OBJECTIVES

    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--env", default="ALE/Asterix-v5", help="environment id (image observations)")
    p.add_argument("--objectives", default="dreamer,repo", help="comma-separated world-model objectives")
    p.add_argument("--train", default="gauss:0,gauss:10,gauss:20", help="comma-separated train distractor specs")
    p.add_argument("--eval", default="gauss:0,gauss:10,gauss:20", help="comma-separated eval distractor specs")
    p.add_argument("--episodes", type=int, default=12, help="eval episodes per (cell, eval distractor)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per cell (0 .. N-1)")
    p.add_argument("--out", default="runs/robustness", help="output directory")
    ns, rest = p.parse_known_args(argv)
    ns.objectives = _split(ns.objectives, "--objectives")
    for o in ns.objectives:
        if o not in OBJECTIVES:
            raise ValueError(f"--objectives: unknown objective {o!r}; available: {sorted(OBJECTIVES)}")
    for name in ("train", "eval"):
        specs = _split(getattr(ns, name), f"--{name}")
        setattr(ns, name, [str(parse_distractor(s, name=f"--{name}")) for s in specs])
        if len(set(getattr(ns, name))) != len(specs):
            raise ValueError(f"--{name}: two specs mean the same distractor: {specs}")
    if ns.episodes < 1:
        raise ValueError(f"--episodes: must be >= 1, got {ns.episodes}")
    if ns.seeds < 1:
        raise ValueError(f"--seeds: must be >= 1, got {ns.seeds}")
    for a in rest:
        key = a.split("=", 1)[0]
        if key in ("--objective", "--distractor", "--eval_distractor", "--seed", "--logdir", "--resume", "--env"):
            raise ValueError(f"{key}: set by the experiment for each cell; use --objectives/--train/--eval/--seeds")
    return ns, rest


def _slug(spec: str) -> str:
    return spec.replace(":", "")


def cells(ns) -> list[tuple[str, str, int]]:
    return [(o, t, s) for o in ns.objectives for t in ns.train for s in range(ns.seeds)]


def cell_dir(ns, objective: str, train: str, seed: int) -> str:
    return os.path.join(ns.out, objective, f"train-{_slug(train)}", f"seed{seed}")


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write_json(path: str, obj) -> None:
    from .checkpoint import atomic_write

    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, allow_nan=False).encode() + b"\n"))


def _fmt_time(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600} h {s % 3600 // 60:02d} min" if s >= 3600 else f"{s // 60} min {s % 60:02d} s"


def train_cell(ns, rest: list[str], objective: str, train: str, seed: int) -> dict:
    """Train (or resume, or skip when finished) one cell; returns its cell.json."""
    from . import cli
    from .train import parse_args, train as run_train

    d = cell_dir(ns, objective, train, seed)
    done = _read_json(os.path.join(d, "cell.json"))
    if done is not None:
        return done
    argv = [f"--env={ns.env}", f"--objective={objective}", f"--distractor={train}", f"--seed={seed}",
            f"--logdir={d}", "--resume=true", *rest]
    try:
        cfg, resume_from = parse_args(argv)
    except cli.CLIError as e:
        raise ValueError(str(e)) from None
    out = run_train(cfg, resume_from)
    if out.get("stopped_by") is not None:  # a SIGTERM / Ctrl-C ended it early, with a checkpoint: not finished
        raise KeyboardInterrupt
    info = {"objective": objective, "train": train, "seed": seed, "steps": cfg.steps, "logdir": d,
            "final_eval_return": out.get("eval_return")}
    _write_json(os.path.join(d, "cell.json"), info)
    return info


def evaluate_cell(ns, objective: str, train: str, seed: int, spec: str) -> dict:
    """Evaluate the cell's newest checkpoint on ``spec`` (kept in eval-<spec>.json; rerun only for a newer checkpoint)."""
    from .checkpoint import find_checkpoint
    from .evaluate import EvalOptions, evaluate_checkpoint

    d = cell_dir(ns, objective, train, seed)
    path = os.path.join(d, f"eval-{_slug(spec)}.json")
    ckpt = os.path.abspath(find_checkpoint(d))
    old = _read_json(path)
    if old is not None and old.get("checkpoint") == ckpt and old.get("episodes") == ns.episodes:
        return old
    res = evaluate_checkpoint(EvalOptions(checkpoint=d, episodes=ns.episodes, eval_distractor=spec).validate())
    _write_json(path, res)
    return res


def summarize(ns, results: dict) -> list[dict]:
    """Rows of the table: per (objective, train, eval) the episodes of all seeds pooled."""
    from .stats import mean_ci

    rows = []
    for o in ns.objectives:
        for t in ns.train:
            for e in ns.eval:
                returns = [r for s in range(ns.seeds) for r in results[(o, t, s, e)]["returns"]]
                ci = mean_ci(returns)
                rows.append({"objective": o, "train": t, "eval": e, "mean": ci["mean"],
                             "ci95": ci["ci"] if math.isfinite(ci["ci"]) else None,
                             "std": ci["std"] if math.isfinite(ci["std"]) else None,
                             "episodes": len(returns), "seeds": ns.seeds})
    return rows


def table_md(ns, rows: list[dict]) -> str:
    by = {(r["objective"], r["train"], r["eval"]): r for r in rows}
    out = [f"Environment {ns.env}; {ns.episodes} eval episodes per seed, {ns.seeds} seed(s); mean return ± half-width "
           f"of the 95 % Student-t confidence interval over all episodes.", ""]
    for o in ns.objectives:
        out += [f"**{o}** (train rows × eval columns)", "",
                "| train \\ eval | " + " | ".join(ns.eval) + " |", "|---" * (len(ns.eval) + 1) + "|"]
        for t in ns.train:
            cells_ = []
            for e in ns.eval:
                r = by[(o, t, e)]
                cells_.append(f"{r['mean']:.2f} ± {'n/a' if r['ci95'] is None else format(r['ci95'], '.2f')}")
            out.append(f"| {t} | " + " | ".join(cells_) + " |")
        out.append("")
    return "\n".join(out)


def table_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, ["objective", "train", "eval", "mean", "ci95", "std", "episodes", "seeds"],
                       lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    return buf.getvalue()


def heatmap(ns, rows: list[dict]):
    """One panel per objective: train rows x eval columns, colour by mean return (one scale for all panels)."""
    from PIL import Image, ImageDraw

    by = {(r["objective"], r["train"], r["eval"]): r for r in rows}
    lo, hi = min(r["mean"] for r in rows), max(r["mean"] for r in rows)
    cw, ch, left, top, gap = 120, 44, 110, 40, 30
    pw = left + cw * len(ns.eval)
    img = Image.new("RGB", (len(ns.objectives) * (pw + gap) + gap, top + ch * len(ns.train) + 30), "white")
    draw = ImageDraw.Draw(img)
    for i, o in enumerate(ns.objectives):
        x0 = gap + i * (pw + gap)
        draw.text((x0, 8), f"{o}: train rows x eval columns", fill="black")
        for j, e in enumerate(ns.eval):
            draw.text((x0 + left + j * cw + 6, top - 14), e, fill="black")
        for k, t in enumerate(ns.train):
            y = top + k * ch
            draw.text((x0 + 4, y + ch // 2 - 6), t, fill="black")
            for j, e in enumerate(ns.eval):
                r = by[(o, t, e)]
                f = 0.5 if hi == lo else (r["mean"] - lo) / (hi - lo)
                color = (int(255 * (1 - f)), int(90 + 120 * f), int(255 * f * 0.6))
                box = (x0 + left + j * cw, y, x0 + left + (j + 1) * cw - 2, y + ch - 2)
                draw.rectangle(box, fill=color)
                ci = "n/a" if r["ci95"] is None else f"{r['ci95']:.0f}"
                draw.text((box[0] + 6, box[1] + 14), f"{r['mean']:.0f} ± {ci}", fill="black")
    draw.text((gap, img.height - 18), f"{ns.env}: colour from {lo:.0f} (red) to {hi:.0f} (green)", fill="black")
    return img


def run(ns, rest: list[str], log=print) -> list[dict]:
    todo = cells(ns)
    t0, trained = time.time(), 0
    results = {}
    for i, (o, t, s) in enumerate(todo):
        d = cell_dir(ns, o, t, s)
        finished = os.path.exists(os.path.join(d, "cell.json"))
        remaining = sum(not os.path.exists(os.path.join(cell_dir(ns, *c), "cell.json")) for c in todo[i:])
        eta = f"ETA {_fmt_time((time.time() - t0) / trained * remaining)}" if trained else "ETA after the first cell"
        log(f"cell {i + 1}/{len(todo)}: objective={o} train={t} seed={s}: "
            f"{'finished, evaluating' if finished else 'training'} ({remaining} to train, {eta})")
        if not finished:
            train_cell(ns, rest, o, t, s)
            trained += 1
        for e in ns.eval:
            results[(o, t, s, e)] = evaluate_cell(ns, o, t, s, e)
    rows = summarize(ns, results)
    from .checkpoint import atomic_write

    os.makedirs(ns.out, exist_ok=True)
    md = table_md(ns, rows)
    atomic_write(os.path.join(ns.out, "table.md"), lambda f: f.write(md.encode()))
    atomic_write(os.path.join(ns.out, "table.csv"), lambda f: f.write(table_csv(rows).encode()))
    png = io.BytesIO()
    heatmap(ns, rows).save(png, format="PNG")
    atomic_write(os.path.join(ns.out, "heatmap.png"), lambda f: f.write(png.getvalue()))
    log(md)
    return rows


def main(argv=None) -> int:
    from . import cli
    from .checkpoint import CheckpointError
    from .loop import tune_cpu_allocator

    tune_cpu_allocator()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        ns, rest = parse(argv)
    except ValueError as e:
        return cli.fail(PROG, e, 2)
    try:
        run(ns, rest)
    except KeyboardInterrupt:
        return cli.fail(PROG, "interrupted; finished cells and checkpoints are kept (run the same command to go on)", 130)
    except ValueError as e:
        return cli.fail(PROG, e, 2)
    except (RuntimeError, OSError) as e:
        return cli.runtime_failure(PROG, e, known=(CheckpointError,))
    return 0


if __name__ == "__main__":
    sys.exit(main())
