"""The RePo diagnostics of a run directory, one line per log interval: ``python bench/repo_curves.py <logdir> [...]``.

Columns: env step, updates, beta (mean over the interval), KL_bal and its raw parts KL_dyn / KL_rep (nats per step),
the violation KL_bal - eps, the fraction of steps over eps, the largest |loss term| of the model step, skipped updates
so far, and the alarm counter. A last line summarises: beta's range, whether it touched a clamp, the largest term.
"""
import json
import sys


def rows(logdir: str) -> list[dict]:
    with open(f"{logdir}/metrics.jsonl") as f:
        return [r for r in map(json.loads, f) if "train/repo/beta" in r]


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.split("\n\n")[0], file=sys.stderr)
        return 2
    for logdir in argv:
        with open(f"{logdir}/config.json") as f:
            cfg = json.load(f)
        rc = cfg["repo"]
        rs = rows(logdir)
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
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
