"""Compile every Triton kernel and autotune config ahead of time for sm_80 and sm_90, as the runtime would.

    python tools/triton_aot_check.py [--arch 80 90] [--jobs N] [--full]

No GPU is needed (docs/gpu.md). The kernels are not compiled from a hand-written signature: the
package's own launchers run on ``meta`` tensors of one ResNet-50 layer (64 channels at 56x56,
batch 32) with every Triton kernel replaced by a recorder (tools/gpu_model_triton.py), and each
recorded launch is compiled with the specialisation ``triton.jit`` would give it at run time: the
integers the launcher passes, ``tt.divisibility=16`` on 16-byte aligned pointers and on integers
divisible by 16, integers equal to 1 as constants, and each autotune config's BLOCK sizes,
num_warps and num_stages. So the PTX checked here is that of the kernel that runs.

Every kernel x arch x dtype (fp32: NCHW with IEEE dots, also TF32; fp16/bf16: channels_last) with
every autotune config, the other layout and the constexpr switches' other branches (no bias, dx
or dm alone, the statistics' own dx kernel) with the first config (``--full``: every config
everywhere). For each it prints the shared memory (``metadata.shared``, at most 163 KiB on sm_80
and 227 KiB on sm_90), the tensor-core instruction in the PTX (``mma`` / ``wgmma``) and whether
the global loads are vectorised (16-byte ``ld.global.v4`` or ``cp.async``). It exits non-zero
when a compile fails, shared memory is over the limit, or an fp16/bf16 (or TF32) GEMM kernel does
not use tensor cores. Compiles are cached in build/gpu-model/ (shared with `make gpu-model`). Run
it without TRITON_INTERPRET.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

SMEM_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
DTYPES = ("fp32", "fp16", "bf16")
GEMMS = ("mconv_fwd", "mconv_dx", "mconv_dw", "shc_fwd")
SHAPE = dict(d=64, c=64, h=56, stride=1, batch=32)  # ResNet-50's first 3x3 layer, a modest batch
# The constexpr switches' other branches: (launcher arguments, kernels whose variant it is, label).
# need: (x, conv weight, hypernetwork parameters) need gradients; route: grad_route. The default
# (route "both", every gradient) is the fused backward: dW with dm, then dx with the hypernetwork
# route in its epilogue (mconv_dx HYPER), no stats_dx.
VARIANTS = [
    (dict(bias=False), ("mconv_fwd", "stats_map_fwd"), "no bias"),
    # route "conv": dx without the hypernetwork route. At this shape (56x56 >= conv.DM_IN_DW_PIXELS)
    # dm comes from the dW kernel whenever dW is asked for; without dW the dx kernel reduces it
    (dict(need=(True, True, False), route="conv"), ("mconv_dx", "mconv_dw"), "dx only"),
    (dict(need=(True, False, True), route="conv"), ("mconv_dx",), "dx and dm"),
    (dict(need=(False, False, True)), ("mconv_dx",), "dm only"),
    # both routes without dW: dm from the dx kernel, then the hypernetwork route added to dx in place
    (dict(need=(True, False, True)), ("stats_dx",), "hyper in place"),
    (dict(need=(True, False, False), route="hyper"), ("stats_dx",), "hyper only"),
]


def _cfg_name(cfg) -> str:
    if cfg is None:
        return "-"
    kw = cfg.kwargs
    return (
        "x".join(str(kw[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
        + f" w{cfg.num_warps} s{cfg.num_stages}"
    )


def _all_configs(launch) -> list:
    """Every autotune config of the kernel (the AOT check compiles them all, not only those the
    launcher's pruning keeps at this shape)."""
    import gpu_model_triton as gt

    k = getattr(gt._modules()[launch.module], launch.attr)
    return list(k.configs) if hasattr(k, "configs") else [None]


def _with_precision(launch, prec: str):
    import copy

    out = copy.copy(launch)
    out.kwargs = dict(launch.kwargs, INPUT_PRECISION=prec)
    return out


def plan(archs, full: bool = False) -> list[tuple]:
    """[(label dict, (launch, config, arch))] for every variant to compile."""
    import gpu_model as gm

    out = []
    seen = set()

    def add(info, launch, cfg, arch):
        key = (
            launch.name,
            arch,
            info["dtype"],
            info["layout"],
            info["prec"],
            info["variant"],
            _cfg_name(cfg),
        )
        if key not in seen:
            seen.add(key)
            out.append(
                (dict(info, kernel=launch.name, arch=arch, config=_cfg_name(cfg)), (launch, cfg, arch))
            )

    for arch in archs:
        for dt in DTYPES:
            main = "nchw" if dt == "fp32" else "cl"
            for layout in (main, "cl" if main == "nchw" else "nchw"):
                launches = gm.layer_launches(
                    SHAPE["d"], SHAPE["c"], SHAPE["h"], SHAPE["stride"], SHAPE["batch"], dt, layout
                )
                for lc in launches:
                    if dt != "fp32" and lc.name == "map_bwd":
                        continue  # fp32 whatever x is: compiled once, with fp32
                    cfgs = _all_configs(lc)
                    precs = ["ieee", "tf32"] if (dt == "fp32" and lc.name in GEMMS) else ["-"]
                    for prec in precs:
                        # every config the autotuner may pick, the one-launch forward's too (the
                        # layer's forward at few channels per pixel: layer.use_one_launch)
                        every = (layout == main and prec != "tf32") or full
                        lp = _with_precision(lc, prec) if prec != "-" else lc
                        for cfg in cfgs if every else cfgs[:1]:
                            add(dict(dtype=dt, layout=layout, prec=prec, variant="-"), lp, cfg, arch)
            for kwargs, names, label in VARIANTS:
                launches = gm.layer_launches(
                    SHAPE["d"], SHAPE["c"], SHAPE["h"], SHAPE["stride"], SHAPE["batch"], dt, main, **kwargs
                )
                for lc in launches:
                    if lc.name in names:
                        cfgs = _all_configs(lc)
                        prec = "ieee" if (dt == "fp32" and lc.name in GEMMS) else "-"
                        for cfg in cfgs if full else cfgs[:1]:
                            add(dict(dtype=dt, layout=main, prec=prec, variant=label), lc, cfg, arch)
    return out


def _ptx_only(key: str, meta: dict) -> dict:
    """What check() reads of a compile: its metadata (shared memory) and the PTX facts. Replaces
    gpu_model_triton._analyse here, whose SASS reading (cuobjdump and nvdisasm on every cubin, about
    0.6 s of CPU per variant, a quarter of a cold run and nearly all of a run on a warm Triton cache)
    only `make gpu-model` and tests/test_gpu_model.py use; they redo it from the same cache entries."""
    import gpu_model_triton as gt

    return dict(meta, ptx=gt._ptx_facts((gt.CACHE / f"{key}.ptx").read_text()))


def check(info: dict, r: dict) -> str:
    """'' when the compile is fine, else what is wrong."""
    if not r.get("ok"):
        return r.get("error", "compile failed")
    problems = []
    if r["shared"] > SMEM_LIMIT[info["arch"]]:
        problems.append(f"shared memory {r['shared']} > {SMEM_LIMIT[info['arch']]}")
    wants_tc = info["kernel"] in GEMMS and (info["dtype"] in ("fp16", "bf16") or info["prec"] == "tf32")
    if wants_tc and not (r["ptx"]["mma_sync"] or r["ptx"]["wgmma"]):
        problems.append("no tensor-core instruction (mma/wgmma) in the PTX")
    return "; ".join(problems)


def main(argv=None) -> int:
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("aot_check: unset TRITON_INTERPRET (it compiles for real GPUs)", file=sys.stderr)
        return 2
    import gpu_model_triton as gt

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, nargs="+", default=[80, 90], choices=sorted(SMEM_LIMIT))
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument(
        "--full", action="store_true", help="every layout, precision and variant with every config"
    )
    args = ap.parse_args(argv)
    t0 = time.time()
    todo = plan(args.arch, args.full)
    print(
        f"compiling {len(todo)} kernel variants for sm_{', sm_'.join(map(str, args.arch))} "
        "with the runtime's "
        f"specialisation at {SHAPE} ({args.jobs} processes; cached in {gt.CACHE.relative_to(gt.ROOT)})"
    )
    # The workers are forked after this assignment, so they inherit it (under another start method
    # they would only do the full analysis: slower, same result).
    gt._analyse = _ptx_only
    results = gt.compile_many([job for _info, job in todo], args.jobs)
    print(
        f"{'kernel':14} {'variant':8} {'arch':5} {'dtype':5} {'layout':6} {'prec':5} {'config':18} "
        f"{'shared':>8} "
        f"{'tc':6} {'ld':8} status"
    )
    failures = 0
    for (info, _job), r in zip(todo, results, strict=True):
        problem = check(info, r)
        failures += bool(problem)
        ptx = r.get("ptx", {})
        tc = "wgmma" if ptx.get("wgmma") else ("mma" if ptx.get("mma_sync") else "-")
        ld = "cp.async" if ptx.get("cp_async") else ("v4" if ptx.get("ld_global_v4") else "scalar")
        shared = f"{r['shared'] / 1024:.1f}K" if "shared" in r else "?"
        print(
            f"{info['kernel']:14} {info['variant']:8} sm_{info['arch']:<2} {info['dtype']:5} "
            f"{info['layout']:6} "
            f"{info['prec']:5} {info['config']:18} {shared:>8} {tc:6} {ld:8} "
            f"{'FAIL ' + problem if problem else 'ok'}"
        )
    print(f"{len(todo) - failures}/{len(todo)} variants ok in {time.time() - t0:.0f}s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
