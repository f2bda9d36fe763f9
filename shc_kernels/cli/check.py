"""``shc check``: is every backend right on this machine? A user's first command on a new GPU.

Every available backend of the device (and each form of a compiled one: ``SHC_FORM=fused|split``)
x dtype x layout (NCHW, channels_last) x gradient route, on small odd shapes and ResNet-50's 3x3
shapes at batch 2, runs forward and backward through the public ``shc.shc_conv2d(...,
backend=name)`` and is compared with ``shc_kernels.reference`` computed in float64 on the CPU from
the same (rounded) inputs. Each row prints the max error of y and of every gradient (x, weight,
bias, fc1/fc2 weights and biases), each relative to the reference's scale
(``max|got - ref| / max|ref|``), and PASS or FAIL against the dtype's tolerance. The exit status
is 1 when any row fails.

    shc check                        # the GPU when there is one, else the CPU
    shc check --device cuda          # the "cuda" and "triton" backends on the GPU
    shc check --quick                # the small shapes only: seconds on a CPU
    TRITON_INTERPRET=1 shc check --device cpu --quick   # Triton's kernels on CPU (fp32/fp16)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import torch

from .. import backends, reference
from ..functional import FORMS
from ..research.args import device as device_arg
from ..research.args import fail, nonnegative_int, writable_file
from .shapes import SHAPES

# max|got - ref| / max|ref| allowed per dtype. Triton's fp32 on a GPU with TF32 allowed rounds the
# conv's inputs to 10 mantissa bits, as fp16 does, so it gets fp16's tolerance (tf32_rounding).
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 4e-2}
DTYPES = {str(d).replace("torch.", ""): d for d in TOLERANCE}
ROUTES = ("both", "conv", "hyper")
LAYOUTS = ("nchw", "channels_last")
CL = torch.channels_last
GRADS = ("x", "weight", "bias", "fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias")
COLUMNS = ("y",) + tuple("d" + g for g in GRADS)
LABELS = {"dfc1_weight": "dfc1_w", "dfc1_bias": "dfc1_b", "dfc2_weight": "dfc2_w", "dfc2_bias": "dfc2_b"}


@dataclass(frozen=True)
class Shape:
    """One SHC layer: x (n, d, h, w), weight (c, d/groups, k, k)."""

    name: str
    n: int
    d: int
    c: int
    h: int
    w: int
    k: tuple = (3, 3)
    stride: int = 1
    padding: int = 1
    dilation: int = 1
    groups: int = 1
    bias: bool = True


# Odd sizes, stride 2, groups, dilation, 1x1 / 5x5 / 3x1 kernels, H x W = 1 and no bias.
SMALL = (
    Shape("odd 3x3", 3, 5, 7, 9, 11),
    Shape("s2 g2 p0", 2, 6, 4, 13, 7, stride=2, padding=0, groups=2),
    Shape("5x5 dil2 nobias", 2, 3, 5, 10, 9, k=(5, 5), padding=2, dilation=2, bias=False),
    Shape("3x1 hw1", 3, 4, 6, 1, 1, k=(3, 1)),
)
QUICK = SMALL[:2]


def resnet50_shapes(batch: int = 2) -> tuple[Shape, ...]:

    return tuple(Shape(name, batch, d, c, hw, hw, stride=s) for name, d, c, hw, s in SHAPES["resnet50"])


def backend_dtypes(name: str, device: str) -> tuple:
    """The dtypes backend ``name`` computes (Triton: no fp64; its interpreter has no bf16)."""
    if name == "triton":
        return (torch.float32, torch.float16) + ((torch.bfloat16,) if device == "cuda" else ())
    return (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def tolerance(dtype: torch.dtype, device: str, backend: str = "cuda") -> float:
    if dtype == torch.float32 and tf32_rounding(backend, device):
        return TOLERANCE[torch.float16]
    return TOLERANCE[dtype]


def tf32_rounding(backend: str, device: str) -> bool:
    """Whether ``backend`` rounds fp32 conv inputs to TF32 (10 mantissa bits, as fp16): Triton on a
    GPU does when torch.backends.cudnn.allow_tf32 is on (the default), as nn.Conv2d does."""
    return backend == "triton" and device == "cuda" and torch.backends.cudnn.allow_tf32


@dataclass
class Row:
    backend: str
    form: str
    dtype: str
    layout: str
    route: str
    shape: str
    errors: dict = field(default_factory=dict)  # column -> max error relative to the reference's scale
    tolerance: float = 0.0
    passed: bool = False
    problem: str = ""  # why the row failed beyond the numbers (an exception, a wrong shape or layout)


# ---------------------------------------------------------------------------------------------
# Inputs, reference and one backend run


def make_inputs(s: Shape, seed: int) -> tuple[torch.Tensor, list]:
    """x and (weight, bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias) in float64: channels with
    different means and scales, weights at nn.Linear/nn.Conv2d scale so the map is not saturated."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    kh, kw = s.k
    hidden = max(1, s.d // 2)
    x = r(s.n, s.d, s.h, s.w) * torch.linspace(0.5, 2.0, s.d, dtype=torch.float64)[None, :, None, None]
    x = x + torch.linspace(-1.0, 1.0, s.d, dtype=torch.float64)[None, :, None, None]
    params = [
        r(s.c, s.d // s.groups, kh, kw, scale=(s.d // s.groups * kh * kw) ** -0.5),
        r(s.c) if s.bias else None,
        r(hidden, 2 * s.d, scale=(2 * s.d) ** -0.5),
        r(hidden, scale=0.5),
        r(kh * kw, hidden, scale=2 * hidden**-0.5),
        r(kh * kw, scale=0.5),
    ]
    return x, params


def run_layer(x, params, gy, s: Shape, route: str, backend: str, layout: str, device: str):
    """y and every gradient (None where there is no such input) of one forward + backward."""
    x = x.detach().to(device).clone()
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x = x.requires_grad_(True)
    leaves = [None if p is None else p.detach().to(device).clone().requires_grad_(True) for p in params]
    y = shc_conv2d_call(x, leaves, s, route, backend)
    y.backward(gy.to(device=y.device, dtype=y.dtype))
    return y.detach(), [x.grad] + [None if p is None else p.grad for p in leaves]


def shc_conv2d_call(x, leaves, s: Shape, route: str, backend: str):
    """The public API call every row goes through."""
    import shc_kernels as shc

    return shc.shc_conv2d(x, *leaves, stride=s.stride, padding=s.padding, dilation=s.dilation,
                          groups=s.groups, grad_route=route, backend=backend)  # fmt: skip


def relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    got, ref = got.detach().to("cpu", torch.float64), ref.to(torch.float64)
    if ref.numel() == 0:
        return 0.0
    diff = (got - ref).abs().max().item()
    scale = ref.abs().max().item()
    return diff / scale if scale > 0 else diff


@contextlib.contextmanager
def forced_form(form: str | None):
    """SHC_FORM=form inside the block (None: leave the environment as it is)."""
    old = os.environ.get("SHC_FORM")
    if form is not None:
        os.environ["SHC_FORM"] = form
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("SHC_FORM", None)
        else:
            os.environ["SHC_FORM"] = old


def check_row(backend, form, dtype, layout, route, s: Shape, inputs, expected, device) -> Row:
    """One backend run on ``device`` against the reference's (y, gradients)."""
    x, params, gy = inputs
    tol = tolerance(dtype, torch.device(device).type, backend)
    row = Row(backend, form or "-", str(dtype).replace("torch.", ""), layout, route, s.name, tolerance=tol)
    try:
        with forced_form(form):
            y, grads = run_layer(x.to(dtype), [None if p is None else p.to(dtype) for p in params], gy, s,
                                 route, backend, layout, device)  # fmt: skip
        if y.is_cuda:  # a kernel's asynchronous error belongs to this row
            torch.cuda.synchronize()
    except Exception as exc:  # noqa: BLE001 - a crashing backend is a failed row, not a crashed check
        row.problem = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return row
    y_ref, grads_ref = expected
    problems = []
    if y.shape != y_ref.shape or y.dtype != dtype:
        problems.append(f"y is {tuple(y.shape)} {y.dtype}, expected {tuple(y_ref.shape)} {dtype}")
    else:
        row.errors["y"] = relative_error(y, y_ref)
    # The output and dx come back in the input's memory format, where that format is unambiguous
    # (an x with H x W = 1 or one channel is both NCHW and channels_last; F.conv2d then gives NCHW).
    if layout == "channels_last" and not torch.empty(x.shape).contiguous(memory_format=CL).is_contiguous():
        for name, t in (("y", y), ("dx", grads[0])):
            if t is not None and not t.is_contiguous(memory_format=CL):
                problems.append(f"{name} is not channels_last for a channels_last x")
    for name, got, ref in zip(GRADS, grads, grads_ref, strict=True):
        if (got is None) != (ref is None):
            problems.append(f"d{name} is {'missing' if got is None else 'unexpected'}")
        elif ref is not None:
            if got.shape != ref.shape:
                problems.append(f"d{name} is {tuple(got.shape)}, expected {tuple(ref.shape)}")
            else:
                row.errors["d" + name] = relative_error(got, ref)
    row.problem = "; ".join(problems)
    finite = all(e == e and e != float("inf") for e in row.errors.values())
    row.passed = not row.problem and finite and all(e <= tol for e in row.errors.values())
    return row


# ---------------------------------------------------------------------------------------------
# What to run


@dataclass
class Plan:
    """The backends to run on ``device``, those that should but cannot (each a failed row), and
    notes on those left out."""

    device: str
    shapes: tuple
    dtypes: tuple
    runnable: list = field(default_factory=list)
    broken: dict = field(default_factory=dict)  # backend -> why it cannot run
    notes: list = field(default_factory=list)

    def forms(self, backend: str) -> tuple:
        return FORMS if backend in ("cpu", "cuda") else (None,)

    def shapes_for(self, backend: str) -> tuple:
        # The Triton interpreter runs a kernel's programs one at a time in Python (seconds per
        # row even on small shapes): the small shapes only, and one of them with --quick.
        if backend == "triton" and torch.device(self.device).type == "cpu":
            return tuple(s for s in self.shapes if s in SMALL)[: 1 if self.shapes == QUICK else None]
        return self.shapes

    def runs(self) -> int:
        kind = torch.device(self.device).type
        per_shape = len(LAYOUTS) * len(ROUTES)
        return sum(len(self.forms(b)) * len(self.shapes_for(b)) * per_shape
                   * len([d for d in self.dtypes if d in backend_dtypes(b, kind)])
                   for b in self.runnable)  # fmt: skip


def make_plan(device: str, quick: bool, wanted=None, dtypes=None) -> Plan:
    """The project's own compiled backend for the device ("cpu", or "cuda" on a GPU) and any backend
    named in ``wanted`` are always checked: when one cannot run, that is a failed row saying why.
    Triton is checked where it runs (a GPU, or the CPU under TRITON_INTERPRET=1)."""
    kind = torch.device(device).type
    shapes = QUICK if quick else SMALL + resnet50_shapes()
    plan = Plan(device, shapes, tuple(dtypes or DTYPES.values()))
    for name in wanted or [kind, "triton"]:
        reason = backends.unavailable_reason(name)
        if reason is None and backends.backend_device(name) != kind:
            reason = f"it runs on {backends.backend_device(name)} tensors here"
        if reason is None:
            plan.runnable.append(name)
        elif name == kind or wanted:
            plan.broken[name] = reason
        else:
            plan.notes.append(f"{name}: not checked ({reason})")
    return plan


def run_check(plan: Plan, seed: int = 0, out=print) -> list[Row]:
    """Every row of ``plan``, each printed by ``out`` as it is done."""
    kind = torch.device(plan.device).type
    for note in plan.notes:
        out(f"  {note}")
    print_header(out)
    rows = [Row(name, "-", "-", "-", "-", "-", problem=f"unavailable: {why}") for name, why in
            plan.broken.items()]  # fmt: skip
    for row in rows:
        out(format_row(row))
    for i, s in enumerate(plan.shapes):
        x64, params64 = make_inputs(s, seed + i)
        gen = torch.Generator().manual_seed(seed + 1000 + i)
        for dtype in plan.dtypes:
            users = [n for n in plan.runnable if dtype in backend_dtypes(n, kind) and s in plan.shapes_for(n)]
            if not users:
                continue
            # The reference sees exactly the backend's (rounded) inputs, in float64 on the CPU.
            x = x64.to(dtype).to(torch.float64)
            params = [None if p is None else p.to(dtype).to(torch.float64) for p in params64]
            gy = None
            for route in ROUTES:
                if gy is None:
                    with torch.no_grad():
                        y0 = reference.shc_conv2d(x, *params, stride=s.stride, padding=s.padding,
                                                  dilation=s.dilation, groups=s.groups)  # fmt: skip
                    gy = torch.randn(y0.shape, generator=gen, dtype=torch.float64).to(dtype).to(torch.float64)
                expected = run_layer(x, params, gy, s, route, "reference", "nchw", "cpu")
                for name in users:
                    for form in plan.forms(name):
                        for layout in LAYOUTS:
                            row = check_row(name, form, dtype, layout, route, s, (x, params, gy), expected,
                                            plan.device)  # fmt: skip
                            rows.append(row)
                            out(format_row(row))
    return rows


# ---------------------------------------------------------------------------------------------
# Output


def print_header(out=print) -> None:
    head = f"{'backend':<8}{'form':<6}{'dtype':<9}{'layout':<14}{'route':<6}{'shape':<17}"
    out(head + "".join(f"{LABELS.get(c, c):>9}" for c in COLUMNS) + "  result")


def format_row(row: Row) -> str:
    head = f"{row.backend:<8}{row.form:<6}{row.dtype:<9}{row.layout:<14}{row.route:<6}{row.shape:<17}"
    cells = "".join(f"{row.errors[c]:>9.1e}" if c in row.errors else f"{'-':>9}" for c in COLUMNS)
    verdict = "PASS" if row.passed else "FAIL"
    if not row.passed and row.errors and not row.problem:
        worst = max(row.errors, key=lambda c: badness(row.errors[c], row.tolerance))
        verdict += f" ({LABELS.get(worst, worst)} {row.errors[worst]:.1e} > tol {row.tolerance:.0e})"
    elif row.problem:
        verdict += f" ({row.problem})"
    return head + cells + "  " + verdict


def badness(error: float, tolerance: float) -> float:
    """error / tolerance, with NaN the worst of all."""
    return error / tolerance if error == error else float("inf")


def summary(rows: list[Row]) -> str:
    failed = [r for r in rows if not r.passed]
    if not rows:
        return "shc check: nothing to check"
    if not failed:
        return f"shc check: all {len(rows)} rows PASS"
    return f"shc check: {len(failed)} of {len(rows)} rows FAIL"


def machine_line(device: str) -> str:
    gpu = f", {torch.cuda.get_device_name()}" if device == "cuda" else ""
    interpret = os.environ.get("TRITON_INTERPRET", "")
    return f"shc check on {device}{gpu}: torch {torch.__version__}, TRITON_INTERPRET={interpret!r}"


def select_device(device: str) -> None:
    """Make cuda:N the current GPU, so machine_line names it (plain "cuda" keeps the current one)."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is not None:
        torch.cuda.set_device(dev.index)


def check_environment() -> str | None:
    """What is wrong with SHC_BACKEND / SHC_FORM (each call of the layer would raise it), or None.
    The rows below name their backend and form explicitly, so without this a bad value would let
    every row pass while every model's forward raises."""
    from ..functional import forced_form as env_form

    for read, calls in ((backends.env_backend, "with backend='auto' (every model) "), (env_form, "")):
        try:
            read()
        except ValueError as exc:
            return f"{exc}: every call of the layer {calls}raises this; fix or unset it".replace("  ", " ")
    return None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="shc check",
        description="Check every available backend, form, dtype, layout and gradient route against the "
        "reference, forward and every gradient; exit status 1 on any failure.",
    )
    default = "cuda" if torch.cuda.is_available() else "cpu"
    p.add_argument("--device", type=device_arg, default=default, help=f"cpu or cuda[:N] (default: {default})")
    p.add_argument("--quick", action="store_true", help="two small shapes only (seconds on a CPU)")
    p.add_argument("--backends", nargs="+", choices=[b for b in backends.BACKENDS if b != "reference"],
                   help="check only these backends (default: every one for the device)")  # fmt: skip
    p.add_argument("--dtypes", nargs="+", choices=list(DTYPES), help="check only these dtypes (default: all)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the random inputs")
    p.add_argument("--json", type=writable_file, metavar="FILE", help="also write every row as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    device, kind = args.device, torch.device(args.device).type
    if args.backends:
        wrong = [b for b in args.backends if b != "triton" and backends.backend_device(b) != kind]
        if wrong:
            fail(parser, f"--backends: {', '.join(wrong)} cannot run on {kind} tensors (--device {device})")
    environment_problem = check_environment()
    if environment_problem:
        fail(parser, environment_problem)
    plan = make_plan(device, args.quick, args.backends, [DTYPES[d] for d in args.dtypes or DTYPES])
    env = os.environ.get("SHC_BACKEND")
    if env and env != "auto":  # what every model (backend="auto") runs: a failed row when it cannot
        reason = backends.unavailable_reason(env)
        if reason is None and backends.backend_device(env) not in (None, kind):
            reason = f"it runs on {backends.backend_device(env)} tensors, not {kind}"
        if reason is not None:
            plan.broken[f"SHC_BACKEND={env}"] = reason
    if not plan.broken and plan.runs() == 0:
        notes = "".join(f"; {n}" for n in plan.notes)
        fail(parser, f"nothing to check: no backend among {plan.runnable or 'those named'} computes "
                     f"{', '.join(args.dtypes or DTYPES)} on {kind}{notes}")  # fmt: skip
    select_device(device)
    print(machine_line(kind), flush=True)
    tols = ", ".join(f"{name} {tolerance(d, kind, 'cuda'):.0e}" for name, d in DTYPES.items())
    if tf32_rounding("triton", kind):
        tols += f" (triton float32 {tolerance(torch.float32, kind, 'triton'):.0e}: TF32 is allowed)"
    print(f"error = max|got - ref| / max|ref| per tensor, ref = shc_kernels.reference in float64 on the CPU; "
          f"tolerance: {tols}")  # fmt: skip
    start = time.perf_counter()
    rows = run_check(plan, args.seed, out=lambda s: print(s, flush=True))
    print(summary(rows) + f" ({time.perf_counter() - start:.0f} s)")
    ok = bool(rows) and all(r.passed for r in rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device, "machine": machine_line(kind), "quick": args.quick, "passed": ok,
                       "rows": [asdict(r) for r in rows]}, f, indent=1)  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
