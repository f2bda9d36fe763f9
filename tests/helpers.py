"""Shared test helpers: random SHC parameters, the backends under test, tolerances."""

from __future__ import annotations

import torch

import shc_kernels as shc

# Compiled backends that run on CPU tensors here (the GPU ones are tested in tests/gpu).
CPU_BACKENDS = [b for b in shc.available_backends() if b == "cpu"]
ROUTES = ("both", "conv", "hyper")


def make_params(d, c, kh, kw, groups=1, bias=True, hidden=None, dtype=torch.float64, seed=0):
    """weight, bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias with a non-trivial map."""
    g = torch.Generator().manual_seed(seed)
    k = max(1, d // 2) if hidden is None else hidden

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    weight = r(c, d // groups, kh, kw, scale=0.3)
    b = r(c) if bias else None
    return weight, b, r(k, 2 * d, scale=0.5), r(k), r(kh * kw, k, scale=0.5), r(kh * kw)


def rand_x(n, d, h, w, dtype=torch.float64, seed=1, channels_last=False):
    g = torch.Generator().manual_seed(seed)
    # Channels with different means and scales, so the statistics matter.
    x = torch.randn(n, d, h, w, generator=g, dtype=torch.float64)
    x = x * torch.linspace(0.5, 2.0, d, dtype=torch.float64)[None, :, None, None]
    x = (x + torch.linspace(-1.0, 1.0, d, dtype=torch.float64)[None, :, None, None]).to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def tol(dtype):
    return {
        torch.float64: dict(rtol=1e-9, atol=1e-9),
        torch.float32: dict(rtol=2e-4, atol=2e-4),
        torch.float16: dict(rtol=2e-2, atol=2e-2),
        torch.bfloat16: dict(rtol=5e-2, atol=5e-2),
    }[dtype]


def run_layer(fn, x, params, **kw):
    """Forward + backward with a fixed upstream gradient; returns y and every gradient."""
    x = x.detach().clone().requires_grad_(True)
    params = [None if p is None else p.detach().clone().requires_grad_(True) for p in params]
    y = fn(x, *params, **kw)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    y.backward(gy.to(y.dtype))
    grads = [x.grad] + [None if p is None else p.grad for p in params]
    return y.detach(), grads
