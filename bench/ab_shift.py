"""A/B of the CPU kernel's two methods for the stride-1 3x3 conv against F.conv2d.

    python bench/ab_shift.py --batch 128 --reps 5 --markdown bench/results/cpu_shift_ab_DATE.md

SHC_CPU_SHIFT=0 (im2col) and 2 (shift) are timed beside F.conv2d of the same shape, one thread,
by process CPU time (the machine may be shared), the three interleaved; ratios are of the minima
and of the medians over the repetitions, forward and forward+backward (dx, dweight, dm, dbias).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

import shc_kernels  # noqa: F401  (registers the shc:: ops)

SHAPES = [(16, 16, 28), (32, 32, 14), (64, 64, 7), (32, 32, 32), (64, 64, 16), (128, 128, 8), (128, 128, 4)]
SHAPES += [(3, 16, 28), (16, 16, 56), (64, 64, 56), (128, 128, 14)]
METHODS = ("plain", "0", "2")


def _step(method, x, w, m, b, backward):
    if method == "plain":
        y = F.conv2d(x, w, b, padding=1)
    else:
        os.environ["SHC_CPU_SHIFT"] = method
        y = torch.ops.shc.modulated_conv2d(x, w, m, b, [1, 1], [1, 1], [1, 1], 1)
    if backward:
        y.backward(torch.ones_like(y))


def time_shape(n, d, c, h, reps):
    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(n, d, h, h, generator=g), torch.randn(c, d, 3, 3, generator=g)]
    tensors += [torch.rand(n, 3, 3, generator=g), torch.randn(c, generator=g)]
    row = {}
    for backward in (False, True):
        for t in tensors:
            t.requires_grad_(backward)
        times = {k: [] for k in METHODS}
        for r in range(reps + 1):  # the first round warms up
            for k in METHODS:
                start = time.process_time()
                _step(k, *tensors, backward)
                if r:
                    times[k].append(1e3 * (time.process_time() - start))
        base = min(times["plain"]), statistics.median(times["plain"])
        row[backward] = [f"{base[0]:.2f}"] + [
            f"{min(times[k]) / base[0]:.2f} / {statistics.median(times[k]) / base[1]:.2f}"
            for k in METHODS[1:]
        ]
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--markdown", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    lines = [
        f"Command: `python bench/ab_shift.py --batch {args.batch} --reps {args.reps}`",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs,"
        f" torch {torch.__version__}, one thread, fp32, batch {args.batch}, process CPU time;"
        " ratios to F.conv2d of the minima / of the medians",
        "",
        "| D>C@HW | F.conv2d fwd ms | im2col fwd | shift fwd"
        " | F.conv2d fwd+bwd ms | im2col fwd+bwd | shift fwd+bwd |",
        "|---|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    for d, c, h in SHAPES:
        row = time_shape(args.batch, d, c, h, args.reps)
        lines.append(f"| {d}>{c}@{h} | " + " | ".join(row[False] + row[True]) + " |")
        print(lines[-1], flush=True)
    os.environ.pop("SHC_CPU_SHIFT", None)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
