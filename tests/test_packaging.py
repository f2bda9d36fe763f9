"""The compiled extension and the torch it was built against."""

from __future__ import annotations

import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import shc_kernels
from shc_kernels import backends, ops


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


# ---------------------------------------------------------------------------------------------
# The build switches (setup.py, loaded without building: only in a checkout)

SETUP_PY = Path(__file__).resolve().parents[1] / "setup.py"
needs_checkout = pytest.mark.skipif(not SETUP_PY.exists(), reason="setup.py is not here (installed wheel)")


@pytest.fixture
def setup_module(monkeypatch):
    for name in ("SHC_SKIP_CUDA", "FORCE_CUDA"):
        monkeypatch.delenv(name, raising=False)
    return runpy.run_path(str(SETUP_PY), run_name="setup_under_test")


@needs_checkout
def test_shc_skip_cuda_makes_a_cpu_only_build_even_with_force_cuda(setup_module, monkeypatch):
    want_cuda = setup_module["_want_cuda"]
    monkeypatch.setenv("SHC_SKIP_CUDA", "1")
    monkeypatch.setenv("FORCE_CUDA", "1")
    assert not want_cuda(torch, ["csrc/cuda/shc_cuda.cu"])


@needs_checkout
def test_force_cuda_builds_the_cuda_sources_and_none_without_sources(setup_module, monkeypatch):
    want_cuda = setup_module["_want_cuda"]
    monkeypatch.setenv("FORCE_CUDA", "1")
    assert want_cuda(torch, ["csrc/cuda/shc_cuda.cu"])
    assert not want_cuda(torch, [])


def _setup_call(setup_module):
    """What main() would hand setuptools.setup, with _extensions stubbed to a marker."""
    seen = {}
    scope = setup_module["main"].__globals__  # run_path returns a copy; main() reads its own globals
    scope["setup"] = lambda **kw: seen.update(kw)
    scope["_extensions"] = lambda: (["the extension"], {"build_ext": "BuildExtension"})
    setup_module["main"]()
    return seen


@needs_checkout
def test_the_editable_install_of_make_build_compiles_nothing(setup_module, monkeypatch):
    """`make build` compiles _C in place, then `pip install -e .` with SHC_EDITABLE_PYTHON_ONLY=1:
    that install must not compile the extension again (it did, in a temporary folder: minutes of CI);
    without the variable (the wheel, a user's `pip install`) the extension is built."""
    monkeypatch.setenv("SHC_EDITABLE_PYTHON_ONLY", "1")
    assert _setup_call(setup_module)["ext_modules"] == []
    monkeypatch.delenv("SHC_EDITABLE_PYTHON_ONLY")
    assert _setup_call(setup_module)["ext_modules"] == ["the extension"]
    makefile = SETUP_PY.with_name("Makefile").read_text()
    assert "SHC_EDITABLE_PYTHON_ONLY=1 $(PIP) install -q --no-build-isolation --no-deps -e ." in makefile


@needs_checkout
def test_release_architectures_are_sm80_sm90_and_compute90_ptx(setup_module):
    assert setup_module["DEFAULT_CUDA_ARCH_LIST"] == "8.0;9.0+PTX"
    assert expected_device_code("8.0;9.0+PTX") == ({"sm_80", "sm_90"}, {"sm_90"})


# ---------------------------------------------------------------------------------------------
# A CUDA build (the wheel on any machine, GPU or not): kernels, architectures, import without GPU.
# `make wheel-test` sets SHC_EXPECT_CUDA_ARCHS to the list the wheel was built for: then these
# tests fail, not skip, when the installed build has no CUDA kernels.

EXPECTED_ARCHS = os.environ.get("SHC_EXPECT_CUDA_ARCHS", "")


def built_arch_list() -> str | None:
    from shc_kernels import _build_info

    return getattr(_build_info, "CUDA_ARCH_LIST", None)


def needs_cuda_build():
    if EXPECTED_ARCHS:
        assert ops.cuda_compiled(), f"SHC_EXPECT_CUDA_ARCHS={EXPECTED_ARCHS}: this build has no CUDA kernels"
    elif not ops.cuda_compiled():
        pytest.skip("this build has no CUDA kernels")


def expected_device_code(arch_list: str) -> tuple[set[str], set[str]]:
    """(cubin architectures, PTX architectures) that TORCH_CUDA_ARCH_LIST asks nvcc for:
    "8.0;9.0+PTX" -> ({"sm_80", "sm_90"}, {"sm_90"})."""
    cubins, ptx = set(), set()
    for entry in arch_list.replace(" ", ";").split(";"):
        if not entry:
            continue
        arch = "sm_" + entry.removesuffix("+PTX").replace(".", "")
        cubins.add(arch)
        if entry.endswith("+PTX"):
            ptx.add(arch)
    return cubins, ptx


def cuobjdump_list(so: str, what: str) -> set[str]:
    """The architectures cuobjdump (shipped in the triton package) lists in ``so``: ``what`` is
    "elf" (cubins) or "ptx"."""
    triton = pytest.importorskip("triton")
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not tool.exists():
        assert not EXPECTED_ARCHS, f"cuobjdump not found at {tool}"
        pytest.skip(f"cuobjdump not found at {tool}")
    proc = subprocess.run([str(tool), f"--list-{what}", so], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return set(re.findall(r"\.(sm_\d+a?)\.(?:cubin|ptx)", proc.stdout))


def test_a_cuda_build_was_built_for_the_expected_architectures():
    needs_cuda_build()
    built = built_arch_list()
    assert built, "_build_info.CUDA_ARCH_LIST is not recorded for a CUDA build"
    if EXPECTED_ARCHS:
        assert built == EXPECTED_ARCHS


def test_a_cuda_build_holds_exactly_the_cubins_and_ptx_of_its_arch_list():
    needs_cuda_build()
    cubins, ptx = expected_device_code(built_arch_list() or "")
    assert cuobjdump_list(ops._C.__file__, "elf") == cubins
    assert cuobjdump_list(ops._C.__file__, "ptx") == ptx


def test_every_shc_op_has_a_cuda_kernel_in_a_cuda_build():
    needs_cuda_build()
    names = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("shc::"))
    assert "shc::shc_conv2d" in names and "shc::modulated_conv2d" in names
    # shc_conv2d_backward is the CPU's one-call backward; on CUDA the layer's backward composes
    # the other ops (ops._layer_grad). shc_conv2d_grad is that composition as an op
    # (CompositeImplicitAutograd: no kernel of its own on any device).
    cpu_only = {"shc::shc_conv2d_backward", "shc::shc_conv2d_grad"}
    missing = [
        n
        for n in names
        if n not in cpu_only and not torch._C._dispatch_has_kernel_for_dispatch_key(n, "CUDA")
    ]
    assert not missing, f"shc ops without a CUDA kernel: {missing}"
    assert cpu_only <= set(names)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here")
def test_a_cuda_build_imports_without_a_gpu_and_says_why_cuda_cannot_run():
    needs_cuda_build()
    assert backends.unavailable_reason("cuda") == "no CUDA device is available"
    assert "cpu" in shc_kernels.available_backends()


def test_the_wheel_holds_no_cuda_on_cpu_build():
    # _C_sim (make cuda-sim) is test-only: an installed wheel must not carry it.
    if "site-packages" not in shc_kernels.__file__:
        pytest.skip("not an installed package")
    import importlib.util

    assert importlib.util.find_spec("shc_kernels._C_sim") is None
    assert backends.unavailable_reason("cuda_sim") is not None
