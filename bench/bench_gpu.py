"""GPU benchmark: the ResNet-50 3×3 convolutions at batch 256, bf16, channels_last.

    python3 bench/bench_gpu.py [--out DIR] [--batch 256] [--dtype bf16] [--reps 10]

For each shape: plain cuDNN ``F.conv2d`` (the baseline), the naive per-sample loop
(``shc_kernels.reference.shc_conv2d``) and the Triton SHC layer (statistical map + modulated
conv), forward and forward+backward (every gradient, grad_route "both"), plus every other CUDA
backend that ``shc.available_backends()`` lists. Times are medians of CUDA-event timings taken
after a synchronisation; ratios are to the plain conv measured in the same run. Peak memory is
``max_memory_allocated`` above what was allocated before the call. Writes
``bench_gpu_<gpu>_<date>.json`` and ``.md`` under --out (default $OUT, else bench/results/).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import shc_kernels as shc  # noqa: E402
from shc_kernels import reference  # noqa: E402

# torchvision ResNet-50 (v1.5: the stride sits on the 3×3 conv): (channels, input size, stride)
RESNET50_3X3 = [
    (64, 56, 1),
    (128, 56, 2),
    (128, 28, 1),
    (256, 28, 2),
    (256, 14, 1),
    (512, 14, 2),
    (512, 7, 1),
]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _time_ms(fn, warmup: int, reps: int) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _peak_mb(fn) -> float:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def _triton_layer(x, w, b, f1w, f1b, f2w, f2b, stride):
    from shc_kernels.triton import ops as T

    m = T.statistical_map(x, f1w, f1b, f2w, f2b, (3, 3), 1e-5)
    return T.modulated_conv2d(x, w, m, b, (stride, stride), (1, 1), (1, 1), 1)


def _methods(stride):
    methods = {
        "plain F.conv2d": lambda x, w, b, *hyper: F.conv2d(x, w, b, stride, 1),
        "naive per-sample": lambda x, w, b, *hyper: reference.shc_conv2d(
            x, w, b, *hyper, stride=stride, padding=1
        ),
    }
    from shc_kernels.triton import unavailable_reason

    if unavailable_reason() is None:
        methods["triton SHC"] = lambda x, w, b, *hyper: _triton_layer(x, w, b, *hyper, stride)
    for be in shc.available_backends():
        if be in ("cuda",):
            methods[f"shc backend={be}"] = lambda x, w, b, *hyper, _be=be: shc.shc_conv2d(
                x, w, b, *hyper, stride=stride, padding=1, backend=_be
            )
    return methods


def bench_shape(ch, size, stride, batch, dtype, reps):
    g = torch.Generator(device="cuda").manual_seed(0)
    dev = dict(device="cuda")
    x = (
        torch.randn(batch, ch, size, size, generator=g, **dev)
        .to(dtype)
        .contiguous(memory_format=torch.channels_last)
    )
    w = (torch.randn(ch, ch, 3, 3, generator=g, **dev) * (2.0 / (9 * ch)) ** 0.5).to(dtype)
    w = w.contiguous(memory_format=torch.channels_last)
    b = torch.zeros(ch, **dev, dtype=dtype)
    k = max(1, ch // 2)
    hyper = [
        torch.randn(k, 2 * ch, generator=g, **dev) * 0.1,
        torch.zeros(k, **dev),
        torch.randn(9, k, generator=g, **dev) * 0.1,
        torch.zeros(9, **dev),
    ]
    leaves = [x, w, b, *hyper]
    for t in leaves:
        t.requires_grad_(True)
    oh = (size + 2 - 3) // stride + 1
    gy = (
        torch.randn(batch, ch, oh, oh, generator=g, **dev)
        .to(dtype)
        .contiguous(memory_format=torch.channels_last)
    )
    rows = []
    for name, fn in _methods(stride).items():
        naive = name.startswith("naive")
        r = max(2, reps // 5) if naive else reps

        def fwd(fn=fn):
            with torch.no_grad():
                fn(x, w, b, *hyper)

        def fwd_bwd(fn=fn):
            for t in leaves:
                t.grad = None
            fn(x, w, b, *hyper).backward(gy)

        row = {"shape": f"{ch}x{size}x{size} s{stride}", "method": name}
        try:
            row["fwd_ms"] = _time_ms(fwd, 1 if naive else 3, r)
            row["fwd_bwd_ms"] = _time_ms(fwd_bwd, 1 if naive else 3, r)
            row["peak_fwd_mb"] = _peak_mb(fwd)
            row["peak_fwd_bwd_mb"] = _peak_mb(fwd_bwd)
        except Exception as exc:  # one failing method must not hide the others' numbers
            row["error"] = f"{type(exc).__name__}: {exc}"[:300]
        rows.append(row)
        print(row, flush=True)
    base = rows[0]
    for row in rows:
        for key in ("fwd_ms", "fwd_bwd_ms"):
            if key in row and key in base:
                row[key.replace("_ms", "_ratio")] = row[key] / base[key]
    return rows


def to_markdown(meta, rows) -> str:
    lines = [
        f"# SHC GPU benchmark: ResNet-50 3x3 convs, batch {meta['batch']}, {meta['dtype']}, channels_last",
        "",
        f"{meta['gpu']}, torch {meta['torch']}, triton {meta['triton']}, {meta['date']}; "
        f"command: `{meta['command']}`. Median of CUDA-event timings; ratio = time / plain F.conv2d "
        "in the same run; peak = memory allocated above the inputs.",
        "",
        "| shape | method | fwd ms | fwd ratio | fwd+bwd ms | fwd+bwd ratio "
        "| peak fwd MB | peak fwd+bwd MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]

    def f(row, key, fmt):
        return format(row[key], fmt) if key in row else "-"

    for r in rows:
        if "error" in r:
            lines.append(f"| {r['shape']} | {r['method']} | error: {r['error']} | | | | | |")
            continue
        lines.append(
            f"| {r['shape']} | {r['method']} | {f(r, 'fwd_ms', '.3f')} | {f(r, 'fwd_ratio', '.2f')} | "
            f"{f(r, 'fwd_bwd_ms', '.3f')} | {f(r, 'fwd_bwd_ratio', '.2f')} | {f(r, 'peak_fwd_mb', '.0f')} | "
            f"{f(r, 'peak_fwd_bwd_mb', '.0f')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "bench" / "results"))
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--shapes", type=int, default=len(RESNET50_3X3), help="only the first N shapes")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA device", file=sys.stderr)
        return 2
    import triton

    gpu = torch.cuda.get_device_name()
    meta = dict(
        gpu=gpu,
        torch=torch.__version__,
        triton=triton.__version__,
        batch=args.batch,
        dtype=args.dtype,
        date=dt.date.today().isoformat(),
        command="python3 bench/bench_gpu.py " + " ".join(argv or sys.argv[1:]),
        backends=shc.available_backends(),
    )
    rows = []
    for ch, size, stride in RESNET50_3X3[: args.shapes]:
        rows += bench_shape(ch, size, stride, args.batch, DTYPES[args.dtype], args.reps)
        torch.cuda.empty_cache()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"bench_gpu_{re.sub(r'[^A-Za-z0-9]+', '-', gpu).strip('-')}_{meta['date']}"
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    md = to_markdown(meta, rows)
    (out / f"{stem}.md").write_text(md)
    print(md)
    print(f"wrote {out / stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
