# Two commands do everything on a fresh machine: `make test` and `make demo`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
# Build the C++ and CUDA extension for these GPUs (sm_80, sm_90 cubins; compute_90 PTX for newer).
export TORCH_CUDA_ARCH_LIST ?= 8.0;9.0+PTX
export MAX_JOBS ?= 2
# Without a GPU the everyday build is CPU-only (fast); `make cuda-check` builds and checks the
# CUDA sources separately. On a machine with a GPU, setup.py's own rule applies.
export SHC_SKIP_CUDA ?= $(if $(shell command -v nvidia-smi 2>/dev/null),0,1)

.PHONY: setup build test lint pytest triton-test triton-check cmake-check cuda-check cuda-sim cuda-sim-sanitize wheel wheel-test demo info clean

setup: $(VENV)/.stamp-deps build fashion-mnist

# Fashion-MNIST (Debian's dataset-fashion-mnist, in /usr/share/datasets/fashion-mnist) for
# `shc demo` and `shc study`: installed with apt-get where that can run (as root); otherwise a
# hint. Never fails setup: without it the embedded digits stay the fallback.
.PHONY: fashion-mnist study
FASHION_MNIST := /usr/share/datasets/fashion-mnist
fashion-mnist:
	@if [ -f $(FASHION_MNIST)/train-images-idx3-ubyte.gz ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing dataset-fashion-mnist (apt-get)"; \
		{ apt-get install -y -q dataset-fashion-mnist || { apt-get update -q && apt-get install -y -q dataset-fashion-mnist; }; } >/dev/null 2>&1 \
		|| echo "make setup: apt-get could not install dataset-fashion-mnist: shc demo and shc study use the digits"; \
	else echo "make setup: Fashion-MNIST is not installed: run 'sudo apt-get install dataset-fashion-mnist' (Debian/Ubuntu) or pass shc train/attack/study a folder of its IDX files; until then shc demo and shc study use the digits"; fi

$(PY):
	$(PYTHON) -m venv $(VENV)

# Re-run only when the pins change: torch is several GB.
$(VENV)/.stamp-deps: requirements-dev.txt | $(PY)
	$(PIP) install -q $(TORCH_PINS)
	$(PIP) install -q -r requirements-dev.txt
	touch $@

# Incremental (ninja): a no-op when nothing in csrc/ changed. The editable install (for the
# `shc` command) is done once, without compiling _C again (the in-place build above serves it).
# INPLACE_CUDA_BUILD=1 (.ci/run sets it; it needs nvcc and a CUDA torch): the extension is compiled
# once for the whole CI. tools/cuda_check.sh (`cuda-build`) builds it with the CUDA kernels for the
# release architectures in build/cuda-check/src and checks it, its _C and _build_info.py are
# copied in place, and every test imports that build: the CPU kernels pytest, triton-test and
# cuda-sim run are the objects the CUDA wheel links (`make wheel` reuses that folder). Without it
# the CPU sources were compiled twice (in place CPU-only, then again beside the .cu files: 16 of the
# 19 objects of the CUDA build, about 600 of its 870 s on the loaded 2-core VM). The CPU-only
# configuration is still compiled: by `make cmake-check` (csrc/cpu and csrc/shc.cpp without CUDA)
# and by every `make build` outside CI.
INPLACE_CUDA_BUILD ?= 0
CUDA_CHECK_SO_DIR := build/cuda-check/src/shc_kernels
ifeq ($(INPLACE_CUDA_BUILD),1)
build: $(VENV)/.stamp-deps cuda-build
	cp $(CUDA_CHECK_SO_DIR)/_C*.so $(CUDA_CHECK_SO_DIR)/_build_info.py shc_kernels/
	@echo "build: shc_kernels/_C is the cuda-check build (INPLACE_CUDA_BUILD=1)"
else
build: $(VENV)/.stamp-deps
	$(PY) setup.py -q build_ext --inplace
endif
	@if [ ! -f $(VENV)/.stamp-editable ]; then \
		SHC_EDITABLE_PYTHON_ONLY=1 $(PIP) install -q --no-build-isolation --no-deps -e . \
			&& touch $(VENV)/.stamp-editable; fi

lint: setup
	$(VENV)/bin/ruff check .

# SETUP_DONE=1 (the sub-make of `make test`, after its own setup): the test targets skip the setup
# check, which with INPLACE_CUDA_BUILD=1 would run tools/cuda_check.sh again.
SETUP := $(if $(filter 1,$(SETUP_DONE)),,setup)

pytest: $(SETUP)
	$(PY) -m pytest -q tests

# The Triton kernels on CPU tensors through the interpreter (it must be chosen before import).
triton-test: $(SETUP)
	TRITON_INTERPRET=1 $(PY) -m pytest -q -p no:cacheprovider tests/test_triton.py tests/test_triton_fused.py \
		tests/test_triton_onelaunch.py

# Every Triton kernel and autotune config compiled ahead of time for sm_80 and sm_90.
triton-check: setup
	env -u TRITON_INTERPRET $(PY) tools/triton_aot_check.py

# CMake build of the same op library against libtorch, loaded and checked in a fresh process.
cmake-check: setup
	PATH=$(abspath $(VENV))/bin:$$PATH bash tools/cmake_check.sh

# The wheel holds the compiled extension, built from a copy of the tracked sources. With nvcc and
# a CUDA build of torch it is the release wheel: the CUDA kernels as sm_80 and sm_90 cubins plus
# compute_90 PTX (WHEEL_CUDA_ARCHS; the driver JITs the PTX for newer GPUs); it still imports
# without a GPU or driver. SHC_SKIP_CUDA=1 given by the caller (not this file's no-GPU default,
# which is for the in-place build) makes a CPU-only wheel, in a temporary folder. The CUDA wheel
# is built where and as `make cuda-check` builds (build/cuda-check/src, its flags): when
# TORCH_CUDA_ARCH_LIST equals WHEEL_CUDA_ARCHS (.ci/run sets it) ninja reuses cuda-check's
# objects and the wheel costs a link, not a second CUDA build. The sources reach that folder by
# content (tools/sync_tree.py), so a file edited during an earlier build is recompiled.
WHEEL_CUDA_ARCHS ?= 8.0;9.0+PTX
WHEEL_CUDA_SRC := build/cuda-check/src
WHEEL_SKIP_CUDA := $(if $(filter environment command line,$(origin SHC_SKIP_CUDA)),$(SHC_SKIP_CUDA),0)
WHEEL_WANTS_CUDA = [ "$(WHEEL_SKIP_CUDA)" != 1 ] && \
	$(PY) -c 'import sys, torch; sys.exit(not torch.version.cuda)' && \
	{ command -v nvcc > /dev/null || [ -x "$${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ]; }

wheel: $(VENV)/.stamp-deps
	@set -e; rm -rf dist; mkdir -p dist; \
	if $(WHEEL_WANTS_CUDA); then cuda=1; src=$(abspath $(WHEEL_CUDA_SRC)); mkdir -p $$src; \
		rm -rf $$src/*.egg-info $$src/build/lib.* $$src/build/bdist.* $$src/shc_kernels/*.so; \
		echo "wheel: CUDA kernels for TORCH_CUDA_ARCH_LIST=$(WHEEL_CUDA_ARCHS), built in $$src"; \
	else cuda=0; src=$$(mktemp -d /tmp/shc-src-XXXXXX); \
		echo "wheel: CPU-only (SHC_SKIP_CUDA=1, no nvcc, or a CPU-only torch)"; fi; \
	stage=$$(mktemp -d /tmp/shc-stage-XXXXXX); \
	git ls-files -z | tar --null --ignore-failed-read -T - -cf - | tar -C $$stage -xf -; \
	$(PY) tools/sync_tree.py $$stage $$src; rm -rf $$stage; \
	start=$$(date +%s); \
	(cd $$src && env SHC_SKIP_CUDA=$$((1 - cuda)) FORCE_CUDA=$$cuda SHC_PTXAS_VERBOSE=$$cuda \
		TORCH_CUDA_ARCH_LIST="$(WHEEL_CUDA_ARCHS)" \
		$(abspath $(PY)) -m pip wheel -q --no-build-isolation --no-deps -w $(abspath dist) .); \
	[ $$cuda = 1 ] || rm -rf $$src; \
	echo "wheel: built in $$(( $$(date +%s) - start )) s"; ls -l dist

# wheel-test installs the wheel into a new virtual environment and runs, from outside the checkout,
# the tests whose subject is the installed artefact (WHEEL_TESTS): test_packaging (the build: its
# torch pin, with SHC_EXPECT_CUDA_ARCHS set the CUDA kernels, a CUDA kernel for every shc:: op and
# exactly those cubins and PTX, listed here with cuobjdump from the triton package; no _C_sim),
# test_base_install (the installed package with torch alone: the layer, `shc info` and `shc check`
# from the wheel, each extra's command naming it), test_backends (the installed kernels against the
# reference on hypothesis shapes) and tests/cli/test_cli.py, test_check.py (the `shc` commands of
# the installed package, `shc check` on its backends).
# The rest is not run twice: the kernels' numerics on every shape and method (test_cpu_*,
# test_autograd_modes, test_gradients, test_bench_knobs) and the ops' torch.library registration
# (test_custom_ops: opcheck, torch.compile, autocast; 66 of pytest's 481 s on the loaded VM) run in
# `make test` on the same sources with the same flags (in CI, .ci/run's INPLACE_CUDA_BUILD=1, on the
# very objects this wheel links);
# the pure-Python layers above the ops (test_reference, test_errors, test_module, test_one_path,
# test_workflows, the argument checks of tests/cli, tests/research) run in `make test` from the same
# files; test_gpu_model*, test_sync_tree need tools/ (not in a wheel), tests/sim needs _C_sim (never
# in a wheel), tests/gpu a GPU.
# The new environment reuses .venv's site-packages (torch is 5 GB) through a .pth line, which
# adds that folder to sys.path without running its .pth files: the checkout's editable install
# stays out.
WHEEL_TESTS := tests/test_packaging.py tests/test_base_install.py tests/test_backends.py \
	tests/cli/test_cli.py tests/cli/test_check.py
wheel-test: wheel
	@set -e; tmp=$$(mktemp -d /tmp/shc-wheel-XXXXXX); \
	if $(WHEEL_WANTS_CUDA); then archs="$(WHEEL_CUDA_ARCHS)"; else archs=; fi; \
	$(PYTHON) -m venv $$tmp/venv; \
	site=$$($$tmp/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	$(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' > $$site/_shc_base.pth; \
	$$tmp/venv/bin/python -m pip install -q --no-deps --no-index dist/*.whl; \
	echo "wheel-test: $$(ls dist/*.whl) is $$(du -k dist/*.whl | cut -f1) KiB"; \
	cp -r tests $$tmp/tests; cd $$tmp; \
	$$tmp/venv/bin/python -c 'import shc_kernels as s; assert "/venv/" in s.__file__, s.__file__; \
	assert "cpu" in s.available_backends(); print("testing the installed wheel:", s.__file__)'; \
	if [ -n "$$archs" ]; then \
		so=$$($$tmp/venv/bin/python -c 'from shc_kernels import ops; print(ops._C.__file__)'); \
		cuobjdump=$$($$tmp/venv/bin/python -c 'import os, triton; \
		print(os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump"))'); \
		echo "wheel-test: device code in $$(basename $$so):"; \
		$$cuobjdump --list-elf $$so | sed 's/^/  /'; $$cuobjdump --list-ptx $$so | sed 's/^/  /'; fi; \
	set +e; SHC_EXPECT_CUDA_ARCHS="$$archs" $$tmp/venv/bin/python -m pytest -q -p no:cacheprovider \
		$(WHEEL_TESTS); \
	rc=$$?; rm -rf $$tmp; exit $$rc

# The CUDA sources built for sm_80 and sm_90 with -Xptxas -v (registers, shared memory, spills),
# loaded without a GPU, every shc:: op checked for a CUDA kernel. With INPLACE_CUDA_BUILD=1 `make
# build` has done it already (cuda-build runs once per make run).
.PHONY: cuda-build
cuda-build: $(VENV)/.stamp-deps
	bash tools/cuda_check.sh
cuda-check: setup cuda-build

# The same CUDA sources compiled as host C++ against csrc/simt's SIMT layer (shc_kernels._C_sim,
# test-only, never in the wheel) and tests/sim run on the CPU: the GPU parity cases against the
# reference under several emulated machines, and the emulator's own tests.
cuda-sim: setup
	$(PY) tools/simt_build.py
	$(PY) -m pytest -q -p no:cacheprovider tests/sim

# A subset of tests/sim under ThreadSanitizer (2 blocks live at once) and AddressSanitizer + UBSan.
cuda-sim-sanitize: setup
	bash tools/simt_sanitize.sh

# The static performance report of the GPU kernels, read without a GPU (nothing in it is a timing):
# every Triton kernel compiled as the runtime launches it and every CUDA kernel of the cuda-check
# build (SASS mix, registers, spills, occupancy, waves), the emulator's global sectors and shared
# wavefronts per request, and a roofline bound per ResNet-50 3x3 shape beside the plain conv's:
# bench/results/gpu_model.md and .json (tools/gpu_model.py; docs/gpu.md says what it can and cannot
# say). Separate from `test` (minutes of compiling); tests/test_gpu_model.py checks its facts there.
.PHONY: gpu-model
gpu-model: cuda-check
	env -u TRITON_INTERPRET $(PY) tools/gpu_model.py
	SHC_GPU_MODEL_REQUIRE_CUDA=1 env -u TRITON_INTERPRET $(PY) -m pytest -q -p no:cacheprovider tests/test_gpu_model.py

# Which target covers what (.ci/run adds the wheel): lint: ruff. triton-check: every Triton kernel
# and autotune config compiled for sm_80/sm_90 (first, so that tests/test_gpu_model.py finds 6 of
# the 7 kernels of its 64@56 layer in the shared cache build/gpu-model/). pytest: tests/ less
# tests/sim (cuda-sim runs it) and the interpreter files (they skip without TRITON_INTERPRET);
# triton-test: those two files under the Triton interpreter. pytest and triton-test each keep about
# one core busy (small tensors; the interpreter is Python), so they run side by side (-j2) in a
# sub-make; cuda-sim (which writes shc_kernels/_C_sim.so that pytest would see appear) runs after.
# cmake-check: the CPU ops built by CMake without CUDA. cuda-check: the CUDA build and its checks
# (with INPLACE_CUDA_BUILD=1 done by setup, and the build pytest then tests). cuda-sim: csrc/cuda as
# host C++ on the SIMT emulator, tests/sim.
.PHONY: python-tests
python-tests: $(SETUP)
	$(MAKE) --no-print-directory -j2 --output-sync=target SETUP_DONE=1 pytest triton-test

test: setup lint triton-check python-tests cmake-check cuda-check cuda-sim

info: setup
	$(VENV)/bin/shc info

demo: setup
	$(VENV)/bin/shc demo

# Does SHC make a network more robust? Trains 16 Plain-10 models on Fashion-MNIST, attacks them and
# writes results/fashion_mnist/ (units/ and report.md; 11.4 hours of one core as it ran here). Resumable on any
# machine from the committed units: `shc study --status` says how much is left (docs/robustness.md).
study: setup
	OMP_NUM_THREADS=1 nice $(VENV)/bin/shc study --threads 1 $(STUDY_ARGS)

clean:
	rm -rf build dist *.egg-info shc_kernels/_C*.so $(VENV)/.stamp-editable
