"""bench/report.py: the op table replaces only the marked region of bench/RESULTS.md (the README's
benchmark command must not wipe the update-speed, learning and checkpoint sections), clear errors
otherwise, and the header states what the benchmark run used.
"""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "bench" / "report.py"
RESULTS = ROOT / "bench" / "RESULTS.md"


def _load_report():
    spec = importlib.util.spec_from_file_location("bench_report", REPORT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


report = _load_report()


def bench_json(path, kernel=1e-5, ref=8e-5, compiled=None):
    benches = []
    for impl, t in (("kernel", kernel), ("ref_eager", ref), ("ref_compile", compiled)):
        if t is not None:
            benches.append({"name": f"test_lambda_return[{impl}-T15xB1024]", "group": "lambda_return (15, 1024)",
                            "params": {"impl": impl, "size": [15, 1024]}, "stats": {"median": t},
                            "extra_info": {"torch": "9.9.9+test", "threads": 1, "device": "cpu", "device_name": None,
                                           "cpu_kernels": "x86-64-v4 (AVX-512)"}})
    data = {"machine_info": {"cpu": {"brand_raw": "Test CPU 3000", "count": 2}, "python_version": "3.11.7"},
            "benchmarks": benches}
    path.write_text(json.dumps(data))
    return path


def run_cli(*args):
    return subprocess.run([sys.executable, str(REPORT), *map(str, args)], capture_output=True, text=True, timeout=120)


DOC = """# results

intro

## Ops

{begin}
old table
{end}

Targets written by hand.

## Update speed

speed text

## Learning

learning text
""".format(begin=report.BEGIN, end=report.END)


def test_out_replaces_only_the_marked_region(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text(DOC)
    proc = run_cli(bench_json(tmp_path / "ops.json"), "--out", results, "--date", "2026-12-02")
    assert proc.returncode == 0, proc.stderr
    text = results.read_text()
    before, rest = text.split(report.BEGIN + "\n")
    region, after = rest.split(report.END)
    assert before == DOC.split(report.BEGIN)[0]
    assert report.END + after == report.END + DOC.split(report.END)[1]  # everything after is untouched
    assert "old table" not in region
    assert "| lambda_return (15, 1024) | 10 µs | 80 µs | — | **8.00×** | — |" in region
    assert "Measured 2026-12-02" in region


def test_the_real_results_file_keeps_its_other_sections(tmp_path):
    """The README's command on a copy of bench/RESULTS.md: markers present once, other sections kept."""
    original = RESULTS.read_text()
    assert original.count(report.BEGIN) == 1 and original.count(report.END) == 1
    copy = tmp_path / "RESULTS.md"
    copy.write_text(original)
    assert run_cli(bench_json(tmp_path / "ops.json"), "--out", copy).returncode == 0
    new = copy.read_text()
    assert new.split(report.BEGIN)[0] == original.split(report.BEGIN)[0]
    assert new.split(report.END)[1] == original.split(report.END)[1]
    for heading in ("## Update speed", "## Learning", "## Checkpoint cost"):
        if heading in original:
            assert heading in new


def test_missing_markers_are_an_error_and_leave_the_file_alone(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# results\n\n## Update speed\n\nkeep me\n")
    proc = run_cli(bench_json(tmp_path / "ops.json"), "--out", results)
    assert proc.returncode == 2
    assert "has no <!-- ops-table:begin --> ... <!-- ops-table:end --> marker lines" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert results.read_text() == "# results\n\n## Update speed\n\nkeep me\n"


@pytest.mark.parametrize("text, words", [
    (f"{report.END}\nx\n{report.BEGIN}\n", "comes before"),
    (f"{report.BEGIN}\n{report.END}\n{report.BEGIN}\n{report.END}\n", "exactly one of each"),
    (f"{report.BEGIN}\nno end\n", "has no"),
])
def test_bad_markers_are_refused(tmp_path, text, words):
    results = tmp_path / "RESULTS.md"
    results.write_text(text)
    proc = run_cli(bench_json(tmp_path / "ops.json"), "--out", results)
    assert proc.returncode == 2 and words in proc.stderr
    assert results.read_text() == text


def test_a_new_file_is_created_with_the_markers(tmp_path):
    out = tmp_path / "gpu.md"
    assert run_cli(bench_json(tmp_path / "ops.json"), "--out", out).returncode == 0
    text = out.read_text()
    assert text.startswith(report.BEGIN + "\n") and text.endswith(report.END + "\n")
    # and a second run replaces the region instead of failing or appending
    assert run_cli(bench_json(tmp_path / "ops.json", kernel=2e-5), "--out", out).returncode == 0
    assert out.read_text().count("lambda_return (15, 1024)") == 1 and "**4.00×**" in out.read_text()


def test_header_states_the_benchmark_runs_torch_threads_and_machine(tmp_path):
    proc = run_cli(bench_json(tmp_path / "ops.json", compiled=2e-5), "--command", "pytest X", "--date", "2026-01-02")
    assert proc.returncode == 0
    out = proc.stdout
    assert "Measured 2026-01-02 with `pytest X`" in out
    assert "Test CPU 3000, 2 logical cores" in out and "torch 9.9.9+test (1 threads)" in out
    assert "CPU kernels: x86-64-v4 (AVX-512) clone" in out
    assert "**2.00×**" in out  # compile / kernel
    custom = run_cli(bench_json(tmp_path / "ops.json"), "--machine", "2-core box").stdout
    assert "Machine: 2-core box," in custom


def test_unreadable_json_is_a_clear_error(tmp_path):
    bad = tmp_path / "ops.json"
    bad.write_text("{not json")
    proc = run_cli(bad)
    assert proc.returncode == 2 and "cannot read benchmark JSON" in proc.stderr and "Traceback" not in proc.stderr
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"benchmarks": []}))
    proc = run_cli(empty)
    assert proc.returncode == 2 and "holds no benchmarks" in proc.stderr


def test_the_rollout_region_is_replaced_and_the_op_table_kept(tmp_path):
    rb, re_ = report.markers("rollout-table")
    doc = tmp_path / "RESULTS.md"
    doc.write_text(DOC + f"\n## Rollout\n\n{rb}\nold rollout table\n{re_}\n\nafter\n")
    assert run_cli(bench_json(tmp_path / "r.json"), "--region", "rollout-table", "--out", doc).returncode == 0
    text = doc.read_text()
    assert "old table" in text and "old rollout table" not in text and text.endswith("\nafter\n")
    region = text.split(rb)[1].split(re_)[0]
    assert "| rollout (H = 15) |" in region and "pytest bench/test_rollout_bench.py" in region
    proc = run_cli(bench_json(tmp_path / "r.json"), "--region", "no such!", "--out", doc)
    assert proc.returncode == 2 and "--region" in proc.stderr
