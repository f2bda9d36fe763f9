#!/usr/bin/env bash
# The measurements behind bench/results/cpu_small_*, cpu_core_2026-11-25b.*, cpu_plain10_w0.25_* and
# cpu_resnet18_w0.25_* (issue 16: small images, narrow networks). Each command times plain F.conv2d and shc.shc_conv2d round-robin in one process.
# The machine was shared with other jobs (load 10-13 on 2 cores): wall-clock ratios swung from
# 0.4x to 26x between repetitions, so these use --clock thread (CPU time of one thread).
set -euo pipefail
cd "$(dirname "$0")/.."
R=bench/results
SHC=(.venv/bin/python -m shc_kernels bench --threads 1 --clock thread --warmup 1)
"${SHC[@]}" --shapes small --methods plain shc:cpu --batch 128 --reps 5 --no-memory \
  --json $R/cpu_small_b128_2026-11-25.json --markdown $R/cpu_small_b128_2026-11-25.md
"${SHC[@]}" --shapes core --methods plain shc:cpu --batch 32 --reps 5 \
  --json $R/cpu_core_2026-11-25b.json --markdown $R/cpu_core_2026-11-25b.md
for model in plain10 resnet18; do
  "${SHC[@]}" --model $model --width 0.25 --image-size 28 --num-classes 10 --batch 128 --reps 3 \
    --json $R/cpu_${model}_w0.25_28px_b128_2026-11-25.json --markdown $R/cpu_${model}_w0.25_28px_b128_2026-11-25.md
done
"${SHC[@]}" --shapes small --methods plain shc:cpu --batch 128 --reps 5 --no-memory \
  --json $R/cpu_small_b128_run2_2026-11-25.json --markdown $R/cpu_small_b128_run2_2026-11-25.md
"${SHC[@]}" --shapes small --methods plain shc:cpu --batch 32 --reps 5 --no-memory \
  --json $R/cpu_small_b32_2026-11-25.json --markdown $R/cpu_small_b32_2026-11-25.md
