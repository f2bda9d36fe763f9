#!/usr/bin/env python3
"""Usage: python bench/ab_shift.py BATCH REPS SHAPES_JSON (e.g. 128 5 "[[32,32,14]]": D, C, H).

A/B of the CPU kernel's stride-1 3x3 methods (SHC_CPU_SHIFT=0: im2col, 2: shift) against F.conv2d,
one thread, process CPU time, methods interleaved, min and median of reps."""
import os, sys, time, json, statistics
import torch, torch.nn.functional as F
import shc_kernels  # registers the shc:: ops
torch.set_num_threads(1)
N = int(sys.argv[1]); reps = int(sys.argv[2]); shapes = json.loads(sys.argv[3])
def run(kind, x, w, m, b, bwd):
    if kind == "plain":
        y = F.conv2d(x, w, b, padding=1)
    else:
        os.environ["SHC_CPU_SHIFT"] = kind
        y = torch.ops.shc.modulated_conv2d(x, w, m, b, [1, 1], [1, 1], [1, 1], 1)
    if bwd:
        y.backward(torch.ones_like(y))
for D, C, H in shapes:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, H, H, generator=g); w = torch.randn(C, D, 3, 3, generator=g); b = torch.randn(C, generator=g)
    m = torch.rand(N, 3, 3, generator=g)
    row = {}
    for bwd in (False, True):
        if bwd:
            x.requires_grad_(True); w.requires_grad_(True); b.requires_grad_(True); m.requires_grad_(True)
        t = {k: [] for k in ("plain", "0", "2")}
        for r in range(reps + 1):
            for k in t:
                s = time.process_time(); run(k, x, w, m, b, bwd); e = time.process_time() - s
                if r: t[k].append(e * 1e3)
        for k in ("0", "2"):
            row[(bwd, k)] = (min(t[k]) / min(t["plain"]), statistics.median(t[k]) / statistics.median(t["plain"]))
        row[(bwd, "plain")] = min(t["plain"])
    print(f"| {D}>{C}@{H} | {row[(False,'plain')]:.2f} | {row[(False,'0')][0]:.2f} / {row[(False,'0')][1]:.2f} | {row[(False,'2')][0]:.2f} / {row[(False,'2')][1]:.2f} "
          f"| {row[(True,'plain')]:.2f} | {row[(True,'0')][0]:.2f} / {row[(True,'0')][1]:.2f} | {row[(True,'2')][0]:.2f} / {row[(True,'2')][1]:.2f} |", flush=True)
