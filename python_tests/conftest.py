"""Shared test configuration.

* ``gpu`` tests run whenever ``torch.cuda.is_available()``; otherwise they are skipped with that reason.
* ``emu`` tests need ``dreamer_ext._emu`` (built with ``DREAMER_EXT_EMU=ON``). When the environment
  says it was requested (``DREAMER_EXT_EMU=ON``, as in the README's test command and CI), a missing
  module is an error, not a skip.
* ``slow`` marks the tests that run the real training program (a subprocess or a full in-process run, seconds each).
  CI runs everything; ``pytest python_tests -m "not slow"`` is the quick subset for development.
"""
import os

import pytest
import torch


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: runs the real training program (subprocess); deselect with -m 'not slow'")


def pytest_collection_modifyitems(config, items):
    has_gpu = torch.cuda.is_available()
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="no CUDA GPU visible"))


@pytest.fixture(scope="session")
def emu():
    try:
        from dreamer_ext import _emu
    except ImportError as e:
        if os.environ.get("DREAMER_EXT_EMU", "").upper() == "ON":
            pytest.fail(f"DREAMER_EXT_EMU=ON but dreamer_ext._emu is missing: {e}")
        pytest.skip("dreamer_ext._emu not built (install with DREAMER_EXT_EMU=ON)")
    return _emu


@pytest.fixture(autouse=True)
def _kernels_backend():
    """Every test starts on the kernels backend, whatever an earlier test switched to."""
    from dreamer_ext import ops
    before = ops.get_backend()
    ops.set_backend("kernels")  # a module-scoped fixture may have switched it before this runs
    yield
    ops.set_backend(before)
