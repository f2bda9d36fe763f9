#!/usr/bin/env bash
# Issue 16, session 5: the small-image / narrow-network tables after the shift method for
# stride-1 3x3 convs (bench/ab_shift.py, now bench/ab_methods.py, has the method A/B). Quiet 2-core machine (check uptime).
set -euo pipefail
cd "$(dirname "$0")/.."
R=bench/results
D=2026-12-02
SHC=(.venv/bin/python -m shc_kernels bench --warmup 1)
uptime
for b in 128 32; do
  "${SHC[@]}" --threads 1 --clock thread --shapes small --methods plain shc:cpu --batch $b --reps 5 --no-memory \
    --json $R/cpu_small_b${b}_1t_$D.json --markdown $R/cpu_small_b${b}_1t_$D.md
done
for model in plain10 resnet18; do
  "${SHC[@]}" --threads 2 --model $model --width 0.25 --image-size 28 --num-classes 10 --batch 128 --reps 5 \
    --json $R/cpu_${model}_w0.25_28px_b128_2t_$D.json --markdown $R/cpu_${model}_w0.25_28px_b128_2t_$D.md
done
"${SHC[@]}" --threads 2 --shapes core --methods plain shc:cpu --batch 32 --reps 5 \
  --json $R/cpu_core_2t_$D.json --markdown $R/cpu_core_2t_$D.md
uptime
