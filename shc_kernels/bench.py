"""``shc bench``: what the fused SHC layer is worth, against the plain conv and the naive ways.

For each 3×3 conv shape of ResNet-18/50 and each method, forward and forward+backward time,
the ratio to the plain ``F.conv2d`` of the same shape measured in the same run, and the peak
memory the call needed beyond its inputs. Methods:

  plain       F.conv2d(x, W): the floor (no statistics, no map)
  naive       shc_kernels.reference: one conv per sample
  groups      the batch-as-groups trick: per-sample kernels W*m[n] as one grouped conv
  unfold_bmm  F.unfold, scale the columns by m, one batched matmul
  shc:<name>  the SHC layer on each available backend (e.g. shc:cpu, shc:triton)
  shc:<name>:fused, shc:<name>:split   (with --forms) the compiled backends' two forms of the
              layer (functional.choose_form): one op (one launch on CUDA) or map op then conv op

Every SHC method computes the whole layer (statistics, map, modulated conv) and, for
forward+backward, the gradients of x, W, bias and the hypernetwork.

``--model resnet50`` instead reports training images/s of the SHC model against the plain one.
Timing: CPU runs pin the thread count and use perf_counter; CUDA runs synchronise and use CUDA
events. Methods are timed round-robin, one call of each per repetition. Each figure is the
median over ``--reps`` repetitions after ``--warmup`` runs, with the spread (min..max) beside it.
"""

from __future__ import annotations

import argparse
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

from . import backends, functional, reference
from .functional import shc_conv2d

# (name, C_in, C_out, H=W of the input, stride) of the 3x3 convs at 224 px input.
SHAPES = {
    "resnet18": [
        ("r18.l1", 64, 64, 56, 1),
        ("r18.l2.s2", 64, 128, 56, 2),
        ("r18.l2", 128, 128, 28, 1),
        ("r18.l3.s2", 128, 256, 28, 2),
        ("r18.l3", 256, 256, 14, 1),
        ("r18.l4.s2", 256, 512, 14, 2),
        ("r18.l4", 512, 512, 7, 1),
    ],
    "resnet50": [
        ("r50.l1", 64, 64, 56, 1),
        ("r50.l2.s2", 128, 128, 56, 2),
        ("r50.l2", 128, 128, 28, 1),
        ("r50.l3.s2", 256, 256, 28, 2),
        ("r50.l3", 256, 256, 14, 1),
        ("r50.l4.s2", 512, 512, 14, 2),
        ("r50.l4", 512, 512, 7, 1),
    ],
    # The four stride-1 shapes the foundation issue's CPU target names.
    "core": [
        ("64@56", 64, 64, 56, 1),
        ("128@28", 128, 128, 28, 1),
        ("256@14", 256, 256, 14, 1),
        ("512@7", 512, 512, 7, 1),
    ],
    "smoke": [("smoke", 8, 8, 10, 1), ("smoke.s2", 8, 16, 10, 2)],
}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class Row:
    shape: str
    method: str
    fwd_ms: float
    fwd_spread: tuple[float, float]
    fwdbwd_ms: float
    fwdbwd_spread: tuple[float, float]
    fwd_ratio: float = float("nan")
    fwdbwd_ratio: float = float("nan")
    peak_extra_mb: float | None = None


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


def method_fns(stride, device="cpu", forms=False):
    """name -> fn(x, params) returning the layer's output, for tensors on ``device``; with
    ``forms``, also each compiled backend's "fused" and "split" form on its own."""

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
    return fns


# ---------------------------------------------------------------- timing


class Timer:
    """Times several functions round-robin (one call of each per repetition), so a change in the
    machine's load hits every method alike and the ratios stay fair."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"

    def _once(self, fn) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end)
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3

    def interleaved(self, fns: dict, warmup: int, reps: int) -> dict:
        """name -> (median, min, max) in milliseconds."""
        for fn in fns.values():
            for _ in range(warmup):
                fn()
        times = {name: [] for name in fns}
        for _ in range(reps):
            for name, fn in fns.items():
                times[name].append(self._once(fn))
        return {name: (statistics.median(t), min(t), max(t)) for name, t in times.items()}

    def __call__(self, fn, warmup, reps) -> tuple[float, float, float]:
        return self.interleaved({"fn": fn}, warmup, reps)["fn"]


def _fwd_and_fwdbwd(fn, x, params):
    def fwd():
        with torch.no_grad():
            fn(x, params)

    leaves = [x.detach().requires_grad_(True)] + [p.detach().requires_grad_(True) for p in params]

    def fwdbwd():
        for t in leaves:
            t.grad = None
        y = fn(leaves[0], leaves[1:])
        y.backward(torch.ones_like(y))

    return fwd, fwdbwd


def peak_extra_mb(method, shape, args) -> float | None:
    """Peak memory of one forward+backward beyond its inputs, in MiB. CUDA: the allocator's
    peak. CPU: in a fresh process, the peak RSS of the call (VmHWM, reset just before it) minus
    the RSS before it."""
    name, cin, cout, hw, stride = shape
    if args.device.startswith("cuda"):
        x, params = make_inputs(
            cin, cout, hw, args.batch, args.device, DTYPES[args.dtype], args.channels_last
        )
        _fwd, fwdbwd = _fwd_and_fwdbwd(method_fns(stride, args.device, forms=True)[method], x, params)
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
        "shc_kernels.bench",
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
    _fwd, fwdbwd = _fwd_and_fwdbwd(method_fns(stride, forms=True)[args._memory_child[0]], x, params)
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
        "Times are medians in ms (min..max over the repetitions); ratios are to `plain` of the same "
        "shape in the same run; peak = memory beyond the inputs for one forward+backward.",
        "",
        "| shape | method | fwd ms | fwd × plain | fwd+bwd ms | fwd+bwd × plain | peak MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        peak = "-" if r.peak_extra_mb is None else f"{r.peak_extra_mb:.0f}"
        lines.append(
            f"| {r.shape} | {r.method} | {r.fwd_ms:.2f} ({r.fwd_spread[0]:.2f}..{r.fwd_spread[1]:.2f}) | "
            f"{r.fwd_ratio:.2f} | {r.fwdbwd_ms:.2f} ({r.fwdbwd_spread[0]:.2f}..{r.fwdbwd_spread[1]:.2f}) | "
            f"{r.fwdbwd_ratio:.2f} | {peak} |"
        )
    return "\n".join(lines) + "\n"


def run_layers(args) -> list[Row]:
    dtype = DTYPES[args.dtype]
    timer = Timer(args.device)
    shapes = [s for key in args.shapes for s in SHAPES[key]]
    rows: list[Row] = []
    for shape in shapes:
        name, cin, cout, hw, stride = shape
        x, params = make_inputs(cin, cout, hw, args.batch, args.device, dtype, args.channels_last)
        fns = method_fns(stride, args.device, forms=args.forms)
        chosen = [
            m for m in fns if args.methods is None or m in args.methods or m.split(":")[0] in args.methods
        ]
        closures = {}
        for method in chosen:
            fwd, fwdbwd = _fwd_and_fwdbwd(fns[method], x, params)
            closures[(method, "fwd")], closures[(method, "fwdbwd")] = fwd, fwdbwd
        timed = timer.interleaved(closures, args.warmup, args.reps)
        base = None
        for method in chosen:
            f, fb = timed[(method, "fwd")], timed[(method, "fwdbwd")]
            row = Row(name, method, f[0], f[1:], fb[0], fb[1:])
            if method == "plain":
                base = row
            if base is not None:
                row.fwd_ratio, row.fwdbwd_ratio = row.fwd_ms / base.fwd_ms, row.fwdbwd_ms / base.fwdbwd_ms
            if not args.no_memory:
                row.peak_extra_mb = peak_extra_mb(method, shape, args)
            rows.append(row)
            print(
                f"{name:>10} {method:<11} fwd {row.fwd_ms:9.2f} ms ({row.fwd_ratio:5.2f}x)  "
                f"fwd+bwd {row.fwdbwd_ms:9.2f} ms ({row.fwdbwd_ratio:5.2f}x)"
                + ("" if row.peak_extra_mb is None else f"  peak {row.peak_extra_mb:8.1f} MiB"),
                flush=True,
            )
    return rows


def run_model(args) -> list[dict]:
    """Training images/s of the SHC model against the plain one: same data, same run, the two
    training steps timed round-robin."""
    from . import models

    dtype = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}[args.dtype]
    x = torch.rand(args.batch, 3, args.image_size, args.image_size, device=args.device)
    y = torch.randint(0, 1000, (args.batch,), device=args.device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    steps = {}
    for shc_on in (False, True):
        torch.manual_seed(0)
        net = models.build(args.model, 1000, shc=shc_on, small_input=args.image_size <= 64).to(args.device)
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
    timed = Timer(args.device).interleaved(steps, args.warmup, args.reps)
    results = []
    for name, (med, lo, hi) in timed.items():
        results.append(
            {"model": name, "step_ms": med, "images_per_s": args.batch / med * 1e3, "spread_ms": (lo, hi)}
        )
        print(
            f"{name:<14} {results[-1]['images_per_s']:9.1f} images/s (step {med:.1f} ms, {lo:.1f}..{hi:.1f})"
        )
    ratio = results[1]["images_per_s"] / results[0]["images_per_s"]
    print(f"SHC / plain training throughput: {ratio:.3f} (step time ratio {1 / ratio:.3f})")
    results.append({"shc_over_plain": ratio})
    return results


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shc bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--batch", type=int, default=None, help="default 32 on CPU, 256 on CUDA")
    p.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=["resnet18", "resnet50"])
    p.add_argument("--methods", nargs="+", default=None, help="subset, e.g. plain naive shc")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--forms", action="store_true", help="also time the fused and split forms apart")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--json", default=None, help="write the results as JSON here")
    p.add_argument("--markdown", default=None, help="write the table as Markdown here")
    p.add_argument("--model", default=None, help="plain10|resnet18|resnet50: training throughput instead")
    p.add_argument("--image-size", type=int, default=224, help="for --model")
    p.add_argument("--_memory-child", nargs=2, default=None, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("shc bench: error: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    args.threads = args.threads or (os.cpu_count() or 1)
    torch.set_num_threads(args.threads)
    if args.batch is None:
        args.batch = 256 if args.device.startswith("cuda") else 32
    if args._memory_child:
        _memory_child(args)
        return 0
    command = "shc bench " + " ".join(argv if argv is not None else sys.argv[1:])
    info = machine_info(args)
    print("; ".join(f"{k}={v}" for k, v in info.items()), flush=True)
    if args.model:
        result = {"info": info, "command": command, "model": run_model(args)}
        text = "\n".join(f"- {r}" for r in result["model"]) + "\n"
    else:
        rows = run_layers(args)
        result = {"info": info, "command": command, "rows": [asdict(r) for r in rows]}
        text = markdown(rows, info, command)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
