"""The emulator's memory-access metrics (csrc/simt/simt_metrics.h, tools/gpu_model_sim.py, part of
`make gpu-model`) give what a GPU profiler reports on planted patterns: 32-byte sectors per
warp-wide global request and shared-memory wavefronts per request. They run in a separate build of
_C_sim (every load and store instrumented), so in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "gpu_model_sim.py"


@pytest.fixture(scope="module")
def patterns(tmp_path_factory):
    out = tmp_path_factory.mktemp("metrics") / "patterns.json"
    proc = subprocess.run(
        [sys.executable, str(TOOL), "--patterns-only", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.exists(), proc.stdout + proc.stderr
    return {(p["kind"], p["stride"]): p for p in json.loads(out.read_text())["patterns"]}


@pytest.mark.parametrize(
    "kind, stride, expected",
    [
        ("copy_f32", 1, 4),  # a fully coalesced fp32 copy: 128 bytes, 4 sectors
        ("copy_f32", 2, 8),
        ("copy_f32", 32, 32),  # every lane its own sector
        ("copy_f16", 1, 2),
        ("copy_f32x4", 1, 16),  # 16-byte lanes: 512 bytes
        ("shared_f32", 1, 1),
        ("shared_f32", 2, 2),  # 2-way bank conflict
        ("shared_f32", 32, 32),  # every lane in bank 0: 32-way
        ("shared_f32", 33, 1),  # the padded layout: conflict-free
        ("shared_f32", 0, 1),  # one word for all lanes: a broadcast
        ("shared_f32x4", 1, 4),  # 512 bytes in four 128-byte phases
        ("shared_f32x4", 2, 8),
    ],
)
def test_planted_patterns_give_the_profilers_counts(patterns, kind, stride, expected):
    p = patterns[(kind, stride)]
    assert p["got"] == expected, (
        f"{kind} stride {stride}: {p['got']} per request, a profiler reports {expected}"
    )


RUNS = ["fp32:nchw:64@8:split", "bf16:cl:64@8:split"]  # forward + backward of one layer each


@pytest.fixture(scope="module")
def layers(tmp_path_factory):
    out = tmp_path_factory.mktemp("metrics") / "layers.json"
    proc = subprocess.run(
        [sys.executable, str(TOOL), "--runs", *RUNS, "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.exists(), proc.stdout + proc.stderr
    runs = json.loads(out.read_text())["runs"]
    return {(r["dtype"], r["layout"]): {k["kernel"]: k for k in r["kernels"]} for r in runs}


@pytest.mark.parametrize(
    "run, kernel, access",
    [
        # the SIMT engine's operand rows and accumulator rows: 16-byte lanes, no bank conflict
        (("fp32", "nchw"), "conv_tile_simt", "shared_ld"),
        (("fp32", "nchw"), "dw_tile_simt", "shared_ld"),
        # the NCHW epilogue reads Cs column by column: a warp takes 8 rows x 4 columns
        (("fp32", "nchw"), "conv_epilogue", "shared_ld"),
        # the statistics' partial sums, (2 * split + 1, N * D): neighbouring channels neighbouring doubles
        (("fp32", "nchw"), "stats_combine_kernel", "global_ld"),
        (("bf16", "cl"), "stats_cols_kernel", "global_ld"),
        (("bf16", "cl"), "stats_cols_kernel", "global_st"),
        (("bf16", "cl"), "stats_combine_kernel", "global_ld"),
    ],
)
def test_these_kernels_access_memory_as_their_layouts_promise(layers, run, kernel, access):
    """Sectors or wavefronts per request at most the ideal (a broadcast goes below it)."""
    k = layers[run][kernel]
    got, ideal = k[access]["per_request"], k[access]["ideal_per_request"]
    assert got is not None and got <= ideal + 1e-9, (run, kernel, access, got, ideal, k["worst"])
