"""Benchmark options: ``--bench-device cpu|cuda`` and ``--no-compile`` (skip the torch.compile baselines)."""
import pytest


def pytest_addoption(parser):
    parser.addoption("--bench-device", default="cpu", help="device to benchmark on (cpu or cuda)")
    parser.addoption("--no-compile", action="store_true", help="skip the torch.compile reference baselines")


@pytest.fixture(scope="session")
def bench_device(request):
    return request.config.getoption("--bench-device")


@pytest.fixture(scope="session")
def with_compile(request):
    return not request.config.getoption("--no-compile")
