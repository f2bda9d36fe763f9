"""Compile every Triton kernel and autotune config ahead of time for sm_80 and sm_90.

    python tools/triton_aot_check.py [--arch 80 90] [--jobs N] [--full]

No GPU is needed (DESIGN.md §5). For each kernel / arch / dtype / layout / config it prints the
shared memory the kernel needs (``metadata.shared``, at most 163 KiB on sm_80 and 227 KiB on
sm_90) and whether the PTX uses tensor cores (``mma`` / ``wgmma``). It exits non-zero when a
compile fails, shared memory is over the limit, or an fp16/bf16 (or TF32) GEMM kernel does not
use tensor cores. Run it without TRITON_INTERPRET.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

SMEM_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
DTYPES = ("fp32", "fp16", "bf16")
LAYOUTS = ("nchw", "cl")
_FLOAT_ARGS = {"inv_hw", "eps"}
FLAG_VARIANTS = {
    "stats_map_fwd": [(("HAS_B1", False), ("HAS_B2", False))],
    "mconv_fwd": [(("HAS_BIAS", False),)],
    "mconv_dx": [(("NEED_M", False),), (("NEED_X", False),)],
}


def _kernels():
    """name -> (jit function, configs or None, pointer dtypes (x dtype -> dict), fixed constexprs,
    unit strides per layout, whether it is a GEMM)."""
    from shc_kernels.triton import conv, stats

    def unwrap(k):
        return k.fn if hasattr(k, "configs") else k

    def same(names, extra=None):
        return lambda dt: {**{n: dt for n in names}, **(extra or {})}

    f32 = "fp32"
    return {
        "stats_map_fwd": (
            stats._stats_map_fwd_kernel,
            None,
            same(
                ["x_ptr"],
                {
                    p: f32
                    for p in ("w1_ptr", "b1_ptr", "w2_ptr", "b2_ptr", "mu_ptr", "sigma_ptr", "h_ptr", "m_ptr")
                },
            ),  # fmt: skip
            dict(
                HAS_B1=True,
                HAS_B2=True,
                BLOCK_D=stats._BLOCK_D,
                BLOCK_Q=stats._BLOCK_Q,
                BLOCK_K=stats._BLOCK_K,
                BLOCK_T=16,
            ),  # fmt: skip
            {"nchw": ["stride_xq"], "cl": ["stride_xd"]},
            False,
        ),
        "map_bwd": (
            stats._map_bwd_kernel,
            None,
            lambda dt: {
                p: f32
                for p in (
                    "dm_ptr",
                    "m_ptr",
                    "h_ptr",
                    "w1_ptr",
                    "w2_ptr",
                    "dlogit_ptr",
                    "dpre_ptr",
                    "dmu_ptr",
                    "dsigma_ptr",
                )
            },  # fmt: skip
            dict(BLOCK_D=stats._BLOCK_D, BLOCK_K=stats._BLOCK_K, BLOCK_T=16),
            None,  # no x: one variant
            False,
        ),
        "stats_dx": (
            stats._stats_dx_kernel,
            None,
            same(["x_ptr", "dx_ptr"], {p: f32 for p in ("mu_ptr", "sigma_ptr", "dmu_ptr", "dsigma_ptr")}),
            dict(BLOCK_D=stats._BLOCK_D, BLOCK_Q=stats._BLOCK_Q),
            {"nchw": ["stride_xq", "stride_gq"], "cl": ["stride_xd", "stride_gd"]},
            False,
        ),
        "mconv_fwd": (
            unwrap(conv._mconv_fwd_kernel),
            conv.FWD_CONFIGS,
            same(["x_ptr", "w_ptr", "b_ptr", "y_ptr"], {"m_ptr": f32}),
            dict(HAS_BIAS=True),
            {"nchw": ["sxw", "syw", "swc"], "cl": ["sxd", "syc", "swc"]},
            True,
        ),
        "mconv_dx": (
            unwrap(conv._mconv_dx_kernel),
            conv.DX_CONFIGS,
            same(["gy_ptr", "x_ptr", "w_ptr", "dx_ptr"], {"m_ptr": f32, "dm_ptr": f32}),
            dict(NEED_X=True, NEED_M=True),
            {"nchw": ["sgw", "sxw", "swd", "sdw"], "cl": ["sgc", "sxd", "swd", "sdd"]},
            True,
        ),
        "mconv_dw": (
            unwrap(conv._mconv_dw_kernel),
            conv.DW_CONFIGS,
            same(["gy_ptr", "x_ptr"], {"m_ptr": f32, "dw_ptr": f32}),
            dict(),
            {"nchw": ["sgw", "sxw"], "cl": ["sgc", "sxd"]},
            True,
        ),
    }


def _jobs(archs, full=False):
    """Every kernel x arch x dtype x autotune config, in the layout that dtype mostly runs in
    (fp32: NCHW with IEEE dots; fp16/bf16: channels_last); the other layout and TF32 with the
    first config only, unless ``full`` (every combination)."""
    jobs = []
    for name, (_fn, configs, _ptrs, _cx, unit, _gemm) in _kernels().items():
        n_cfg = len(configs) if configs else 1
        dtypes = DTYPES if name != "map_bwd" else ("fp32",)
        for arch in archs:
            for dt in dtypes:
                main_layout = ("nchw" if dt == "fp32" else "cl") if unit else "-"
                layouts = [main_layout] + ([lo for lo in LAYOUTS if lo != main_layout] if unit else [])
                precisions = ["ieee", "tf32"] if (configs and dt == "fp32") else ["-"]
                for layout in layouts:
                    for prec in precisions:
                        primary = layout == main_layout and prec in ("ieee", "-")
                        for i in range(n_cfg if (primary or full) else 1):
                            jobs.append((name, arch, dt, layout, prec, i, ()))
                # the constexpr switches' other branches (no bias, dx or dm alone), first config
                for flags in FLAG_VARIANTS.get(name, ()):
                    prec = "ieee" if (configs and dt == "fp32") else "-"
                    jobs.append((name, arch, dt, main_layout, prec, 0, flags))
    return jobs


def _compile(job):
    """Compile one variant; returns a result dict (never raises)."""
    name, arch, dt, layout, prec, cfg_i, flags = job
    res = dict(kernel=name, arch=arch, dtype=dt, layout=layout, prec=prec, config="-", ok=False)
    if flags:
        res["kernel"] += "[" + ",".join(f"{k}={int(v)}" for k, v in flags) + "]"
    try:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource

        fn, configs, ptrs, cx, unit, gemm = _kernels()[name]
        constexprs = dict(cx)
        options = {"num_warps": 4, "num_stages": 3}
        if configs:
            cfg = configs[cfg_i]
            constexprs.update(cfg.kwargs)
            options = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
            res["config"] = (
                "x".join(str(cfg.kwargs[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
                + f" w{cfg.num_warps} s{cfg.num_stages}"
            )
        constexprs.update(dict(flags))
        if gemm:
            constexprs["INPUT_PRECISION"] = prec if dt == "fp32" else "ieee"
        if unit:
            constexprs.update({s: 1 for s in unit[layout]})  # Triton specializes unit strides
        ptr_types = ptrs(dt)
        signature, attrs = {}, {}
        for i, arg in enumerate(fn.arg_names):
            if arg in constexprs:
                signature[arg] = "constexpr"
            elif arg in ptr_types:
                signature[arg] = "*" + ptr_types[arg]
                attrs[(i,)] = [["tt.divisibility", 16]]
            elif arg in _FLOAT_ARGS:
                signature[arg] = "fp32"
            else:
                signature[arg] = "i32"
        src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
        t0 = time.time()
        k = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
        ptx = k.asm["ptx"]
        res.update(
            seconds=round(time.time() - t0, 2),
            shared=int(k.metadata.shared),
            wgmma="wgmma" in ptx,
            mma=("mma.sync" in ptx) or ("wgmma" in ptx),
        )
        problems = []
        if res["shared"] > SMEM_LIMIT[arch]:
            problems.append(f"shared memory {res['shared']} > {SMEM_LIMIT[arch]}")
        wants_tc = gemm and (dt in ("fp16", "bf16") or res["prec"] == "tf32")
        if wants_tc and not res["mma"]:
            problems.append("no tensor-core instruction (mma/wgmma) in the PTX")
        res["ok"] = not problems
        res["error"] = "; ".join(problems)
    except Exception as exc:  # report and go on: the summary counts failures
        res["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    return res


def main(argv=None) -> int:
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("aot_check: unset TRITON_INTERPRET (it compiles for real GPUs)", file=sys.stderr)
        return 2
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, nargs="+", default=[80, 90], choices=sorted(SMEM_LIMIT))
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--full", action="store_true", help="every layout and precision with every config")
    args = ap.parse_args(argv)
    jobs = _jobs(args.arch, args.full)
    t0 = time.time()
    print(f"compiling {len(jobs)} kernel variants for sm_{', sm_'.join(map(str, args.arch))} "
          f"with {args.jobs} processes")  # fmt: skip
    header = (
        f"{'kernel':26} {'arch':5} {'dtype':5} {'layout':6} {'prec':5} {'config':18} "
        f"{'shared':>8} tc     {'time':>6} status"
    )
    print(header)
    failures = 0
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for r in pool.map(_compile, jobs):
            tc = "wgmma" if r.get("wgmma") else ("mma" if r.get("mma") else "-")
            shared = f"{r['shared'] / 1024:.1f}K" if "shared" in r else "?"
            status = "ok" if r["ok"] else f"FAIL {r.get('error', '')}"
            failures += not r["ok"]
            secs = f"{r.get('seconds', '-')}s"
            print(
                f"{r['kernel']:26} sm_{r['arch']:<2} {r['dtype']:5} {r['layout']:6} {r['prec']:5} "
                f"{r['config']:18} {shared:>8} {tc:6} {secs:>6} {status}",
                flush=True,
            )
    print(f"{len(jobs) - failures}/{len(jobs)} variants ok in {time.time() - t0:.0f}s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
