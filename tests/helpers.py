"""Shared test helpers: random SHC parameters, the backends under test, tolerances."""

from __future__ import annotations

import contextlib
import os

import torch
from hypothesis import strategies as st

import shc_kernels as shc

# Compiled backends that run on CPU tensors here (the GPU ones are tested in tests/gpu).
CPU_BACKENDS = [b for b in shc.available_backends() if b == "cpu"]
ROUTES = ("both", "conv", "hyper")
FORMS = ("fused", "split")  # how a compiled backend computes the layer (functional.plan)


@contextlib.contextmanager
def forced_form(form):
    """SHC_FORM=form inside the block (usable where pytest's monkeypatch is not: hypothesis)."""
    old = os.environ.get("SHC_FORM")
    os.environ["SHC_FORM"] = form
    try:
        yield
    finally:
        if old is None:
            del os.environ["SHC_FORM"]
        else:
            os.environ["SHC_FORM"] = old


def make_params(d, c, kh, kw, groups=1, bias=True, hidden=None, dtype=torch.float64, seed=0):
    """weight, bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias with a non-trivial map: fc1's
    bias is positive (|N(0, 1)| + 1), so on rand_x's statistics the relu passes some hidden
    units and the hypernetwork route carries gradient. (With a plain N(0, 1) bias, d = 4 at seed 0
    left every unit dead: m constant, the hypernetwork route of dx and fc1's gradients exactly 0,
    and every test on those parameters blind to them; tests/test_reference.py checks it stays so.)"""
    g = torch.Generator().manual_seed(seed)
    k = max(1, d // 2) if hidden is None else hidden

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    weight = r(c, d // groups, kh, kw, scale=0.3)
    b = r(c) if bias else None
    fc1_weight, fc1_bias = r(k, 2 * d, scale=0.5), (r(k).abs() + 1.0).to(dtype)
    return weight, b, fc1_weight, fc1_bias, r(kh * kw, k, scale=0.5), r(kh * kw)


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
    y.backward(gy.to(y.device, y.dtype))
    grads = [x.grad] + [None if p is None else p.grad for p in params]
    return y.detach(), grads


def layer_shapes(max_n=4, max_per_group=20, max_hw=17):
    """Hypothesis strategy for one SHC layer's configuration (the foundation issue's ranges by
    default); ``fits(s)`` tells whether its output is non-empty."""
    return st.fixed_dictionaries(
        dict(
            n=st.integers(0, max_n),
            groups=st.sampled_from([1, 2]),
            d_per_group=st.integers(1, max_per_group),
            c_per_group=st.integers(1, max_per_group),
            h=st.integers(1, max_hw),
            w=st.integers(1, max_hw),
            k=st.sampled_from([(1, 1), (3, 3), (5, 5), (3, 1)]),
            stride=st.sampled_from([1, 2]),
            padding=st.sampled_from([0, 1, 2]),
            dilation=st.sampled_from([1, 2]),
            bias=st.booleans(),
            route=st.sampled_from(ROUTES),
            channels_last=st.booleans(),
        )
    )


def fits(s) -> bool:
    k = s["k"]
    return (
        s["h"] + 2 * s["padding"] - s["dilation"] * (k[0] - 1) >= 1
        and s["w"] + 2 * s["padding"] - s["dilation"] * (k[1] - 1) >= 1
    )


def compare_with_reference(backend, dtype, s, seed=0):
    """Forward and every gradient of shc_conv2d on ``backend`` against the reference for one drawn
    configuration ``s``; returns the backend's output."""
    groups = s["groups"]
    d, c = s["d_per_group"] * groups, s["c_per_group"] * groups
    params = make_params(d, c, *s["k"], groups=groups, bias=s["bias"], dtype=dtype, seed=seed)
    x = rand_x(s["n"], d, s["h"], s["w"], dtype=dtype, seed=seed + 1, channels_last=s["channels_last"])
    conf = dict(stride=s["stride"], padding=s["padding"], dilation=s["dilation"], groups=groups,
                grad_route=s["route"])  # fmt: skip
    import shc_kernels as shc

    y_ref, g_ref = run_layer(shc.shc_conv2d, x, params, backend="reference", **conf)
    y, g = run_layer(shc.shc_conv2d, x, params, backend=backend, **conf)
    assert y.dtype == y_ref.dtype and y.shape == y_ref.shape
    torch.testing.assert_close(y, y_ref, **tol(dtype))
    names = ["x", "weight", "bias", "fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias"]
    for name, a, b in zip(names, g, g_ref, strict=True):
        assert (a is None) == (b is None), name
        if a is not None:
            torch.testing.assert_close(a, b, **tol(dtype), msg=lambda m, name=name: f"grad {name}: {m}")
    return y


def layer_grads(layer, x, seed=2):
    """[y, dx, d weight, d bias, d of each hypernetwork parameter] of a module layer for one upstream
    gradient dy, drawn in fp64 whatever y's dtype (seeded), so that a run and its fp64 reference see
    the same dy."""
    x = x.detach().clone().requires_grad_(True)
    params = [x, layer.weight, layer.bias, *layer.hyper.parameters()]
    y = layer(x)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return [y.detach(), *torch.autograd.grad(y, params, dy.to(y.dtype))]


def layer_matches_reference(layer, x, dtype, seed=2):
    """y and every gradient of ``layer`` (its backend as set) against the reference backend's in fp64
    (the layer is left as fp64 on the reference), each in ``dtype``; returns the run's
    [y, grads...]."""
    got = layer_grads(layer, x, seed)
    layer.backend = "reference"
    want = layer_grads(layer.double(), x.double(), seed)
    tol = dict(rtol=2e-4, atol=2e-4) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-9)
    names = ["y", "x", "weight", "bias", *(n for n, _ in layer.hyper.named_parameters())]
    for name, a, b in zip(names, got, want, strict=True):
        assert a.dtype == dtype, name
        torch.testing.assert_close(a.double(), b, **tol, msg=lambda s, name=name: f"{name}: {s}")
    return got
