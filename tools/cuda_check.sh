#!/usr/bin/env bash
# Build the CUDA extension on a machine without a GPU and check it (docs/gpu.md, `make cuda-check`):
#   1. copy the sources into build/cuda-check/src (the in-place CPU build is left alone) and run
#      FORCE_CUDA=1 setup.py build_ext --inplace there for TORCH_CUDA_ARCH_LIST (default "8.0;9.0")
#      with -Xptxas -v;
#   2. print each kernel's registers, shared memory and spills per arch (from ptxas);
#   3. in fresh Python processes: load the built _C (no GPU needed, libcudart etc. must resolve),
#      check _C.cuda_compiled() and that every shc:: op has a CUDA kernel; then import the
#      package from the copy and check the "cuda" backend reports the missing GPU, not a build gap.
# Exits non-zero on any failure. Incremental: a second run only recompiles changed sources.
#   usage: bash tools/cuda_check.sh            (PYTHON=..., MAX_JOBS=..., TORCH_CUDA_ARCH_LIST=...)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
OUT="$ROOT/build/cuda-check"
SRC="$OUT/src"
LOG="$OUT/build.log"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;9.0}"
export MAX_JOBS="${MAX_JOBS:-2}"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
start=$(date +%s)

ls csrc/cuda/*.cu > /dev/null 2>&1 || { echo "cuda_check: no csrc/cuda/*.cu sources" >&2; exit 1; }
"$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.version.cuda else 1)' ||
  { echo "cuda_check: this torch is a CPU-only build; CUDA sources cannot be built against it" >&2; exit 1; }

# 1. The sources into $SRC by content (tools/sync_tree.py): a changed file gets the current time, so
#    ninja rebuilds what depends on it even when it was edited while the previous build ran; an
#    unchanged one keeps its time, so a second run recompiles only what changed.
STAGE="$OUT/stage"
rm -rf "$STAGE"
mkdir -p "$SRC" "$STAGE"
tar -C "$ROOT" --exclude='*.so' --exclude=__pycache__ --exclude=_build_info.py \
  -cf - setup.py pyproject.toml csrc shc_kernels | tar -C "$STAGE" -xf -
"$PYTHON" "$ROOT/tools/sync_tree.py" "$STAGE" "$SRC"
rm -rf "$STAGE"
echo "cuda_check: building in $SRC (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST, MAX_JOBS=$MAX_JOBS)"
if ! (cd "$SRC" && env -u SHC_SKIP_CUDA FORCE_CUDA=1 SHC_PTXAS_VERBOSE=1 \
      "$PYTHON" setup.py build_ext --inplace > "$LOG" 2>&1); then
  grep -E "error|Error" "$LOG" | head -n 40 >&2 || true
  tail -n 20 "$LOG" >&2
  echo "cuda_check: build FAILED (log: $LOG)" >&2
  exit 1
fi
SO="$(ls "$SRC"/shc_kernels/_C*.so)"
echo "cuda_check: built $SO in $(( $(date +%s) - start ))s"

# 2. ptxas resource usage per kernel and arch. Each source's table is kept under
#    build/cuda-check/ptxas/ so an incremental run still prints every kernel.
"$PYTHON" - "$LOG" "$OUT/ptxas" "$ROOT/csrc/cuda" <<'PY'
import json, os, re, subprocess, sys
log, cache, srcdir = sys.argv[1:4]
os.makedirs(cache, exist_ok=True)
fresh, cur, src = {}, None, None
for line in open(log, errors="replace").read().splitlines():
    m = re.search(r"nvcc\b.*\s-c\s+(\S+\.cu)\b", line)
    if m:
        src = os.path.basename(m.group(1))
        fresh[src] = []
        continue
    m = re.search(r"Compiling entry function '(\w+)' for '(sm_\d+)'", line)
    if m and src:
        cur = {"fn": m.group(1), "arch": m.group(2), "regs": "?", "smem": 0, "spill": [0, 0]}
        fresh[src].append(cur)
        continue
    if cur is None:
        continue
    m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
    if m:
        cur["spill"] = [int(m.group(1)), int(m.group(2))]
    m = re.search(r"Used (\d+) registers", line)
    if m:
        cur["regs"] = int(m.group(1))
        s = re.search(r"(\d+) bytes smem", line)
        cur["smem"] = int(s.group(1)) if s else 0
for name, rows in fresh.items():
    json.dump(rows, open(os.path.join(cache, name + ".json"), "w"))
rows = []
for name in sorted(os.listdir(cache)):
    if os.path.exists(os.path.join(srcdir, name[: -len(".json")])):
        rows += [dict(r, src=name[: -len(".json")]) for r in json.load(open(os.path.join(cache, name)))]
if not rows:
    print("cuda_check: no ptxas output recorded")
    sys.exit(1)
names = subprocess.run(["c++filt"], input="\n".join(r["fn"] for r in rows), capture_output=True,
                       text=True).stdout.splitlines()
if len(names) != len(rows):
    names = [r["fn"] for r in rows]
def short(n):
    n = re.sub(r"shc_cuda::(\(anonymous namespace\)::)?", "", n)
    return re.sub(r"\(.*", "", re.sub(r"c10::", "", n))
spills = 0
print(f"{'kernel':<58} {'arch':<6} {'regs':>5} {'smem B':>7} {'spill st/ld B':>14}  source")
for r, n in sorted(zip(rows, names), key=lambda p: (p[0]["src"], short(p[1]), p[0]["arch"])):
    st, ld = r["spill"]
    spills += st + ld
    flag = "  <-- spills" if st + ld else ""
    print(f"{short(n):<58} {r['arch']:<6} {r['regs']:>5} {r['smem']:>7} {f'{st}/{ld}':>14}  {r['src']}{flag}")
print(f"cuda_check: {len(rows)} kernels ({', '.join(sorted(fresh)) or 'none'} recompiled this run); "
      + ("no spills" if not spills else "WARNING: register spills"))
PY

# 3a. The built module, loaded by path in a fresh process (no shc_kernels import, no GPU needed).
"$PYTHON" - "$SO" <<'PY'
import importlib.util, sys
import torch
spec = importlib.util.spec_from_file_location("shc_kernels._C", sys.argv[1])
C = importlib.util.module_from_spec(spec)
spec.loader.exec_module(C)
assert C.cuda_compiled(), "_C.cuda_compiled() is False in the CUDA build"
assert C.built_torch_version() == torch.__version__, (C.built_torch_version(), torch.__version__)
core = ["channel_stats", "channel_stats_backward", "modulated_conv2d", "modulated_conv2d_backward", "shc_conv2d",
        "shc_conv2d_backward"]
ops = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("shc::"))
missing = [f"shc::{n}" for n in core if f"shc::{n}" not in ops]
assert not missing, f"ops not registered: {missing}"
# shc_conv2d_backward is the CPU's one-call backward; on CUDA the layer's backward composes the
# other ops (shc_kernels/ops.py picks it for CPU tensors only). shc_conv2d_grad is that
# composition as an op: Python's CompositeImplicitAutograd kernel, no device kernel anywhere.
cpu_only = {"shc::shc_conv2d_backward", "shc::shc_conv2d_grad"}
no_cuda = [n for n in ops if n not in cpu_only and not torch._C._dispatch_has_kernel_for_dispatch_key(n, "CUDA")]
assert not no_cuda, f"shc ops without a CUDA kernel: {no_cuda}"
no_cpu = [f"shc::{n}" for n in core if not torch._C._dispatch_has_kernel_for_dispatch_key(f"shc::{n}", "CPU")]
assert not no_cpu, f"shc ops without a CPU kernel: {no_cpu}"
# The CPU kernels of the combined library still compute the right thing.
import torch.nn.functional as F
torch.manual_seed(0)
x, w, m, b = torch.randn(2, 4, 7, 6), torch.randn(6, 2, 3, 3), torch.rand(2, 3, 3), torch.randn(6)
args = ([2, 1], [1, 1], [1, 1], 2)
y = torch.ops.shc.modulated_conv2d(x, w, m, b, *args)
ref = torch.stack([F.conv2d(x[n:n + 1], w * m[n], b, *args)[0] for n in range(2)])
assert (y - ref).abs().max().item() < 1e-4, "CPU modulated_conv2d mismatch in the CUDA build"
print(f"cuda_check: _C loads without a GPU; CUDA kernels registered for {', '.join(ops)}")
PY

# 3b. The package from the copy: ops.py registrations load on top, backend "cuda" only lacks a GPU.
(cd "$SRC" && "$PYTHON" - <<'PY'
import os
import torch
import shc_kernels as shc
from shc_kernels import backends, ops
assert os.path.realpath(shc.__file__).startswith(os.path.realpath(os.getcwd())), shc.__file__
assert ops.LOAD_ERROR is None, ops.LOAD_ERROR
assert ops.cuda_compiled(), "ops.cuda_compiled() is False"
reason = backends.unavailable_reason("cuda")
if torch.cuda.is_available():
    assert reason is None, reason
else:
    assert reason == "no CUDA device is available", reason
print(f"cuda_check: package imports; backends here: {shc.available_backends()}; cuda: {reason or 'available'}")
PY
)
echo "cuda_check: OK in $(( $(date +%s) - start ))s"
