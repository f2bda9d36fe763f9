#!/usr/bin/env bash
# Issue 16, session 4: the small-image / narrow-network tables after the one-call CPU backward
# (shc::shc_conv2d_backward) and the per-call check cache. Run on the 2-core machine with nothing
# else running (check `uptime` first): two threads by wall clock, then one thread by CPU time
# (comparable with cpu_small_*_2026-11-25.md, measured while the machine was shared).
set -euo pipefail
cd "$(dirname "$0")/.."
R=bench/results
D=2026-11-25c
SHC=(.venv/bin/python -m shc_kernels bench --warmup 1)
uptime
for b in 128 32; do
  "${SHC[@]}" --threads 2 --shapes small --methods plain shc:cpu --batch $b --reps 7 --no-memory \
    --json $R/cpu_small_b${b}_2t_$D.json --markdown $R/cpu_small_b${b}_2t_$D.md
  "${SHC[@]}" --threads 1 --clock thread --shapes small --methods plain shc:cpu --batch $b --reps 5 --no-memory \
    --json $R/cpu_small_b${b}_1t_$D.json --markdown $R/cpu_small_b${b}_1t_$D.md
done
for fam in small64 narrow224; do
  "${SHC[@]}" --threads 2 --shapes $fam --methods plain shc:cpu --batch 32 --reps 5 --no-memory \
    --json $R/cpu_${fam}_b32_2t_$D.json --markdown $R/cpu_${fam}_b32_2t_$D.md
done
"${SHC[@]}" --threads 2 --shapes core --methods plain shc:cpu --batch 32 --reps 5 \
  --json $R/cpu_core_2t_$D.json --markdown $R/cpu_core_2t_$D.md
for model in plain10 resnet18; do
  "${SHC[@]}" --threads 2 --model $model --width 0.25 --image-size 28 --num-classes 10 --batch 128 --reps 5 \
    --json $R/cpu_${model}_w0.25_28px_b128_2t_$D.json --markdown $R/cpu_${model}_w0.25_28px_b128_2t_$D.md
done
uptime
