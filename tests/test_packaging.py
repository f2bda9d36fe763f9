"""The compiled extension and the torch it was built against."""

from __future__ import annotations

import subprocess
import sys

import torch

import shc_kernels
from shc_kernels import ops


def test_build_records_the_torch_it_was_compiled_against():
    from shc_kernels import _build_info

    assert _build_info.TORCH_VERSION == torch.__version__
    assert ops._C.built_torch_version() == torch.__version__


def test_another_torch_gets_a_clear_import_error():
    code = "import torch; torch.__version__ = '9.9.9'; import shc_kernels"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "ImportError: shc_kernels was compiled against torch" in proc.stderr
    assert "but torch 9.9.9 is installed" in proc.stderr


def test_package_version():
    assert shc_kernels.__version__ == "0.1.0"
