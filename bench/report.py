"""Turn a pytest-benchmark JSON from bench/test_ops_bench.py into the op ratio table of RESULTS.md.

    python bench/report.py bench/ops.json                          # print the section
    python bench/report.py bench/ops.json --out bench/RESULTS.md   # replace the marked region in place

With ``--out`` pointing at an existing file, only the text between the two marker lines

    <!-- ops-table:begin -->
    <!-- ops-table:end -->

is replaced and everything else in the file is kept; a file without exactly one such pair is left
untouched and the program exits with an error. A file that does not exist yet is created with the
markers around the section.

Ratio = reference median time / kernel median time, both from the same run (higher is better). The
torch version, thread count and device come from the benchmark run itself (bench/test_ops_bench.py
stores them in each benchmark's extra_info), not from the process running this script.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
from collections import defaultdict

REGION = "ops-table"
BEGIN = "<!-- ops-table:begin -->"
END = "<!-- ops-table:end -->"


def markers(region: str) -> tuple[str, str]:
    """The begin and end marker lines of a named region (``ops-table``: the op table; ``rollout-table``: the fused
    rollout's)."""
    return f"<!-- {region}:begin -->", f"<!-- {region}:end -->"
IMPLS = ("kernel", "ref_eager", "ref_compile")


class ReportError(Exception):
    """A problem with the inputs that the user must fix (printed without a traceback)."""


def _impl_of(bench: dict) -> str:
    params = bench.get("params") or {}
    if params.get("impl") in IMPLS:
        return params["impl"]
    m = re.search(r"\[(?:.*-)?(kernel|ref_eager|ref_compile)(?:-.*)?\]", bench.get("name", ""))
    if not m:
        raise ReportError(f"benchmark {bench.get('name')!r} names no implementation ({', '.join(IMPLS)})")
    return m.group(1)


def table(data: dict, first: str = "op (T, B), K=255") -> str:
    by_group: dict = defaultdict(dict)
    for b in data.get("benchmarks", []):
        by_group[b["group"]][_impl_of(b)] = b["stats"]["median"]
    if not by_group:
        raise ReportError("the JSON holds no benchmarks")
    lines = [f"| {first} | kernel | ref eager | ref compile | eager / kernel | compile / kernel |",
             "|---|---|---|---|---|---|"]
    for group, t in by_group.items():
        k = t.get("kernel")
        fmt = lambda s: f"{s * 1e6:,.0f} µs" if s is not None else "—"
        ratio = lambda s: f"**{s / k:.2f}×**" if s is not None and k else "—"
        lines.append(f"| {group} | {fmt(k)} | {fmt(t.get('ref_eager'))} | {fmt(t.get('ref_compile'))} | "
                     f"{ratio(t.get('ref_eager'))} | {ratio(t.get('ref_compile'))} |")
    return "\n".join(lines)


def _run_info(data: dict) -> dict:
    """torch version, threads and device of the benchmark run (the first benchmark's extra_info)."""
    for b in data.get("benchmarks", []):
        info = b.get("extra_info") or {}
        if info:
            return info
    return {}


def header(data: dict, command: str, date: str, machine: str | None) -> str:
    mi = data.get("machine_info", {})
    cpu = mi.get("cpu", {}) or {}
    info = _run_info(data)
    if machine is None:
        machine = f"{cpu.get('brand_raw') or mi.get('processor') or 'unknown CPU'}, {cpu.get('count', '?')} logical cores"
    torch_part = f"torch {info.get('torch', '?')} ({info.get('threads', '?')} threads)"
    device = info.get("device_name")
    kernels = info.get("cpu_kernels")
    return (f"Measured {date} with `{command}`  \n"
            f"Machine: {machine}, {torch_part}, Python {mi.get('python_version', '?')}"
            + (f", GPU {device}" if device else "") + (f"; CPU kernels: {kernels} clone" if kernels else "") + "\n")


def section(data: dict, command: str, date: str, machine: str | None = None, first: str = "op (T, B), K=255") -> str:
    return header(data, command, date, machine) + "\n" + table(data, first) + "\n"


def replace_region(text: str, body: str, path: str = "the file", region: str = REGION) -> str:
    """``text`` with the lines between the region's begin and end marker lines replaced by ``body``."""
    BEGIN, END = markers(region)
    lines = text.splitlines(keepends=True)
    begins = [i for i, line in enumerate(lines) if line.strip() == BEGIN]
    ends = [i for i, line in enumerate(lines) if line.strip() == END]
    if not begins or not ends:
        raise ReportError(f"{path} has no {BEGIN} ... {END} marker lines around the table; add them (each on a "
                          "line of its own) around the part to replace, or write to a new file")
    if len(begins) > 1 or len(ends) > 1:
        raise ReportError(f"{path} has {len(begins)} {BEGIN} and {len(ends)} {END} lines; it needs exactly one of each")
    b, e = begins[0], ends[0]
    if e < b:
        raise ReportError(f"in {path}, {END} comes before {BEGIN}")
    if body and not body.endswith("\n"):
        body += "\n"
    return "".join(lines[:b + 1]) + body + "".join(lines[e:])


def write_out(path: str, body: str, region: str = REGION) -> None:
    """Replaces the marked region of ``path`` with ``body``, or creates ``path`` holding the markers and ``body``."""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        new = replace_region(text, body, path, region)
    else:
        begin, end = markers(region)
        new = replace_region(f"{begin}\n{end}\n", body, path, region)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(new)
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", help="pytest-benchmark JSON written by --benchmark-json")
    ap.add_argument("--out", default=None,
                    help="replace the marked op-table region of this file (created if missing) instead of printing")
    ap.add_argument("--region", default=REGION,
                    help="which marked region --out replaces: ops-table (bench/test_ops_bench.py) or rollout-table "
                         "(bench/test_rollout_bench.py)")
    ap.add_argument("--command", default=None,
                    help="the benchmark command to state in the header")
    ap.add_argument("--date", default=datetime.date.today().isoformat(), help="date to state (default: today)")
    ap.add_argument("--machine", default=None,
                    help="machine description to state (default: the CPU model and core count in the JSON)")
    args = ap.parse_args(argv)
    try:
        try:
            with open(args.json, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise ReportError(f"cannot read benchmark JSON {args.json}: {e}") from None
        if not re.fullmatch(r"[a-z][a-z0-9-]*", args.region):
            raise ReportError(f"--region: expected a name like ops-table, got {args.region!r}")
        rollout = args.region == "rollout-table"
        command = args.command or ("pytest bench/test_rollout_bench.py --benchmark-json=bench/rollout.json" if rollout
                                   else "pytest bench/test_ops_bench.py --benchmark-json=bench/ops.json")
        body = section(data, command, args.date, args.machine, "rollout (H = 15)" if rollout else "op (T, B), K=255")
        if args.out:
            write_out(args.out, body, args.region)
        else:
            sys.stdout.write(body)
    except ReportError as e:
        print(f"report.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
