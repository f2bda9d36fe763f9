"""Every compiled backend returns what shc_kernels.reference returns, forward and backward,
for every gradient route, on shapes drawn by hypothesis (ISSUE: foundation, item 7)."""

from __future__ import annotations

import pytest
import torch
from helpers import CPU_BACKENDS, ROUTES, make_params, rand_x, run_layer, tol
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import shc_kernels as shc


def test_cpu_backend_is_built():
    # `make setup` builds the extension: a missing "cpu" backend is a failure, not a skip.
    assert "cpu" in shc.available_backends(), shc.backends.unavailable_reason("cpu")


def _compare(
    backend,
    dtype,
    n,
    d,
    c,
    h,
    w,
    k,
    stride,
    padding,
    dilation,
    groups,
    bias,
    route,
    channels_last=False,
    seed=0,
):
    params = make_params(d, c, *k, groups=groups, bias=bias, dtype=dtype, seed=seed)
    x = rand_x(n, d, h, w, dtype=dtype, seed=seed + 1, channels_last=channels_last)
    conf = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, grad_route=route)
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


shapes = st.fixed_dictionaries(
    dict(
        n=st.integers(0, 4),
        groups=st.sampled_from([1, 2]),
        d_per_group=st.integers(1, 20),
        c_per_group=st.integers(1, 20),
        h=st.integers(1, 17),
        w=st.integers(1, 17),
        k=st.sampled_from([(1, 1), (3, 3), (5, 5), (3, 1)]),
        stride=st.sampled_from([1, 2]),
        padding=st.sampled_from([0, 1, 2]),
        dilation=st.sampled_from([1, 2]),
        bias=st.booleans(),
        route=st.sampled_from(ROUTES),
        channels_last=st.booleans(),
    )
)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(s=shapes)
def test_backend_matches_reference_fp64_hypothesis(backend, s):
    k = s["k"]
    oh = s["h"] + 2 * s["padding"] - s["dilation"] * (k[0] - 1)
    ow = s["w"] + 2 * s["padding"] - s["dilation"] * (k[1] - 1)
    assume(oh >= 1 and ow >= 1)
    _compare(
        backend,
        torch.float64,
        s["n"],
        s["d_per_group"] * s["groups"],
        s["c_per_group"] * s["groups"],
        s["h"],
        s["w"],
        k,
        s["stride"],
        s["padding"],
        s["dilation"],
        s["groups"],
        s["bias"],
        s["route"],
        channels_last=s["channels_last"],
    )


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(
    "case",
    [
        (4, 16, 24, 14, 13, (3, 3), 1, 1, 1, 1, True),
        (3, 32, 32, 9, 9, (3, 3), 2, 1, 1, 2, False),
        (2, 8, 12, 10, 12, (5, 5), 1, 2, 2, 1, True),
    ],
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_backend_matches_reference_fp32(backend, route, case, channels_last):
    y = _compare(backend, torch.float32, *case, route, channels_last=channels_last)
    if channels_last:
        assert y.is_contiguous(memory_format=torch.channels_last)


def test_empty_batch_returns_empty(backend):
    params = make_params(4, 6, 3, 3)
    x = rand_x(0, 4, 5, 5)
    y = shc.shc_conv2d(x, *params, padding=1, backend=backend)
    assert y.shape == (0, 6, 5, 5)


def test_single_pixel_input_works(backend):
    params = make_params(3, 2, 1, 1)
    x = rand_x(2, 3, 1, 1)
    y_ref = shc.shc_conv2d(x, *params, backend="reference")
    torch.testing.assert_close(shc.shc_conv2d(x, *params, backend=backend), y_ref)


def test_statistical_map_matches_reference(backend):
    params = make_params(6, 4, 3, 3, dtype=torch.float32)
    x = rand_x(3, 6, 8, 8, dtype=torch.float32) * 5 + 100
    m = shc.statistical_map(x, *params[2:], (3, 3), backend=backend)
    m_ref = shc.statistical_map(x, *params[2:], (3, 3), backend="reference")
    assert m.dtype == torch.float32
    torch.testing.assert_close(m, m_ref, rtol=1e-5, atol=1e-6)


def test_modulated_conv2d_matches_reference_with_given_map(backend):
    weight, bias, *_ = make_params(5, 7, 3, 3)
    x = rand_x(3, 5, 8, 9)
    m = torch.rand(3, 3, 3, dtype=torch.float64)
    y = shc.modulated_conv2d(x, weight, m, bias, padding=1, backend=backend)
    torch.testing.assert_close(y, shc.reference.modulated_conv2d(x, weight, m, bias, padding=1))
