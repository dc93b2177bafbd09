"""Benchmark options: ``--bench-device cpu|cuda``, ``--no-compile`` (skip the torch.compile baselines) and
``--threads N`` (torch's intra-op threads, which the CPU kernels use too; default: torch's own choice).

Every benchmark stores the torch version, thread count and device in its ``extra_info``, so
bench/report.py states what the run used, not what the process running the report has.
"""
import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--bench-device", default="cpu", help="device to benchmark on (cpu or cuda)")
    parser.addoption("--no-compile", action="store_true", help="skip the torch.compile reference baselines")
    parser.addoption("--threads", type=int, default=None,
                     help="torch.set_num_threads for the run (the CPU kernels use the same count)")


def pytest_configure(config):
    threads = config.getoption("--threads", default=None)
    if threads is not None:
        if threads < 1:
            raise pytest.UsageError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def bench_device(request):
    return request.config.getoption("--bench-device")


@pytest.fixture(scope="session")
def with_compile(request):
    return not request.config.getoption("--no-compile")
