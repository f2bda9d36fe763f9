"""The Triton backend's whole-layer op (shc::triton_shc_layer, what shc_conv2d runs on backend="triton"):
its backward folds the hypernetwork route of dx into the conv's dx kernel (shc_kernels/triton/layer.py).
Checked against the float64 reference on CPU tensors through the Triton interpreter, with the kernels
each path launches recorded.

Runs only when TRITON_INTERPRET=1 is set when pytest starts, e.g.
``TRITON_INTERPRET=1 pytest tests/test_triton_fused.py``. The hypernetwork's parameters are drawn so
that its hidden units are alive (fc1's bias > 0): with a dead relu the hypernetwork route of dx is
zero and a test of it could not fail.
"""

from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("set TRITON_INTERPRET=1 to run the Triton kernels on CPU", allow_module_level=True)

from helpers import make_params, rand_x, run_layer, tol  # noqa: E402

import shc_kernels as shc  # noqa: E402
from shc_kernels import reference  # noqa: E402
from shc_kernels.triton import unavailable_reason  # noqa: E402

if unavailable_reason() is not None:
    pytest.skip(f"triton backend unavailable: {unavailable_reason()}", allow_module_level=True)

from shc_kernels.triton import conv, stats  # noqa: E402

NAMES = ("x", "weight", "bias", "fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias")
# (N, D, C, H, W, kernel, stride, padding, groups). "g2-dg20": 20 input channels per group, more than
# the interpreter's BLOCK_N of 16, so the dx epilogue's coefficients are read across channel blocks and
# groups (masked); stride 2 runs dx by output parity, each class's epilogue covering its positions.
CASES = {
    "3x3": (2, 4, 6, 7, 6, 3, 1, 1, 1),
    "g2-dg20-s2": (2, 40, 8, 9, 8, 3, 2, 1, 2),
}


def live_params(d, c, k, groups=1, bias=True, dtype=torch.float32, seed=0):
    """make_params (whose fc1 bias is >= 1, so the hypernetwork is live) with the biases dropped
    together where ``bias`` is False."""
    w, b, f1w, f1b, f2w, f2b = make_params(
        d, c, k, k, groups=groups, bias=True, dtype=torch.float64, seed=seed
    )
    out = [w, b if bias else None, f1w, f1b if bias else None, f2w, f2b if bias else None]
    return [t if t is None else t.to(dtype) for t in out]


def triton_layer(*args, **kw):
    return shc.shc_conv2d(*args, backend="triton", **kw)


class _Spy:
    """A Triton kernel whose launches are logged as (name, constexpr keyword arguments)."""

    def __init__(self, kernel, name, log):
        self.kernel, self.name, self.log = kernel, name, log

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def call(*args, **kwargs):
            self.log.append((self.name, kwargs))
            return launch(*args, **kwargs)

        return call


@pytest.fixture(autouse=True)
def separate_forward(monkeypatch):
    """This file checks the separate-launch forward (statistics, then the conv) and the fused
    backward: the layer runs the one-launch forward at few channels per pixel, as at the small shapes
    here (layer.use_one_launch), so it is switched off; test_triton.py runs the layer as it picks and
    test_triton_onelaunch.py the one-launch forward itself."""
    from shc_kernels.triton import layer

    monkeypatch.setattr(layer, "ONE_LAUNCH", False)


@pytest.fixture
def launches(monkeypatch):
    """The backward kernels launched in the test, with their switches."""
    log = []
    for mod, attr in ((conv, "_mconv_dx_kernel"), (conv, "_mconv_dw_kernel"), (stats, "_stats_dx_kernel")):
        monkeypatch.setattr(mod, attr, _Spy(getattr(mod, attr), attr.strip("_").removesuffix("_kernel"), log))
    return log


def _compare(case, dtype, channels_last, route, requires=None, bias=True):
    """y and every gradient of the triton layer against the fp64 reference; ``requires``: which of the
    7 inputs need a gradient (default all). Returns the reference's gradients."""
    n, d, c, h, w, k, stride, padding, groups = case
    params = live_params(d, c, k, groups=groups, bias=bias, dtype=dtype)
    x = rand_x(n, d, h, w, dtype=dtype, channels_last=channels_last)
    conf = dict(stride=stride, padding=padding, groups=groups, grad_route=route)
    y, grads = _run(triton_layer, x, params, requires, conf)
    params64 = [None if p is None else p.double() for p in params]
    y_ref, grads_ref = _run(reference.shc_conv2d, x.double(), params64, requires, conf)
    assert y.dtype == dtype
    if channels_last:
        assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y.double(), y_ref, **tol(dtype))
    for name, g, g_ref in zip(NAMES, grads, grads_ref, strict=True):
        assert (g is None) == (g_ref is None), name
        if g is not None:
            assert g.dtype == dtype, name
            torch.testing.assert_close(
                g.double(), g_ref, **tol(dtype), msg=lambda m, nm=name: f"grad {nm}: {m}"
            )
    return grads_ref


def _run(fn, x, params, requires, conf):
    if requires is None:
        return run_layer(fn, x, params, **conf)
    pairs = zip([x, *params], requires, strict=True)
    leaves = [t if t is None else t.detach().clone().requires_grad_(r) for t, r in pairs]
    y = fn(*leaves, **conf)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    y.backward(gy.to(y.dtype))
    return y.detach(), [None if t is None else t.grad for t in leaves]


def _hyper_route_is_alive(case, channels_last=False):
    """The reference's hypernetwork route of dx is not negligible beside the conv route's."""
    n, d, c, h, w, k, stride, padding, groups = case
    params = live_params(d, c, k, groups=groups, dtype=torch.float64)
    x = rand_x(n, d, h, w, dtype=torch.float64, channels_last=channels_last)
    conf = dict(stride=stride, padding=padding, groups=groups)
    hyper = run_layer(reference.shc_conv2d, x, params, grad_route="hyper", **conf)[1][0].abs().max()
    conv_ = run_layer(reference.shc_conv2d, x, params, grad_route="conv", **conf)[1][0].abs().max()
    return hyper >= 0.03 * conv_


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_the_cases_exercise_the_hypernetwork_route(case):
    assert _hyper_route_is_alive(case)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_fused_layer_matches_reference_and_writes_dx_once(case, dtype, channels_last, launches):
    _compare(case, dtype, channels_last, "both")
    kernels = [name for name, _ in launches]
    assert "stats_dx" not in kernels, "the hypernetwork route of dx took a second pass over x"
    ((_, dx),) = [(k, kw) for k, kw in launches if k == "mconv_dx"]
    ((_, dw),) = [(k, kw) for k, kw in launches if k == "mconv_dw"]
    assert dx["HYPER"] and dx["NEED_X"] and not dx["NEED_M"], dx
    assert dw["NEED_DM"], "dm must come from dW, before the dx kernel"


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("route", ["conv", "hyper"])
def test_single_route_matches_reference(route, channels_last, launches):
    _compare(CASES["g2-dg20-s2"], torch.float32, channels_last, route, bias=False)
    dx = [kw for k, kw in launches if k == "mconv_dx"]
    assert not any(kw["HYPER"] for kw in dx)
    hyper_dx = [kw for k, kw in launches if k == "stats_dx"]
    if route == "conv":
        assert not hyper_dx
    else:  # the hypernetwork route alone: its own kernel writes dx, no conv route computed
        assert [kw["ACCUMULATE"] for kw in hyper_dx] == [False]
        assert not any(kw["NEED_X"] for kw in dx)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_unfolded_backward_adds_the_hypernetwork_route_in_place(channels_last, launches, monkeypatch):
    # Small planes with many channels (conv.dm_before_dx): dm from the dx kernel, then the statistics'
    # kernel adds the hypernetwork route to dx in place; forced here
    monkeypatch.setattr(conv, "FOLD_RATIO", 0)
    monkeypatch.setattr(conv, "DM_IN_DW_PIXELS", 1 << 30)
    _compare(CASES["g2-dg20-s2"], torch.float32, channels_last, "both")
    dx = [kw for k, kw in launches if k == "mconv_dx"]
    assert [(kw["NEED_X"], kw["NEED_M"], kw["HYPER"]) for kw in dx] == [(True, True, False)]
    assert [kw["ACCUMULATE"] for k, kw in launches if k == "stats_dx"] == [True]
    assert not any(kw["NEED_DM"] for k, kw in launches if k == "mconv_dw")


# (x, weight, bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias) requiring a gradient
SUBSETS = {
    # frozen conv weight: dm comes from the dx kernel, so the hypernetwork route is added to the conv
    # route's dx in place by the statistics' kernel
    "frozen-weight": (True, False, True, True, True, True, True),
    "x-only": (True, False, False, False, False, False, False),
    "params-only": (False, True, True, True, True, True, True),
    "hyper-params-only": (False, False, False, True, False, True, False),
}


@pytest.mark.parametrize("requires", SUBSETS.values(), ids=SUBSETS.keys())
def test_needs_input_grad_subsets_match_reference(requires, launches):
    _compare(CASES["3x3"], torch.float32, True, "both", requires=requires)
    hyper_dx = [kw["ACCUMULATE"] for k, kw in launches if k == "stats_dx"]
    dx = [kw for k, kw in launches if k == "mconv_dx"]
    if requires[0]:  # dx with both routes, no dW: the conv route's dx, then the hypernetwork's added in place
        assert hyper_dx == [True] and [kw["NEED_X"] for kw in dx] == [True]
    else:
        assert hyper_dx == [] and not any(kw["NEED_X"] for kw in dx)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_fused_dx_keeps_its_digits_for_a_large_mean(channels_last):
    # Mean 1e4 over a spread of 1: the epilogue centres x on mu as hi + lo fp32 parts; as a * x + b the
    # two 1e4-sized terms would cancel and leave ~3e-4 of the hypernetwork route's size in error.
    n, d, c, h, w, k = 2, 4, 4, 9, 11, 3
    x = (rand_x(n, d, h, w, dtype=torch.float64, channels_last=channels_last) + 1e4).float()
    g = torch.Generator().manual_seed(4)
    weight = torch.randn(c, d, k, k, generator=g) * 0.3
    f1w, f1b = torch.randn(3, 2 * d, generator=g) * 0.3, torch.randn(3, generator=g).abs() + 1.0
    f1w[:, :d] *= 1e-4  # keeps fc1's pre-activations, and so the sigmoid's slope, of order 1
    f2w, f2b = torch.randn(9, 3, generator=g) * 0.3, torch.randn(9, generator=g)
    params = [weight, None, f1w, f1b, f2w, f2b]

    def grads(fn, x, params, route):
        return run_layer(fn, x, params, padding=1, grad_route=route)[1][0]

    got = grads(triton_layer, x, params, "both")
    p64 = [None if p is None else p.double() for p in params]
    want = grads(reference.shc_conv2d, x.double(), p64, "both")
    hyper = grads(reference.shc_conv2d, x.double(), p64, "hyper").abs().max().item()
    conv_ = grads(reference.shc_conv2d, x.double(), p64, "conv").abs().max().item()
    assert hyper >= conv_, (hyper, conv_)  # dx is mostly the hypernetwork route's: its error shows
    err = (got.double() - want).abs().max().item()
    assert err <= 2e-5 * hyper, (err, hyper)


def test_second_order_through_the_fused_layer_matches_reference():
    # create_graph=True: the fused op's backward recomputes through reference.py (stride 2, cl, groups)
    n, d, c, h, w, k, stride, padding, groups = CASES["g2-dg20-s2"]
    params = [p.requires_grad_() for p in live_params(d, c, k, groups=groups)]
    x = rand_x(n, d, h, w, dtype=torch.float32, channels_last=True).requires_grad_()

    def penalty(fn):
        y = fn(x, *params, stride=stride, padding=padding, groups=groups)
        (gx,) = torch.autograd.grad((y * y.detach().sin()).sum(), x, create_graph=True)
        got = torch.autograd.grad(gx.square().sum(), [x, *params], allow_unused=True)
        return [torch.zeros_like(t) if g is None else g for t, g in zip([x, *params], got, strict=True)]

    got = penalty(triton_layer)
    # against float64 (the reference on the same values in double), each gradient's error scaled by
    # its largest element: two fp32 computations differ by their summation orders (oneDNN's differ
    # between AVX2 and AVX-512), which puts a small element's relative error anywhere
    x = x.detach().double().requires_grad_()
    params = [p.detach().double().requires_grad_() for p in params]
    for name, g, e in zip(NAMES, got, penalty(reference.shc_conv2d), strict=True):
        err, scale = (g.double() - e).abs().max().item(), e.abs().max().item()
        assert err <= 1e-5 * scale, (name, err, scale)


def test_the_functional_api_runs_the_fused_op():
    n, d, c, h, w, k, stride, padding, groups = CASES["3x3"]
    params = live_params(d, c, k)
    x = rand_x(n, d, h, w, dtype=torch.float32).requires_grad_()
    y = shc.SHCConv2d(d, c, k, padding=padding, backend="triton")(x)
    assert "triton_shc_layer" in y.grad_fn.name()
    y = triton_layer(x, *params, padding=padding)
    assert "triton_shc_layer" in y.grad_fn.name()


def test_opcheck_fused_layer_op():
    n, d, c, h, w, k, stride, padding, groups = CASES["3x3"]
    weight, bias, f1w, f1b, f2w, f2b = live_params(d, c, k)
    x = rand_x(n, d, h, w, dtype=torch.float32, channels_last=True)
    for t in (x, weight, bias, f1w, f1b, f2w, f2b):
        t.requires_grad_(True)
    torch.library.opcheck(
        torch.ops.shc.triton_shc_layer.default,
        (x, weight, bias, f1w, f1b, f2w, None, [2, 1], [1, 1], [1, 1], 1, 1e-5, "both"),
    )


def test_autocast_runs_the_fused_layer_in_the_autocast_dtype():
    n, d, c, h, w, k, stride, padding, groups = CASES["3x3"]
    params = [p.requires_grad_() for p in live_params(d, c, k)]
    x = rand_x(n, d, h, w, dtype=torch.float32).requires_grad_()
    with torch.autocast("cpu", dtype=torch.float16):
        y = triton_layer(x, *params, padding=padding)
    assert y.dtype == torch.float16
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32 and params[0].grad.dtype == torch.float32
    # the layer as autocast computes it: x, weight and bias rounded to fp16, the rest fp32
    half = [t.detach().half().double() for t in (x, params[0], params[1])]
    y_ref = reference.shc_conv2d(half[0], half[1], half[2], *(p.detach().double() for p in params[2:]),
                                 padding=padding)  # fmt: skip
    torch.testing.assert_close(y.double(), y_ref, **tol(torch.float16))


def test_empty_batch_returns_empty_results():
    weight, bias, f1w, f1b, f2w, f2b = (p.requires_grad_() for p in live_params(4, 6, 3))
    x = torch.empty(0, 4, 7, 6, requires_grad=True)
    y = triton_layer(x, weight, bias, f1w, f1b, f2w, f2b, padding=1)
    assert y.shape == (0, 6, 7, 6)
    y.sum().backward()
    assert x.grad.shape == x.shape
    for p in (weight, bias, f1w, f1b, f2w, f2b):
        assert torch.count_nonzero(p.grad) == 0
