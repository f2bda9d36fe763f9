"""The layer against F.conv2d on a few shapes, one thread, CPU time: run it once per build (a
worktree with its own compiled extension, through PYTHONPATH), alternating builds, to tell a
change in the code from a change in the machine.

    for r in 1 2 3; do for w in old new; do
      PYTHONPATH=/path/to/$w python bench/ab_builds.py 32 32,32,14,1 256,256,14,1
    done; done

Each shape is D,C,H,stride (3x3, padding 1); prints {shape: [forward ratio, fwd+bwd ratio]}, ratios of
the minima over 7 round-robin repetitions (shc_kernels.cli.bench's Timer, inputs and methods).
"""

from __future__ import annotations

import json
import sys

import torch

import shc_kernels
from shc_kernels.cli import bench


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    bench.steady_malloc()
    batch, shapes = int(argv[0]), [tuple(int(v) for v in s.split(",")) for s in argv[1:]]
    out = {"package": shc_kernels.__file__}
    for cin, cout, hw, stride in shapes:
        x, params = bench.make_inputs(cin, cout, hw, batch, "cpu", torch.float32, False)
        calls = bench.closures(bench.method_fns(stride), ("plain", "shc:cpu"), x, params)
        t = bench.Timer("cpu", "thread").interleaved(calls, 1, 7)
        out[f"{cin}>{cout}@{hw}/{stride}"] = [
            round(t[("shc:cpu", mode)][1] / t[("plain", mode)][1], 3) for mode in ("fwd", "fwdbwd")
        ]
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
