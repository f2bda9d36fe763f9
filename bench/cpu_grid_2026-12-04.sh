#!/usr/bin/env bash
# Issue 16, session 10: the grid of 2026-12-03 (every 3x3 layer of Plain-10, ResNet-18 and
# ResNet-50 at widths 1/4, 1/2, 1 on 28, 32, 64 and 224 px, `--shapes grid`, batch 32 and 128)
# after the direct method, with glibc malloc kept steady (`shc bench` does it since 98502f5: the
# 2026-12-03 tables were timed before it); the core ImageNet shapes with peak memory; the training
# steps the issue names; the methods' A/B of the modulated conv alone, on this CPU's widest ISA
# (AVX-512 here) and with oneDNN, MKL and the direct kernel capped at AVX2 (the ISA of a CPU
# without AVX-512). One thread, CPU time: only ratios measured in the same run are quoted. The
# grid takes 5 repetitions (3 before): single small layers moved by +-0.1 between 3-rep runs.
# The same commands are now bench/cpu_grid.sh; this runs them under this run's tag.
exec bash "$(dirname "$0")/cpu_grid.sh" 2026-12-04 --no-small
