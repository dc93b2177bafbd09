"""``python -m dreamer_ext.info`` runs and reports the build and every op's backend."""
import os
import subprocess
import sys

from dreamer_ext import _C, ops


def test_info_program_reports_build_and_ops():
    out = subprocess.run([sys.executable, "-m", "dreamer_ext.info"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "cuda_built:" in out.stdout and str(_C.has_cuda()) in out.stdout.split("cuda_built:")[1].split("\n")[0]
    for name in ops.OP_NAMES:
        assert f"  {name} " in out.stdout


def test_info_respects_reference_backend():
    env = {**os.environ, "DREAMER_EXT_BACKEND": "reference"}
    out = subprocess.run([sys.executable, "-m", "dreamer_ext.info"], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert "backend:" in out.stdout and "reference" in out.stdout.split("backend:")[1].split("\n")[0]
    assert "reference (pure PyTorch)" in out.stdout
