"""The functional API: validate, pick a backend, call it. The math is in reference.py."""

from __future__ import annotations

import os

import torch

from . import backends, reference
from ._checks import (
    check_conv_args,
    check_grad_route,
    check_layer_conv_args,
    check_map_args,
    route_inputs,
    stats_dtype,
)

__all__ = ["statistical_map", "modulated_conv2d", "shc_conv2d"]


def _layout_ok(x: torch.Tensor) -> torch.Tensor:
    """The kernels take NCHW or channels_last; anything else is copied to NCHW first."""
    if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last):
        return x
    return x.contiguous()


def _timing_key(x, weight, bias, hyper_params, stride, padding, dilation, groups, grad_route):
    """(whether the call needs gradients, the key under which its timings are cached)."""
    grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, bias, *hyper_params)
    )
    fmt = "cl" if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() else "nchw"
    key = (tuple(x.shape), x.dtype, str(x.device), fmt, tuple(weight.shape), str(stride), str(padding),
           str(dilation), groups, bias is not None, grad, grad_route)  # fmt: skip
    return grad, key


def _runner(layer, x, weight, bias, hyper_params, grad):
    """run(choice): the layer's forward (+backward when ``grad``) on fresh leaves, for timing."""

    def run(choice):
        leaves = [None if t is None else t.detach().requires_grad_(t.requires_grad) for t in
                  (x, weight, bias, *hyper_params)]  # fmt: skip
        with torch.set_grad_enabled(grad):
            y = layer(choice, *leaves)
            if grad and y.requires_grad:
                y.backward(torch.ones_like(y))

    return run


def choose_backend(
    backend, x, weight, bias, hyper_params, stride, padding, dilation, groups, eps, grad_route
):
    """The concrete backend for one SHC layer call. An explicit name (or SHC_BACKEND) is used as
    it is; "auto" with more than one compiled candidate for ``x`` (CUDA: "triton" and "cuda") times
    the layer's forward (+backward when gradients are on) once per shape and keeps the faster."""
    if backend != "auto" or os.environ.get("SHC_BACKEND") or torch.compiler.is_compiling():
        return backends.resolve(backend, x)
    candidates = backends.auto_candidates(x)
    if len(candidates) < 2:
        return candidates[0] if candidates else "reference"
    grad, key = _timing_key(x, weight, bias, hyper_params, stride, padding, dilation, groups, grad_route)

    def layer(candidate, *leaves):
        return shc_conv2d(*leaves, stride=stride, padding=padding, dilation=dilation, groups=groups, eps=eps,
                          grad_route=grad_route, backend=candidate)  # fmt: skip

    run = _runner(layer, x, weight, bias, hyper_params, grad)
    return backends.fastest(("backend",) + key, candidates, run, x.device.type)


FORMS = ("fused", "split")
TIMED_FORMS = ("cuda",)  # the backends whose two forms are timed per shape


def choose_form(backend, x, weight, bias, hyper_params, stride, padding, dilation, groups, eps, grad_route):
    """How the compiled backend ``backend`` ("cpu" or "cuda") computes the whole layer:

    "fused"  one op, shc::shc_conv2d: statistics, map and conv in one kernel launch on CUDA
             (csrc/cuda/fused_shc.cu); on CPU the same work as "split" in one dispatcher call;
    "split"  statistical_map's op, then modulated_conv2d's (two launches on CUDA).

    SHC_FORM ("fused" or "split") overrides. CPU uses "fused" (bench/results: the two forms time
    the same there). CUDA times both once per shape, forward (+backward when gradients are on),
    and keeps the faster; under torch.compile it uses that choice if made, else "fused".
    """
    forced = os.environ.get("SHC_FORM")
    if forced:
        if forced not in FORMS:
            raise ValueError(f"SHC_FORM must be one of {FORMS}, got {forced!r}")
        return forced
    if backend not in TIMED_FORMS:
        return "fused"
    grad, key = _timing_key(x, weight, bias, hyper_params, stride, padding, dilation, groups, grad_route)
    key = ("form", backend) + key
    if torch.compiler.is_compiling():
        return backends.cached_choice(key) or "fused"

    def layer(form, *leaves):
        return _layer(*leaves, stride, padding, dilation, groups, eps, grad_route, backend, form)

    return backends.fastest(key, FORMS, _runner(layer, x, weight, bias, hyper_params, grad), x.device.type)


def statistical_map(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, kernel_size, eps=1e-5, *, backend="auto"):
    """The statistical map m = T_theta(mu(x), sigma(x)) of shape (N, kh, kw), every element in
    (0, 1), float32 (float64 for float64 x). See reference.py for the exact math."""
    kernel_size = check_map_args(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, kernel_size)
    be = backends.resolve(backend, x)
    if be == "triton":  # statistics and hypernetwork in one kernel
        from .triton.ops import statistical_map as triton_map

        return triton_map(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, kernel_size, float(eps))
    if be == "reference":
        mu, sigma = reference.channel_stats(x, eps)
    else:
        mu, sigma = torch.ops.shc.channel_stats(_layout_ok(x), float(eps))
    return reference.hypernetwork(mu, sigma, fc1_weight, fc1_bias, fc2_weight, fc2_bias, kernel_size)


def modulated_conv2d(x, weight, m, bias=None, stride=1, padding=0, dilation=1, groups=1, backend="auto"):
    """y[n] = conv2d(x[n], weight * m[n], bias, ...) without building the per-sample kernels.

    ``m`` has shape (N, kh, kw); it is used in float32 (float64 for float64 x)."""
    stride, padding, dilation = check_conv_args(x, weight, m, bias, stride, padding, dilation, groups)
    be = backends.resolve(backend, x)
    if be == "reference":
        return reference.modulated_conv2d(x, weight, m, bias, stride, padding, dilation, groups)
    if be == "triton":
        from .triton.ops import modulated_conv2d as triton_conv

        return triton_conv(_layout_ok(x), weight, m, bias, stride, padding, dilation, groups)
    return torch.ops.shc.modulated_conv2d(
        _layout_ok(x),
        weight.contiguous(),
        m.to(stats_dtype(x.dtype)).contiguous(),
        bias,
        list(stride),
        list(padding),
        list(dilation),
        groups,
    )


def shc_conv2d(
    x,
    weight,
    bias,
    fc1_weight,
    fc1_bias,
    fc2_weight,
    fc2_bias,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    eps=1e-5,
    grad_route="both",
    backend="auto",
):
    """The Statistical Hyper-Convolution: statistical_map then modulated_conv2d.

    ``grad_route``: "both" (exact gradient), "conv" (x's gradient through the convolution only)
    or "hyper" (through the statistics only); parameter gradients are exact under every route.
    The compiled backends compute it in one of two forms (``choose_form``).
    """
    check_grad_route(grad_route)
    # Every argument is checked before a backend or form is timed, so bad input is a clear
    # ValueError/TypeError, never a candidate that "failed" while timing.
    stride, padding, dilation = check_layer_conv_args(x, weight, bias, stride, padding, dilation, groups)
    check_map_args(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, tuple(weight.shape[2:]))
    hyper_params = (fc1_weight, fc1_bias, fc2_weight, fc2_bias)
    conf = (stride, padding, dilation, groups, eps, grad_route)
    be = choose_backend(backend, x, weight, bias, hyper_params, *conf)
    form = choose_form(be, x, weight, bias, hyper_params, *conf) if be in ("cpu", "cuda") else "split"
    return _layer(x, weight, bias, *hyper_params, *conf, be, form)


def _layer(x, weight, bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, stride, padding, dilation, groups,
           eps, grad_route, backend, form):  # fmt: skip
    """The layer on a concrete backend in a concrete form (see choose_form), on checked arguments
    with stride, padding and dilation as pairs."""
    if form == "fused":
        y, _m, _z, _h = torch.ops.shc.shc_conv2d(
            _layout_ok(x), weight.contiguous(), bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias,
            list(stride), list(padding), list(dilation), groups, float(eps), grad_route,
        )  # fmt: skip
        return y
    x_stats, x_conv = route_inputs(x, grad_route)
    m = statistical_map(
        x_stats, fc1_weight, fc1_bias, fc2_weight, fc2_bias, tuple(weight.shape[2:]), eps, backend=backend
    )
    return modulated_conv2d(x_conv, weight, m, bias, stride, padding, dilation, groups, backend=backend)
