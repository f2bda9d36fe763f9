"""Memory-access metrics of csrc/cuda's kernels from the SIMT emulator (part of `make gpu-model`).

    python tools/gpu_model_sim.py [--json out.json]     # build, run, print the table

Builds a variant of shc_kernels._C_sim with every load and store instrumented
(build/cuda-sim/metrics/; csrc/simt/simt_metrics.h says how and what is counted), runs the CUDA
kernels on the CPU on a small layer (64 channels, 8x8, forward and backward: bf16 channels_last
in both forms and at stride 2, fp32 NCHW) and reads, for every warp-wide global access, the
32-byte sectors per request and, for every shared access, the wavefronts per request, each
beside the fewest the same bytes could take if no two lanes shared an address (`ideal`:
lanes*size/32 sectors, lanes*size/128 wavefronts; a broadcast goes below it). Sites are named by
file:line with addr2line (the build has -g); only accesses made by lines of csrc/cuda count (the
emulator's own bookkeeping and its WMMA fragment shuffles, csrc/simt, are left out: the WMMA
loads' hardware form is read from SASS instead).

These are the addresses the kernels' logic touches, grouped as a warp would issue them: not
nvcc's code (which may vectorise or split accesses differently) and not a timing.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

METRICS_FLAGS = [
    "-DSIMT_METRICS=1",
    "-g",
    "-fsanitize=kernel-address",  # instrumentation only: the hooks are csrc/simt's (no runtime linked)
    "--param",
    "asan-instrumentation-with-call-threshold=0",
    "--param",
    "asan-globals=0",
    "--param",
    "asan-stack=0",
]


def so_path() -> Path:
    return ROOT / "build" / "cuda-sim" / "metrics" / "shc_kernels" / "_C_sim.so"


def build(force: bool = False) -> Path:
    """The metrics build of _C_sim (incremental: rebuilt when a source it includes changed)."""
    import simt_build

    out = so_path()
    work = out.parents[1]
    out.parent.mkdir(parents=True, exist_ok=True)
    dep, stamp = work / "sim_module.d", work / "command.txt"
    cmd = simt_build.command(out, dep, None)
    cmd = cmd[:1] + METRICS_FLAGS + cmd[1:]
    if not force and simt_build.up_to_date(out, dep, cmd, stamp):
        return out
    t0 = time.time()
    tmp = out.with_suffix(".tmp.so")
    i = cmd.index("-o")
    proc = subprocess.run(cmd[: i + 1] + [str(tmp)] + cmd[i + 2 :], cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"gpu-model: metrics build of _C_sim failed: {shlex.join(cmd)}")
    os.replace(tmp, out)
    stamp.write_text(shlex.join(cmd))
    print(f"gpu-model: built {out.relative_to(ROOT)} in {time.time() - t0:.0f}s", file=sys.stderr)
    return out


def load(so: Path):
    """Load the metrics build as shc_kernels._C_sim (before anything imports the plain one)."""
    if "shc_kernels._C_sim" in sys.modules:
        mod = sys.modules["shc_kernels._C_sim"]
        if Path(mod.__file__).resolve() != so.resolve():
            raise RuntimeError(f"another _C_sim is loaded ({mod.__file__}): run in a fresh process")
        return mod
    spec = importlib.util.spec_from_file_location("shc_kernels._C_sim", so)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sys.modules["shc_kernels._C_sim"] = mod
    import shc_kernels
    from shc_kernels import ops

    shc_kernels._C_sim = mod
    reason = ops.load_sim() if hasattr(ops, "load_sim") else None
    if reason is not None:
        raise RuntimeError(f"cannot register the shc_sim ops: {reason}")
    return mod


# --------------------------------------------------------------------------------- symbolising
_FRAME_CACHE: dict[int, list[tuple[str, str, int]]] = {}


def frames(so: Path, offsets: list[int]) -> dict[int, list[tuple[str, str, int]]]:
    """offset -> inline chain [(function, file, line), ...], innermost first (addr2line -f -i -C).
    The offset is a return address: the access is the instruction before it."""
    todo = sorted({o for o in offsets if o not in _FRAME_CACHE})
    if todo:
        out = subprocess.run(
            ["addr2line", "-e", str(so), "-f", "-i", "-C", "-a"] + [hex(o - 1) for o in todo],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        cur = None
        k = 0
        while k < len(out):
            line = out[k]
            if re.fullmatch(r"0x[0-9a-f]+", line):
                cur = int(line, 16) + 1
                _FRAME_CACHE[cur] = []
                k += 1
                continue
            fn = line
            loc = out[k + 1] if k + 1 < len(out) else "??:0"
            file, _, ln = loc.rpartition(":")
            m = re.match(r"(\d+)", ln)
            _FRAME_CACHE[cur].append((fn, file, int(m.group(1)) if m else 0))
            k += 2
    return {o: _FRAME_CACHE.get(o, []) for o in offsets}


def kernel_site(chain: list[tuple[str, str, int]]) -> dict | None:
    """The kernel line an access belongs to (csrc/cuda, or the emulator's planted patterns), or None
    (the emulator's own machinery and WMMA fragments in csrc/simt, torch's, the launch helper's)."""
    chain = [(fn, os.path.normpath(f), line) for fn, f, line in chain]
    if any("/csrc/simt/" in f and not f.endswith("emulator_checks.cpp") for _fn, f, _l in chain):
        return None
    for fn, f, line in chain:  # the innermost kernel frame
        if ("/csrc/cuda/" in f and not f.endswith("platform.h")) or f.endswith("emulator_checks.cpp"):
            outer = chain[-1][0]  # the function the instruction is compiled into
            return dict(file=os.path.relpath(f, ROOT), line=line, function=_short(fn), kernel=_short(outer))
    return None


def _short(fn: str) -> str:
    """shc_cuda::(anonymous namespace)::conv_kernel<c10::BFloat16, ...>(...) -> conv_kernel"""
    fn = re.sub(r"\(.*$", "", fn.replace("(anonymous namespace)::", ""))
    depth, out = 0, []
    for ch in fn:  # drop template arguments
        depth += ch == "<"
        if depth == 0:
            out.append(ch)
        depth -= ch == ">"
    return "".join(out).split("::")[-1]


def site_rows(mod, so: Path) -> list[dict]:
    """_C_sim.access_metrics() as rows named by their kernel line; other sites dropped."""
    raw = mod.access_metrics()
    chains = frames(so, [r["offset"] for r in raw])
    rows = []
    for r in raw:
        site = kernel_site(chains[r["offset"]])
        if site is None:
            continue
        rows.append(dict(r, **site, space="shared" if r["shared"] else "global"))
    return rows


def summarise(rows: list[dict]) -> dict:
    """Totals of one set of sites: requests, sectors (wavefronts) per request and the ideal."""
    out = {}
    for space, unit in (("global", "sectors"), ("shared", "wavefronts")):
        for store in (False, True):
            rs = [r for r in rows if r["space"] == space and r["store"] == store]
            req = sum(r["requests"] for r in rs)
            got = sum(r[unit] for r in rs)
            ideal = sum(r["ideal"] for r in rs)
            key = f"{space}_{'st' if store else 'ld'}"
            out[key] = dict(
                requests=req,
                per_request=round(got / req, 2) if req else None,
                ideal_per_request=round(ideal / req, 2) if req else None,
                excess=round(got / ideal, 2) if ideal else None,
            )
    return out


# ------------------------------------------------------------------------------------ the runs
def run_pattern(mod, so: Path, kind: str, stride: int) -> list[dict]:
    """One planted access pattern (csrc/simt/emulator_checks.cpp): its sites' metrics."""
    import torch

    mod.reset_access_metrics()
    torch.ops.shc_sim_test.access_pattern(kind, stride)
    return [r for r in site_rows(mod, so) if "emulator_checks" in r["file"]]


LAYER_CASES = {  # (N, D=C, H=W, stride): small enough to emulate in seconds, tiles as at scale
    "64@8": (2, 64, 8, 1),
    "64@8/2": (2, 64, 8, 2),
}


# (dtype, channels_last, case, form): the GPU's usual case in both forms and strides, and fp32 NCHW
LAYER_RUNS = [
    ("bf16", True, "64@8", "split"),
    ("bf16", True, "64@8/2", "split"),
    ("bf16", True, "64@8", "fused"),
    ("fp32", False, "64@8", "split"),
]


def run_layer(mod, so: Path, dtype: str, channels_last: bool, case: str, form: str) -> list[dict]:
    """Forward + backward of one SHC layer through the emulated CUDA kernels."""
    import torch

    import shc_kernels as shc

    n, d, h, s = LAYER_CASES[case]
    dt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, h, h, generator=g).to(dt)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    w = (torch.randn(d, d, 3, 3, generator=g) * 0.05).to(dt).requires_grad_(True)
    b = torch.zeros(d, dtype=dt, requires_grad=True)
    f1w = (torch.randn(d // 2, 2 * d, generator=g) * 0.1).requires_grad_(True)
    f1b = torch.zeros(d // 2, requires_grad=True)
    f2w = (torch.randn(9, d // 2, generator=g) * 0.1).requires_grad_(True)
    f2b = torch.zeros(9, requires_grad=True)
    mod.reset_access_metrics()
    with _forced_form(form):
        y = shc.shc_conv2d(x, w, b, f1w, f1b, f2w, f2b, stride=s, padding=1, backend="cuda_sim")
        y.float().square().sum().backward()
    return site_rows(mod, so)


@contextlib.contextmanager
def _forced_form(form: str):
    """SHC_FORM=form (the package's switch for the split or one-launch form) inside the block."""
    old = os.environ.get("SHC_FORM")
    os.environ["SHC_FORM"] = form
    try:
        yield
    finally:
        if old is None:
            del os.environ["SHC_FORM"]
        else:
            os.environ["SHC_FORM"] = old


def kernel_table(rows: list[dict]) -> list[dict]:
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["kernel"], []).append(r)
    out = []
    for k, rs in sorted(by.items()):
        worst = sorted(
            (r for r in rs if r["requests"]),
            key=lambda r: -(r["sectors"] + r["wavefronts"] - r["ideal"]),
        )[:3]
        out.append(
            dict(
                kernel=k,
                **summarise(rs),
                worst=[
                    dict(
                        site=f"{r['file']}:{r['line']}",
                        space=r["space"],
                        store=r["store"],
                        size=r["size"],
                        requests=r["requests"],
                        per_request=round((r["sectors"] + r["wavefronts"]) / r["requests"], 2),
                        ideal=round(r["ideal"] / r["requests"], 2),
                    )
                    for r in worst
                ],
            )
        )
    return out


PATTERNS = [  # (kind, stride, space, what a profiler reports per request)
    ("copy_f32", 1, "global", 4),
    ("copy_f32", 32, "global", 32),
    ("copy_f32", 2, "global", 8),
    ("copy_f16", 1, "global", 2),
    ("copy_f32x4", 1, "global", 16),
    ("shared_f32", 1, "shared", 1),
    ("shared_f32", 2, "shared", 2),
    ("shared_f32", 32, "shared", 32),
    ("shared_f32", 33, "shared", 1),
    ("shared_f32", 0, "shared", 1),
    ("shared_f32x4", 1, "shared", 4),
    ("shared_f32x4", 2, "shared", 8),
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--force", action="store_true", help="rebuild the metrics variant")
    ap.add_argument(
        "--patterns-only", action="store_true", help="only the planted patterns (the emulator's test)"
    )
    ap.add_argument(
        "--runs", nargs="+", metavar="DTYPE:LAYOUT:CASE:FORM",
        help="only these layer runs (e.g. fp32:nchw:64@8:split; default: all of LAYER_RUNS)",
    )  # fmt: skip
    a = ap.parse_args(argv)
    names = {f"{d}:{'cl' if cl else 'nchw'}:{c}:{f}": (d, cl, c, f) for d, cl, c, f in LAYER_RUNS}
    if a.runs and not set(a.runs) <= set(names):
        ap.error(f"--runs: unknown {sorted(set(a.runs) - set(names))}; known: {sorted(names)}")
    layer_runs = [names[r] for r in a.runs] if a.runs else LAYER_RUNS
    so = build(a.force)
    mod = load(so)
    t0 = time.time()
    patterns = []
    for kind, stride, space, want in PATTERNS:
        rows = [r for r in run_pattern(mod, so, kind, stride) if r["space"] == space and not r["store"]]
        s = summarise(rows)[f"{space}_ld"]
        patterns.append(dict(kind=kind, stride=stride, space=space, expected=want, got=s["per_request"]))
    runs = []
    for dtype, cl, case, form in [] if a.patterns_only else layer_runs:
        rows = run_layer(mod, so, dtype, cl, case, form)
        runs.append(
            dict(dtype=dtype, layout="cl" if cl else "nchw", case=case, form=form, kernels=kernel_table(rows))
        )
    report = dict(
        note="emulated addresses of csrc/cuda's kernels grouped as warp-wide requests; not nvcc's code, "
        "not a timing",
        seconds=round(time.time() - t0, 1),
        patterns=patterns,
        runs=runs,
    )
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1) + "\n")
    for p in patterns:
        print(
            f"pattern {p['kind']:13} stride {p['stride']:2}: {p['space']} {p['got']} per request "
            f"(a profiler: {p['expected']})"
        )
    for r in runs:
        for k in r["kernels"]:
            gl, sl = k["global_ld"], k["shared_ld"]
            print(
                f"{r['dtype']} {r['layout']:4} {r['case']:6} {r['form']:5} {k['kernel']:24} "
                f"global ld {gl['per_request']} (ideal {gl['ideal_per_request']})  "
                f"shared ld {sl['per_request']} (ideal {sl['ideal_per_request']})"
            )
    bad = [p for p in patterns if p["got"] != p["expected"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
