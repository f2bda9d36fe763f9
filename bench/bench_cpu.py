#!/usr/bin/env python
"""CPU benchmark: the SHC op (compiled C++ kernels) against a plain F.conv2d of the same shape.

    python bench/bench_cpu.py [--shapes all|64x56,128x28] [--reps 5] [--batch 32] [--markdown PATH]

Loads the built extension file (shc_kernels/_C*.so from `python setup.py build_ext --inplace`
or an installed copy) with torch.ops.load_library, so it does not import the Python package.
For each shape (D = C channels @ H x W, 3x3, stride 1, padding 1, fp32) it times:
  plain fwd       F.conv2d(x, w, b)
  plain fwd+bwd   the same with x, w, b requiring grad, then backward
  shc fwd         channel_stats + tiny MLP (torch) + modulated_conv2d
  shc fwd+bwd     the above + modulated_conv2d_backward (dx, dW, dm) + MLP backward
                  + channel_stats_backward (the exact "both"-route gradient)
and prints median (min-max) ms over --reps and the ratio shc/plain measured in the same run.
"""

import argparse
import datetime
import glob
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = {"64x56": (64, 56), "128x28": (128, 28), "256x14": (256, 14), "512x7": (512, 7)}


def load_extension():
    cands = glob.glob(os.path.join(ROOT, "shc_kernels", "_C*.so"))
    if not cands:
        import importlib.util

        spec = importlib.util.find_spec("shc_kernels")
        if spec is not None and spec.submodule_search_locations:
            for loc in spec.submodule_search_locations:
                cands += glob.glob(os.path.join(loc, "_C*.so"))
    if not cands:
        sys.exit("shc_kernels/_C*.so not found: run `python setup.py build_ext --inplace` first")
    torch.ops.load_library(cands[0])
    return cands[0]


def timeit(fn, reps, warmup=2):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts), min(ts), max(ts)


def make_case(ch, hw, n, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, ch, hw, hw, generator=g, dtype=dtype)
    w = torch.randn(ch, ch, 3, 3, generator=g, dtype=dtype) * (2.0 / (ch * 9)) ** 0.5
    b = torch.randn(ch, generator=g, dtype=dtype) * 0.1
    k = max(1, ch // 2)
    fc1_w = torch.randn(k, 2 * ch, generator=g, dtype=dtype) * 0.1
    fc1_b = torch.zeros(k, dtype=dtype)
    fc2_w = torch.randn(9, k, generator=g, dtype=dtype) * 0.1
    fc2_b = torch.zeros(9, dtype=dtype)
    return x, w, b, fc1_w, fc1_b, fc2_w, fc2_b


ARGS = ([1, 1], [1, 1], [1, 1], 1)  # stride, padding, dilation, groups


def shc_forward(x, w, b, fc1_w, fc1_b, fc2_w, fc2_b):
    ops = torch.ops.shc
    mu, sigma = ops.channel_stats(x, 1e-5)
    z = torch.cat([mu, sigma], 1)
    h = torch.relu(z @ fc1_w.t() + fc1_b)
    m = torch.sigmoid(h @ fc2_w.t() + fc2_b).reshape(x.shape[0], 3, 3)
    y = ops.modulated_conv2d(x, w, m, b, *ARGS)
    return y, (mu, sigma, z, h, m)


def shc_forward_backward(x, w, b, fc1_w, fc1_b, fc2_w, fc2_b, gy):
    """Forward and the full backward written out with the ops (no autograd registration needed)."""
    ops = torch.ops.shc
    y, (mu, sigma, z, h, m) = shc_forward(x, w, b, fc1_w, fc1_b, fc2_w, fc2_b)
    dx, dw, dm = ops.modulated_conv2d_backward(gy, x, w, m, *ARGS, [True, True, True])
    db = gy.sum((0, 2, 3))
    # MLP backward (tiny): m = sigmoid(a2), a2 = h fc2^T + b2, h = relu(a1), a1 = z fc1^T + b1
    da2 = dm.reshape(m.shape[0], -1) * (m.reshape(m.shape[0], -1) * (1 - m.reshape(m.shape[0], -1)))
    d_fc2w, d_fc2b = da2.t() @ h, da2.sum(0)
    da1 = (da2 @ fc2_w) * (h > 0)
    d_fc1w, d_fc1b = da1.t() @ z, da1.sum(0)
    dz = da1 @ fc1_w
    ch = x.shape[1]
    dx = dx + ops.channel_stats_backward(dz[:, :ch].contiguous(), dz[:, ch:].contiguous(), x, mu, sigma)
    return y, dx, dw, db, d_fc1w, d_fc1b, d_fc2w, d_fc2b


def machine():
    model = platform.processor() or "unknown"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="all", help="all or comma list of " + ",".join(SHAPES))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--markdown", default=None, help="write the table to this markdown file")
    args = ap.parse_args()

    so = load_extension()
    torch.set_num_threads(args.threads)
    names = list(SHAPES) if args.shapes == "all" else args.shapes.split(",")
    rows = []
    for name in names:
        ch, hw = SHAPES[name]
        x, w, b, *mlp = make_case(ch, hw, args.batch)

        def plain_fwd():
            with torch.no_grad():
                F.conv2d(x, w, b, 1, 1)

        xg, wg, bg = (t.clone().requires_grad_() for t in (x, w, b))
        gy = torch.randn(args.batch, ch, hw, hw)

        def plain_fb():
            y = F.conv2d(xg, wg, bg, 1, 1)
            y.backward(gy)
            xg.grad = wg.grad = bg.grad = None

        def shc_fwd():
            with torch.no_grad():
                shc_forward(x, w, b, *mlp)

        def shc_fb():
            with torch.no_grad():
                shc_forward_backward(x, w, b, *mlp, gy)

        # interleave measurements so drift hits both sides equally
        pf, pfb, sf, sfb = (timeit(f, args.reps) for f in (plain_fwd, plain_fb, shc_fwd, shc_fb))
        r = dict(shape=f"N={args.batch} {ch}ch @ {hw}x{hw}", pf=pf, pfb=pfb, sf=sf, sfb=sfb,
                 rf=sf[0] / pf[0], rfb=sfb[0] / pfb[0])
        rows.append(r)
        print(f"{r['shape']:>22}: plain fwd {pf[0]:7.1f} ms  fwd+bwd {pfb[0]:7.1f} ms | "
              f"shc fwd {sf[0]:7.1f} ms ({r['rf']:.2f}x)  fwd+bwd {sfb[0]:7.1f} ms ({r['rfb']:.2f}x)",
              flush=True)

    def fmt(t):
        return f"{t[0]:.1f} ({t[1]:.1f}-{t[2]:.1f})"

    lines = [
        f"# CPU benchmark: SHC op vs plain conv2d ({datetime.date.today().isoformat()})",
        "",
        f"- machine: {machine()}; torch.set_num_threads({args.threads})",
        f"- torch {torch.__version__}; extension {os.path.relpath(so, ROOT)}",
        f"- command: `python bench/bench_cpu.py {' '.join(sys.argv[1:])}`",
        f"- fp32, 3x3, stride 1, padding 1, D = C; median (min-max) ms over {args.reps} reps",
        "- shc fwd = channel_stats + MLP + modulated_conv2d; shc fwd+bwd adds "
        "modulated_conv2d_backward (dx, dW, dm), the MLP backward and channel_stats_backward",
        "",
        "| shape | plain fwd | shc fwd | ratio | plain fwd+bwd | shc fwd+bwd | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['shape']} | {fmt(r['pf'])} | {fmt(r['sf'])} | {r['rf']:.2f}x | "
                     f"{fmt(r['pfb'])} | {fmt(r['sfb'])} | {r['rfb']:.2f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        os.makedirs(os.path.dirname(os.path.abspath(args.markdown)), exist_ok=True)
        with open(args.markdown, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
