"""Bad input gets a clear ValueError/TypeError naming the argument (DESIGN §2)."""

from __future__ import annotations

import pytest
import torch
from helpers import make_params, rand_x

import shc_kernels as shc

BACKENDS = ["reference", *[b for b in shc.available_backends() if b == "cpu"]]


@pytest.fixture
def args():
    return rand_x(2, 4, 6, 6), make_params(4, 6, 3, 3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "mutate, exc, match",
    [
        (lambda x, p: (x[0, 0], p), ValueError, "x must have 4 dimensions"),
        (lambda x, p: (x[:, :3], p), ValueError, "fc1_weight must have shape|3 channels"),
        (lambda x, p: (x.int(), p), TypeError, "x must be a floating-point"),
        (lambda x, p: ([1.0], p), TypeError, "x must be a torch.Tensor"),
        (lambda x, p: (x, (p[0].float(), *p[1:])), TypeError, "weight dtype"),
        (lambda x, p: (x, (p[0], p[1][:3], *p[2:])), ValueError, "bias must have shape"),
        (lambda x, p: (x, (*p[:2], p[2][:, :5], *p[3:])), ValueError, "fc1_weight must have shape"),
        (lambda x, p: (x, (*p[:4], p[4][:4], p[5])), ValueError, "fc2_weight must have shape"),
        (lambda x, p: (x, (*p[:5], p[5][:2])), ValueError, "fc2_bias must have shape"),
        (lambda x, p: (x, (p[0].to("meta"), *p[1:])), ValueError, "weight is on meta"),
        (lambda x, p: (x[:, :, :1, :1], p), ValueError, "too small"),
    ],
)
def test_bad_input_raises(args, backend, mutate, exc, match):
    x, params = mutate(*args)
    with pytest.raises(exc, match=match):
        shc.shc_conv2d(x, *params, backend=backend)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(grad_route="weights"), ValueError, "grad_route must be one of"),
        (dict(backend="fast"), ValueError, "unknown backend 'fast'"),
        (dict(backend="cuda"), ValueError, "backend 'cuda' is not available: "),
        (dict(backend="triton"), ValueError, "backend 'triton' is not available: "),
        (dict(stride=0), ValueError, "stride >= 1"),
        (dict(padding=-1), ValueError, "padding >= 0"),
        (dict(dilation=(1, 2, 3)), TypeError, "dilation must be an int or a pair"),
        (dict(groups=4), ValueError, "divisible by groups"),
        (dict(groups=0), ValueError, "groups must be a positive int"),
    ],
)
def test_bad_option_raises(args, kwargs, exc, match):
    x, params = args
    with pytest.raises(exc, match=match):
        shc.shc_conv2d(x, *params, **kwargs)


def test_modulated_conv2d_checks_map_shape(args):
    x, (weight, bias, *_) = args
    with pytest.raises(ValueError, match=r"m must have 3 dimensions, got shape \(2, 9\)"):
        shc.modulated_conv2d(x, weight, torch.rand(2, 9, dtype=x.dtype), bias)
    with pytest.raises(ValueError, match=r"m must have shape \(N, kh, kw\) = \(2, 3, 3\), got \(3, 3, 3\)"):
        shc.modulated_conv2d(x, weight, torch.rand(3, 3, 3, dtype=x.dtype), bias)


def test_module_rejects_bad_options():
    with pytest.raises(ValueError, match="grad_route"):
        shc.SHCConv2d(3, 4, 3, grad_route="x")
    with pytest.raises(ValueError, match="unknown backend"):
        shc.SHCConv2d(3, 4, 3, backend="gpu")
    with pytest.raises(ValueError, match="x has 4 channels"):
        shc.SHCConv2d(3, 4, 3)(torch.randn(1, 4, 5, 5))


def test_statistical_map_checks_kernel_size(args):
    x, params = args
    with pytest.raises(ValueError, match="fc2_weight must have shape"):
        shc.statistical_map(x, *params[2:], (5, 5))
