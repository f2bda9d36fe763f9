"""pytest fixtures; plain helpers live in helpers.py."""

import pytest
from helpers import CPU_BACKENDS


@pytest.fixture(params=CPU_BACKENDS)
def backend(request):
    return request.param
