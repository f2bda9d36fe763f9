"""The static GPU performance report (`make gpu-model`, tools/gpu_model*.py): its readers of
compiled code, its occupancy, wave and roofline arithmetic, and the structural facts of the
compiled Triton kernels that make them fast, asserted so a change that loses one fails CI.

The Triton kernels are compiled here for sm_90 exactly as the runtime would launch them at
ResNet-50's first 3x3 layer (bf16, channels_last; tools/gpu_model_triton.py records the
package's own launches), a few kernels only, cached under build/gpu-model/. No GPU is used and
nothing here is a timing.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if not (ROOT / "tools" / "gpu_model.py").exists():  # make wheel-test runs a copy of tests/ alone
    pytest.skip("tools/gpu_model.py is not here (installed wheel)", allow_module_level=True)
sys.path.insert(0, str(ROOT / "tools"))

import gpu_model as gm  # noqa: E402
import gpu_model_sass as gs  # noqa: E402

# ------------------------------------------------------------------------------ reading SASS
SASS = """
        code for sm_90
                Function : kern
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   LDG.E R2, desc[UR4][R4.64] ;
        /*0020*/                   LDGSTS.E.BYPASS.128 [R3], desc[UR4][R6.64] ;
        /*0030*/                   LDSM.16.M88.4 R8, [R3] ;
        /*0040*/                   HMMA.16816.F32.BF16 R12, R8, R10, R12 ;
        /*0050*/                   HMMA.16816.F32.BF16 R16, R8, R11, R16 ;
        /*0060*/                   IADD3 R0, R0, 0x1, RZ ;
        /*0070*/               @P0 BRA 0x20 ;
        /*0080*/                   MEMBAR.ALL.GPU ;
        /*0090*/                   RED.E.ADD.F32.FTZ.RN.STRONG.GPU desc[UR4][R4.64], R12 ;
        /*00a0*/                   CCTL.IVALL ;
        /*00b0*/                   RED.E.ADD.F32.FTZ.RN.STRONG.GPU desc[UR4][R6.64], R13 ;
        /*00c0*/                   NOP ;
        /*00d0*/                   NOP ;
        /*00e0*/                   NOP ;
        /*00f0*/                   NOP ;
        /*0100*/                   RED.E.ADD.F32.FTZ.RN.STRONG.GPU desc[UR4][R8.64], R14 ;
        /*0110*/                   EXIT ;
"""


def test_sass_main_loop_and_its_instruction_mix():
    (fn,) = gs.parse_sass(SASS)
    assert fn.arch == "sm_90" and fn.name == "kern" and len(fn.instrs) == 18
    loop = gs.main_loop(fn)
    assert [i.addr for i in loop] == [0x20, 0x30, 0x40, 0x50, 0x60, 0x70]
    mix = gs.mix(loop)
    assert (mix["hmma"], mix["ldsm"], mix["ldgsts"], mix["ldg"]) == (2, 1, 1, 0)
    assert mix["global_load_bits"] == [128]
    assert mix["mma_equiv"] == 2.0 and mix["instr_per_mma"] == 3.0  # 6 instructions, 2 m16n8k16


def test_atomics_beside_a_memory_barrier_are_counted():
    (fn,) = gs.parse_sass(SASS)
    assert gs.summarize(fn)["whole"]["red"] == 3
    assert gs.barrier_beside_atomics(fn) == 2  # the third RED has no MEMBAR/CCTL within 3


def test_mma_work_per_instruction():
    hgmma = gs.Instr(0, "", "HGMMA.64x128x16.F32.BF16", "")
    assert gs.mma_equiv(hgmma) == 64 * 128 * 16 / 4 / 2048  # a warp's quarter of the warpgroup tile
    assert gs.mma_equiv(gs.Instr(0, "", "HMMA.1688.F32.TF32", "")) == 0.5
    assert (
        gs.width_bits("LDG.E.64") == 64 and gs.width_bits("LDG.E.U16") == 16 and gs.width_bits("LDG.E") == 32
    )


# ------------------------------------------------------------------- occupancy, waves, roofline
def test_occupancy_from_the_published_per_sm_limits():
    # 255 registers x 32 lanes = 8160 -> 8192 per warp: 8 warps per SM, 2 blocks of 4 warps
    occ = gs.occupancy("A100", 255, 128, 0)
    assert (occ["blocks_per_sm"], occ["limited_by"]) == (2, "registers")
    # 100 KiB + the 1 KiB the system reserves per block: two fit in the H100's 228 KiB
    occ = gs.occupancy("H100", 32, 128, 100 * 1024)
    assert (occ["blocks_per_sm"], occ["limited_by"]) == (2, "shared")
    occ = gs.occupancy("H100", 32, 1024, 0)
    assert (occ["blocks_per_sm"], occ["limited_by"], occ["occupancy"]) == (2, "threads", 1.0)


def test_wave_quantisation():
    assert gs.waves("H100", 264, 2) == dict(grid=264, slots=264, waves=1, efficiency=1.0)
    w = gs.waves("H100", 133, 1)
    assert (w["waves"], w["efficiency"]) == (2, round(133 / 264, 3))


def test_roofline_of_the_plain_conv():
    layer = gm.Layer("64@56", 64, 56, 1, 256)
    flops = 2 * 256 * 56 * 56 * 64 * 64 * 9
    assert layer.flops == flops
    dram = 2 * (256 * 64 * 56 * 56 * 2) + 64 * 64 * 9 * 2  # x, y in bf16 and the weight
    bounds = gm.plain_bounds(layer, "H100")
    assert bounds["fwd"] == pytest.approx(max(flops / 989e12, dram / 3.35e12) * 1e6)
    assert bounds["fwd_bwd"] == pytest.approx(3 * bounds["fwd"])


def test_valid_taps_of_a_strided_dx():
    # 4x4 input, stride 2, padding 1: per dimension the outputs 0 and 1 read inputs -1..1 and 1..3,
    # so 2 + 3 = 5 (output, tap) pairs are valid per dimension, 25 in all (of 4 x 9 = 36 computed)
    assert gm.Layer("t", 8, 4, 2, 1).valid_tap_positions() == 25
    assert gm.Layer("t", 8, 4, 1, 1).valid_tap_positions() == 10 * 10  # 2 + 3 + 3 + 2 per dimension


# ------------------------------------------------------------- the compiled Triton kernels
def _have_triton_compiler():
    try:
        import triton  # noqa: F401

        gs.tool("cuobjdump")
    except (ImportError, FileNotFoundError):
        return False
    return True


needs_compiler = pytest.mark.skipif(
    not _have_triton_compiler(), reason="triton with its cuobjdump is not installed"
)


@pytest.fixture(scope="module")
def compiled():
    """name -> the first config's compile of every kernel of one layer's forward and backward at
    ResNet-50's 64@56 (batch 256, bf16, channels_last) for sm_90, with the runtime's
    specialisation; compiled once per module, cached on disk."""
    import gpu_model_triton as gt

    old = os.environ.pop("TRITON_INTERPRET", None)
    try:
        launches = gm.layer_launches(64, 64, 56, 1, 256, "bf16", "cl")
        # the statistics' own dx kernel runs where dm cannot come before dx (a frozen conv weight)
        launches += [lc for lc in gm.layer_launches(64, 64, 56, 1, 256, need=(True, False, True))
                     if lc.name == "stats_dx"]  # fmt: skip
        jobs = [(lc, (lc.configs or [None])[0], 90) for lc in launches]
        results = gt.compile_many(jobs, processes=1)
    finally:
        if old is not None:
            os.environ["TRITON_INTERPRET"] = old
    out = {}
    for (lc, _cfg, _arch), r in zip(jobs, results, strict=True):
        assert r.get("ok"), f"{lc.name}: {r.get('error')}"
        out[lc.name] = r
    return out


@needs_compiler
def test_the_runtime_specialisation_reaches_the_compile(compiled):
    # 16-aligned channel counts and strides carry tt.divisibility=16 (what lets Triton vectorise),
    # the unit channel stride of channels_last is a constant
    fwd = compiled["mconv_fwd"]
    assert {"CG", "DG", "sxh", "sxw", "syh", "syw"} <= set(fwd["divisible_ints"])
    assert {"x_ptr", "w_ptr", "y_ptr"} <= set(fwd["divisible_ptrs"])
    assert "sxd" in fwd["unit_constexprs"]


@needs_compiler
@pytest.mark.parametrize("kernel", ["mconv_fwd", "mconv_dx", "mconv_dw", "shc_fwd"])
def test_conv_main_loops_use_wgmma_fed_by_16_byte_cp_async(compiled, kernel):
    r = compiled[kernel]
    loop = r["sass"]["main_loop"]
    assert r["ptx"]["wgmma"] and loop["hgmma"] > 0, "the main loop is not on Hopper's wgmma"
    assert 128 in loop["global_load_bits"] and loop["ldgsts"] > 0, "operands not loaded by 16-byte cp.async"
    # on the path every iteration takes, the only synchronous global loads left are the map's
    # scale m[n, t] (4 bytes per row or sample, once per tap or sample), never an operand tile (the
    # branch-skipped per-sample region of dW also reads its W tile for dm)
    ldg = loop["every_iteration"]["sync_load_ops"]
    assert loop["ld_generic"] == 0 and len(ldg) <= 2, f"synchronous global loads in the main loop: {ldg}"
    assert all(gs.width_bits(op) == 32 for op in ldg), f"an operand loaded synchronously: {ldg}"
    assert loop["ldl"] + loop["stl"] == 0, "local-memory traffic (spills) in the main loop"


@needs_compiler
@pytest.mark.parametrize("kernel", ["mconv_fwd", "mconv_dw"])
def test_modulated_operands_reach_the_tensor_cores_untouched(compiled, kernel):
    # the map's scale goes on a per-tap (forward) or per-sample (dW) partial sum, not on an operand
    # tile: both wgmma operands come from shared memory as cp.async left them, nothing is converted
    # to 16 bits or written back to shared memory in the loop (before: the forward's A tile went
    # LDSM -> scale -> F2FP -> register-A wgmma; dW's x tile LDS -> scale -> F2FP -> STS -> wgmma)
    loop = compiled[kernel]["sass"]["main_loop"]
    assert loop["hgmma_a_in_registers"] == 0, "wgmma reads an operand from registers"
    every = loop["every_iteration"]  # dW's per-sample region reduces dm through shared memory
    assert every["f2fp"] == 0, "an operand is converted in registers in the main loop"
    if kernel == "mconv_dw":
        assert every["sts"] == 0, "an operand is written back to shared memory in the main loop"


def _executed_ipm(kernel_name, launch, config, result):
    share = gm.conditional_share(kernel_name, launch, config)
    return gm.executed_instr_per_mma(result["sass"]["main_loop"], share)


@needs_compiler
def test_instructions_per_mma_leave_the_tensor_cores_busy():
    # An H100 SM issues 4 instructions per clock while its tensor cores retire one m16n8k16
    # equivalent per clock (issue_k = 4.0 in tools/gpu_model.py), so a main loop above ~4
    # instructions per MMA is issue-bound. At 64@56 (C = D = 64, bf16 cl, the first config):
    # forward 10.88 -> 4.02 (one channel block per tap: no conditional path), dW 18.0 -> 5.22 as
    # executed (64x64 tiles, the largest at C = D = 64, put 0.25 16-byte chunks per MMA, each with
    # its row's address and mask; the per-sample scaled add and dm reduction once per 49 blocks).
    # At 256@14 with 128x128x64 tiles the flattened forward loop runs its per-tap setup and scaled
    # add once per 4 channel blocks: about 2.9 as executed.
    import gpu_model_triton as gt

    old = os.environ.pop("TRITON_INTERPRET", None)
    try:
        got = {}
        for shape, (d, h) in {"64@56": (64, 56), "256@14": (256, 14)}.items():
            for lc in gm.layer_launches(d, d, h, 1, 256, "bf16", "cl"):
                if lc.name not in ("mconv_fwd", "mconv_dw"):
                    continue
                cfgs = lc.configs
                if shape == "256@14":
                    cfgs = [c for c in cfgs if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"])
                            == (128, 128, 64)]  # fmt: skip
                    if lc.name != "mconv_fwd":
                        continue
                (r,) = gt.compile_many([(lc, cfgs[0], 90)], processes=1)
                assert r.get("ok"), r.get("error")
                got[(shape, lc.name)] = (_executed_ipm(lc.name, lc, cfgs[0], r), r["sass"]["main_loop"])
    finally:
        if old is not None:
            os.environ["TRITON_INTERPRET"] = old
    ipm, _ = got[("64@56", "mconv_fwd")]
    assert ipm <= 4.5, f"forward at 64@56: {ipm} instructions per MMA"
    ipm, loop = got[("64@56", "mconv_dw")]
    assert ipm <= 5.5, f"dW at 64@56: {ipm} instructions per MMA as executed"
    ipm, loop = got[("256@14", "mconv_fwd")]
    assert loop["conditional"] > 0, "the flattened forward loop runs its per-tap work every iteration"
    assert ipm <= 3.5, f"forward at 256@14: {ipm} instructions per MMA as executed"


@needs_compiler
def test_forward_kernels_do_not_spill(compiled):
    for name in ("stats_fwd", "mconv_fwd"):
        r = compiled[name]
        assert r["stack"] + r["local"] == 0 and r["sass"]["whole"]["ldl"] + r["sass"]["whole"]["stl"] == 0, (
            name
        )


@needs_compiler
@pytest.mark.parametrize("kernel", ["stats_fwd", "stats_dx"])
def test_statistics_kernels_read_x_with_16_byte_loads(compiled, kernel):
    assert compiled[kernel]["sass"]["main_loop"]["global_load_bits"] == [128]


@needs_compiler
@pytest.mark.parametrize("kernel", ["mconv_dx", "mconv_dw"])
def test_gradient_atomics_are_relaxed(compiled, kernel):
    # dm and dW accumulate with fp32 atomics; acquire-release ones compile to a MEMBAR + CCTL each.
    # Where dW is computed dm comes from the dW kernel; the dx kernel reduces it on small planes
    # (512@7) when the conv weight needs no gradient
    import gpu_model_triton as gt

    r = compiled[kernel]
    if kernel == "mconv_dx":
        assert r["sass"]["whole"]["red"] + r["sass"]["whole"]["atom"] == 0, "dm reduced twice at 64@56"
        old = os.environ.pop("TRITON_INTERPRET", None)
        try:
            frozen = gm.layer_launches(512, 512, 7, 1, 256, "bf16", "cl", need=(True, False, True))
            (lc,) = [lc for lc in frozen if lc.name == kernel]
            assert lc.kwargs["NEED_M"]
            (r,) = gt.compile_many([(lc, lc.configs[0], 90)], processes=1)
        finally:
            if old is not None:
                os.environ["TRITON_INTERPRET"] = old
    assert r["sass"]["whole"]["red"] + r["sass"]["whole"]["atom"] > 0
    assert r["sass"]["atomics_with_barrier"] == 0 and not r["ptx"]["atom_acq_rel"]


@pytest.mark.skipif(shutil.which("c++filt") is None, reason="binutils")
def test_cuda_kernel_names_are_read_from_mangled_symbols():
    names = gm._demangle(["_ZN8shc_cuda11conv_kernelIN3c108BFloat16EEEvPKT_"])
    assert "conv_kernel<c10::BFloat16>" in names[0]


def test_the_aot_check_compiles_every_kernel_and_config_with_the_runtime_specialisation():
    import triton_aot_check as aot

    todo = aot.plan([80, 90])
    kernels = {info["kernel"] for info, _job in todo}
    assert {"mconv_fwd", "mconv_dx", "mconv_dw", "stats_dx"} <= kernels
    for name in ("mconv_fwd", "mconv_dx", "mconv_dw"):  # every autotune config, both archs
        import gpu_model_triton as gt

        n_cfg = len(getattr(gt._modules()["conv"], f"_{name}_kernel").configs)
        got = {(i["arch"], i["config"]) for i, _ in todo if i["kernel"] == name and i["dtype"] == "bf16"}
        assert len(got) >= 2 * n_cfg, name
    variants = {(i["kernel"], i["variant"]) for i, _ in todo}
    assert {
        ("mconv_dx", "dx only"),
        ("mconv_dx", "dx and dm"),
        ("mconv_dx", "dm only"),
        ("mconv_dw", "dx only"),
        ("mconv_fwd", "no bias"),
        ("stats_dx", "hyper in place"),
        ("stats_dx", "hyper only"),
    } <= variants
    # the default variant is the fused backward: dx with the hypernetwork route in its epilogue
    assert any(
        i["kernel"] == "mconv_dx" and i["variant"] == "-" and job[0].kwargs["HYPER"] for i, job in todo
    )


# ------------------------------------------------------------------ the compiled CUDA kernels
def _cuda_so():
    so = gm.cuda_so()
    if so is None and os.environ.get("SHC_GPU_MODEL_REQUIRE_CUDA") == "1":
        pytest.fail("no make cuda-check build (build/cuda-check) to read the CUDA kernels from")
    return so


@pytest.fixture(scope="module")
def cuda_kernels():
    """The sm_90 rows of the make cuda-check build, one per kernel instantiation (`make gpu-model`
    runs this file after cuda-check with SHC_GPU_MODEL_REQUIRE_CUDA=1, so there it cannot skip)."""
    so = _cuda_so()
    if so is None:
        pytest.skip("no make cuda-check build (build/cuda-check): run make gpu-model")
    return gm.cuda_rows(so, [90])


def test_cuda_main_loops_make_no_local_memory_traffic(cuda_kernels):
    # LDL/STL in the hot loop: spills, or a per-thread array the compiler could not keep in
    # registers (outside the loop they cost little; the report lists them)
    assert cuda_kernels, "no kernels read from the cuda-check build"
    for r in cuda_kernels:
        loop = r["main_loop"]
        assert loop["ldl"] + loop["stl"] == 0, f"{r['kernel']}<{r['dtype']}>: LDL/STL in the main loop"


def test_cuda_fp16_conv_main_loop_loads_operands_with_ldmatrix(cuda_kernels):
    (conv,) = {
        id(r): r for r in cuda_kernels if (r["kernel"], r["dtype"]) == ("conv_kernel", "Half")
    }.values()
    loop = conv["main_loop"]
    assert loop["hmma"] > 0 and loop["ldsm"] > 0 and loop["ld_generic"] == 0


# ------------------------------------------------------------- the launchers' grids (recorded)
def _launches(stride):
    return {lc.name: lc for lc in gm.layer_launches(128, 128, 56, stride, 256, "bf16", "cl", sms=132)}


@needs_compiler
def test_a_strided_dx_runs_by_output_parity():
    # stride 2: four parity classes, each skipping the taps invalid for the whole class
    dx = _launches(2)["mconv_dx"].named_args()
    assert (dx["PAR_H"], dx["PAR_W"]) == (2, 2)
    assert (_launches(1)["mconv_dx"].named_args()["PAR_H"]) == 1


@needs_compiler
def test_the_one_launch_forward_synchronises_with_acquire_and_release(compiled):
    # one relaxed ticket atomic; the statistics count and the ready flag published with release
    # atomics, waited for with acquire loads (onelaunch.py's CUTLASS-style semaphore): with relaxed
    # ones a tile could read a map another SM has not yet made visible
    ptx = compiled["shc_fwd"]["ptx"]
    assert ptx["atom_relaxed_count"] == 1, ptx
    assert ptx["release_atomics"] >= 2 and ptx["acquire_loads"] >= 2, ptx


@needs_compiler
def test_the_one_launch_items_keep_several_loads_in_flight(compiled, monkeypatch):
    # The statistics items' tile loop and the hypernetwork items' merge and fc1 loops are
    # software-pipelined (onelaunch.STATS_STAGES, HYPER_STAGES): their loads are cp.async copies into
    # shared memory, several in flight, as the model's round trips assume
    # (gpu_model.onelaunch_prediction); the same kernel without pipelining loads them synchronously.
    # The copies' buffers reuse the conv tile's shared memory: the blocks per SM do not change.
    import dataclasses

    import gpu_model_triton as gt

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    lc = gm.layer_launches(64, 64, 56, 1, 256, "bf16", "cl")
    one = next(x for x in lc if x.name == "shc_fwd")
    assert (one.kwargs["STATS_STAGES"], one.kwargs["HYPER_STAGES"]) >= (3, 3)
    piped = compiled["shc_fwd"]["sass"]["whole"]
    for loops in ("STATS_STAGES", "HYPER_STAGES"):  # each item kind's loops without pipelining
        flat = dataclasses.replace(one, kwargs=dict(one.kwargs, **{loops: 1}))
        unpiped = gt.compile_one((flat, flat.configs[0], 90))["sass"]["whole"]
        assert piped["ldgsts"] > unpiped["ldgsts"], f"{loops}: the items' loads are not cp.async"
        assert piped["ldg"] < unpiped["ldg"], f"{loops}: the items still load synchronously"
    conv = next(x for x in lc if x.name == "mconv_fwd")
    assert conv.configs[0].all_kwargs() == one.configs[0].all_kwargs()
    assert compiled["shc_fwd"]["shared"] <= compiled["mconv_fwd"]["shared"]


def test_the_layer_runs_the_one_launch_forward_where_the_statistics_pass_weighs_most(monkeypatch):
    # layer.use_one_launch: at most 64 output channels per group per input pixel,
    # C/groups * OH*OW / (H*W): of ResNet-50's 3x3 layers 64@56, 128@56/2 and 256@28/2 (the record's
    # "One-launch forward" table: predicted faster there on both GPUs); SHC_ONE_LAUNCH or ONE_LAUNCH
    # forces either
    import torch

    from shc_kernels.triton import layer

    picks = {n for n, d, h, s in gm.gt.RESNET50_3X3 if gm.layer_one_launch(d, h, s, 256, "bf16")}
    assert picks == {"64@56", "128@56/2", "256@28/2"}
    x = torch.empty(8, 96, 28, 28, device="meta")
    depthwise = torch.empty(96, 1, 3, 3, device="meta")
    assert layer.use_one_launch(x, depthwise, (1, 1), (1, 1), (1, 1), 96)
    assert not layer.use_one_launch(x, torch.empty(96, 96, 3, 3, device="meta"), (1, 1), (1, 1), (1, 1), 1)
    monkeypatch.setenv("SHC_ONE_LAUNCH", "0")  # without code: the environment
    assert not layer.use_one_launch(x, depthwise, (1, 1), (1, 1), (1, 1), 96)
    monkeypatch.setenv("SHC_ONE_LAUNCH", "1")
    assert layer.use_one_launch(x, torch.empty(96, 96, 3, 3, device="meta"), (1, 1), (1, 1), (1, 1), 1)
    monkeypatch.setenv("SHC_ONE_LAUNCH", "yes")
    with pytest.raises(ValueError, match="SHC_ONE_LAUNCH must be 0, 1 or auto"):
        layer.use_one_launch(x, depthwise, (1, 1), (1, 1), (1, 1), 96)
    monkeypatch.setattr(layer, "ONE_LAUNCH", False)  # the attribute wins over the environment
    monkeypatch.setenv("SHC_ONE_LAUNCH", "1")
    assert not layer.use_one_launch(x, depthwise, (1, 1), (1, 1), (1, 1), 96)


@needs_compiler
def test_the_one_launch_forward_is_modelled_beside_the_separate_one():
    # the model reports both forwards and counts x once for the one launch (the tiles re-read it
    # from L2), its statistics and hypernetwork items as slot time and window 0 as a prologue
    one = _launches(1)["shc_fwd"]
    a = one.named_args()
    assert (a["W0"], a["NWIN"]) == (16, 1 + -(-(256 - 16) // a["WS"]))
    L = gm.Layer("128@56", 128, 56, 1, 256)
    assert gm.triton_work("shc_fwd", L, one)[:2] == (L.flops, L.x + L.w + L.y)


@needs_compiler
def test_the_statistics_forward_fills_the_gpu():
    # at least two programs per SM of an H100 at ResNet-50's 56x56 layers (one per sample was 256)
    stats = _launches(1)["stats_fwd"]
    assert stats.grid_blocks() >= 2 * 132


# where the fused backward folds the hypernetwork route into dx (conv.dm_before_dx): all but the
# small planes with many channels, where dW's dm reduction would cost more than the pass it saves
FOLDED = {"64@56", "128@56/2", "128@28", "256@28/2", "256@14"}


@needs_compiler
@pytest.mark.parametrize("shape", gm.gt.RESNET50_3X3, ids=[s[0] for s in gm.gt.RESNET50_3X3])
def test_the_fused_backward_writes_dx_in_the_dx_kernel_or_adds_in_place(shape):
    # What the triton backend runs for a layer whose x, weight and hypernetwork all need gradients
    # (grad_route "both"). Folded: dW reduces dm, then one dx kernel adds the hypernetwork route in
    # its epilogue; no statistics dx kernel (a second read of x and write of dx). Otherwise the dx
    # kernel reduces dm and the statistics' kernel adds the hypernetwork route to dx in place. Never
    # a second dx (and its sum by autograd).
    name, d, h, stride = shape
    launches = gm.layer_launches(d, d, h, stride, 256, "bf16", "cl")
    bwd = [lc for lc in launches if lc.name in ("mconv_dw", "mconv_dx", "stats_dx")]
    if name in FOLDED:
        assert [lc.name for lc in bwd] == ["mconv_dw", "mconv_dx"], "dm must exist before the dx kernel runs"
        assert bwd[0].kwargs["NEED_DM"] and bwd[1].kwargs["HYPER"] and not bwd[1].kwargs["NEED_M"]
    else:
        assert [lc.name for lc in bwd] == ["mconv_dw", "mconv_dx", "stats_dx"]
        assert bwd[1].kwargs["NEED_M"] and not bwd[1].kwargs["HYPER"] and bwd[2].kwargs["ACCUMULATE"]


@needs_compiler
def test_the_fused_dx_kernel_does_not_spill():
    # The epilogue's x tile and coefficients come after the main loop; at 256@28/2, where the dx
    # kernel that also reduced dm sat at 255 registers with 8 B of stack, no config may spill
    import gpu_model_triton as gt

    old = os.environ.pop("TRITON_INTERPRET", None)
    try:
        (lc,) = [lc for lc in gm.layer_launches(256, 256, 28, 2, 256, "bf16", "cl") if lc.name == "mconv_dx"]
        results = gt.compile_many([(lc, cfg, 90) for cfg in lc.configs], processes=1)
    finally:
        if old is not None:
            os.environ["TRITON_INTERPRET"] = old
    assert len(results) >= 2
    for cfg, r in zip(lc.configs, results, strict=True):
        assert r.get("ok"), r.get("error")
        spills = r["stack"] + r["local"] + r["sass"]["whole"]["ldl"] + r["sass"]["whole"]["stl"]
        assert spills == 0, f"{gm._cfg_name(cfg)}: {r['regs']} registers, {r['stack']} B stack"
