"""Turn a pytest-benchmark JSON from bench/test_ops_bench.py into the ratio table of RESULTS.md.

    python bench/report.py bench/ops.json [--out bench/RESULTS.md] [--command "..."]

Ratio = reference median time / kernel median time, both from the same run (higher is better).
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import re
from collections import defaultdict


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def table(data: dict) -> str:
    by_group: dict = defaultdict(dict)
    for b in data["benchmarks"]:
        impl = re.search(r"\[(?:.*-)?(kernel|ref_eager|ref_compile)(?:-.*)?\]", b["name"]) or re.search(
            r"(kernel|ref_eager|ref_compile)", b["param"] if b.get("param") else b["name"])
        by_group[b["group"]][impl.group(1)] = b["stats"]["median"]
    lines = ["| op (T, B), K=255 | kernel | ref eager | ref compile | eager / kernel | compile / kernel |",
             "|---|---|---|---|---|---|"]
    for group, t in by_group.items():
        k = t.get("kernel")
        fmt = lambda s: f"{s * 1e6:,.0f} µs" if s is not None else "—"
        ratio = lambda s: f"**{s / k:.2f}×**" if s is not None and k else "—"
        lines.append(f"| {group} | {fmt(k)} | {fmt(t.get('ref_eager'))} | {fmt(t.get('ref_compile'))} | "
                     f"{ratio(t.get('ref_eager'))} | {ratio(t.get('ref_compile'))} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("json")
    ap.add_argument("--out", default=None, help="write the markdown section here instead of stdout")
    ap.add_argument("--command", default="pytest bench/test_ops_bench.py --benchmark-json=bench/ops.json")
    args = ap.parse_args()
    with open(args.json) as f:
        data = json.load(f)
    mi = data.get("machine_info", {})
    import torch
    header = (f"Measured {datetime.date.today().isoformat()} with `{args.command}`  \n"
              f"Machine: {cpu_model()}, {mi.get('cpu', {}).get('count', '?')} logical cores, "
              f"torch {torch.__version__} ({torch.get_num_threads()} threads), Python {mi.get('python_version', '?')}"
              + (f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "") + "\n")
    text = header + "\n" + table(data) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
