#!/usr/bin/env bash
# The whole GPU verification on one GPU machine (GPU.md): build, `shc check --device cuda` (every
# backend, form, dtype, layout and route against the reference), pytest -m gpu, compute-sanitizer,
# benchmark tables. Installs nothing from the network; builds against the torch it finds.
#   bash bench/gpu_check.sh            # results under $OUT if set, else bench/results/
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
OUTDIR="${OUT:-bench/results}"
mkdir -p "$OUTDIR"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export MAX_JOBS="${MAX_JOBS:-16}"
unset TRITON_INTERPRET
failed=()
step() { echo; echo "=== $* ($(date +%T))"; }

step "0. machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'gpu', torch.cuda.get_device_name())"

step "1. build the extension (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)"
if ! timeout 300 "$PY" -m pip install --no-build-isolation --no-deps -e . > "$OUTDIR/build.log" 2>&1; then
    echo "pip install -e . failed (log: $OUTDIR/build.log); trying setup.py build_ext --inplace"
    timeout 300 "$PY" setup.py build_ext --inplace >> "$OUTDIR/build.log" 2>&1 || failed+=("build")
fi
tail -n 3 "$OUTDIR/build.log"
"$PY" -c "import shc_kernels as s; print('available backends:', s.available_backends())" || failed+=("import")
# Results are named by GPU and date (GPU.md).
stem="$("$PY" -c 'import re, torch; print(re.sub(r"[^A-Za-z0-9]+", "-", torch.cuda.get_device_name()).strip("-"))')_$(date +%F)"

step "1b. shc check --device cuda: every backend and form x dtype x layout x route against the reference"
# Forward and every gradient on small odd shapes and ResNet-50's 3x3 shapes (batch 2); the table
# goes to check_cuda_*.log, every row to check_cuda_*.json; a FAIL row fails this script.
timeout 300 "$PY" -m shc_kernels check --device cuda --json "$OUTDIR/check_cuda_${stem}.json" \
    > "$OUTDIR/check_cuda_${stem}.log" 2>&1 || failed+=("shc-check")
grep -E "FAIL|^shc check" "$OUTDIR/check_cuda_${stem}.log" | tail -n 20

step "2. pytest -m gpu tests/gpu"
timeout 300 "$PY" -m pytest -q -m gpu tests/gpu -p no:cacheprovider 2>&1 | tee "$OUTDIR/pytest_gpu.log" | tail -n 25
[ "${PIPESTATUS[0]}" -eq 0 ] || failed+=("pytest-gpu")

step "3. compute-sanitizer (memcheck) over a small forward+backward of the CUDA backend"
SANITIZE_PY='
import os, torch, shc_kernels as shc
torch.manual_seed(0)
for form in ("fused", "split"):  # one launch, two launches
    os.environ["SHC_FORM"] = form
    for cl in (False, True):
        layer = shc.SHCConv2d(8, 12, 3, stride=2, padding=1, groups=2, backend="cuda").cuda()
        x = torch.randn(3, 8, 11, 9, device="cuda", requires_grad=True)
        if cl:
            x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)
        layer(x).square().sum().backward()
torch.cuda.synchronize()
print("sanitizer run done")
'
if "$PY" -c "import shc_kernels as s, sys; sys.exit(0 if 'cuda' in s.available_backends() else 1)"; then
    if command -v compute-sanitizer > /dev/null; then
        timeout 180 compute-sanitizer --tool memcheck --error-exitcode 1 "$PY" -c "$SANITIZE_PY" \
            > "$OUTDIR/sanitizer.log" 2>&1 || failed+=("compute-sanitizer")
        tail -n 5 "$OUTDIR/sanitizer.log"
    else
        echo "compute-sanitizer not found: skipped"; failed+=("compute-sanitizer-missing")
    fi
else
    echo "skipped: the cuda backend is not available in this build (no CUDA kernels compiled)"
fi

step "4. benchmark: ResNet-50 3x3 convs, batch 256, bf16, channels_last"
# --forms also times the cuda backend's one-launch (shc:cuda:fused) and two-launch (shc:cuda:split)
# forms apart: the trade-off table of the one-launch forward.
# The command line is written into each table.
timeout 300 "$PY" -m shc_kernels bench --device cuda --dtype bfloat16 --channels-last --shapes resnet50 --forms \
    --json "$OUTDIR/gpu_resnet50_${stem}.json" --markdown "$OUTDIR/gpu_resnet50_${stem}.md" || failed+=("bench")
step "5. training throughput: SHC-ResNet-50 against ResNet-50, batch 256, bf16, channels_last"
timeout 200 "$PY" -m shc_kernels bench --device cuda --dtype bfloat16 --channels-last --model resnet50 \
    --json "$OUTDIR/gpu_train_resnet50_${stem}.json" --markdown "$OUTDIR/gpu_train_resnet50_${stem}.md" \
    || failed+=("bench-model")

step "6. Triton one-launch forward against the separate launches (outputs and times; a hang fails)"
timeout 240 "$PY" bench/onelaunch_check.py --markdown "$OUTDIR/gpu_onelaunch_${stem}.md" \
    || failed+=("onelaunch")

echo
if [ "${#failed[@]}" -gt 0 ]; then
    echo "gpu_check FAILED: ${failed[*]}"
    exit 1
fi
echo "gpu_check passed; results under $OUTDIR"
