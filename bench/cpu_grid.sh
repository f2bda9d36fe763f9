#!/usr/bin/env bash
# Issue 16's CPU measurements in one run, written to bench/results/*_TAG*:
#   bash bench/cpu_grid.sh TAG [--no-small]
# - the grid: every 3x3 layer of Plain-10, ResNet-18 and ResNet-50 at widths 1/4, 1/2, 1 on 28, 32,
#   64 and 224 px (`--shapes grid`), batch 32 and 128, 5 repetitions, the functional call against
#   F.conv2d and (since 2026-12-06, --modules) SHCConv2d against nn.Conv2d;
# - the core ImageNet shapes, with peak memory;
# - the training steps the issue names (Plain-10 and ResNet-18, width 1/4, 28 px, batch 128);
# - the methods' A/B of the modulated conv alone (bench/ab_methods.py), on this CPU's widest ISA
#   and with oneDNN, MKL and the direct kernel capped at AVX2 (a CPU without AVX-512);
# - unless --no-small, the small family on two threads, wall clock (both forms since 2026-12-06).
# One thread and CPU time unless said: only ratios measured in the same run are quoted. Run it from
# a checkout whose compiled extension is not rebuilt meanwhile (a git worktree with its own copy).
# Tags 2026-12-04 and 2026-12-04b (with --no-small), 2026-12-04c to 2026-12-04f were taken with
# these commands less --modules (cpu_grid_2026-12-04.sh runs them under its tag), 2026-12-06 to
# 2026-12-07 with them; cpu_grid_2026-12-03.sh is the earlier run's own script.
set -euo pipefail
D=${1:?usage: bash bench/cpu_grid.sh TAG [--no-small]}
SMALL=1
[[ ${2:-} == --no-small ]] && SMALL=0
cd "$(dirname "$0")/.."
R=bench/results
SHC=(.venv/bin/python -m shc_kernels bench --warmup 1)
uptime
for b in 32 128; do
  "${SHC[@]}" --threads 1 --clock thread --shapes grid --methods plain shc:cpu --modules --batch $b --reps 5 \
    --no-memory --json $R/cpu_grid_b${b}_1t_$D.json --markdown $R/cpu_grid_b${b}_1t_$D.md
done
for b in 32 128; do
  "${SHC[@]}" --threads 1 --clock thread --shapes core --methods plain shc:cpu --batch $b --reps 3 \
    --json $R/cpu_core_b${b}_1t_$D.json --markdown $R/cpu_core_b${b}_1t_$D.md
done
for model in plain10 resnet18; do
  "${SHC[@]}" --threads 1 --model $model --width 0.25 --image-size 28 --num-classes 10 --batch 128 --reps 7 \
    --json $R/cpu_${model}_w0.25_28px_b128_1t_$D.json --markdown $R/cpu_${model}_w0.25_28px_b128_1t_$D.md
done
for b in 128 32; do  # the modulated conv alone: each method and auto against F.conv2d
  .venv/bin/python bench/ab_methods.py --batch $b --reps 5 --markdown $R/cpu_methods_ab_b${b}_$D.md
done
ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 SHC_CPU_DIRECT_ISA=avx2 \
  .venv/bin/python bench/ab_methods.py --batch 32 --reps 5 --markdown $R/cpu_methods_ab_b32_avx2_$D.md
if ((SMALL)); then
  for b in 128 32; do  # two threads, wall clock
    "${SHC[@]}" --threads 2 --shapes small --methods plain shc:cpu --modules --batch $b --reps 5 --no-memory \
      --json $R/cpu_small_b${b}_2t_$D.json --markdown $R/cpu_small_b${b}_2t_$D.md
  done
fi
uptime
