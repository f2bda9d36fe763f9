# Two commands do everything on a fresh machine: `make test` and `make demo`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
# Build the C++ (and, once csrc/cuda has kernels, CUDA) extension for these GPUs.
export TORCH_CUDA_ARCH_LIST ?= 8.0;9.0
export MAX_JOBS ?= 2
# Without a GPU the everyday build is CPU-only (fast); `make cuda-check` builds and checks the
# CUDA sources separately. On a machine with a GPU, setup.py's own rule applies.
export SHC_SKIP_CUDA ?= $(if $(shell command -v nvidia-smi 2>/dev/null),0,1)

.PHONY: setup build test lint pytest triton-test triton-check cmake-check cuda-check wheel wheel-test demo info clean

setup: $(VENV)/.stamp-deps build

$(PY):
	$(PYTHON) -m venv $(VENV)

# Re-run only when the pins change: torch is several GB.
$(VENV)/.stamp-deps: requirements-dev.txt | $(PY)
	$(PIP) install -q $(TORCH_PINS)
	$(PIP) install -q -r requirements-dev.txt
	touch $@

# Incremental (ninja): a no-op when nothing in csrc/ changed. The editable install (for the
# `shc` command) is done once.
build: $(VENV)/.stamp-deps
	$(PY) setup.py -q build_ext --inplace
	@if [ ! -f $(VENV)/.stamp-editable ]; then \
		$(PIP) install -q --no-build-isolation --no-deps -e . && touch $(VENV)/.stamp-editable; fi

lint: setup
	$(VENV)/bin/ruff check .

pytest: setup
	$(PY) -m pytest -q tests

# The Triton kernels on CPU tensors through the interpreter (it must be chosen before import).
triton-test: setup
	TRITON_INTERPRET=1 $(PY) -m pytest -q tests/test_triton.py

# Every Triton kernel and autotune config compiled ahead of time for sm_80 and sm_90.
triton-check: setup
	env -u TRITON_INTERPRET $(PY) -m shc_kernels.triton.aot_check

# CMake build of the same op library against libtorch, loaded and checked in a fresh process.
cmake-check: setup
	PATH=$(abspath $(VENV))/bin:$$PATH bash csrc/cmake_check.sh

# The wheel is built from a clean copy of the tracked sources (its build tree is deleted with
# the copy) and holds the compiled extension. wheel-test installs it into a new virtual
# environment and runs the test suite from outside the checkout against the installed package.
# The new environment reuses .venv's site-packages (torch is 5 GB) through a .pth line, which
# adds that folder to sys.path without running its .pth files: the checkout's editable install
# stays out.
wheel: setup
	@set -e; src=$$(mktemp -d /tmp/shc-src-XXXXXX); \
	git ls-files -z | xargs -0 -I{} cp --parents {} $$src/; \
	rm -rf dist; mkdir -p dist; \
	(cd $$src && SHC_SKIP_CUDA=$${SHC_SKIP_CUDA:-1} $(abspath $(PY)) -m pip wheel -q --no-build-isolation --no-deps -w $(abspath dist) .); \
	rm -rf $$src; ls dist

wheel-test: wheel
	@set -e; tmp=$$(mktemp -d /tmp/shc-wheel-XXXXXX); \
	$(PYTHON) -m venv $$tmp/venv; \
	site=$$($$tmp/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	$(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' > $$site/_shc_base.pth; \
	$$tmp/venv/bin/python -m pip install -q --no-deps --no-index dist/*.whl; \
	cp -r tests $$tmp/tests; cd $$tmp; \
	$$tmp/venv/bin/python -c 'import shc_kernels as s; assert "/venv/" in s.__file__, s.__file__; \
	assert "cpu" in s.available_backends(); print("testing the installed wheel:", s.__file__)'; \
	set +e; $$tmp/venv/bin/python -m pytest -q -p no:cacheprovider tests; rc=$$?; \
	rm -rf $$tmp; exit $$rc

# The CUDA sources built for sm_80 and sm_90 with -Xptxas -v (registers, shared memory, spills),
# loaded without a GPU, every shc:: op checked for a CUDA kernel.
cuda-check: setup
	bash csrc/cuda_check.sh

test: setup lint pytest triton-test triton-check cmake-check cuda-check

info: setup
	$(VENV)/bin/shc info

demo: setup
	$(VENV)/bin/shc demo

clean:
	rm -rf build dist *.egg-info shc_kernels/_C*.so $(VENV)/.stamp-editable
