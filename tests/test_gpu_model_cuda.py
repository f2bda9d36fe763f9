"""Structural facts of the CUDA conv and weight-gradient main loops (csrc/cuda/conv_tile.cuh,
weight_grad.cuh) read from the SASS of the `make cuda-check` build (build/cuda-check), sm_80 and
sm_90: for fp16 and bf16 the operands reach the tensor cores through ldmatrix (LDSM, no generic
loads or MOVM transposes), the stages are filled with 16-byte cp.async (LDGSTS), and nothing
spills. Read with tools/gpu_model*.py's readers; no GPU is used and nothing here is a timing. Skips
where that build or cuobjdump is absent."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if not (ROOT / "tools" / "gpu_model.py").exists():  # make wheel-test runs a copy of tests/ alone
    pytest.skip("tools/gpu_model.py is not here (installed wheel)", allow_module_level=True)
sys.path.insert(0, str(ROOT / "tools"))

import gpu_model as gm  # noqa: E402
import gpu_model_sass as gs  # noqa: E402

ARCHS = (80, 90)
TC = ("Half", "BFloat16")


@pytest.fixture(scope="module")
def rows():
    so = gm.cuda_so()
    if so is None:
        pytest.skip("no make cuda-check build (build/cuda-check)")
    try:
        gs.tool("cuobjdump")
    except (ImportError, FileNotFoundError):
        pytest.skip("cuobjdump (the triton package's) is not installed")
    out = {}
    for r in gm.cuda_rows(so, ARCHS):
        out.setdefault((r["kernel"], r["dtype"], r["arch"]), []).append(r)
    return out


def _one(rows, kernel, dtype, arch):
    got = rows.get((kernel, dtype, arch), [])
    assert len(got) == 1, f"{kernel}<{dtype}> sm_{arch}: {len(got)} instantiations in the build"
    return got[0]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype", TC)
@pytest.mark.parametrize("kernel", ["conv_kernel", "fused_shc_kernel"])
def test_conv_main_loop_is_ldmatrix_mma_sync_fed_by_cp_async(rows, kernel, dtype, arch):
    r = _one(rows, kernel, dtype, arch)
    loop = r["main_loop"]
    assert loop["hmma"] > 0, "no tensor-core MMA in the main loop"
    mix = f"{loop['ldsm']} LDSM, {loop['ld_generic']} LD, {loop['movm']} MOVM"
    assert loop["ldsm"] > 0 and loop["movm"] == 0 and loop["ld_generic"] == 0, f"not ldmatrix: {mix}"
    assert loop["ldgsts"] > 0 and 128 in loop["global_load_bits"], "stages not filled by 16-byte cp.async"
    assert loop["ldl"] + loop["stl"] == 0 and r["spill_bytes"] == 0, "spills"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype", TC)
def test_the_cp_async_conv_loop_is_lean(rows, dtype, arch):
    # 104 (bf16) and 100 (fp16) static instructions per m16n8k16 in the loop of the WMMA version with
    # one register-staged stage; about 24 with ldmatrix, mma.sync and cp.async (e9fa3fd)
    loop = _one(rows, "conv_kernel", dtype, arch)["main_loop"]
    assert loop["instr_per_mma"] is not None and loop["instr_per_mma"] < 40, loop["instr_per_mma"]
    assert loop["ldg"] + loop["ld_generic"] <= 8, "synchronous global loads beyond the tap scales"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype", TC)
def test_the_general_conv_kernel_uses_ldmatrix_and_does_not_spill(rows, dtype, arch):
    r = _one(rows, "conv_general_kernel", dtype, arch)
    loop = r["main_loop"]
    assert loop["hmma"] > 0 and loop["ldsm"] > 0 and loop["movm"] == 0 and loop["ld_generic"] == 0
    assert r["spill_bytes"] == 0 and loop["ldl"] + loop["stl"] == 0


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype", ["float", "double"])
def test_the_simt_conv_kernels_do_not_spill(rows, dtype, arch):
    r = _one(rows, "conv_kernel", dtype, arch)
    assert r["spill_bytes"] == 0 and r["main_loop"]["ldl"] + r["main_loop"]["stl"] == 0


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype", TC)
def test_dw_main_loop_is_ldmatrix_mma_sync_fed_by_cp_async(rows, dtype, arch):
    # the WMMA version (b328d3e's record, sm_90): bf16 16 LD + 16 MOVM and no LDSM for 8 HMMA, no
    # LDGSTS, 2-byte loads, 175 static instructions per m16n8k16; 31 with the conv tile's engine
    r = _one(rows, "dw_kernel", dtype, arch)
    loop = r["main_loop"]
    mix = f"{loop['ldsm']} LDSM, {loop['ld_generic']} LD, {loop['movm']} MOVM"
    assert loop["hmma"] > 0 and loop["ldsm"] > 0 and loop["movm"] == 0 and loop["ld_generic"] == 0, mix
    assert loop["ldgsts"] > 0 and 128 in loop["global_load_bits"], "stages not filled by 16-byte cp.async"
    assert loop["ldg"] <= 2, "synchronous global loads beyond the sample's m[n, t]"
    assert loop["instr_per_mma"] is not None and loop["instr_per_mma"] < 40, loop["instr_per_mma"]
    assert loop["ldl"] + loop["stl"] == 0 and r["spill_bytes"] == 0, "spills"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype", TC)
def test_the_general_dw_kernel_uses_ldmatrix_and_does_not_spill(rows, dtype, arch):
    r = _one(rows, "dw_general_kernel", dtype, arch)
    loop = r["main_loop"]
    assert loop["hmma"] > 0 and loop["ldsm"] > 0 and loop["movm"] == 0 and loop["ld_generic"] == 0
    assert r["spill_bytes"] == 0 and loop["ldl"] + loop["stl"] == 0


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype", ["float", "double"])
def test_the_simt_dw_kernels_do_not_spill(rows, dtype, arch):
    r = _one(rows, "dw_kernel", dtype, arch)
    assert r["spill_bytes"] == 0 and r["main_loop"]["ldl"] + r["main_loop"]["stl"] == 0
