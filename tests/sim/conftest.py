"""tests/sim: csrc/cuda's kernels run on the CPU through the SIMT layer (shc_kernels._C_sim, built
by `make cuda-sim`, which runs these tests). They run when that module is built and the command
line names tests/sim (or SHC_SIM_TESTS=1), so a plain `pytest tests` stays green and `make test`
does not run them twice; a module that exists but does not load is an error, not a skip."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "gpu"))  # tests/gpu/cases.py: the parity cases
BUILT = importlib.util.find_spec("shc_kernels._C_sim") is not None


def _selected(config) -> bool:
    if os.environ.get("SHC_SIM_TESTS") == "1":
        return True
    for arg in config.args:
        path = Path(str(arg).split("::")[0]).resolve()
        if path == HERE or HERE in path.parents:
            return True
    return False


def pytest_collection_modifyitems(config, items):
    if BUILT and _selected(config):
        return
    why = "run by `make cuda-sim`" if BUILT else "shc_kernels._C_sim is not built (make cuda-sim)"
    skip = pytest.mark.skip(reason=why)
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(skip)


@pytest.fixture
def sim():
    """The loaded _C_sim (its shc_sim:: ops registered with the package's autograd formulas), with
    its default emulation settings restored after the test."""
    from sim_helpers import emulation, load

    load()
    with emulation() as module:
        yield module
