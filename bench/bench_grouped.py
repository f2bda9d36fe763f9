"""The depthwise and grouped 3x3 family on CPU (issue 32's speed item): the SHC layer against the
plain conv, as a call (shc.shc_conv2d against F.conv2d) and as a module (SHCConv2d against
nn.Conv2d), forward and forward+backward, one thread, on the default ISA and with the kernels
capped at AVX2 (SHC_CPU_DIRECT_ISA=avx2, read per call). Every repetition times the four calls of
a (shape, pass) round-robin and the ratio is the median of the paired per-repetition ratios, so a
change in the shared machine's load hits both sides of a ratio alike.

With --models, also the forward of torchvision's mobilenet_v2 and efficientnet_b0 (eval, random
weights) converted by shc.convert against the unconverted model, paired the same way.

    .venv/bin/python bench/bench_grouped.py --markdown bench/results/cpu_grouped.md \\
        --json bench/results/cpu_grouped.json --models
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

import shc_kernels as shc
from shc_kernels.cli.bench import steady_malloc

# (channels, plane, stride, groups): MobileNetV2/EfficientNet-B0's 3x3 depthwise sizes, then
# grouped convs with 2, 4 and 8 input channels per group.
SHAPES = [
    (32, 56, 1, 32), (96, 56, 2, 96), (144, 56, 1, 144), (144, 56, 2, 144), (96, 28, 1, 96),
    (144, 28, 1, 144), (240, 28, 1, 240), (240, 28, 2, 240), (240, 14, 1, 240), (672, 14, 1, 672),
    (672, 14, 2, 672), (672, 7, 1, 672), (32, 7, 1, 32),
    (64, 56, 1, 32), (64, 28, 1, 16), (128, 14, 1, 32), (128, 28, 1, 16), (128, 14, 2, 16),
]  # fmt: skip


def shape_name(c, hw, stride, groups):
    return f"{c}@{hw}" + (f"/{stride}" if stride > 1 else "") + (f" g{groups}" if groups != c else " dw")


def timed(fn, clock):
    t0 = clock()
    fn()
    return clock() - t0


def paired(fns: dict, warmup: int, reps: int, clock) -> dict:
    """name -> per-repetition times (s), the names timed round-robin."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            times[k].append(timed(fn, clock))
    return times


def ratio(times, a, b):
    return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))


def layer_closures(c, hw, stride, groups, batch):
    torch.manual_seed(0)
    x = torch.randn(batch, c, hw, hw)
    conv = torch.nn.Conv2d(c, c, 3, stride, 1, groups=groups)
    layer = shc.convert(copy.deepcopy(conv))
    hyper = [layer.hyper.fc1.weight, layer.hyper.fc1.bias, layer.hyper.fc2.weight, layer.hyper.fc2.bias]
    with torch.no_grad():  # a map that depends on the input, as after training
        for p in hyper:
            p.normal_(0, 0.1)
    w, b = layer.weight.detach(), layer.bias.detach()
    hp = [p.detach() for p in hyper]
    xr = x.clone().requires_grad_()
    leaves = {"call": [xr, w.clone().requires_grad_(), b.clone().requires_grad_()], "shc": None}
    wl = [t.clone().requires_grad_() for t in [w, b, *hp]]

    def fwd_conv():
        with torch.no_grad():
            F.conv2d(x, w, b, stride, 1, 1, groups)

    def fwd_layer():
        with torch.no_grad():
            shc.shc_conv2d(x, w, b, *hp, stride=stride, padding=1, groups=groups)

    def fb_conv():
        y = F.conv2d(xr, leaves["call"][1], leaves["call"][2], stride, 1, 1, groups)
        torch.autograd.grad(y, leaves["call"], torch.ones_like(y))

    def fb_layer():
        y = shc.shc_conv2d(xr, *wl, stride=stride, padding=1, groups=groups)
        torch.autograd.grad(y, [xr, *wl], torch.ones_like(y))

    def fwd_mod(mod):
        def f():
            with torch.no_grad():
                mod(x)

        return f

    def fb_mod(mod):
        def f():
            mod.zero_grad(set_to_none=True)
            xr.grad = None
            mod(xr).sum().backward()

        return f

    return {
        "fwd": {"conv": fwd_conv, "shc": fwd_layer, "nn": fwd_mod(conv), "SHCConv2d": fwd_mod(layer)},
        "fwdbwd": {"conv": fb_conv, "shc": fb_layer, "nn": fb_mod(conv), "SHCConv2d": fb_mod(layer)},
    }


def run_layers(args, isa):
    if isa == "default":
        os.environ.pop("SHC_CPU_DIRECT_ISA", None)
    else:
        os.environ["SHC_CPU_DIRECT_ISA"] = isa
    rows = []
    for c, hw, stride, groups in args.shapes:
        fns = layer_closures(c, hw, stride, groups, args.batch)
        row = {"shape": shape_name(c, hw, stride, groups), "isa": isa}
        for pass_, calls in fns.items():
            t = paired(calls, args.warmup, args.reps, args.clock)
            row[pass_] = {
                "conv_ms": statistics.median(t["conv"]) * 1e3,
                "layer_ms": statistics.median(t["shc"]) * 1e3,
                "call_ratio": ratio(t, "shc", "conv"),
                "module_ratio": ratio(t, "SHCConv2d", "nn"),
            }
        rows.append(row)
        f, fb = row["fwd"], row["fwdbwd"]
        print(f"{isa:7s} {row['shape']:14s} fwd {f['call_ratio']:.2f}x / {f['module_ratio']:.2f}x "
              f"(conv {f['conv_ms']:.2f} ms)  fwd+bwd {fb['call_ratio']:.2f}x / {fb['module_ratio']:.2f}x "
              f"(conv {fb['conv_ms']:.2f} ms)", flush=True)  # fmt: skip
    os.environ.pop("SHC_CPU_DIRECT_ISA", None)
    return rows


def run_models(args):
    import torchvision

    out = []
    for name in ("mobilenet_v2", "efficientnet_b0"):
        torch.manual_seed(0)
        plain = getattr(torchvision.models, name)().eval()
        conv = shc.convert(copy.deepcopy(plain)).eval()
        x = torch.randn(args.batch, 3, 224, 224)

        def fwd(model, x=x):
            def f():
                with torch.no_grad():
                    model(x)

            return f

        t = paired({"plain": fwd(plain), "shc": fwd(conv)}, 1, args.model_reps, args.clock)
        row = {
            "model": name,
            "plain_ms": statistics.median(t["plain"]) * 1e3,
            "shc_ms": statistics.median(t["shc"]) * 1e3,
            "ratio": ratio(t, "shc", "plain"),
        }
        out.append(row)
        print(
            f"{name}: plain {row['plain_ms']:.0f} ms, converted {row['shc_ms']:.0f} ms, {row['ratio']:.3f}x",
            flush=True,
        )
    return out


def markdown(rows, models, info, before=None):
    lines = [
        "# Depthwise and grouped 3x3 layers on CPU (bench/bench_grouped.py)",
        "",
        f"Machine: {info['cpu']}; torch {info['torch']}; commit {info['commit']}; {info['threads']} thread, "
        f"batch {info['batch']}, {info['reps']} paired repetitions, clock {info['clock']}, "
        f"malloc {info['malloc']}.",
        "Ratios: the median over repetitions of (SHC time / plain time) within one repetition (a round-robin "
        "of the four calls), so the shared machine's load hits both sides alike. `call`: shc.shc_conv2d vs "
        "F.conv2d; `module`: SHCConv2d vs nn.Conv2d. ISA `avx2`: SHC_CPU_DIRECT_ISA=avx2 (the SHC kernels "
        "capped at AVX2; F.conv2d/oneDNN still uses AVX-512).",
        "",
        "| ISA | shape | fwd call | fwd module | fwd+bwd call | fwd+bwd module | conv fwd ms "
        + "| conv fwd+bwd ms |"
        + (" before: fwd call | before: fwd+bwd call |" if before else ""),
        "|---|---|---|---|---|---|---|---|" + ("---|---|" if before else ""),
    ]
    old = {(r["isa"], r["shape"]): r for r in (before or {}).get("layers", [])}
    for r in rows:
        f, fb = r["fwd"], r["fwdbwd"]
        line = (
            f"| {r['isa']} | {r['shape']} | {f['call_ratio']:.2f}x | {f['module_ratio']:.2f}x | "
            f"{fb['call_ratio']:.2f}x | {fb['module_ratio']:.2f}x | {f['conv_ms']:.2f} | "
            f"{fb['conv_ms']:.2f} |"
        )
        if before:
            o = old.get((r["isa"], r["shape"]))
            line += f" {o['fwd']['call_ratio']:.2f}x | {o['fwdbwd']['call_ratio']:.2f}x |" if o else " | |"
        lines.append(line)
    worst = max(max(r[p][k] for p in ("fwd", "fwdbwd") for k in ("call_ratio", "module_ratio")) for r in rows)
    within = sum(all(r[p][k] <= 1.25 for p in ("fwd", "fwdbwd") for k in ("call_ratio", "module_ratio"))
                 for r in rows)  # fmt: skip
    lines += ["", f"Rows with all four ratios within 1.25x: {within}/{len(rows)}; worst ratio {worst:.2f}x."]
    if models:
        extra = (" before |", "---|") if before and before.get("models") else ("", "")
        lines += ["", "## Whole models, forward (eval, random weights, 3x224x224)", "",
                  "| model | plain ms | converted ms | ratio |" + extra[0],
                  "|---|---|---|---|" + extra[1]]  # fmt: skip
        old_models = {m["model"]: m for m in (before or {}).get("models", [])}
        for m in models:
            line = f"| {m['model']} | {m['plain_ms']:.0f} | {m['shc_ms']:.0f} | {m['ratio']:.3f}x |"
            if m["model"] in old_models:
                line += f" {old_models[m['model']]['ratio']:.3f}x |"
            lines.append(line)
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--isa", nargs="+", default=["default", "avx2"], choices=["default", "avx2"])
    ap.add_argument("--shapes", nargs="*", default=None, help="C,HW,STRIDE,GROUPS ... (default: the family)")
    ap.add_argument("--models", action="store_true")
    ap.add_argument("--model-reps", type=int, default=7)
    ap.add_argument("--clock", choices=["thread", "wall"], default="thread")
    ap.add_argument("--json")
    ap.add_argument("--markdown")
    ap.add_argument("--before", help="a JSON of an earlier run, whose call ratios the table shows beside")
    args = ap.parse_args(argv)
    args.shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes] if args.shapes else SHAPES
    clock_name = args.clock
    args.clock = time.thread_time if args.clock == "thread" else time.perf_counter
    malloc = steady_malloc()
    torch.set_num_threads(1)
    rows = [r for isa in args.isa for r in run_layers(args, isa)]
    models = run_models(args) if args.models else []
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(__file__)).stdout.strip()  # fmt: skip
    except OSError:
        commit = "?"
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "torch": torch.__version__, "commit": commit, "threads": 1, "batch": args.batch,
            "reps": args.reps, "clock": clock_name, "malloc": malloc,
            "command": " ".join(sys.argv)}  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "layers": rows, "models": models}, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            before = None
            if args.before:
                with open(args.before) as b:
                    before = json.load(b)
            f.write(markdown(rows, models, info, before))


if __name__ == "__main__":
    main()
