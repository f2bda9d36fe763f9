"""pytest-benchmark suite: the methods of `shc bench` on the foundation's four shapes.

    .venv/bin/python -m pytest bench/test_bench_layers.py --benchmark-only [--benchmark-json PATH]

Not part of `make test` (benchmarks are numbers, not pass/fail); `shc bench` prints the same
comparison as one table with ratios to the plain conv. BENCH_BATCH (default 32) and
BENCH_SHAPES (default "core", or "smoke") pick the size.
"""

from __future__ import annotations

import os

import pytest
import torch

from shc_kernels.cli import bench

BATCH = int(os.environ.get("BENCH_BATCH", "32"))
SHAPES = bench.SHAPES[os.environ.get("BENCH_SHAPES", "core")]
METHODS = list(bench.method_fns(1))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
@pytest.mark.parametrize("pass_", ["fwd", "fwdbwd"])
def test_layer(benchmark, shape, method, pass_):
    torch.set_num_threads(os.cpu_count() or 1)
    name, cin, cout, hw, stride = shape
    fns = bench.method_fns(stride)
    x, params = bench.make_inputs(cin, cout, hw, BATCH, "cpu", torch.float32, False)
    fwd, fwdbwd = bench._fwd_and_fwdbwd(fns[method], x, params)
    benchmark.group = f"{name} {pass_}"
    benchmark.pedantic(fwd if pass_ == "fwd" else fwdbwd, rounds=5, warmup_rounds=1)
