"""bench/gpu_check.sh's logic, through its dry run (GPU_CHECK_DRY_RUN=1: each step runs a stub under the
same timeout, budget and accounting): step order, the commands each step stands for, timeouts, the time
budget, skips after a failed build, the racecheck rule, the report and the exit status. No GPU needed.
"""
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
STEPS = ["env", "wheels", "build", "gpu_tests", "stream_tests", "memcheck", "synccheck", "initcheck", "racecheck",
         "bench", "bench_report", "rollout_bench", "suite"]

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils timeout")


def dry_run(tmp_path, **env):
    out = tmp_path / "report"
    full_env = {**os.environ, "GPU_CHECK_DRY_RUN": "1", "GPU_CHECK_WHEELS": str(tmp_path / "no-wheels"), **env}
    proc = subprocess.run(["bash", str(SCRIPT), str(out)], capture_output=True, text=True, env=full_env, timeout=300)
    report = (out / "report.md").read_text()
    return proc, report, out


def results(report):
    """{step: RESULT} in report order."""
    return dict(re.findall(r"^- \*\*(\w+)\*\*: ([A-Z ]+?)(?: \(|$)", report, flags=re.M))


def logs(out):
    with tarfile.open(out / "logs.tar.gz") as tar:
        return {Path(m.name).stem: tar.extractfile(m).read().decode() for m in tar.getmembers() if m.isfile()}


def command_of(log):
    return re.search(r"^# command: (.*)$", log, flags=re.M).group(1)


def test_all_steps_pass_in_order_and_exit_0(tmp_path):
    proc, report, out = dry_run(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = results(report)
    assert list(res) == STEPS
    assert res["wheels"] == "SKIPPED" and res["racecheck"] == "NOT NEEDED"
    assert all(res[s] == "PASS" for s in STEPS if s not in ("wheels", "racecheck"))
    assert "DRY RUN" in report and "overall: PASS" in report
    assert not (out / "logs").exists()  # packed: few files, so the folder can travel back whole


def test_each_step_stands_for_the_right_command(tmp_path):
    proc, _, out = dry_run(tmp_path)
    assert proc.returncode == 0
    cmd = {name: command_of(log) for name, log in logs(out).items()}
    build = cmd["build"]
    for flag in ("CUDAARCHS=90", "DREAMER_EXT_CUDA=ON", "--no-build-isolation", "--no-deps", "--no-index", "--target"):
        assert flag in build
    assert "CUDA_LAUNCH_BLOCKING=1" in cmd["gpu_tests"] and " -x " in cmd["gpu_tests"]
    assert "CUDA_LAUNCH_BLOCKING" not in cmd["stream_tests"]
    for tool in ("memcheck", "synccheck", "initcheck"):
        c = cmd[tool]
        assert f"--tool {tool}" in c and "PYTORCH_NO_CUDA_MEMORY_CACHING=1" in c
        assert "--report-api-errors no" in c and "--error-exitcode" in c
        assert "test_gpu.py" in c and "not\\ graph" in c  # printf %q escapes the spaces of the -k expression
    assert "--check-api-memory-access no" in cmd["memcheck"] and "--kernel-name" in cmd["memcheck"]
    assert "--kernel-name" not in cmd["initcheck"]  # initcheck must see every kernel that initialises memory
    assert "--bench-device cuda" in cmd["bench"] and "T15xB1024" in cmd["bench"]
    assert "--out" in cmd["bench_report"]
    assert "bench/rollout_gpu.py" in cmd["rollout_bench"] and "--device cuda" in cmd["rollout_bench"]
    for name in cmd:
        assert "[dry-run] would run:" in logs(out)[name]


def test_a_failed_build_skips_what_needs_it_and_exits_1(tmp_path):
    proc, report, _ = dry_run(tmp_path, GPU_CHECK_DRY_RC="build=2")
    assert proc.returncode == 1
    res = results(report)
    assert res["env"] == "PASS" and res["build"] == "FAIL"
    assert all(res[s] == "SKIPPED" for s in STEPS[STEPS.index("build") + 1:] if s != "bench_report")
    assert "the build failed" in report and "overall: FAIL" in report
    assert "[dry-run] would run:" in report  # the failed step's log tail is in the report


def test_a_step_past_its_timeout_is_killed_counted_and_the_rest_still_run(tmp_path):
    proc, report, _ = dry_run(tmp_path, GPU_CHECK_TIMEOUTS="memcheck=1", GPU_CHECK_DRY_SLEEP="memcheck=30")
    assert proc.returncode == 1
    res = results(report)
    assert res["memcheck"] == "TIMEOUT" and "killed after 1 s" in report
    assert res["synccheck"] == "PASS" and res["suite"] == "PASS"


def test_a_failing_test_step_fails_the_run(tmp_path):
    proc, report, _ = dry_run(tmp_path, GPU_CHECK_DRY_RC="gpu_tests=1")
    assert proc.returncode == 1
    res = results(report)
    assert res["gpu_tests"] == "FAIL" and res["memcheck"] == "PASS"


def test_spent_budget_skips_the_remaining_steps_and_exits_2(tmp_path):
    # 14 s budget, gpu_tests takes 5 s: fewer than 10 s are left for anything after it
    proc, report, _ = dry_run(tmp_path, GPU_CHECK_BUDGET_S="14", GPU_CHECK_DRY_SLEEP="gpu_tests=5")
    assert proc.returncode == 2, report
    res = results(report)
    assert res["gpu_tests"] == "PASS" and res["suite"] == "SKIPPED"
    assert "time budget of 14 s spent" in report and "overall: INCOMPLETE" in report
    assert "FAIL" not in res.values() and "TIMEOUT" not in res.values()


def test_racecheck_runs_when_a_kernel_uses_shared_memory(tmp_path):
    src = tmp_path / "cu"
    src.mkdir()
    (src / "k.cu").write_text("__global__ void k(float* x) { __shared__ float s[32]; s[0] = x[0]; }\n")
    proc, report, out = dry_run(tmp_path, GPU_CHECK_CUDA_SRC=str(src))
    assert proc.returncode == 0
    assert results(report)["racecheck"] == "PASS"
    assert "--tool racecheck" in command_of(logs(out)["racecheck"])


def test_carried_wheels_are_installed_offline(tmp_path):
    wheels = tmp_path / "no-wheels"  # the folder dry_run points GPU_CHECK_WHEELS at
    wheels.mkdir()
    (wheels / "gymnasium-1.0-py3-none-any.whl").write_bytes(b"")
    proc, report, out = dry_run(tmp_path)
    assert proc.returncode == 0
    assert results(report)["wheels"] == "PASS"
    cmd = command_of(logs(out)["wheels"])
    assert "--no-index" in cmd and "--no-deps" in cmd and "gymnasium-1.0-py3-none-any.whl" in cmd
