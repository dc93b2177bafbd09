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
    # which multi-versioned clone of the CPU float loops runs here
    assert "cpu_kernels:" in out.stdout and _C.build_info()["cpu_kernels"] in out.stdout


def test_info_respects_reference_backend():
    env = {**os.environ, "DREAMER_EXT_BACKEND": "reference"}
    out = subprocess.run([sys.executable, "-m", "dreamer_ext.info"], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert "backend:" in out.stdout and "reference" in out.stdout.split("backend:")[1].split("\n")[0]
    assert "reference (pure PyTorch)" in out.stdout


def test_cudaarchs_applies_to_a_reused_build_folder(tmp_path):
    """CUDAARCHS picks the architectures on every configure, also in a build folder configured before
    (CMake reads it only when it first detects nvcc there; the GPU check builds with CUDAARCHS=90)."""
    import shutil

    import pytest
    if shutil.which("nvcc") is None or shutil.which("cmake") is None:
        pytest.skip("needs nvcc and cmake")
    import pybind11
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    base = ["cmake", "-S", root, "-B", str(tmp_path / "b"), "-DDREAMER_EXT_CUDA=ON", "-DDREAMER_EXT_INPLACE=OFF",
            f"-DPython_EXECUTABLE={sys.executable}", f"-Dpybind11_DIR={pybind11.get_cmake_dir()}"]
    env = {k: v for k, v in os.environ.items() if k != "CUDAARCHS"}

    def archs(extra_env):
        out = subprocess.run(base, capture_output=True, text=True, timeout=300, env={**env, **extra_env})
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout.split("dreamer_ext: CUDA kernels for ")[1].split(" (nvcc")[0]

    assert archs({}) == "80-real;90-real;90-virtual"
    assert archs({"CUDAARCHS": "90"}) == "90"
    assert archs({}) == "80-real;90-real;90-virtual"
