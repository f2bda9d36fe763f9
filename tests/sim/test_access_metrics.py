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
