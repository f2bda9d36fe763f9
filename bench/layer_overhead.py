"""What the layer's Python path costs, on the CPU (issue: one layer, one path).

1. Per-call overhead at N=1, 32 ch @ 14² and 8 ch @ 4² (sizes where the kernel is cheap and the
   overhead shows): SHCConv2d, functional.shc_conv2d and the op shc::shc_conv2d against nn.Conv2d
   and F.conv2d, forward and forward+backward.
2. Second order: a gradient-penalty step (create_graph=True, then the gradient of the gradient)
   against a first-order step, on the cpu backend (the backward ops differentiated by the
   same ops) and on the reference.
3. auto's check before trust: the first call of a new shape with two timed candidates that agree
   (their outputs compared), against the same call with the comparison switched off.

Round-robin timing, the minimum over repetitions, ratios within one run.
Run: python bench/layer_overhead.py [--per-call-only] [--save] [--json F] [--markdown F]
--save writes the series bench/results/cpu_layer_overhead.md/.json (all three parts) or, with
--per-call-only, bench/results/cpu_call_overhead.md/.json, overwriting the previous run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import shc_kernels as shc
from shc_kernels import backends


def _min_time(fns: dict, reps: int, warmup: int = 3) -> dict:
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def per_call(reps: int, cin: int = 32, hw: int = 14) -> dict:
    torch.manual_seed(0)
    layer = shc.SHCConv2d(cin, cin, 3, padding=1)
    conv = torch.nn.Conv2d(cin, cin, 3, padding=1)
    f1, f2 = layer.hyper.fc1, layer.hyper.fc2
    params = (layer.weight, layer.bias, f1.weight, f1.bias, f2.weight, f2.bias)
    x = torch.randn(1, cin, hw, hw, requires_grad=True)
    op = torch.ops.shc.shc_conv2d.default if shc.ops.compiled_available() else None

    def fwd(fn):
        def run():
            with torch.no_grad():
                fn()

        return run

    def fwdbwd(fn):
        return lambda: fn().sum().backward()

    calls = {
        "F.conv2d": lambda: F.conv2d(x, layer.weight, layer.bias, padding=1),
        "nn.Conv2d": lambda: conv(x),
        "op": lambda: op(x, *params, [1, 1], [1, 1], [1, 1], 1, 1e-5, "both")[0],
        "functional": lambda: shc.shc_conv2d(x, *params, padding=1),
        "module": lambda: layer(x),
    }
    if op is None:
        del calls["op"]
    out = {}
    for mode, wrap in (("forward", fwd), ("forward+backward", fwdbwd)):
        t = _min_time({k: wrap(v) for k, v in calls.items()}, reps)
        out[mode] = {k: v * 1e6 for k, v in t.items()}  # microseconds
    return out


def second_order(reps: int) -> dict:
    torch.manual_seed(0)
    x = torch.randn(8, 32, 14, 14, requires_grad=True)
    layer = shc.SHCConv2d(32, 32, 3, padding=1)

    def first(backend):
        def run():
            layer.backend = backend
            layer(x).square().sum().backward()

        return run

    def penalty(backend):
        def run():
            layer.backend = backend
            (gx,) = torch.autograd.grad(layer(x).square().sum(), x, create_graph=True)
            gx.square().sum().backward()

        return run

    t = _min_time({f"{kind}:{b}": fn(b) for b in ("cpu", "reference") for kind, fn in
                   (("first order", first), ("gradient penalty", penalty))}, reps)  # fmt: skip
    return {k: v * 1e3 for k, v in t.items()}  # milliseconds


def auto_check_cost(reps: int) -> dict:
    """First call of a new shape, two candidates ("cpu" and "reference", which agree), with the
    outputs compared (as auto does) and without (reference=None)."""
    x = torch.randn(8, 32, 14, 14, requires_grad=True)
    layer = shc.SHCConv2d(32, 32, 3, padding=1)
    real = backends.fastest
    results = {}
    for label, check in (("timing + check", True), ("timing only", False)):

        def fastest(key, candidates, run, device_type, reference=None, fallback=None, _check=check):
            return real(key, candidates, run, device_type, reference if _check else None, fallback)

        backends.fastest = fastest
        original = backends.auto_candidates
        backends.auto_candidates = lambda t: ["cpu", "reference"]
        try:
            times = []
            for _ in range(reps):
                backends._FASTEST.clear()
                t0 = time.perf_counter()
                layer(x).sum().backward()
                times.append(time.perf_counter() - t0)
        finally:
            backends.fastest = real
            backends.auto_candidates = original
        results[label] = min(times) * 1e3
    backends._FASTEST.clear()
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=30)
    # One thread by default: on a machine where anything else runs, a 2-thread OpenMP conv of
    # this size waits for its descheduled second thread (12 ms instead of 90 µs, measured).
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    p.add_argument("--markdown", default=None)
    p.add_argument("--per-call-only", action="store_true", help="only the per-call overhead tables")
    p.add_argument("--save", action="store_true", help="write the series under bench/results/ (see above)")
    args = p.parse_args(argv)
    if args.save:
        name = "cpu_call_overhead" if args.per_call_only else "cpu_layer_overhead"
        series = Path(__file__).parent / "results" / name
        args.json = args.json or f"{series}.json"
        args.markdown = args.markdown or f"{series}.md"
    torch.set_num_threads(args.threads)
    res = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "per_call_us": per_call(args.reps * 10),
        "per_call_tiny_us": per_call(args.reps * 10, cin=8, hw=4),
    }
    if not args.per_call_only:
        res["second_order_ms"] = second_order(args.reps)
        res["auto_first_call_ms"] = auto_check_cost(max(3, args.reps // 6))
    command = "python bench/layer_overhead.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = ["# Layer path overhead (CPU)", "", f"{res['machine']}, torch {res['torch']}.", "",
             f"Command: `{command}`"]  # fmt: skip
    for key, title in (("per_call_us", "N=1, 32 ch @ 14²"), ("per_call_tiny_us", "N=1, 8 ch @ 4²")):
        names = list(res[key]["forward"])
        lines += ["", f"## Per call, {title}, fp32 (µs, minimum)", "", "| | " + " | ".join(names) + " |",
                  "|---" * (len(names) + 1) + "|"]  # fmt: skip
        for mode, t in res[key].items():
            lines.append(f"| {mode} | " + " | ".join(f"{t[n]:.1f}" for n in names) + " |")
    if not args.per_call_only:
        lines += ["", "## Second order, N=8, 32 ch @ 14² (ms, minimum)", "", "| step | cpu | reference |",
                  "|---|---|---|"]  # fmt: skip
        so = res["second_order_ms"]
        for kind in ("first order", "gradient penalty"):
            lines.append(f"| {kind} | {so[f'{kind}:cpu']:.1f} | {so[f'{kind}:reference']:.1f} |")
        a = res["auto_first_call_ms"]
        lines += ["", "## auto's first call of a shape, two agreeing candidates (ms, minimum)", "",
                  f"timing + check {a['timing + check']:.1f}, timing only {a['timing only']:.1f}"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
