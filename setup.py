"""Build for shc_kernels: package metadata and the C++ (and, when available, CUDA) extension.

All build switches are read in one place, `_want_cuda()` below:
  * no csrc/cuda/*.cu files -> CPU-only CppExtension (whatever the switches say).
  * SHC_SKIP_CUDA=1  -> never build CUDA sources.
  * FORCE_CUDA=1     -> build the CUDA sources even if torch.version.cuda / nvcc checks fail.
  * otherwise CUDA is built only when torch.version.cuda is set and nvcc is found.
Without CUDA the CPU-only CppExtension is built and shc_kernels._C.cuda_compiled() is False.
TORCH_CUDA_ARCH_LIST defaults to "8.0;9.0+PTX" for CUDA builds (there is no GPU to detect): sm_80
and sm_90 cubins plus compute_90 PTX, which the driver compiles for newer GPUs. The list a build
used is recorded in shc_kernels/_build_info.py (CUDA_ARCH_LIST; None for a CPU-only build).
SHC_PTXAS_VERBOSE=1 adds `-Xptxas -v` (registers, shared memory, spills per kernel; tools/cuda_check.sh).
The extension is linked without debug information (-Wl,--strip-debug): 3 MB instead of 17.
"""

import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
# The release wheel's GPUs: sm_80 and sm_90 cubins, and compute_90 PTX for newer GPUs to JIT.
DEFAULT_CUDA_ARCH_LIST = "8.0;9.0+PTX"


def _rel(paths):
    return sorted(os.path.relpath(p, ROOT) for p in paths)


def _find_nvcc():
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if cuda_home and os.path.exists(os.path.join(cuda_home, "bin", "nvcc")):
        return os.path.join(cuda_home, "bin", "nvcc")
    found = shutil.which("nvcc")
    if found:
        return found
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        return "/usr/local/cuda/bin/nvcc"
    return None


def _cuda_home():
    """The CUDA toolkit folder (bin/nvcc, include/, lib64/): CUDA_HOME when set, else /usr/local/cuda,
    else the folder above the nvcc on PATH. torch guesses it from PATH only, and an nvcc wrapper in
    /usr/local/bin would make it look for libcudart in /usr/local/lib."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    for home in candidates:
        if (
            home
            and os.path.exists(os.path.join(home, "bin", "nvcc"))
            and os.path.isdir(os.path.join(home, "include"))
        ):
            return home
    return None


def _want_cuda(torch, cuda_sources):
    """The one place that decides whether CUDA sources are compiled."""
    if not cuda_sources:  # nothing to compile: CPU-only CppExtension
        return False
    if os.environ.get("SHC_SKIP_CUDA", "0") == "1":
        return False
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    return bool(torch.version.cuda) and _find_nvcc() is not None


def _cuda_include_dirs():
    """CUDA library headers that torch's CUDA headers include (cublas_v2.h, cusparse.h, ...):
    a toolkit without them (nvcc and cudart only) is completed by the pip nvidia-*-cu13 wheels
    that a CUDA build of torch installs (site-packages/nvidia/cu13/include)."""
    import importlib.util

    dirs = []
    spec = importlib.util.find_spec("nvidia")
    for base in list(spec.submodule_search_locations or []) if spec else []:
        for sub in ("cu13", "cu12"):
            inc = os.path.join(base, sub, "include")
            if os.path.exists(os.path.join(inc, "cublas_v2.h")):
                dirs.append(inc)
    return dirs[:1]


def _write_build_info(torch, cuda_arch_list):
    """Record the torch release the extension is compiled against: shc_kernels checks it before
    loading _C, so another torch gives a clear ImportError, not an undefined-symbol crash. Also
    the CUDA architectures compiled (None: no CUDA kernels), which tests/test_packaging.py checks
    against the cubins in the built library. Rewritten only when it changes."""
    text = (
        '"""Written by setup.py at build time."""\n\n'
        f"TORCH_VERSION = {torch.__version__!r}\n"
        f"TORCH_CUDA = {torch.version.cuda!r}\n"
        f"CUDA_ARCH_LIST = {cuda_arch_list!r}\n"
    )
    path = os.path.join(ROOT, "shc_kernels", "_build_info.py")
    if not os.path.exists(path) or open(path).read() != text:
        with open(path, "w") as f:
            f.write(text)


def _torch_pin():
    """install_requires pin: the torch release this build's compiled code needs."""
    try:
        import torch
    except ImportError:
        return "torch"
    return f"torch=={torch.__version__.split('+')[0]}"


def _extensions():
    if "CUDA_HOME" not in os.environ and _cuda_home():
        os.environ["CUDA_HOME"] = _cuda_home()  # read by torch.utils.cpp_extension at import
    try:
        import torch
        from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
    except ImportError:  # metadata-only operations (e.g. `setup.py --version`)
        return [], {}

    cpu_sources = _rel(glob.glob(os.path.join(ROOT, "csrc", "*.cpp")))
    cpu_sources += _rel(glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp")))
    cuda_sources = _rel(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
    cuda_sources += _rel(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cpp")))
    with_cuda = _want_cuda(torch, [s for s in cuda_sources if s.endswith(".cu")])
    if not with_cuda:
        cuda_sources = []

    if with_cuda:
        # No GPU on the build machines: never let torch probe for one.
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCH_LIST)
    _write_build_info(torch, os.environ["TORCH_CUDA_ARCH_LIST"] if with_cuda else None)
    define_macros = [("SHC_TORCH_VERSION", f'"{torch.__version__}"')]
    # Portable flags: no -march=native (the wheel must run on other x86-64 machines).
    # The heavy lifting is done by oneDNN brgemm / BLAS inside libtorch_cpu, which pick the
    # instruction set at runtime.
    cxx_flags = ["-O3", "-fopenmp", "-Wno-unknown-pragmas"]
    if os.uname().machine in ("x86_64", "AMD64"):
        cxx_flags.append("-march=x86-64-v2")
    extra_link_args = ["-fopenmp"]
    if sys.platform.startswith("linux"):
        # Python's CFLAGS carry -g: debug sections would be 14 MB of the CUDA build's 17 MB.
        extra_link_args.append("-Wl,--strip-debug")

    if with_cuda:
        define_macros.append(("SHC_WITH_CUDA", None))
        nvcc_flags = ["-O3", "--expt-relaxed-constexpr"]
        # SHC_PTXAS_VERBOSE=1: print each kernel's registers, shared memory and spills.
        if os.environ.get("SHC_PTXAS_VERBOSE", "0") == "1":
            nvcc_flags += ["-Xptxas", "-v"]
        ext = CUDAExtension(
            "shc_kernels._C",
            sources=cpu_sources + cuda_sources,
            define_macros=define_macros,
            include_dirs=_cuda_include_dirs(),
            extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
            extra_link_args=extra_link_args,
        )
    else:
        ext = CppExtension(
            "shc_kernels._C",
            sources=cpu_sources,
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=extra_link_args,
        )
    cmdclass = {"build_ext": BuildExtension.with_options(use_ninja=True)}
    return [ext], cmdclass


# pip names of the extras (shc_kernels/research/__init__.py's EXTRAS lists the import names the
# commands check; export's are checked where shc_kernels.export imports them):
# train: the paper's models (torchvision), progress bars (tqdm), the embedded digits (scikit-learn);
# robustness: train plus the attack suite (torchattacks) and the reports' figures (matplotlib).
# export: shc_kernels.export's ONNX path (to_onnx; onnxscript for torch's dynamo exporter) and its check in
# onnxruntime (check_onnx).
_TRAIN = ["torchvision", "tqdm", "numpy", "scikit-learn"]
_EXPORT = ["onnx", "onnxruntime", "onnxscript"]
EXTRAS_REQUIRE = {
    "train": _TRAIN,
    "robustness": _TRAIN + ["torchattacks", "matplotlib"],
    "export": _EXPORT,
    "all": _TRAIN + ["torchattacks", "matplotlib"] + _EXPORT,
}


def main():
    # `make build` compiles _C in place (build_ext --inplace), then installs the checkout editable
    # for the `shc` command: SHC_EDITABLE_PYTHON_ONLY=1 keeps that install from compiling the same
    # extension a second time in a temporary folder (minutes on 2 cores); the in-place _C serves.
    if os.environ.get("SHC_EDITABLE_PYTHON_ONLY", "0") == "1":
        ext_modules, cmdclass = [], {}
    else:
        ext_modules, cmdclass = _extensions()
    setup(
        name="shc_kernels",
        version="0.1.0",
        description="Fast Statistical Hyper-Convolution (SHC) layers for PyTorch",
        packages=find_packages(include=["shc_kernels", "shc_kernels.*"]),
        python_requires=">=3.10",
        # The layer library needs torch alone; the research application (shc_kernels.research)
        # and the commands built on it take extras (their import names: shc_kernels.research.EXTRAS).
        install_requires=[_torch_pin()],
        extras_require=EXTRAS_REQUIRE,
        entry_points={"console_scripts": ["shc=shc_kernels.cli:main"]},
        ext_modules=ext_modules,
        cmdclass=cmdclass,
        zip_safe=False,
    )


# setuptools (pip, `python setup.py ...`) runs this file as __main__; tests/test_packaging.py
# loads it under another name to check the build switches without building.
if __name__ == "__main__":
    main()
