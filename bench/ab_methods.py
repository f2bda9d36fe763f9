"""A/B of the CPU kernel's methods of the modulated conv against F.conv2d, on the 3x3 layers of
the small-image and narrow networks and two ImageNet ones.

    python bench/ab_methods.py --batch 128 --reps 5 --markdown bench/results/cpu_methods_ab_DATE.md
    python bench/ab_methods.py --batch 32 --shape '64>64@8' --shape '32>64@16/2'

SHC_CPU_METHOD=im2col, shift, taps and direct (where a method does not apply the row says "-"; on
stride 2 direct takes the forward only, so its fwd+bwd there is im2col's backward) and auto (what
the kernel picks) are timed beside F.conv2d of the same shape, one thread, by process CPU
time (the machine may be shared), all interleaved; ratios are of the minima and of the medians
over the repetitions, forward and forward+backward (dx, dweight, dm, dbias). glibc's malloc is
first told to keep freed memory (shc_kernels.cli.bench.steady_malloc), as `shc bench` does.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import shc_kernels  # noqa: F401  (registers the shc:: ops)
from shc_kernels.cli.bench import steady_malloc

# (D, C, H, stride): padding 1
SHAPES = [(16, 16, 28, 1), (32, 32, 14, 1), (64, 64, 7, 1), (32, 32, 32, 1), (64, 64, 16, 1)]
SHAPES += [(128, 128, 8, 1), (128, 128, 4, 1), (256, 256, 4, 1), (3, 16, 28, 1)]
SHAPES += [(16, 32, 28, 2), (32, 64, 14, 2), (64, 128, 7, 2), (128, 256, 8, 2)]
SHAPES += [(64, 64, 56, 1), (512, 512, 7, 1)]
SHAPES += [(32, 32, 28, 1), (64, 64, 14, 1), (128, 128, 28, 1), (128, 128, 14, 1), (256, 256, 14, 1)]
METHODS = ("plain", "im2col", "shift", "taps", "direct", "auto")


def applies(method, stride):
    # direct takes stride 2 in the forward (its fwd+bwd column is then im2col's backward)
    return method != "shift" or stride == 1


def parse_shape(text):
    """'D>C@H/S' (S defaults to 1) -> (D, C, H, S)."""
    try:
        io, _, rest = text.partition("@")
        d, c = io.split(">")
        h, _, s = rest.partition("/")
        shape = int(d), int(c), int(h), int(s or 1)
    except ValueError:
        msg = f"shape must look like 64>64@14 or 64>128@14/2, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if min(shape) < 1:
        raise argparse.ArgumentTypeError(f"shape {text!r}: every size must be positive")
    return shape


def _step(method, x, w, m, b, stride, backward):
    if method == "plain":
        y = F.conv2d(x, w, b, stride=stride, padding=1)
    else:
        os.environ["SHC_CPU_METHOD"] = method
        y = torch.ops.shc.modulated_conv2d(x, w, m, b, [stride] * 2, [1, 1], [1, 1], 1)
    if backward:
        y.backward(torch.ones_like(y))


def time_shape(n, d, c, h, stride, reps):
    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(n, d, h, h, generator=g), torch.randn(c, d, 3, 3, generator=g)]
    tensors += [torch.rand(n, 3, 3, generator=g), torch.randn(c, generator=g)]
    methods = [k for k in METHODS if applies(k, stride)]
    row = {}
    for backward in (False, True):
        for t in tensors:
            t.requires_grad_(backward)
        times = {k: [] for k in methods}
        for r in range(reps + 1):  # the first round warms up
            for k in methods:
                start = time.process_time()
                _step(k, *tensors, stride, backward)
                if r:
                    times[k].append(1e3 * (time.process_time() - start))
        base = min(times["plain"]), statistics.median(times["plain"])
        med = statistics.median
        ratio = {k: f"{min(v) / base[0]:.2f} / {med(v) / base[1]:.2f}" for k, v in times.items()}
        row[backward] = [f"{base[0]:.2f}"] + [ratio.get(k, "-") for k in METHODS[1:]]
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--markdown", default=None)
    p.add_argument("--shape", type=parse_shape, action="append", default=None,
                   help="time only these shapes, D>C@H or D>C@H/stride (quote it in a shell); repeatable")
    args = p.parse_args()
    torch.set_num_threads(1)
    malloc = steady_malloc()  # no timed call pays page faults for memory a previous call freed
    names = METHODS[1:]
    lines = [
        "Command: `python bench/ab_methods.py " + " ".join(sys.argv[1:]) + "`",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs,"
        f" torch {torch.__version__}, one thread, fp32, batch {args.batch}, padding 1, process CPU time,"
        f" malloc {malloc}; ratios to F.conv2d of the minima / of the medians",
        "",
        "| D>C@HW/stride | F.conv2d fwd ms | "
        + " | ".join(f"{k} fwd" for k in names)
        + " | F.conv2d fwd+bwd ms | "
        + " | ".join(f"{k} fwd+bwd" for k in names)
        + " |",
        "|---|" + "---|" * (2 * len(names) + 2),
    ]
    print("\n".join(lines), flush=True)
    try:
        for d, c, h, stride in args.shape or SHAPES:
            row = time_shape(args.batch, d, c, h, stride, args.reps)
            lines.append(f"| {d}>{c}@{h}/{stride} | " + " | ".join(row[False] + row[True]) + " |")
            print(lines[-1], flush=True)
    finally:
        os.environ.pop("SHC_CPU_METHOD", None)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
