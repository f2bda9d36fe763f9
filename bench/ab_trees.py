"""SHCConv2d against nn.Conv2d, one thread, CPU time, through the public API only, so it runs
against any checkout of the package (before or after a move of its modules). Run it once per tree,
alternating trees, and compare the per-shape ratios:

    for r in 1 2 3; do for w in old new; do
      PYTHONPATH=/path/to/$w python bench/ab_trees.py
    done; done

Each shape (D > C @ HxW / stride, batch 32, 3x3, padding 1): the median of 9 paired ratios
(SHCConv2d time / nn.Conv2d time, timed back to back), forward (no_grad) and forward+backward.
"""

from __future__ import annotations

import json
import statistics
import time

import torch

import shc_kernels as shc

SHAPES = [(32, 32, 14, 1), (64, 64, 28, 1), (128, 128, 14, 1), (256, 256, 7, 1), (64, 128, 28, 2)]


def _cpu_time(step, module) -> float:
    start = time.thread_time()
    step(module)
    return time.thread_time() - start


def _ratios(layer, conv, x, pairs: int) -> list[float]:
    xg = x.clone().requires_grad_()

    def fwd(m):
        with torch.no_grad():
            m(x)

    def fwdbwd(m):
        m(xg).sum().backward()

    out = []
    for step in (fwd, fwdbwd):
        for _ in range(2):  # warm-up: the layer's plan, the allocator
            step(layer), step(conv)
        paired = [_cpu_time(step, layer) / _cpu_time(step, conv) for _ in range(pairs)]
        out.append(round(statistics.median(paired), 3))
    return out


def main(batch: int = 32, pairs: int = 9) -> dict:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    out = {"package": shc.__file__}
    for cin, cout, hw, stride in SHAPES:
        x = torch.randn(batch, cin, hw, hw)
        conv = torch.nn.Conv2d(cin, cout, 3, stride, 1)
        layer = shc.SHCConv2d(cin, cout, 3, stride, 1)
        out[f"{cin}>{cout}@{hw}/{stride}"] = _ratios(layer, conv, x, pairs)
    return out

if __name__ == "__main__":
    print(json.dumps(main()))
