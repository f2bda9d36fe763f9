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

.PHONY: setup build test lint pytest triton-test triton-check cmake-check demo info clean

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

test: setup lint pytest triton-test triton-check cmake-check

info: setup
	$(VENV)/bin/shc info

demo: setup
	$(VENV)/bin/shc demo

clean:
	rm -rf build dist *.egg-info shc_kernels/_C*.so $(VENV)/.stamp-editable
