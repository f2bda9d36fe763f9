"""shc bench: what the fused SHC layer is worth, against the plain conv and the naive ways.

For each 3×3 conv shape of ResNet-18/50 and each method, forward and forward+backward time,
the ratio to the plain ``F.conv2d`` of the same shape measured in the same run, and the peak
memory the call needed beyond its inputs. Methods:

  plain       F.conv2d(x, W): the floor (no statistics, no map)
  naive       shc_kernels.reference: one conv per sample
  groups      the batch-as-groups trick: per-sample kernels W*m[n] as one grouped conv
  unfold_bmm  F.unfold, scale the columns by m, one batched matmul
  shc:<name>  the SHC layer on each available backend (e.g. shc:cpu, shc:triton)
  shc:<name>:fused, shc:<name>:split   (with --forms) the compiled backends' two forms of the
              layer (functional.plan): one op (one launch on CUDA) or map op then conv op
  plain:module, shc:<name>:module   (with --modules) the layer as models run it: nn.Conv2d and
              SHCConv2d(backend=<name>); their ratios are to plain:module, module against module

Every SHC method computes the whole layer (statistics, map, modulated conv) and, for
forward+backward, the gradients of x, W, bias and the hypernetwork.

Shapes (--shapes): the families below, or ARCH:WIDTH:SIZE for every distinct 3×3 conv of
that model at that width multiplier and input size (e.g. plain10:0.25:28; small_input stem at
64 px or less), read off the model itself.

--model ARCH [--width W] [--image-size S] instead reports the training step time of the SHC
model against the plain one. Timing: CPU runs pin the thread count and use perf_counter; CUDA
runs synchronise and use CUDA events. Methods are timed round-robin, one call of each per
repetition, so a change in the machine's load hits every method alike. Each figure is the
median over --reps repetitions after --warmup runs, with the minimum and maximum beside it;
ratios to plain are given for the minima (the least disturbed run of each) and the medians.

CPU runs first make glibc's malloc keep freed memory (``--malloc steady``, the default; see
``steady_malloc``): with glibc's defaults a buffer of a few hundred KiB is sometimes served from
fresh pages, whose page faults the timed call pays. F.conv2d of 32>32@14 at batch 32 took 1.4 or
2.2 ms in the same process depending on that (2026-12-03); ``--malloc system`` keeps the defaults.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from .. import backends, functional, reference
from ..functional import shc_conv2d
from ..research import args as ca
from .shapes import SHAPES

# (name, C_in, C_out, H=W of the input, stride) of the 3x3 convs at 224 px input.
ARCH_NAMES = ("plain10", "resnet18", "resnet50")
# Families of model specs (ARCH:WIDTH:SIZE), resolved by model_shapes: the sizes small images and
# narrow networks use (issue 16), deduplicated across the specs.
SPEC_FAMILIES = {
    "small": [f"{a}:{w}:{s}" for w, s in ((0.25, 28), (0.5, 32)) for a in ("plain10", "resnet50")],
    "small64": [f"{a}:1:64" for a in ("plain10", "resnet50")],
    "narrow224": [f"{a}:{w}:224" for w in (0.25, 0.5) for a in ("plain10", "resnet50")],
    # issue 16's whole goal: every 3x3 layer of the three models at every width and input size
    "grid": [f"{a}:{w}:{s}" for s in (28, 32, 64, 224) for w in (0.25, 0.5, 1) for a in ARCH_NAMES],
}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class Row:
    shape: str
    method: str
    fwd_ms: float  # median
    fwd_spread: tuple[float, float]  # (min, max)
    fwdbwd_ms: float
    fwdbwd_spread: tuple[float, float]
    fwd_ratio: float = float("nan")  # medians' ratio to plain
    fwdbwd_ratio: float = float("nan")
    peak_extra_mb: float | None = None
    fwd_min_ratio: float = float("nan")  # minima's ratio to plain
    fwdbwd_min_ratio: float = float("nan")


# ---------------------------------------------------------------- shapes


def parse_spec(text: str) -> tuple[str, float, int]:
    """ARCH:WIDTH:SIZE -> (arch, width, size); argparse.ArgumentTypeError when malformed."""
    parts = text.split(":")
    if len(parts) != 3 or parts[0] not in ARCH_NAMES:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a shape family ({', '.join(sorted(SHAPES) + sorted(SPEC_FAMILIES))}) "
            f"nor ARCH:WIDTH:SIZE with ARCH one of {', '.join(ARCH_NAMES)}"
        )
    return parts[0], ca.positive_float(parts[1]), ca.positive_int(parts[2])


def shape_family(text: str) -> str:
    """--shapes entry: a family name or ARCH:WIDTH:SIZE (checked here, resolved later)."""
    if text not in SHAPES and text not in SPEC_FAMILIES:
        parse_spec(text)
    return text


def model_shapes(arch: str, width: float, size: int) -> list[tuple]:
    """Every distinct 3×3 conv of ``arch`` at ``width`` on ``size``-px input, as
    (name, C_in, C_out, H=W of its input, stride), read off the model by a forward pass."""
    from ..research import models

    net = models.build(arch, 10, shc=False, small_input=size <= 64, width=width)
    found: list[tuple] = []

    def hook(mod, inputs, _output):
        h = inputs[0].shape[-1]
        name = f"{mod.in_channels}>{mod.out_channels}@{h}" + (
            f"/{mod.stride[0]}" if mod.stride[0] != 1 else ""
        )
        shape = (name, mod.in_channels, mod.out_channels, h, mod.stride[0])
        if shape not in found:
            found.append(shape)

    for mod in net.modules():
        if isinstance(mod, torch.nn.Conv2d) and mod.kernel_size == (3, 3) and mod.padding == (1, 1):
            mod.register_forward_hook(hook)
    with torch.no_grad():
        net.eval()(torch.zeros(1, 3, size, size))
    return found


def resolve_shapes(names) -> list[tuple]:
    """The shapes of the --shapes entries, in order, each once."""
    out: list[tuple] = []
    for name in names:
        if name in SHAPES:
            found = SHAPES[name]
        else:
            found = []
            for spec in SPEC_FAMILIES.get(name, [name]):
                found += model_shapes(*parse_spec(spec))
        for shape in found:
            if shape[1:] not in {o[1:] for o in out}:
                out.append(shape)
    return out


# ---------------------------------------------------------------- the methods


def make_inputs(cin, cout, hw, batch, device, dtype, channels_last, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cin, hw, hw, generator=g).to(device, dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    k = max(1, cin // 2)
    params = [
        torch.randn(cout, cin, 3, 3, generator=g) * (2.0 / (9 * cin)) ** 0.5,
        torch.zeros(cout),
        torch.randn(k, 2 * cin, generator=g) * 0.1,
        torch.zeros(k),
        torch.randn(9, k, generator=g) * 0.1,
        torch.zeros(9),
    ]
    # Weight and bias in the compute dtype; the hypernetwork stays fp32 (as under autocast).
    params = [p.to(device, dtype if i < 2 else torch.float32) for i, p in enumerate(params)]
    return x, params


def _map(x, params):
    return reference.statistical_map(x, *params[2:], (3, 3))


@dataclass
class ModuleMethod:
    """A method that runs as a module: ``build(params)`` gives the module, its parameters new
    leaves holding the values of ``params`` (weight, bias, fc1 weight and bias, fc2 weight and
    bias, as ``make_inputs`` makes them)."""

    build: object


def _plain_module(stride, params):
    weight = params[0]
    conv = torch.nn.Conv2d(
        weight.shape[1], weight.shape[0], 3, stride, 1, device=weight.device, dtype=weight.dtype
    )
    conv.weight, conv.bias = (torch.nn.Parameter(t.detach().clone()) for t in params[:2])
    return conv


def _shc_module(stride, backend, params):
    from ..modules import SHCConv2d

    weight = params[0]
    layer = SHCConv2d(
        weight.shape[1], weight.shape[0], 3, stride, 1, device=weight.device, dtype=weight.dtype,
        hidden=params[2].shape[0], backend=backend,
    )  # fmt: skip
    new = [torch.nn.Parameter(t.detach().clone()) for t in params]
    layer.weight, layer.bias = new[:2]
    fc1, fc2 = layer.hyper.fc1, layer.hyper.fc2
    fc1.weight, fc1.bias, fc2.weight, fc2.bias = new[2:]
    return layer


def method_fns(stride, device="cpu", forms=False, modules=False):
    """name -> fn(x, params) returning the layer's output, for tensors on ``device``; with
    ``forms``, also each compiled backend's "fused" and "split" form on its own; with
    ``modules``, nn.Conv2d and SHCConv2d on each compiled backend (``ModuleMethod``)."""

    def plain(x, p):
        return F.conv2d(x, p[0], p[1], stride, 1)

    def naive(x, p):
        return reference.shc_conv2d(x, *p, stride=stride, padding=1)

    def groups(x, p):
        n, d, h, w = x.shape
        m = _map(x, p)
        kernels = (p[0][None] * m[:, None, None].to(p[0].dtype)).reshape(-1, d, 3, 3)
        y = F.conv2d(x.reshape(1, n * d, h, w), kernels, None, stride, 1, groups=n)
        return y.view(n, -1, y.shape[2], y.shape[3]) + p[1][None, :, None, None]

    def unfold_bmm(x, p):
        n, d, h, w = x.shape
        m = _map(x, p).to(x.dtype)
        cols = F.unfold(x, 3, padding=1, stride=stride)  # (N, D*9, L)
        cols = (cols.view(n, d, 9, -1) * m.view(n, 1, 9, 1)).view(n, d * 9, -1)
        y = p[0].reshape(p[0].shape[0], -1) @ cols
        oh = (h + 2 - 3) // stride + 1
        return y.view(n, -1, oh, y.shape[-1] // oh) + p[1][None, :, None, None]

    fns = {"plain": plain, "naive": naive, "groups": groups, "unfold_bmm": unfold_bmm}
    for b in backends.available_backends():
        if b != "reference" and backends.backend_device(b) == torch.device(device).type:
            fns[f"shc:{b}"] = lambda x, p, b=b: shc_conv2d(x, *p, stride=stride, padding=1, backend=b)
            if forms and b in ("cpu", "cuda"):
                for form in functional.FORMS:
                    fns[f"shc:{b}:{form}"] = lambda x, p, b=b, form=form: functional._layer(
                        x, *p, (stride, stride), (1, 1), (1, 1), 1, 1e-5, "both", b, form
                    )
    if modules:
        fns["plain:module"] = ModuleMethod(lambda p: _plain_module(stride, p))
        for b in [m.split(":")[1] for m in fns if m.count(":") == 1 and m.startswith("shc:")]:
            fns[f"shc:{b}:module"] = ModuleMethod(lambda p, b=b: _shc_module(stride, b, p))
    return fns


def baseline(method: str) -> str:
    """The method whose time ``method``'s ratios divide by: module against module."""
    return "plain:module" if method.endswith(":module") else "plain"


# ---------------------------------------------------------------- timing

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def steady_malloc() -> str:
    """Make glibc's malloc serve every buffer up to 32 MiB from memory it keeps (mmap threshold
    at its maximum, no trimming), so a timed call does not pay page faults for the memory a
    previous call returned to the system. Returns what was done ("steady", or why not)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return "system (no glibc mallopt)"
    ok = mallopt(_M_MMAP_THRESHOLD, 32 << 20) == 1 and mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1
    return "steady" if ok else "system (mallopt refused)"



class Timer:
    """Times several functions round-robin (one call of each per repetition), so a change in the
    machine's load hits every method alike and the ratios stay fair."""

    def __init__(self, device, clock="wall"):
        self.cuda = torch.device(device).type == "cuda"
        # "thread": CPU time of the calling thread (one CPU thread only): on a machine shared with
        # other jobs it counts the work, not the time slices other processes took.
        self.clock = time.thread_time if clock == "thread" else time.perf_counter
        self.samples: dict = {}  # name -> every repetition's time (ms) of the last interleaved()

    def _once(self, fn) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end)
        t0 = self.clock()
        fn()
        return (self.clock() - t0) * 1e3

    def interleaved(self, fns: dict, warmup: int, reps: int) -> dict:
        """name -> (median, min, max) in milliseconds."""
        for fn in fns.values():
            for _ in range(warmup):
                fn()
        times = {name: [] for name in fns}
        for _ in range(reps):
            for name, fn in fns.items():
                times[name].append(self._once(fn))
        self.samples = times
        return {name: (statistics.median(t), min(t), max(t)) for name, t in times.items()}

    def __call__(self, fn, warmup, reps) -> tuple[float, float, float]:
        return self.interleaved({"fn": fn}, warmup, reps)["fn"]


def _fwd_and_fwdbwd(fn, x, params):
    if isinstance(fn, ModuleMethod):
        module = fn.build(params)
        x_leaf = x.detach().requires_grad_(True)
        leaves = [x_leaf, *module.parameters()]

        def forward(x, _params):
            return module(x)

        def fwd():
            with torch.no_grad():
                module(x)

    else:
        forward = fn
        leaves = [x.detach().requires_grad_(True)] + [p.detach().requires_grad_(True) for p in params]

        def fwd():
            with torch.no_grad():
                fn(x, params)

    def fwdbwd():
        for t in leaves:
            t.grad = None
        y = forward(leaves[0], leaves[1:])
        y.backward(torch.ones_like(y))

    return fwd, fwdbwd


def closures(fns: dict, methods, x, params) -> dict:
    """(method, "fwd" | "fwdbwd") -> the call to time, for each of ``methods`` in ``fns``."""
    out = {}
    for method in methods:
        out[(method, "fwd")], out[(method, "fwdbwd")] = _fwd_and_fwdbwd(fns[method], x, params)
    return out


def peak_extra_mb(method, shape, args) -> float | None:
    """Peak memory of one forward+backward beyond its inputs, in MiB. CUDA: the allocator's
    peak. CPU: in a fresh process, the peak RSS of the call (VmHWM, reset just before it) minus
    the RSS before it."""
    name, cin, cout, hw, stride = shape
    if args.device.startswith("cuda"):
        x, params = make_inputs(
            cin, cout, hw, args.batch, args.device, DTYPES[args.dtype], args.channels_last
        )
        fns = method_fns(stride, args.device, forms=True, modules=True)
        _fwd, fwdbwd = _fwd_and_fwdbwd(fns[method], x, params)
        fwdbwd()
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fwdbwd()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    cmd = [
        sys.executable,
        "-m",
        "shc_kernels.cli.bench",
        "--_memory-child",
        method,
        json.dumps(shape),
        "--batch",
        str(args.batch),
        "--dtype",
        args.dtype,
        "--threads",
        str(args.threads),
    ]
    if args.channels_last:
        cmd.append("--channels-last")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        return None
    return float(out.stdout.strip().splitlines()[-1])


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _memory_child(args) -> None:
    name, cin, cout, hw, stride = json.loads(args._memory_child[1])
    x, params = make_inputs(cin, cout, hw, args.batch, "cpu", DTYPES[args.dtype], args.channels_last)
    fns = method_fns(stride, forms=True, modules=True)
    _fwd, fwdbwd = _fwd_and_fwdbwd(fns[args._memory_child[0]], x, params)
    fwdbwd()  # lazy initialisation (oneDNN, BLAS buffers) stays resident: count it in `before`
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS mark (VmHWM) so the import and warm-up don't count
    before = _status_mb("VmRSS")
    fwdbwd()
    print(max(0.0, _status_mb("VmHWM") - before))


# ---------------------------------------------------------------- tables


def machine_info(args) -> dict:
    info = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": args.device,
        "dtype": args.dtype,
        "batch": args.batch,
        "threads": torch.get_num_threads(),
        "channels_last": args.channels_last,
        "warmup": args.warmup,
        "reps": args.reps,
        "clock": args.clock,
    }
    if args.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    else:
        try:
            with open("/proc/cpuinfo") as f:
                info["cpu"] = next(
                    line.split(":", 1)[1].strip() for line in f if line.startswith("model name")
                )
        except (OSError, StopIteration):
            info["cpu"] = platform.processor()
        info["cores"] = os.cpu_count()
    return info


def markdown(rows: list[Row], info: dict, command: str) -> str:
    lines = [
        f"Command: `{command}`",
        "",
        "Machine: " + ", ".join(f"{k}={v}" for k, v in info.items()),
        "",
        "Times are medians in ms (min..max over the repetitions, methods timed round-robin); "
        "ratios are to `plain` of the same shape in the same run (`plain:module` for the `:module` rows), "
        "of the minima / of the medians; "
        "peak = memory beyond the inputs for one forward+backward.",
        "",
        "| shape | method | fwd ms | fwd × plain (min / med) | fwd+bwd ms | fwd+bwd × plain (min / med) "
        "| peak MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        peak = "-" if r.peak_extra_mb is None else f"{r.peak_extra_mb:.0f}"
        lines.append(
            f"| {r.shape} | {r.method} | {r.fwd_ms:.2f} ({r.fwd_spread[0]:.2f}..{r.fwd_spread[1]:.2f}) | "
            f"{r.fwd_min_ratio:.2f} / {r.fwd_ratio:.2f} | "
            f"{r.fwdbwd_ms:.2f} ({r.fwdbwd_spread[0]:.2f}..{r.fwdbwd_spread[1]:.2f}) | "
            f"{r.fwdbwd_min_ratio:.2f} / {r.fwdbwd_ratio:.2f} | {peak} |"
        )
    return "\n".join(lines) + "\n"


def run_layers(args) -> list[Row]:
    dtype = DTYPES[args.dtype]
    timer = Timer(args.device, args.clock)
    shapes = resolve_shapes(args.shapes)
    rows: list[Row] = []
    for shape in shapes:
        name, cin, cout, hw, stride = shape
        x, params = make_inputs(cin, cout, hw, args.batch, args.device, dtype, args.channels_last)
        fns = method_fns(stride, args.device, forms=args.forms, modules=args.modules)
        chosen = [m for m in fns if args.methods is None or _wanted(m, args.methods)]
        timed = timer.interleaved(closures(fns, chosen, x, params), args.warmup, args.reps)
        for method in chosen:
            f, fb = timed[(method, "fwd")], timed[(method, "fwdbwd")]
            row = Row(name, method, f[0], f[1:], fb[0], fb[1:])
            base = None
            if (baseline(method), "fwd") in timed:
                bf, bfb = timed[(baseline(method), "fwd")], timed[(baseline(method), "fwdbwd")]
                base = Row(name, baseline(method), bf[0], bf[1:], bfb[0], bfb[1:])
            if base is not None:
                row.fwd_ratio, row.fwdbwd_ratio = row.fwd_ms / base.fwd_ms, row.fwdbwd_ms / base.fwdbwd_ms
                row.fwd_min_ratio = row.fwd_spread[0] / base.fwd_spread[0]
                row.fwdbwd_min_ratio = row.fwdbwd_spread[0] / base.fwdbwd_spread[0]
            if not args.no_memory:
                row.peak_extra_mb = peak_extra_mb(method, shape, args)
            rows.append(row)
            print(
                f"{name:>14} {method:<16} fwd {row.fwd_ms:9.2f} ms ({row.fwd_min_ratio:5.2f}x min, "
                f"{row.fwd_ratio:5.2f}x med)  fwd+bwd {row.fwdbwd_ms:9.2f} ms "
                f"({row.fwdbwd_min_ratio:5.2f}x min, "
                f"{row.fwdbwd_ratio:5.2f}x med)"
                + ("" if row.peak_extra_mb is None else f"  peak {row.peak_extra_mb:8.1f} MiB"),
                flush=True,
            )
    return rows


def _wanted(method: str, wanted) -> bool:
    """Does --methods select ``method``? A name selects itself and its forms ("shc" selects
    every shc:*, "shc:cpu" selects shc:cpu:fused too)."""
    return any(method == w or method.startswith(w + ":") for w in wanted)


def run_model(args) -> list[dict]:
    """Training step time of the SHC model against the plain one: same data, same run, the two
    training steps timed round-robin."""
    from ..research import models

    dtype = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}[args.dtype]
    size = args.image_size
    x = torch.rand(args.batch, 3, size, size, device=args.device)
    y = torch.randint(0, args.num_classes, (args.batch,), device=args.device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    steps = {}
    for shc_on in (False, True):
        torch.manual_seed(0)
        width = {} if args.width == 1 else {"width": args.width}
        net = models.build(args.model, args.num_classes, shc=shc_on, small_input=size <= 64, **width)
        net = net.to(args.device)
        if args.channels_last:
            net = net.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

        def step(net=net, opt=opt):
            with torch.autocast(torch.device(args.device).type, dtype=dtype, enabled=dtype is not None):
                loss = F.cross_entropy(net(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        steps[f"{args.model}{'-shc' if shc_on else ''}"] = step
    timed = Timer(args.device, args.clock).interleaved(steps, args.warmup, args.reps)
    results = []
    for name, (med, lo, hi) in timed.items():
        results.append(
            {"model": name, "step_ms": med, "images_per_s": args.batch / med * 1e3, "spread_ms": (lo, hi)}
        )
        print(
            f"{name:<14} {results[-1]['images_per_s']:9.1f} images/s (step {med:.1f} ms, {lo:.1f}..{hi:.1f})"
        )
    (plain_med, plain_min, _), (shc_med, shc_min, _) = timed.values()
    ratio = plain_med / shc_med
    print(
        f"SHC / plain training step time: {shc_min / plain_min:.3f} (minima), "
        f"{shc_med / plain_med:.3f} (medians)"
    )
    results.append(
        {
            "shc_over_plain": ratio,
            "step_ratio_min": shc_min / plain_min,
            "step_ratio_median": shc_med / plain_med,
        }
    )
    return results


def model_markdown(results: list[dict], info: dict, command: str, args) -> str:
    width = "" if args.width == 1 else f", width {args.width}"
    lines = [
        f"Command: `{command}`",
        "",
        "Machine: " + ", ".join(f"{k}={v}" for k, v in info.items()),
        "",
        f"Training step of {args.model}{width} on {args.image_size}-px input, batch {args.batch} "
        "(forward, cross-entropy, backward, SGD step); the two models timed round-robin in one process.",
        "",
        "| model | step ms median (min..max) | images/s (median) |",
        "|---|---|---|",
    ]
    for r in results[:2]:
        lo, hi = r["spread_ms"]
        lines.append(f"| {r['model']} | {r['step_ms']:.1f} ({lo:.1f}..{hi:.1f}) | {r['images_per_s']:.1f} |")
    last = results[2]
    lines += [
        "",
        f"SHC / plain step time: {last['step_ratio_min']:.3f} (minima), "
        f"{last['step_ratio_median']:.3f} (medians)",
    ]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shc bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", type=ca.device, default="cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--batch", type=ca.positive_int, default=None, help="default 32 on CPU, 256 on CUDA")
    p.add_argument(
        "--shapes", nargs="+", type=shape_family, default=["resnet18", "resnet50"],
        help=f"families ({', '.join(sorted(SHAPES) + sorted(SPEC_FAMILIES))}) or ARCH:WIDTH:SIZE, "
        "e.g. plain10:0.25:28",
    )  # fmt: skip
    p.add_argument("--methods", nargs="+", default=None, help="subset, e.g. plain naive shc")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--forms", action="store_true", help="also time the fused and split forms apart")
    p.add_argument(
        "--modules", action="store_true",
        help="also time nn.Conv2d (plain:module) and SHCConv2d (shc:<backend>:module), module against module",
    )  # fmt: skip
    p.add_argument("--warmup", type=ca.nonnegative_int, default=2)
    p.add_argument("--reps", type=ca.positive_int, default=5)
    p.add_argument("--threads", type=ca.positive_int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument(
        "--malloc", choices=("steady", "system"), default="steady",
        help="CPU: steady (default) keeps freed memory in the process so no timed call pays page "
        "faults for it; system keeps glibc's defaults",
    )  # fmt: skip
    p.add_argument(
        "--clock", choices=("wall", "thread"), default="wall",
        help="thread: CPU time of the one thread (CPU, --threads 1), for a machine shared with other jobs",
    )  # fmt: skip
    p.add_argument("--json", type=ca.writable_file, default=None, help="write the results as JSON here")
    p.add_argument("--markdown", type=ca.writable_file, default=None, help="write the table as Markdown here")
    p.add_argument(
        "--model", choices=ARCH_NAMES, default=None, help="time a training step of this model instead"
    )
    p.add_argument(
        "--width", type=ca.positive_float, default=1.0, help="for --model: channel width multiplier"
    )
    p.add_argument("--image-size", type=ca.positive_int, default=224, help="for --model")
    p.add_argument("--num-classes", type=ca.positive_int, default=1000, help="for --model")
    p.add_argument("--_memory-child", nargs=2, default=None, help=argparse.SUPPRESS)
    return p


def check_args(parser, args, argv) -> None:
    """What argparse cannot check alone, before any work: options that only make sense with
    --model, unknown --methods, outputs that are the same file."""
    given = set(argv)
    if args.model is None:
        for opt in ("--width", "--image-size", "--num-classes"):
            if opt in given or any(a.startswith(opt + "=") for a in given):
                ca.fail(parser, f"argument {opt}: only applies with --model")
    if args.methods is not None and args.model is None:
        known = list(method_fns(1, args.device, forms=True, modules=True))
        bad = [w for w in args.methods if not any(_wanted(m, [w]) for m in known)]
        if bad:
            ca.fail(
                parser,
                f"argument --methods: unknown method(s) {', '.join(bad)}; "
                f"expected some of {', '.join(known)}",
            )
    if args.clock == "thread" and (args.threads != 1 or not args.device.startswith("cpu")):
        ca.fail(parser, "argument --clock: thread needs --device cpu --threads 1")
    if args.json and args.markdown and os.path.abspath(args.json) == os.path.abspath(args.markdown):
        ca.fail(parser, "arguments --json and --markdown name the same file")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args._memory_child:
        check_args(parser, args, argv)
    args.threads = args.threads or (os.cpu_count() or 1)
    torch.set_num_threads(args.threads)
    if args.batch is None:
        args.batch = 256 if args.device.startswith("cuda") else 32
    if args._memory_child:
        _memory_child(args)
        return 0
    command = "shc bench " + " ".join(argv)
    info = machine_info(args)
    if not args.device.startswith("cuda"):
        info["malloc"] = steady_malloc() if args.malloc == "steady" else "system"
    print("; ".join(f"{k}={v}" for k, v in info.items()), flush=True)
    if args.model:
        info.update(
            model=args.model, width=args.width, image_size=args.image_size, num_classes=args.num_classes
        )
        results = run_model(args)
        result = {"info": info, "command": command, "model": results}
        text = model_markdown(results, info, command, args)
    else:
        rows = run_layers(args)
        result = {"info": info, "command": command, "rows": [asdict(r) for r in rows]}
        text = markdown(rows, info, command)
    for path, content in ((args.json, json.dumps(result, indent=1)), (args.markdown, text)):
        if path:  # checked writable (or creatable) before the run
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(path, "w") as f:
                f.write(content)
    return 0


if __name__ == "__main__":
    sys.exit(main())
