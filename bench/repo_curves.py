"""The RePo diagnostics of a run directory, one line per log interval: ``python bench/repo_curves.py <logdir> [...]``.
With ``--plot FILE.png`` (before the logdirs) it also draws the KL_bal and beta curves of all the runs given,
against updates, into one PNG (left: KL_bal with eps dashed; right: beta on a log scale).

Columns: env step, updates, beta (mean over the interval), KL_bal and its raw parts KL_dyn / KL_rep (nats per step),
the violation KL_bal - eps, the fraction of steps over eps, the largest |loss term| of the model step, skipped updates
so far, and the alarm counter. A last line summarises: beta's range, whether it touched a clamp, the largest term.
"""
import json
import math
import os
import sys

COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def rows(logdir: str) -> list[dict]:
    with open(f"{logdir}/metrics.jsonl") as f:
        return [r for r in map(json.loads, f) if "train/repo/beta" in r]


def plot(path: str, runs: list[tuple[str, float, list[dict]]]) -> None:
    """runs: (label, eps, rows) -> a PNG of two panels: KL_bal per step and log10 beta against updates."""
    from PIL import Image, ImageDraw

    W, H, left, top, bottom, gap = 520, 320, 56, 30, 40, 40
    img = Image.new("RGB", (2 * (left + W) + gap + 24, top + H + bottom + 18 * len(runs)), "white")
    d = ImageDraw.Draw(img)
    xmax = max((r[-1].get("updates", 1) for _, _, r in runs if r), default=1)
    panels = [("KL_bal (nats per step); eps dashed", lambda r: r["train/repo/kl_bal"], False),
              ("beta (log scale)", lambda r: r["train/repo/beta"], True)]
    for i, (title, get, log) in enumerate(panels):
        x0 = left + i * (left + W + gap)
        vals = [get(r) for _, _, rs in runs for r in rs]
        vals += [eps for _, eps, _ in runs] if not log else []
        f = (lambda v: math.log10(max(v, 1e-12))) if log else (lambda v: v)
        lo, hi = min(map(f, vals)), max(map(f, vals))
        lo, hi = (lo, hi) if hi > lo else (lo - 1, hi + 1)
        X = lambda u: x0 + W * u / xmax
        Y = lambda v: top + H - H * (f(v) - lo) / (hi - lo)
        d.rectangle((x0, top, x0 + W, top + H), outline="black")
        d.text((x0, 8), title, fill="black")
        for k in range(5):  # y ticks
            v = lo + (hi - lo) * k / 4
            y = top + H - H * k / 4
            d.text((4 + x0 - left, y - 6), f"{10 ** v:.1e}" if log else f"{v:.2f}", fill="black")
            d.line((x0 - 4, y, x0, y), fill="black")
        for k in range(5):  # x ticks: updates
            u = xmax * k / 4
            d.text((X(u) - 12, top + H + 6), f"{u:.0f}", fill="black")
        d.text((x0 + W // 2 - 20, top + H + 22), "updates", fill="black")
        for j, (label, eps, rs) in enumerate(runs):
            c = COLOURS[j % len(COLOURS)]
            pts = [(X(r.get("updates", 0)), Y(get(r))) for r in rs]
            if len(pts) > 1:
                d.line(pts, fill=c, width=2)
            if not log:
                for xa in range(x0, x0 + W, 12):  # eps, dashed
                    d.line((xa, Y(eps), min(xa + 6, x0 + W), Y(eps)), fill=(90, 90, 90))
    for j, (label, _, _) in enumerate(runs):
        y = top + H + bottom + 18 * j
        d.rectangle((left, y + 4, left + 20, y + 10), fill=COLOURS[j % len(COLOURS)])
        d.text((left + 28, y), label, fill="black")
    img.save(path)


def main(argv: list[str]) -> int:
    out = None
    if argv and argv[0].startswith("--plot="):
        out, argv = argv[0][len("--plot="):], argv[1:]
    elif argv and argv[0] == "--plot":
        out, argv = (argv[1] if len(argv) > 1 else ""), argv[2:]
    if out is not None:
        if not out or not out.endswith(".png"):
            print("--plot: expected a .png file name", file=sys.stderr)
            return 2
    if not argv:
        print(__doc__.split("\n\n")[0], file=sys.stderr)
        return 2
    curves = []
    missing = [d for d in argv if not (os.path.isfile(f"{d}/config.json") and os.path.isfile(f"{d}/metrics.jsonl"))]
    if missing:
        print(f"logdir: expected run directories with config.json and metrics.jsonl, not {', '.join(missing)}",
              file=sys.stderr)
        return 2
    for logdir in argv:
        with open(f"{logdir}/config.json") as f:
            cfg = json.load(f)
        rc = cfg["repo"]
        rs = rows(logdir)
        curves.append((f"{cfg['distractor']} seed {cfg['seed']}", float(rc["eps"]), rs))
        print(f"{logdir}: distractor {cfg['distractor']}, eps {rc['eps']}, beta clamp [{rc['beta_min']}, {rc['beta_max']}]")
        print("step updates beta KL_bal KL_dyn KL_rep violation over_eps max_term skipped alarms")
        terms = ("train/loss/rew", "train/loss/con", "train/loss/kl", "train/loss/actor", "train/loss/critic",
                 "train/loss/repval")
        for r in rs:
            big = max(abs(r.get(k, 0.0)) for k in terms)
            print(f"{r['step']} {r.get('updates', 0):.0f} {r['train/repo/beta']:.4g} {r['train/repo/kl_bal']:.3f} "
                  f"{r['train/kl/dyn']:.3f} {r['train/kl/rep']:.3f} {r['train/repo/violation']:+.3f} "
                  f"{r['train/repo/kl_above_eps_frac']:.2f} {big:.3g} {r.get('skipped_updates', 0):.0f} "
                  f"{r['train/repo/alarms']:.0f}")
        if rs:
            betas = [r["train/repo/beta"] for r in rs]
            big = max(max(abs(r.get(k, 0.0)) for k in terms) for r in rs)
            print(f"beta in [{min(betas):.3g}, {max(betas):.3g}]; largest model-step term {big:.3g}; "
                  f"skipped updates {rs[-1].get('skipped_updates', 0):.0f}")
    if out:
        plot(out, curves)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
