"""A/B of two builds of the CPU kernel at op level: shc::modulated_conv2d forward, and forward +
modulated_conv2d_backward (dx, dW, dm), each against F.conv2d of the same shape (forward, and
forward + backward for x and W), timed round-robin in one process with one thread, by the
thread's CPU time (the machine is shared: wall clock there measures the other jobs).

    .venv/bin/python bench/ab_cpu_kernel.py OLD_LIB.so OLD_NAMESPACE CIN,COUT,HW,STRIDE,N ...

OLD_LIB.so is an older csrc/cpu built with its ops registered under OLD_NAMESPACE
(e.g. `sed 's/TORCH_LIBRARY_IMPL(shc,/TORCH_LIBRARY_IMPL(shcold,/'` on csrc/cpu/register.cpp and on
csrc/shc.cpp's TORCH_LIBRARY, compiled with torch.utils.cpp_extension.load(..., is_python_module=False));
"new" is the built shc_kernels._C.
"""

from __future__ import annotations

import sys
import time

import torch
import torch.nn.functional as F

import shc_kernels  # noqa: F401  (registers torch.ops.shc)


def tmin(fns, reps=7, warmup=1):
    for f in fns.values():
        for _ in range(warmup):
            f()
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t0 = time.thread_time()
            f()
            times[k].append((time.thread_time() - t0) * 1e3)
    return {k: min(v) for k, v in times.items()}


def ratios(spec: str, old_ops) -> list[float]:
    """[fwd old, fwd new, fwd+bwd old, fwd+bwd new] over plain, for CIN,COUT,HW,STRIDE,N."""
    cin, cout, hw, s, n = (int(v) for v in spec.split(","))
    x, w, m = torch.randn(n, cin, hw, hw), torch.randn(cout, cin, 3, 3), torch.rand(n, 3, 3)
    conf = ([s, s], [1, 1], [1, 1], 1)
    gy = torch.randn_like(F.conv2d(x, w, None, s, 1))
    xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
    fns = {
        "plain.f": lambda: F.conv2d(x, w, None, s, 1),
        "plain.fb": lambda: torch.autograd.grad(F.conv2d(xg, wg, None, s, 1), (xg, wg), gy),
    }
    for name, ops in (("old", old_ops), ("new", torch.ops.shc)):
        fns[name + ".f"] = lambda ops=ops: ops.modulated_conv2d(x, w, m, None, *conf)
        fns[name + ".fb"] = lambda ops=ops: (
            ops.modulated_conv2d(x, w, m, None, *conf),
            ops.modulated_conv2d_backward(gy, x, w, m, *conf, [True, True, True]),
        )
    r = tmin(fns)
    return [r[k] / r["plain." + k.split(".")[1]] for k in ("old.f", "new.f", "old.fb", "new.fb")]


def main(argv):
    lib, namespace, specs = argv[0], argv[1], argv[2:]
    torch.ops.load_library(lib)
    torch.set_num_threads(1)
    print(
        "| shape (C_in>C_out@HW/stride N) | fwd old / plain | fwd new / plain "
        "| fwd+bwd old / plain | fwd+bwd new / plain |"
    )
    print("|---|---|---|---|---|")
    for spec in specs:
        cin, cout, hw, s, n = spec.split(",")
        cells = " | ".join(f"{v:.2f}" for v in ratios(spec, getattr(torch.ops, namespace)))
        print(f"| {cin}>{cout}@{hw}/{s} N{n} | {cells} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
