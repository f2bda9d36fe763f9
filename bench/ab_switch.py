"""A/B of an environment switch in one process: the SHC layer against F.conv2d, arm A with
VAR=VALUE set, arm B without it, alternating, the median of the paired ratios (shc / plain, each
pair timed back to back). Separate processes could not resolve a few per cent on the 2-core
machine; pairs in one process can. Knobs the kernel reads per call (SHC_CPU_WS_BYTES,
SHC_CPU_METHOD, ...) or a temporary switch compiled in for the comparison act at once.

    python bench/ab_switch.py SHC_CPU_WS_BYTES=16777216 THREADS BATCH REPS D,C,H,STRIDE [...]
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import torch

from shc_kernels.cli import bench


def main(argv: list[str]) -> int:
    var, _, value = argv[0].partition("=")
    threads, batch, reps = (int(a) for a in argv[1:4])
    torch.set_num_threads(threads)
    bench.steady_malloc()
    clock = time.thread_time if threads == 1 else time.perf_counter
    for cin, cout, hw, stride in (tuple(int(v) for v in s.split(",")) for s in argv[4:]):
        x, params = bench.make_inputs(cin, cout, hw, batch, "cpu", torch.float32, False)
        calls = bench.closures(bench.method_fns(stride), ("plain", "shc:cpu"), x, params)
        out = {}
        for mode in ("fwd", "fwdbwd"):
            plain, shc = calls[("plain", mode)], calls[("shc:cpu", mode)]
            for f in (plain, shc, plain, shc):
                f()
            ratios = {"A": [], "B": []}
            for _ in range(reps):
                for arm in ("A", "B"):
                    if arm == "A":
                        os.environ[var] = value or "1"
                    else:
                        os.environ.pop(var, None)
                    t0 = clock()
                    plain()
                    t1 = clock()
                    shc()
                    t2 = clock()
                    ratios[arm].append((t2 - t1) / (t1 - t0))
            out[mode] = [statistics.median(ratios[arm]) for arm in ("A", "B")]
        os.environ.pop(var, None)
        print(
            f"{cin}>{cout}@{hw}/{stride} N={batch} threads={threads}: "
            f"fwd A {out['fwd'][0]:.3f} B {out['fwd'][1]:.3f} | "
            f"fwd+bwd A {out['fwdbwd'][0]:.3f} B {out['fwdbwd'][1]:.3f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
