"""A static performance report of the GPU kernels, read from compiled code (`make gpu-model`).

    python tools/gpu_model.py [--batch 256] [--out bench/results/gpu_model] [--no-cuda] [--jobs N]

No GPU is needed and nothing here is a timing. For ResNet-50's 3x3 convolutions at batch 256
(bf16, channels_last) it reports, for sm_80 (A100) and sm_90 (H100):
  - every Triton kernel compiled with the runtime's integer specialisation (tools/gpu_model_triton.py)
    for each shape and each autotune config left after the launcher's pruning, and every CUDA kernel
    of the `make cuda-check` build (cuobjdump -sass / -res-usage on its _C*.so): registers, spills,
    shared memory, occupancy from the published per-SM limits, the main loop's instruction mix
    (HMMA/HGMMA, LDSM vs generic loads, LDGSTS, barriers beside atomics) and instructions per MMA
    (m16n8k16 equivalents per warp), wave quantisation of each grid;
  - per shape, a roofline bound (FLOPs and DRAM bytes against the published peaks: H100 989 TFLOP/s
    dense bf16 and 3.35 TB/s) of the SHC layer (statistics + conv, forward and forward+backward)
    next to the plain conv's, and the model's prediction for the Triton path, where each kernel's
    bound is also limited by its compiled code (see MODEL below).
Writes <out>.json and <out>.md. Compiles are cached under build/gpu-model/.

MODEL (per kernel; a prediction of the model, never a measurement):
  t = max(F / (peak * issue), B_dram / bw, B_loaded * latency / in_flight) / wave_efficiency
  issue      = min(1, k / instructions per MMA in the main loop), k = 4 schedulers x 2048 MACs per
               m16n8k16 / the SM's dense MACs per clock (A100 8.0, H100 4.0): the tensor cores idle
               when the warps cannot issue the loop's other instructions in the MMAs' shadow;
  in_flight  = global-load bytes per thread per main-loop iteration (from SASS) x the threads
               resident on all SMs (memory-bound kernels only; Little's law, latency 700 ns);
  wave_efficiency = grid blocks / (waves x blocks per SM x SMs).
The plain conv (cuDNN) is taken at its roofline bound: the ratios are therefore upper estimates of
what SHC costs, unless cuDNN itself runs below its bound.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import gpu_model_sass as gs  # noqa: E402
import gpu_model_triton as gt  # noqa: E402

ARCH_GPU = {80: "A100", 90: "H100"}
LATENCY_NS = 700.0
BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


def mac_rate(gpu: str) -> float:
    g = gs.GPUS[gpu]
    return g["bf16_tflops"] * 1e12 / 2 / (g["sms"] * g["clock_ghz"] * 1e9)


def issue_k(gpu: str) -> float:
    return 4 * 2048 / mac_rate(gpu)


# ----------------------------------------------------------------------------------- the layer
class Layer:
    def __init__(self, name, d, h, stride, batch, dtype="bf16"):
        self.name, self.d, self.c, self.h, self.stride, self.n = name, d, d, h, stride, batch
        self.oh = (h + 2 - 3) // stride + 1
        self.e = BYTES[dtype]
        self.t = 9

    @property
    def x(self):  # bytes of x (and of dx)
        return self.n * self.d * self.h * self.h * self.e

    @property
    def y(self):  # bytes of y (and of dy)
        return self.n * self.c * self.oh * self.oh * self.e

    @property
    def w(self):
        return self.c * self.d * self.t * self.e

    @property
    def flops(self):  # one conv GEMM: forward, dgrad or wgrad
        return 2 * self.n * self.oh * self.oh * self.c * self.d * self.t

    def valid_tap_positions(self):
        """sum over input positions of the taps that read a valid output position (dx work)."""
        s, oh, h = self.stride, self.oh, self.h
        cnt = 0
        for i in range(3):
            rows = sum(1 for ih in range(h) if (ih + 1 - i) % s == 0 and 0 <= (ih + 1 - i) // s < oh)
            for j in range(3):
                cols = sum(1 for iw in range(h) if (iw + 1 - j) % s == 0 and 0 <= (iw + 1 - j) // s < oh)
                cnt += rows * cols
        return cnt


def roofline(flops, dram, gpu="H100"):
    g = gs.GPUS[gpu]
    return max(flops / (g["bf16_tflops"] * 1e12), dram / (g["hbm_tbs"] * 1e12)) * 1e6  # us


def plain_bounds(L: Layer, gpu="H100"):
    fwd = roofline(L.flops, L.x + L.w + L.y, gpu)
    dgrad = roofline(L.flops, L.y + L.w + L.x, gpu)
    wgrad = roofline(L.flops, L.x + L.y + L.w, gpu)
    return dict(fwd=fwd, fwd_bwd=fwd + dgrad + wgrad)


def layer_launches(d, c, h, stride, batch, dtype="bf16", layout="cl", sms=132, bias=True,
                   need=(True, True, True), route="both", l2_bytes=50 * 2**20):  # fmt: skip
    """Every Triton launch of one SHC layer's forward and backward as the triton backend runs the
    layer (shc::triton_shc_layer: shc_kernels/triton/layer.py), in order, recorded on meta tensors
    (tools/gpu_model_triton.py). ``need``: whether x, the conv weight and the hypernetwork's
    parameters need gradients; ``route``: the layer's grad_route. With dx through both routes and
    dW, the hypernetwork route is folded into the dx kernel's epilogue (no stats_dx launch)."""
    import torch

    from shc_kernels.triton import layer, onelaunch

    t = gt.layer_tensors(d, c, h, stride, batch, dtype, layout)
    x, w = t["x"], t["w"]
    f1b, f2b = (t["f1b"], t["f2b"]) if bias else (None, None)
    b = torch.empty(c, device="meta", dtype=x.dtype) if bias else None
    need_x, need_w, need_map = need
    with gt.recording(sms, l2_bytes) as got:
        _y, m, mu, sigma, hid = layer.layer_forward(x, w, b, t["f1w"], f1b, t["f2w"], f2b, *t["conf"], 1e-5)
        # the other forward too, reported beside the layer's
        other = layer.separate_forward if layer.use_one_launch(x, w, *t["conf"]) else onelaunch.layer_forward
        other(x, w, b, t["f1w"], f1b, t["f2w"], f2b, *t["conf"], 1e-5)
        layer.layer_backward(
            t["dy"], x, w, m, mu, sigma, hid, t["f1w"], t["f2w"], *t["conf"], need_x and route != "hyper",
            need_x and route != "conv", need_w, need_map,
        )  # fmt: skip
    return got


# Work of each Triton kernel for one layer: (MMA FLOPs, DRAM bytes, bytes loaded through L2/L1).
def triton_work(name: str, L: Layer, launch, config=None) -> tuple[float, float, float]:
    args = launch.named_args()
    if name == "stats_map_fwd":
        return 0.0, L.x, 2 * L.x
    if name == "stats_fwd":  # a statistics pass without the MLP
        return 0.0, L.x, L.x
    if name in ("map_fwd", "map_bwd", "stats_combine"):
        return 0.0, 0.0, 0.0
    if name == "stats_dx":  # read x, write dx; ACCUMULATE: also read dx (added to in place)
        acc = launch.kwargs.get("ACCUMULATE", False)
        return 0.0, (3 if acc else 2) * L.x, (2 if acc else 1) * L.x
    if name == "mconv_fwd":
        return L.flops, L.x + L.w + L.y, L.x + L.y
    if name == "shc_fwd":  # one launch: x from DRAM once (statistics), the tiles re-read it from L2
        return L.flops, L.x + L.w + L.y, 2 * L.x + L.y
    if name == "mconv_dx":
        # x is read for dm (NEED_M) or by the epilogue that adds the hypernetwork route (HYPER)
        need_m = launch.kwargs.get("NEED_M", False) or launch.kwargs.get("HYPER", False)
        # by output parity (PAR_H): a strided dx skips the taps invalid for a whole parity class
        parity = ("PAR_H" in args or "NUM_PAR" in args) and L.stride > 1
        taps = L.valid_tap_positions() if parity else L.h * L.h * L.t
        f = 2 * L.n * taps * L.c * L.d
        return f, L.y + L.w + L.x + (L.x if need_m else 0), L.y + L.x
    if name == "mconv_dw":
        f = L.flops
        if config is not None and "OHW_POW2" in launch.kwargs:
            # per-sample row blocks: a sample's last block runs the MMAs of a whole BLOCK_K rows
            ohw, bk = args["OHW"], config.kwargs["BLOCK_K"]
            f *= math.ceil(ohw / bk) * bk / ohw
        return f, L.x + L.y, L.x + L.y
    return 0.0, 0.0, 0.0


def conditional_share(name: str, launch, config) -> float:
    """How often, per main-loop iteration, the loop's branch-skipped regions run (1.0: every time,
    the default where the kernel's structure does not say). mconv_fwd with several channel blocks
    per tap is one flattened loop over (tap, channel block): its per-tap setup and scaled add run
    once per tap, i.e. once every cdiv(DG, BLOCK_K) iterations. mconv_dw's per-sample scaled add
    runs once per sample's cdiv(OH*OW, BLOCK_K) row blocks."""
    if config is None:
        return 1.0
    args = launch.named_args()
    bk = config.kwargs.get("BLOCK_K")
    if name in ("mconv_fwd", "shc_fwd") and "DG" in args and bk:
        return 1.0 / max(1, math.ceil(args["DG"] / bk))
    if name == "mconv_dw" and "OHW_POW2" in launch.kwargs and bk:
        return 1.0 / max(1, math.ceil(args["OHW"] / bk))
    return 1.0


def executed_instr_per_mma(loop: dict, share: float):
    """Instructions issued per MMA in the main loop when its conditional regions run `share` of the
    iterations (loop['instr_per_mma'] counts every path, as if they ran every time)."""
    if not loop["mma_equiv"]:
        return None
    cond = loop.get("conditional", 0)
    return round((loop["instructions"] - cond * (1.0 - share)) / loop["mma_equiv"], 2)


def kernel_prediction(res: dict, gpu: str, flops, dram, loaded, grid, threads, share=1.0) -> dict:
    g = gs.GPUS[gpu]
    occ = gs.occupancy(gpu, res["regs"], threads, res["smem"])
    wv = gs.waves(gpu, grid, occ["blocks_per_sm"])
    loop = res["sass"]["main_loop"]
    ipm = executed_instr_per_mma(loop, share)
    issue = min(1.0, issue_k(gpu) / ipm) if (ipm and flops) else 1.0
    t_mma = flops / (g["bf16_tflops"] * 1e12 * issue) * 1e6 if flops else 0.0
    t_dram = dram / (g["hbm_tbs"] * 1e12) * 1e6
    t_lat = 0.0
    if not flops and loaded:
        bits = [gs.width_bits(op) for op in loop["global_load_ops"]]
        per_thread = sum(bits) / 8 or 4
        resident = min(grid, wv["slots"]) * threads
        in_flight = per_thread * resident
        t_lat = loaded * LATENCY_NS * 1e-3 / in_flight  # us
    t = max(t_mma, t_dram, t_lat) / (wv["efficiency"] or 1.0)
    bound = max(
        ("tensor issue" if issue < 1 else "tensor", t_mma),
        ("dram", t_dram),
        ("latency", t_lat),
        key=lambda p: p[1],
    )[0]
    return dict(
        occupancy=occ,
        waves=wv,
        instr_per_mma_executed=ipm,
        conditional_share=round(share, 4),
        issue_efficiency=round(issue, 3),
        t_us=round(t, 2),
        limit=bound,
        t_parts=dict(mma=round(t_mma, 2), dram=round(t_dram, 2), latency=round(t_lat, 2)),
    )


def onelaunch_prediction(res: dict, gpu: str, L: Layer, launch, config, threads: int, share=1.0) -> dict:
    """The one-launch forward (shc_kernels/triton/onelaunch.py) as a mix of work items sharing the
    SMs' block slots (a model, not a measurement):
      t = max(t_tiles + t_stats + t_hyper, t_dram) / wave_efficiency + t_prologue
    t_tiles: the conv tiles' tensor time (the main loop's issue rate, as kernel_prediction);
    t_stats: each statistics item holds a slot for its round trips of LATENCY_NS: its loop's
    CHUNK / STATS_Q tile loads, software-pipelined STATS_STAGES deep (STATS_STAGES - 1 tiles in flight:
    one round trip per that many tiles; tests/test_gpu_model.py checks that the compiled kernel holds
    the cp.async copies this assumes), summed over the items and spread over the slots: a slot
    holding a statistics item runs no MMA, so the two add (pessimistic where two blocks share an SM);
    t_hyper: each hypernetwork item's loop iterations (partials merge over channel blocks x chunks,
    then fc1 blocks, each loop pipelined HYPER_STAGES deep, and one fc2 step per fc1 block), likewise
    spread;
    t_dram: x once, y, W: the tiles re-read x from L2 (windows sized to half the L2);
    t_prologue: window 0's statistics item and hypernetwork item, in sequence, before any tile."""
    base = kernel_prediction(res, gpu, L.flops, L.x + L.w + L.y, 0.0, launch.grid_blocks(config), threads,
                             share)  # fmt: skip
    a, kw = launch.named_args(), launch.kwargs
    g = gs.GPUS[gpu]
    slots = max(1, base["occupancy"]["blocks_per_sm"] * g["sms"])
    lat = LATENCY_NS * 1e-3  # us
    def rounds(iterations, stages):  # a loop pipelined `stages` deep: stages - 1 loads in flight
        return math.ceil(iterations / max(1, stages - 1))

    stats_rounds = rounds(math.ceil(a["CHUNK"] / kw["STATS_Q"]), kw["STATS_STAGES"])
    stats_items = a["N"] * a["DBLOCKS"] * a["SPLIT"]
    dj = math.ceil(a["D"] / kw["MLP_J"])
    hs = kw["HYPER_STAGES"]
    hyper_rounds = rounds(a["SPLIT"] * dj, hs) + math.ceil(a["K"] / kw["MLP_H"]) * (rounds(dj, hs) + 1)
    chunks = math.ceil(a["N"] / kw["BWC"])
    t_stats = stats_items * stats_rounds * lat / slots
    t_hyper = chunks * hyper_rounds * lat / slots
    t_pro = (stats_rounds + hyper_rounds) * lat
    t_mma = base["t_parts"]["mma"]
    t_dram = base["t_parts"]["dram"]
    eff = base["waves"]["efficiency"] or 1.0
    t = max(t_mma + t_stats + t_hyper, t_dram) / eff + t_pro
    limit = "tensor + item slots" if t_mma + t_stats + t_hyper >= t_dram else "dram"
    return dict(
        base,
        t_us=round(t, 2),
        limit=limit,
        t_parts=dict(
            base["t_parts"],
            stats_slots=round(t_stats, 2),
            hyper_slots=round(t_hyper, 2),
            prologue=round(t_pro, 2),
        ),  # fmt: skip
        windows=dict(W0=a["W0"], WS=a["WS"], NWIN=a["NWIN"], stats_items=stats_items, chunks=chunks),
    )


# ------------------------------------------------------------------------------- Triton section
def triton_rows(batch, dtype, layout, archs, jobs):
    plan = []  # (arch, layer, launch, configs)
    for arch in archs:
        gpu = ARCH_GPU[arch]
        for name, d, h, s in gt.RESNET50_3X3:
            L = Layer(name, d, h, s, batch, dtype)
            sms, l2 = gs.GPUS[gpu]["sms"], gs.GPUS[gpu]["l2_mb"] * 2**20
            for launch in layer_launches(d, d, h, s, batch, dtype, layout, sms=sms, l2_bytes=l2):
                plan.append((arch, L, launch, launch.configs or [None]))
    job_list = [(lc, cfg, arch) for arch, _L, lc, cfgs in plan for cfg in cfgs]
    t0 = time.time()
    results = gt.compile_many(job_list, jobs)
    print(
        f"gpu-model: {len(job_list)} Triton compiles ({len({r['key'] for r in results})} distinct) in "
        f"{time.time() - t0:.0f}s",
        file=sys.stderr,
    )
    it = iter(results)
    rows = []
    for arch, L, launch, cfgs in plan:
        gpu = ARCH_GPU[arch]
        cands = []
        for cfg in cfgs:
            r = next(it)
            if not r.get("ok"):
                cands.append(dict(kernel=launch.name, ok=False, error=r.get("error"), config=_cfg_name(cfg)))
                continue
            threads = 32 * r["num_warps"]
            res = dict(
                regs=r["regs"], smem=r["shared"] + r["static_shared"] - 1024 * (arch >= 90), sass=r["sass"]
            )
            res["smem"] = max(res["smem"], r["shared"])
            f, dram, loaded = triton_work(launch.name, L, launch, cfg)
            share = conditional_share(launch.name, launch, cfg)
            if launch.name == "shc_fwd":
                pred = onelaunch_prediction(res, gpu, L, launch, cfg, threads, share)
            else:
                pred = kernel_prediction(res, gpu, f, dram, loaded, launch.grid_blocks(cfg), threads, share)
            cands.append(
                dict(
                    kernel=launch.name,
                    ok=True,
                    config=_cfg_name(cfg),
                    regs=r["regs"],
                    spill_bytes=r["stack"] + r["local"],
                    ldl_stl=r["sass"]["whole"]["ldl"] + r["sass"]["whole"]["stl"],
                    smem=r["shared"],
                    threads=threads,
                    ptx=r["ptx"],
                    main_loop=r["sass"]["main_loop"],
                    atomics=r["sass"]["whole"]["red"] + r["sass"]["whole"]["atom"],
                    atomics_with_barrier=r["sass"]["atomics_with_barrier"],
                    divisible_ints=r["divisible_ints"],
                    flops=f,
                    dram_bytes=dram,
                    **pred,
                )
            )
        ok = [c for c in cands if c["ok"]]
        best = min(ok, key=lambda c: c["t_us"]) if ok else cands[0]
        rows.append(dict(arch=arch, gpu=gpu, shape=L.name, chosen=best, candidates=cands))
    return rows


def _cfg_name(cfg):
    if cfg is None:
        return "-"
    kw = cfg.kwargs
    return f"{kw['BLOCK_M']}x{kw['BLOCK_N']}x{kw['BLOCK_K']} w{cfg.num_warps} s{cfg.num_stages}"


def layer_one_launch(d, h, stride, batch, dtype) -> bool:
    """Whether the layer runs the one-launch forward at this shape (layer.use_one_launch)."""
    from shc_kernels.triton import layer

    t = gt.layer_tensors(d, d, h, stride, batch, dtype)
    return layer.use_one_launch(t["x"], t["w"], *t["conf"])


def layer_predictions(rows, batch, dtype):
    """Per shape and GPU: plain bound, SHC work bound and SHC predicted (Triton path)."""
    out = []
    for arch in sorted({r["arch"] for r in rows}):
        gpu = ARCH_GPU[arch]
        for name, d, h, s in gt.RESNET50_3X3:
            L = Layer(name, d, h, s, batch, dtype)
            ks = [r["chosen"] for r in rows if r["arch"] == arch and r["shape"] == name]
            sep_names = {"stats_map_fwd", "stats_fwd", "stats_combine", "map_fwd", "mconv_fwd"}
            one = [k for k in ks if k["kernel"] == "shc_fwd"]
            sep = [k for k in ks if k["kernel"] in sep_names]
            uses_one = layer_one_launch(d, h, s, batch, dtype)
            fwd = one if uses_one else sep
            bwd = [k for k in ks if k["kernel"] not in sep_names | {"shc_fwd"}]
            # The layer's one op writes dx itself: no autograd sum of two routes' dx (the composed
            # ops before it had one, 3 passes over x; a stats_dx kernel now adds in place)
            t_extra = 0.0
            work_f = sum(roofline(k["flops"], k["dram_bytes"], gpu) for k in fwd)
            work_b = sum(roofline(k["flops"], k["dram_bytes"], gpu) for k in bwd) + t_extra
            pred_f = sum(k["t_us"] for k in fwd)
            pred_b = sum(k["t_us"] for k in bwd) + t_extra
            plain = plain_bounds(L, gpu)
            out.append(
                dict(
                    gpu=gpu,
                    shape=name,
                    plain_fwd=round(plain["fwd"], 1),
                    plain_fwd_bwd=round(plain["fwd_bwd"], 1),
                    shc_work_fwd=round(work_f, 1),
                    shc_work_fwd_bwd=round(work_f + work_b, 1),
                    shc_pred_fwd=round(pred_f, 1),
                    shc_pred_fwd_bwd=round(pred_f + pred_b, 1),
                    ratio_work_fwd=round(work_f / plain["fwd"], 2),
                    ratio_work_fwd_bwd=round((work_f + work_b) / plain["fwd_bwd"], 2),
                    ratio_pred_fwd=round(pred_f / plain["fwd"], 2),
                    ratio_pred_fwd_bwd=round((pred_f + pred_b) / plain["fwd_bwd"], 2),
                    # the two forwards side by side (the layer runs the one use_one_launch picks)
                    forward="one launch" if uses_one else "separate",
                    separate_pred_fwd=round(sum(k["t_us"] for k in sep), 1),
                    onelaunch_pred_fwd=round(sum(k["t_us"] for k in one), 1) if one else None,
                    onelaunch_parts=one[0]["t_parts"] if one else None,
                    onelaunch_windows=one[0].get("windows") if one else None,
                )
            )
    return out


# --------------------------------------------------------------------------------- CUDA section
CUDA_THREADS = {  # threads per block, by kernel and dtype (csrc/cuda: ConvCfg, DwCfg, launches)
    "conv_kernel": {"any": 256},
    "fused_shc_kernel": {"any": 256},
    "dw_kernel": {"Half": 128, "BFloat16": 128, "float": 256, "double": 64},
    "dw_general_kernel": {"any": 128},
    "stats_kernel": {"any": 256},
    "stats_backward_kernel": {"any": 256},
}


def cuda_so() -> Path | None:
    for p in sorted((ROOT / "build" / "cuda-check" / "src" / "shc_kernels").glob("_C*.so")):
        return p
    return None


def _demangle(names):
    out = subprocess.run(
        ["c++filt"], input="\n".join(names), capture_output=True, text=True
    ).stdout.splitlines()
    return out if len(out) == len(names) else names


def cuda_rows(so: Path, archs) -> list[dict]:
    import re

    rows = []
    for arch in archs:
        sm = f"sm_{arch}"
        funcs = gs.sass_of(str(so), sm)
        res = gs.resource_usage(str(so), sm)
        dem = _demangle([f.name for f in funcs])
        for f, dn in zip(funcs, dem, strict=True):
            m = re.search(r"::(\w+_kernel)<(?:c10::)?(\w+)", dn)
            if not m:
                continue
            kern, dt = m.groups()
            r = res.get((sm, f.name)) or next((v for (a, n), v in res.items() if n == f.name), None)
            if r is None:
                continue
            threads = CUDA_THREADS.get(kern, {}).get(dt) or CUDA_THREADS.get(kern, {}).get("any", 256)
            summ = gs.summarize(f)
            occ = {gpu: gs.occupancy(gpu, r["regs"], threads, r["shared"]) for gpu in ("A100", "H100")}
            rows.append(
                dict(
                    arch=arch,
                    kernel=kern,
                    dtype=dt,
                    regs=r["regs"],
                    spill_bytes=r["stack"] + r["local"],
                    ldl_stl=summ["whole"]["ldl"] + summ["whole"]["stl"],
                    smem=r["shared"],
                    threads=threads,
                    occupancy=occ[ARCH_GPU[arch]],
                    main_loop=summ["main_loop"],
                    atomics=summ["whole"]["red"] + summ["whole"]["atom"],
                    atomics_with_barrier=summ["atomics_with_barrier"],
                )
            )
    return rows


def cuda_grids(batch, sms=132) -> list[dict]:
    """The CUDA launchers' grids for bf16 channels_last at each shape (csrc/cuda/shc_cuda.cu)."""
    out = []
    for name, d, h, s in gt.RESNET50_3X3:
        L = Layer(name, d, h, s, batch)
        conv = math.ceil(batch * L.oh**2 / 128) * math.ceil(d / 64)
        # a strided dx runs one launch per parity class of input pixels (launch_conv), each over
        # the class's pixels with its valid taps only
        classes = s * s
        dx = math.ceil(batch * math.ceil(h / s) ** 2 / 128) * math.ceil(d / 64)
        dx = f"{classes} x {dx}" if classes > 1 else dx
        base = math.ceil(d / 64) ** 2 * 9
        splits = min(batch, max(1, math.ceil(4 * sms / base)))
        per = math.ceil(batch / splits)
        splits = math.ceil(batch / per)
        out.append(dict(shape=name, conv=conv, dx=dx, dw=base * splits, stats=batch * math.ceil(d / 32)))
    return out


# ---------------------------------------------------------------------------- emulator section
def emulator_metrics() -> dict:
    """tools/gpu_model_sim.py in a fresh process (it loads its own build of _C_sim)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "sim.json"
        proc = subprocess.run([sys.executable, str(HERE / "gpu_model_sim.py"), "--json", str(out)], cwd=ROOT)
        if proc.returncode != 0 or not out.exists():
            raise SystemExit("gpu-model: the emulator's access metrics failed (tools/gpu_model_sim.py)")
        return json.loads(out.read_text())


# ------------------------------------------------------------------------------------- output
def write_markdown(path: Path, report: dict, baseline: dict | None):
    lines = [
        "# Static GPU performance model (no GPU: read from compiled code)",
        "",
        f"Command: `{report['command']}` at commit {report['commit']}; triton {report['triton_version']}, "
        f"batch {report['batch']}, {report['dtype']}, {report['layout']}.",
        "",
        "**Every time below is predicted by the model, not measured.** The model and what it can and "
        "cannot say are in docs/gpu.md (performance model) and tools/gpu_model.py's docstring. "
        "Peaks: H100 SXM 989 TFLOP/s dense bf16, 3.35 TB/s; A100 312 TFLOP/s, 2.04 TB/s.",
        "",
        "## SHC layer against the plain conv (Triton path), per ResNet-50 3x3 shape",
        "",
        "`work`: roofline of the FLOPs and DRAM bytes the kernels really execute (stride-2 dx taps, "
        "extra passes included); `pred`: the same, each kernel also limited by its compiled code "
        "(issue rate, memory parallelism, waves). Ratios are against the plain conv's roofline bound.",
        "",
    ]
    base = {(r["gpu"], r["shape"]): r for r in (baseline or {}).get("layers", [])}
    hdr = "| GPU | shape | plain fwd us | SHC fwd work / pred us | fwd ratio work / pred |"
    hdr += " plain fwd+bwd us | SHC fwd+bwd work / pred us | fwd+bwd ratio work / pred |"
    if base:
        hdr += f" before ({(baseline or {}).get('commit')}): fwd / fwd+bwd ratio (pred) |"
    lines += [hdr, "|" + "---|" * (hdr.count("|") - 1)]
    for r in report["layers"]:
        row = (
            f"| {r['gpu']} | {r['shape']} | {r['plain_fwd']} | {r['shc_work_fwd']} / {r['shc_pred_fwd']} | "
            f"{r['ratio_work_fwd']} / **{r['ratio_pred_fwd']}** | {r['plain_fwd_bwd']} | "
            f"{r['shc_work_fwd_bwd']} / {r['shc_pred_fwd_bwd']} | {r['ratio_work_fwd_bwd']} / "
            f"**{r['ratio_pred_fwd_bwd']}** |"
        )
        if base:
            b = base.get((r["gpu"], r["shape"]))
            row += f" {b['ratio_pred_fwd']} / {b['ratio_pred_fwd_bwd']} |" if b else " - |"
        lines.append(row)
    lines.append("")
    for gpu in sorted({r["gpu"] for r in report["layers"]}):
        rs = [r for r in report["layers"] if r["gpu"] == gpu]
        for kind in ("work", "pred"):
            ok_f = sum(r[f"ratio_{kind}_fwd"] <= 1.2 for r in rs)
            ok_b = sum(r[f"ratio_{kind}_fwd_bwd"] <= 1.5 for r in rs)
            lines.append(
                f"- {gpu}, `{kind}`: forward within 1.2x of the plain conv's bound at {ok_f}/{len(rs)} "
                "shapes, "
                f"forward+backward within 1.5x at {ok_b}/{len(rs)} (issue 31's targets)"
            )
    lines += [
        "",
        "## One-launch forward (shc_kernels/triton/onelaunch.py) beside the separate launches",
        "",
        "Predicted forward of the two forwards; `layer` is the one the layer runs (`layer.use_one_launch`: "
        "the one launch where C/groups * OH*OW / (H*W) <= 64). The one-launch kernel's "
        "parts (onelaunch_prediction): `mma` the tiles' tensor time, `stats`/`hyper` the slot time of "
        "the statistics and hypernetwork items spread over the slots, `prologue` window 0's items "
        "before any tile, `dram` x once + y + W.",
        "",
        "| GPU | shape | layer | separate us | one launch us | mma | stats | hyper | prologue | dram | "
        "W0 / WS / windows |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["layers"]:
        p, w = r.get("onelaunch_parts"), r.get("onelaunch_windows")
        if not p:
            continue
        lines.append(
            f"| {r['gpu']} | {r['shape']} | {r.get('forward', '-')} | {r['separate_pred_fwd']} | "
            f"{r['onelaunch_pred_fwd']} | "
            f"{p['mma']} | {p['stats_slots']} | {p['hyper_slots']} | {p['prologue']} | {p['dram']} | "
            f"{w['W0']} / {w['WS']} / {w['NWIN']} |"
        )
    lines += ["", "## Triton kernels (the config the model ranks first per shape)", ""]
    hdr = (
        "| GPU | shape | kernel | config | regs | spill B | smem KiB | blocks/SM (limit) | MMA | "
        "instr/MMA run (all paths) | "
        "LDSM / LDS / LDGSTS / LDG | ld bits | atomics (w/ barrier) | grid | waves (eff) | limit | pred us |"
    )
    lines += [hdr, "|" + "---|" * (hdr.count("|") - 1)]
    for r in report["triton"]:
        c = r["chosen"]
        if not c.get("ok"):
            lines.append(
                f"| {r['gpu']} | {r['shape']} | {c['kernel']} | {c['config']} | FAILED: {c['error']} |"
            )
            continue
        ml, occ, wv = c["main_loop"], c["occupancy"], c["waves"]
        mma = f"{ml['hgmma']} HGMMA" if ml["hgmma"] else (f"{ml['hmma']} HMMA" if ml["hmma"] else "-")
        lines.append(
            _row(
                r["gpu"], r["shape"], c["kernel"], c["config"], c["regs"], c["spill_bytes"],
                f"{c['smem'] / 1024:.1f}", f"{occ['blocks_per_sm']} ({occ['limited_by']})", mma,
                _ipm_cell(c),
                f"{ml['ldsm']} / {ml['lds']} / {ml['ldgsts']} / {ml['ldg'] + ml['ld_generic']}",
                ",".join(map(str, ml["global_load_bits"])) or "-",
                f"{c['atomics']} ({c['atomics_with_barrier']})",
                wv["grid"], f"{wv['waves']} ({wv['efficiency']})", c["limit"], c["t_us"],
            )
        )  # fmt: skip
    if report.get("cuda"):
        lines += ["", "## CUDA kernels (`make cuda-check` build, cuobjdump)", ""]
        hdr = (
            "| arch | kernel | dtype | threads | regs | spill B | smem B | blocks/SM (limit) | main loop: "
            "instr | MMA | instr/MMA | LDSM / LD generic / LDG / LDGSTS / MOVM | ld bits | "
            "atomics (w/ barrier) |"
        )
        lines += [hdr, "|" + "---|" * (hdr.count("|") - 1)]
        for r in report["cuda"]:
            ml = r["main_loop"]
            mma = (
                f"{ml['hgmma']} HGMMA"
                if ml["hgmma"]
                else (f"{ml['hmma']} HMMA" if ml["hmma"] else f"{ml['ffma'] + ml['dfma']} FMA")
            )
            occ = r["occupancy"]
            lines.append(
                _row(
                    f"sm_{r['arch']}", r["kernel"], r["dtype"], r["threads"], r["regs"], r["spill_bytes"],
                    r["smem"], f"{occ['blocks_per_sm']} ({occ['limited_by']})", ml["instructions"], mma,
                    ml["instr_per_mma"] or "-",
                    f"{ml['ldsm']} / {ml['ld_generic']} / {ml['ldg']} / {ml['ldgsts']} / {ml['movm']}",
                    ",".join(map(str, ml["global_load_bits"])) or "-",
                    f"{r['atomics']} ({r['atomics_with_barrier']})",
                )
            )  # fmt: skip
        lines += [
            "",
            "CUDA grids at batch 256 on an H100 (132 SMs): blocks per launch (a strided dx: launches x "
            "blocks, one launch per parity class of input pixels)",
            "",
            "| shape | conv fwd | dx | dW | stats |",
            "|---|---|---|---|---|",
        ]
        for g in report["cuda_grids"]:
            lines.append(f"| {g['shape']} | {g['conv']} | {g['dx']} | {g['dw']} | {g['stats']} |")
    if report.get("emulator"):
        lines += emulator_markdown(report["emulator"])
    found = findings(report)
    if found:
        lines += ["", "## What the compiled code and the emulator flag", ""] + [f"- {f}" for f in found]
    if baseline and baseline.get("triton"):
        lines += ["", f"## Before (commit {baseline.get('commit')}): what they flagged", ""]
        lines += [f"- {f}" for f in findings(baseline)] or ["- nothing"]
    path.write_text("\n".join(lines) + "\n")


def findings(report: dict) -> list[str]:
    """What the numbers flag, kernel by kernel: the structural defects the compiled code shows."""
    out = []
    seen = set()
    for r in report.get("triton", []):
        c = r["chosen"]
        if not c.get("ok") or r["gpu"] != "H100":
            continue
        ml, k = c["main_loop"], c["kernel"]

        def flag(text, key, _k=k, _where=f"H100, e.g. {r['shape']}, {c['config']}"):
            if (_k, key) not in seen:
                seen.add((_k, key))
                out.append(f"Triton `{_k}` ({_where}): {text}")

        if c["spill_bytes"] or c["ldl_stl"]:
            flag(
                f"{c['regs']} registers, {c['spill_bytes']} B of stack, {c['ldl_stl']} LDL/STL (spills)",
                "spill",
            )
        if c["atomics_with_barrier"]:
            flag(
                f"{c['atomics_with_barrier']} of {c['atomics']} atomics beside a MEMBAR/CCTL "
                "(acquire-release)",
                "bar",
            )
        if ml["instr_per_mma"] and c["issue_efficiency"] < 0.75:
            ipm = c.get("instr_per_mma_executed", ml["instr_per_mma"])
            flag(f"{ipm} instructions per MMA in the main loop: tensor cores issue-bound "
                 f"({c['issue_efficiency']:.0%} of peak)", "issue")  # fmt: skip
        if c["flops"] and c["waves"]["efficiency"] < 0.75:
            eff = c["waves"]["efficiency"]
            flag(f"grid of {c['waves']['grid']} blocks: {eff:.0%} SM balance (a wave tail)", "waves")
    for r in report.get("cuda", []):
        if r["arch"] != 90:
            continue
        ml, k = r["main_loop"], f"{r['kernel']}<{r['dtype']}>"
        if ml["ld_generic"] and ml["hmma"]:
            out.append(f"CUDA `{k}` (sm_90): {ml['ld_generic']} generic LD + {ml['movm']} MOVM beside "
                       f"{ml['ldsm']} LDSM for {ml['hmma']} HMMA in the main loop")  # fmt: skip
        if ml["hmma"] and not ml["ldgsts"]:
            out.append(f"CUDA `{k}` (sm_90): no cp.async (LDGSTS) in the main loop; global load widths "
                       f"{ml['global_load_bits']} bits")  # fmt: skip
        if ml["instr_per_mma"] and ml["instr_per_mma"] > 8:
            out.append(f"CUDA `{k}` (sm_90): {ml['instr_per_mma']} instructions per MMA in the main loop")
        if r["atomics_with_barrier"]:
            out.append(f"CUDA `{k}` (sm_90): {r['atomics_with_barrier']} atomics beside a MEMBAR/CCTL")
        if r["spill_bytes"] or r["ldl_stl"]:
            out.append(f"CUDA `{k}` (sm_90): {r['spill_bytes']} B stack, {r['ldl_stl']} LDL/STL")
    for run in (report.get("emulator") or {}).get("runs", []):
        for k in run["kernels"]:
            for w in k["worst"]:
                if w["per_request"] >= 1.5 * w["ideal"] and w["requests"] >= 16:
                    unit = "sectors" if w["space"] == "global" else "wavefronts"
                    key = (w["site"], w["space"], w["store"])
                    if key in seen:
                        continue
                    seen.add(key)
                    out.append(
                        f"CUDA `{k['kernel']}` (emulated, {run['dtype']} {run['layout']} {run['case']}): "
                        f"{w['site']} {w['space']} {'store' if w['store'] else 'load'} "
                        f"of {w['size']} B lanes: "
                        f"{w['per_request']} {unit} per request where {w['ideal']} would do"
                    )
    return out


def _ipm_cell(c: dict):
    """instr/MMA as executed, with the all-paths count beside it where conditional regions differ."""
    ml = c["main_loop"]
    ex = c.get("instr_per_mma_executed", ml["instr_per_mma"])
    if ex is None:
        return "-"
    return f"{ex} ({ml['instr_per_mma']})" if ex != ml["instr_per_mma"] else ex


def _row(*cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def emulator_markdown(em: dict) -> list[str]:
    lines = [
        "",
        "## CUDA kernels under the emulator: global sectors and shared wavefronts per request",
        "",
        "From the addresses csrc/cuda's kernels touch when run on the CPU by the SIMT emulator, grouped as a "
        "warp issues them (tools/gpu_model_sim.py; csrc/simt/simt_metrics.h): the kernels' logic, not nvcc's "
        "code, and not a timing. WMMA fragment loads are left out (their hardware form, LDSM or generic "
        "LD, is "
        "in the SASS table above).",
        "",
        "Planted patterns (csrc/simt/emulator_checks.cpp) against what a profiler reports:",
        "",
        "| pattern | stride | space | per request | a profiler |",
        "|---|---|---|---|---|",
    ]
    for p in em["patterns"]:
        lines.append(f"| {p['kind']} | {p['stride']} | {p['space']} | {p['got']} | {p['expected']} |")
    lines += [
        "",
        "Per kernel (forward + backward of one layer; `ideal`: the fewest sectors or wavefronts the same "
        "bytes could take if no two lanes shared an address, so broadcasts go below it; worst sites by "
        "excess):",
        "",
        "| dtype | layout | case | form | kernel | global ld: per req (ideal) | global st | shared ld "
        "| shared st "
        "| worst sites |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(d):
        return "-" if not d["requests"] else f"{d['per_request']} ({d['ideal_per_request']})"

    for r in em["runs"]:
        for k in r["kernels"]:
            worst = "; ".join(
                f"{w['site']} {w['space'][:2]} {'st' if w['store'] else 'ld'}{8 * w['size']} "
                f"{w['per_request']}/{w['ideal']}"
                for w in k["worst"]
                if w["per_request"] > w["ideal"]
            )
            lines.append(
                f"| {r['dtype']} | {r['layout']} | {r['case']} | {r['form']} | {k['kernel']} | "
                f"{cell(k['global_ld'])} | {cell(k['global_st'])} | {cell(k['shared_ld'])} | "
                f"{cell(k['shared_st'])} | {worst or '-'} |"
            )
    return lines


def main(argv=None) -> int:
    os.environ.pop("TRITON_INTERPRET", None)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    ap.add_argument("--layout", default="cl", choices=["cl", "nchw"])
    ap.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu_model"))
    ap.add_argument(
        "--baseline", help="a gpu_model JSON of an earlier commit: its ratios become the 'before' column"
    )
    ap.add_argument(
        "--no-cuda", action="store_true", help="skip the CUDA kernels (no cuda-check build needed)"
    )
    ap.add_argument("--jobs", type=int, default=None)
    ap.add_argument("--commit", help="the commit the sources are from (default: git rev-parse HEAD)")
    ap.add_argument("--no-sim", action="store_true", help="skip the emulator's access metrics")
    ap.add_argument("--sim-json", help="the emulator's metrics from an earlier tools/gpu_model_sim.py --json")
    a = ap.parse_args(argv)
    import triton

    commit = (
        a.commit
        or subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    )
    report = dict(
        command="python tools/gpu_model.py"
        + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip(),
        commit=commit,
        triton_version=triton.__version__,
        batch=a.batch,
        dtype=a.dtype,
        layout=a.layout,
        python=platform.python_version(),
        note="predicted by a static model from compiled code; not a GPU timing",
        assumptions=dict(
            latency_ns=LATENCY_NS, gpus=gs.GPUS, issue_k={g: round(issue_k(g), 2) for g in gs.GPUS}
        ),
    )
    report["triton"] = triton_rows(a.batch, a.dtype, a.layout, a.arch, a.jobs)
    report["layers"] = layer_predictions(report["triton"], a.batch, a.dtype)
    so = None if a.no_cuda else cuda_so()
    if so is not None:
        report["cuda"] = cuda_rows(so, a.arch)
        report["cuda_grids"] = cuda_grids(a.batch)
    elif not a.no_cuda:
        print("gpu-model: no cuda-check build (run `make cuda-check`): CUDA kernels skipped", file=sys.stderr)
    if a.sim_json:
        report["emulator"] = json.loads(Path(a.sim_json).read_text())
    elif not a.no_sim:
        report["emulator"] = emulator_metrics()
    baseline = json.loads(Path(a.baseline).read_text()) if a.baseline else None
    if baseline is None and Path(a.out + ".json").exists():  # keep the 'before' across reruns
        baseline = json.loads(Path(a.out + ".json").read_text()).get("baseline")
    if baseline:
        baseline.pop("baseline", None)
        report["baseline"] = baseline
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(a.out + ".json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    write_markdown(Path(a.out + ".md"), report, baseline)
    for r in report["layers"]:
        print(
            f"{r['gpu']} {r['shape']:9} fwd {r['ratio_work_fwd']:.2f}/{r['ratio_pred_fwd']:.2f}  "
            f"fwd+bwd {r['ratio_work_fwd_bwd']:.2f}/{r['ratio_pred_fwd_bwd']:.2f}  (work/pred, x plain bound)"
        )
    failed = [r for r in report["triton"] for c in r["candidates"] if not c["ok"]]
    print(f"gpu-model: wrote {a.out}.json and .md; {len(failed)} failed compiles")
    print("gpu-model: every time in it is predicted by a static model, not measured on a GPU")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
