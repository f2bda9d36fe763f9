#!/usr/bin/env bash
# The CPU record in one run: every series bench/README.md lists under "cpu_grid.sh", written to
# bench/results/<series>.md/.json, overwriting the previous run (git keeps the history).
#   bash bench/cpu_grid.sh [--no-small]        # the grid alone times ~20 min of calls on 2 cores
#   RESULTS=/tmp/try bash bench/cpu_grid.sh    # somewhere else, e.g. to compare before committing
# - the grid: every 3x3 layer of Plain-10, ResNet-18 and ResNet-50 at widths 1/4, 1/2, 1 on 28, 32,
#   64 and 224 px (`--shapes grid`, 98 layers), batch 32 and 128, 5 repetitions, the functional call
#   against F.conv2d and SHCConv2d against nn.Conv2d (--modules);
# - the core ImageNet shapes, with peak memory;
# - the training steps (Plain-10 and ResNet-18, width 1/4, 28 px, batch 128);
# - the methods' A/B of the modulated conv alone (bench/ab_methods.py), on this CPU's widest ISA
#   and with oneDNN, MKL and the direct kernel capped at AVX2 (a CPU without AVX-512);
# - unless --no-small, the small family on two threads, wall clock, both forms.
# One thread and CPU time unless said: quote only ratios measured in the same run. Run it from a
# checkout whose compiled extension is not rebuilt meanwhile (a git worktree with its own build).
set -euo pipefail
SMALL=1
case ${1:-} in
  "") ;;
  --no-small) SMALL=0 ;;
  *) echo "usage: [RESULTS=DIR] bash bench/cpu_grid.sh [--no-small]" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
R=${RESULTS:-bench/results}
mkdir -p "$R"
SHC=(.venv/bin/python -m shc_kernels bench --warmup 1)
uptime
for b in 32 128; do
  "${SHC[@]}" --threads 1 --clock thread --shapes grid --methods plain shc:cpu --modules --batch $b --reps 5 \
    --no-memory --json "$R/cpu_grid_b${b}_1t.json" --markdown "$R/cpu_grid_b${b}_1t.md"
done
for b in 32 128; do
  "${SHC[@]}" --threads 1 --clock thread --shapes core --methods plain shc:cpu --batch $b --reps 3 \
    --json "$R/cpu_core_b${b}_1t.json" --markdown "$R/cpu_core_b${b}_1t.md"
done
for model in plain10 resnet18; do
  "${SHC[@]}" --threads 1 --model $model --width 0.25 --image-size 28 --num-classes 10 --batch 128 --reps 7 \
    --json "$R/cpu_${model}_w0.25_28px_b128_1t.json" --markdown "$R/cpu_${model}_w0.25_28px_b128_1t.md"
done
for b in 128 32; do  # the modulated conv alone: each method and auto against F.conv2d
  .venv/bin/python bench/ab_methods.py --batch $b --reps 5 --markdown "$R/cpu_methods_ab_b${b}.md"
done
ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 SHC_CPU_DIRECT_ISA=avx2 \
  .venv/bin/python bench/ab_methods.py --batch 32 --reps 5 --markdown "$R/cpu_methods_ab_b32_avx2.md"
if ((SMALL)); then
  for b in 128 32; do  # two threads, wall clock
    "${SHC[@]}" --threads 2 --shapes small --methods plain shc:cpu --modules --batch $b --reps 5 --no-memory \
      --json "$R/cpu_small_b${b}_2t.json" --markdown "$R/cpu_small_b${b}_2t.md"
  done
fi
uptime
