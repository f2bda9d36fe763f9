"""pytest fixtures; plain helpers live in helpers.py."""

import pytest
from helpers import CPU_BACKENDS


@pytest.fixture(params=CPU_BACKENDS)
def backend(request):
    return request.param


def pytest_configure(config):
    # Registered here too, so the suite is clean when run outside the checkout (wheel-test).
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one)")
