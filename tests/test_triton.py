"""The Triton backend against the reference, on CPU tensors through the Triton interpreter.

Runs only when TRITON_INTERPRET=1 is set when pytest starts (the interpreter must be chosen
before triton is imported), e.g. ``TRITON_INTERPRET=1 pytest tests/test_triton.py``. The
reference runs in float64 on the same (rounded) inputs; fp16 has no bf16 twin here because the
interpreter has no bf16 (tests/gpu covers bf16 on a GPU).
"""

from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("set TRITON_INTERPRET=1 to run the Triton kernels on CPU", allow_module_level=True)

from helpers import ROUTES, compare_with_reference, fits, layer_shapes, make_params, rand_x, run_layer, tol  # noqa: E402

from shc_kernels import reference  # noqa: E402
from shc_kernels._checks import pair, route_inputs  # noqa: E402
from shc_kernels.triton import unavailable_reason  # noqa: E402

if unavailable_reason() is not None:
    pytest.skip(f"triton backend unavailable: {unavailable_reason()}", allow_module_level=True)

from shc_kernels.triton import ops as T  # noqa: E402

DTYPES = (torch.float32, torch.float16)
# (D, C, H, W, kernel, stride, padding, dilation, groups): odd sizes, stride 2, padding 0/1/2,
# dilation 2, kernels 1×1 / 3×3 / 5×5, groups 1/2, and H×W = 1.
CASES = {
    "3x3": (4, 6, 7, 6, 3, 1, 1, 1, 1),
    "3x3-s2-g2-p0": (4, 6, 9, 8, 3, 2, 0, 1, 2),
    "5x5-p2": (3, 5, 8, 7, 5, 1, 2, 1, 1),
    "3x3-dil2-g2-s21": (4, 4, 9, 9, 3, (2, 1), 2, 2, 2),
    "1x1": (6, 4, 5, 7, 1, 1, 0, 1, 1),
    "1x1-hw1": (3, 4, 1, 1, 1, 1, 0, 1, 1),
}


def triton_shc(x, weight, bias, f1w, f1b, f2w, f2b, stride=1, padding=0, dilation=1, groups=1,
               eps=1e-5, grad_route="both"):  # fmt: skip
    """shc_conv2d composed from the two Triton ops, as functional.py composes them."""
    x_stats, x_conv = route_inputs(x, grad_route)
    m = T.statistical_map(x_stats, f1w, f1b, f2w, f2b, tuple(weight.shape[2:]), eps)
    return T.modulated_conv2d(
        x_conv, weight, m, bias, pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "d"), groups
    )


def _assert_close(got, want, dtype, what):
    assert (got is None) == (want is None), what
    if got is None:
        return
    torch.testing.assert_close(got.double(), want.double(), **tol(dtype), msg=lambda m: f"{what}: {m}")


def _compare_layer(case, dtype, channels_last, grad_route, bias=True):
    d, c, h, w, k, stride, padding, dilation, groups = case
    params = make_params(d, c, k, k, groups=groups, bias=bias, dtype=dtype)
    x = rand_x(2, d, h, w, dtype=dtype, channels_last=channels_last)
    conf = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, grad_route=grad_route)
    y, grads = run_layer(triton_shc, x, params, **conf)
    y_ref, grads_ref = run_layer(
        reference.shc_conv2d, x.double(), [None if p is None else p.double() for p in params], **conf
    )
    assert y.dtype == dtype
    if channels_last and min(y.shape[1:]) > 1:
        assert y.is_contiguous(memory_format=torch.channels_last)
    _assert_close(y, y_ref, dtype, "y")
    names = ("x", "weight", "bias", "fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias")
    for name, g, g_ref in zip(names, grads, grads_ref, strict=True):
        if g is not None:
            assert g.dtype == dtype, name
        _assert_close(g, g_ref, dtype, f"grad {name}")


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_layer_forward_and_every_gradient_match_reference(case, dtype, channels_last):
    _compare_layer(case, dtype, channels_last, "both")


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("grad_route", ROUTES)
def test_every_grad_route_matches_reference(grad_route, dtype, channels_last):
    _compare_layer(CASES["3x3-s2-g2-p0"], dtype, channels_last, grad_route, bias=False)


def test_route_gradients_add_up():
    case = CASES["3x3"]
    d, c, h, w, k, stride, padding, dilation, groups = case
    params = make_params(d, c, k, k, dtype=torch.float32)
    x = rand_x(2, d, h, w, dtype=torch.float32)
    conf = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    dx = {r: run_layer(triton_shc, x, params, grad_route=r, **conf)[1][0] for r in ROUTES}
    torch.testing.assert_close(dx["both"], dx["conv"] + dx["hyper"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_statistical_map_and_its_gradients_match_reference(dtype, bias):
    d, hidden, kh, kw = 5, 3, 3, 5  # hidden != D//2, non-square map
    g = torch.Generator().manual_seed(3)
    f1w = (torch.randn(hidden, 2 * d, generator=g) * 0.5).to(dtype)
    f2w = (torch.randn(kh * kw, hidden, generator=g) * 0.5).to(dtype)
    f1b = torch.randn(hidden, generator=g).to(dtype) if bias else None
    f2b = torch.randn(kh * kw, generator=g).to(dtype) if bias else None
    x = rand_x(3, d, 6, 5, dtype=dtype)

    def run(fn, x, *params):
        x = x.detach().clone().requires_grad_(True)
        params = [None if p is None else p.detach().clone().requires_grad_(True) for p in params]
        m = fn(x, *params, (kh, kw), 1e-5)
        m.backward(torch.linspace(-1.0, 1.0, m.numel(), dtype=m.dtype).view_as(m))
        return m.detach(), [x.grad] + [None if p is None else p.grad for p in params]

    m, grads = run(T.statistical_map, x, f1w, f1b, f2w, f2b)
    m_ref, grads_ref = run(
        reference.statistical_map,
        x.double(),
        *(None if p is None else p.double() for p in (f1w, f1b, f2w, f2b)),
    )
    assert m.dtype == torch.float32 and m.shape == (3, kh, kw)
    _assert_close(m, m_ref, torch.float32, "m")
    for name, a, b in zip(("x", "fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias"), grads, grads_ref,
                          strict=True):  # fmt: skip
        _assert_close(a, b, dtype, f"grad {name}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_statistics_are_stable_for_large_means(dtype):
    # A channel with mean 1000 (fp32) or 200 (fp16) and unit spread: one-pass sums would cancel.
    big = 1000.0 if dtype == torch.float32 else 200.0
    x = (rand_x(2, 3, 16, 16, dtype=torch.float64) + big).to(dtype)
    d = 3
    f1w = torch.zeros(1, 2 * d)
    f1w[0, d] = 1.0  # h = sigma[:, 0], so m = sigmoid(sigma[:, 0])
    f2w = torch.ones(1, 1)
    m = T.statistical_map(x, f1w.to(dtype), None, f2w.to(dtype), None, (1, 1), 1e-5)
    mu, sigma = reference.channel_stats(x.double(), 1e-5)
    torch.testing.assert_close(m.double().view(-1), torch.sigmoid(sigma[:, 0]), rtol=1e-5, atol=1e-5)


def _stats64(x, eps):
    """(mu, sqrt(population variance + eps)) per (n, channel), in float64."""
    x = x.double()
    return x.mean(dim=(2, 3)), (x.var(dim=(2, 3), correction=0) + eps).sqrt()


@pytest.mark.parametrize(
    "scale, shift",
    [(1e19, 0.0), (1e20, -3e20), (1e30, 3e30), (1e36, -1e37), (1.5e38, 0.0), (1e-30, 0.0), (0.0, 0.0)],
    ids=lambda v: f"{v:g}",
)
def test_statistics_stay_finite_and_right_for_huge_and_tiny_x(scale, shift):
    # float64 would give these; a one-pass or unscaled fp32 sum of squares overflows at 1e19.
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(2, 3, 9, 7, generator=g, dtype=torch.float64).clamp(-2, 2) * scale + shift).float()
    assert x.isfinite().all()
    d = x.shape[1]
    f1w, f2w = torch.full((4, 2 * d), 1e-38), torch.ones(1, 4)
    m, mu, sigma, _h = torch.ops.shc.triton_statistical_map(x, f1w, None, f2w, None, 1, 1, 1e-5)
    want_mu, want_sigma = _stats64(x, 1e-5)
    assert mu.isfinite().all() and sigma.isfinite().all() and m.isfinite().all()
    torch.testing.assert_close(mu.double(), want_mu, rtol=1e-5, atol=0)
    torch.testing.assert_close(sigma.double(), want_sigma, rtol=1e-5, atol=0)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_statistics_merge_pixel_chunks_exactly_for_a_large_mean_over_a_small_spread(channels_last):
    # 37 x 41 planes: several pixel chunks per plane (merged by the combine kernel) in both layouts.
    x = (rand_x(3, 5, 37, 41, dtype=torch.float64, channels_last=channels_last) * 0.5 + 1e4).float()
    d = x.shape[1]
    f1w, f2w = torch.zeros(2, 2 * d), torch.zeros(1, 2)
    _m, mu, sigma, _h = torch.ops.shc.triton_statistical_map(x, f1w, None, f2w, None, 1, 1, 1e-5)
    want_mu, want_sigma = _stats64(x, 1e-5)
    torch.testing.assert_close(mu.double(), want_mu, rtol=1e-12, atol=0)
    torch.testing.assert_close(sigma.double(), want_sigma, rtol=1e-6, atol=0)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_hypernetwork_route_dx_keeps_its_digits_for_a_large_mean(channels_last):
    # Mean 1e4 over a spread of 1: dx = dmu/HW + dsigma (x - mu) / (HW sigma) must be computed
    # centred; as a * x + b the two 1e4-sized terms cancel and leave ~3e-4 relative error.
    x = (rand_x(2, 4, 9, 11, dtype=torch.float64, channels_last=channels_last) + 1e4).float()
    d = x.shape[1]
    g = torch.Generator().manual_seed(4)
    f1w, f1b = torch.randn(3, 2 * d, generator=g) * 0.3, torch.randn(3, generator=g)
    f1w[:, :d] *= 1e-4  # keeps fc1's pre-activations, and so the sigmoid's slope, of order 1
    f2w, f2b = torch.randn(9, 3, generator=g) * 0.3, torch.randn(9, generator=g)

    def dx(fn, x, params):
        x = x.detach().clone().requires_grad_(True)
        m = fn(x, *params, (3, 3), 1e-5)
        m.backward(torch.linspace(-1.0, 1.0, m.numel(), dtype=m.dtype).view_as(m))
        return x.grad

    got = dx(T.statistical_map, x, (f1w, f1b, f2w, f2b))
    want = dx(reference.statistical_map, x.double(), [p.double() for p in (f1w, f1b, f2w, f2b)])
    err = (got.double() - want).abs().max().item()
    assert err <= 1e-5 * want.abs().max().item(), (err, want.abs().max().item())


def test_bfloat16_is_refused_under_the_interpreter():
    # The interpreter has no bfloat16: it returned 1.4e10 where the reference gives 0.06.
    weight, bias, f1w, f1b, f2w, f2b = (p.bfloat16() for p in make_params(4, 6, 3, 3, dtype=torch.float32))
    x = rand_x(1, 4, 5, 5, dtype=torch.float32)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1 cannot compute bfloat16"):
        T.statistical_map(x.bfloat16(), f1w, f1b, f2w, f2b, (3, 3), 1e-5)
    with pytest.raises(ValueError, match="bfloat16"):
        T.modulated_conv2d(x.bfloat16(), weight, torch.rand(1, 3, 3), bias, (1, 1), (1, 1), (1, 1), 1)
    with pytest.raises(ValueError, match="bfloat16"), torch.autocast("cpu", dtype=torch.bfloat16):
        T.modulated_conv2d(x, weight.float(), torch.rand(1, 3, 3), bias.float(), (1, 1), (1, 1), (1, 1), 1)


def _check_modulated_conv2d_against_reference(x, weight, m, bias, conf, dtype):
    """y and every gradient of T.modulated_conv2d against the fp64 reference, one fixed upstream
    gradient."""

    def run(fn, x, weight, m, bias):
        leaves = [t.detach().clone().requires_grad_(True) for t in (x, weight, m, bias)]
        y = fn(*leaves, *conf)
        y.backward(
            torch.randn(y.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64).to(y.dtype)
        )
        return y.detach(), [t.grad for t in leaves]

    y, grads = run(T.modulated_conv2d, x, weight, m, bias)
    y_ref, grads_ref = run(reference.modulated_conv2d, x.double(), weight.double(), m.double(), bias.double())
    _assert_close(y, y_ref, dtype, "y")
    for name, a, b in zip(("x", "weight", "m", "bias"), grads, grads_ref, strict=True):
        _assert_close(a, b, dtype, f"grad {name}")


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_modulated_conv2d_gradient_wrt_m_matches_reference(dtype, channels_last):
    weight, bias, *_ = make_params(4, 6, 3, 3, groups=2, dtype=dtype)
    x = rand_x(3, 4, 8, 7, dtype=dtype, channels_last=channels_last)
    m = torch.rand(3, 3, 3, generator=torch.Generator().manual_seed(5))
    conf = ((2, 1), (1, 2), (1, 2), 2)

    _check_modulated_conv2d_against_reference(x, weight, m, bias, conf, dtype)


# The kernels' tiling edge cases under the interpreter's one config (BLOCK_M 32, BLOCK_N 16, BLOCK_K
# 16): (N, D, C, H, W, kernel, stride, padding, dilation, groups). Input channels per group above
# BLOCK_K take the forward's flattened (tap, channel block) loop, unmasked where BLOCK_K divides them
# (32) and masked where not (40); 7x6 = 42 and 5x5 = 25 output pixels put row tiles across samples;
# batch 1; groups; stride 2; a 7x7 plane (49 pixels, as ResNet-50's last layers) with 2 x 16 channels.
TILE_CASES = {
    "dg32-unmasked": (2, 32, 16, 7, 6, 3, 1, 1, 1, 1),
    "dg40-masked-s2": (3, 40, 8, 9, 9, 3, 2, 1, 1, 1),
    "n1-g2-dg20": (1, 40, 12, 5, 5, 3, 1, 1, 1, 2),
    "7x7-g2": (3, 32, 32, 7, 7, 3, 1, 1, 1, 2),
    "dil2-5x3": (2, 24, 8, 8, 9, (5, 3), 1, (2, 1), (1, 2), 1),
}


@pytest.mark.parametrize("dm_from", ["dx", "dw"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("case", TILE_CASES.values(), ids=TILE_CASES.keys())
def test_modulated_conv2d_tiling_edge_cases_match_reference(case, channels_last, dm_from, monkeypatch):
    # dm_from: which backward kernel reduces dm (conv_backward picks dW's per-sample partials on
    # planes of DM_IN_DW_PIXELS or more; forced here either way)
    from shc_kernels.triton import conv

    monkeypatch.setattr(conv, "DM_IN_DW_PIXELS", 1 if dm_from == "dw" else 1 << 30)
    n, d, c, h, w, k, stride, padding, dilation, groups = case
    kh, kw = (k, k) if isinstance(k, int) else k
    dtype = torch.float32
    weight, bias, *_ = make_params(d, c, kh, kw, groups=groups, dtype=dtype, seed=3)
    x = rand_x(n, d, h, w, dtype=dtype, channels_last=channels_last, seed=4)
    m = torch.rand(n, kh, kw, generator=torch.Generator().manual_seed(5)) * 0.9 + 0.05
    conf = (pair(stride, "s"), pair(padding, "p"), pair(dilation, "d"), groups)

    _check_modulated_conv2d_against_reference(x, weight, m, bias, conf, dtype)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_backward_takes_a_strided_upstream_gradient(channels_last):
    # dy whose plane is not dense (the first 6 columns of a wider tensor): the dW kernel's rows then
    # need (oh, ow) for dy's addresses too (GY_FLAT false)
    from shc_kernels.triton import conv

    weight, *_ = make_params(6, 8, 3, 3, dtype=torch.float32, seed=3)
    x = rand_x(3, 6, 7, 6, dtype=torch.float32, channels_last=channels_last, seed=4)
    m = torch.rand(3, 3, 3, generator=torch.Generator().manual_seed(5)) * 0.9 + 0.05
    wide = torch.randn(3, 8, 7, 9, generator=torch.Generator().manual_seed(6))
    gy = wide[..., :6]
    assert gy.stride(2) != gy.shape[3] * gy.stride(3)
    conf = ((1, 1), (1, 1), (1, 1), 1)
    dx, dw, dm = conv.conv_backward(gy, x, weight, m, *conf, True, True, True)
    leaves = [t.detach().double().requires_grad_(True) for t in (x, weight, m)]
    reference.modulated_conv2d(*leaves, None, *conf).backward(gy.double())
    for name, got, leaf in zip(("x", "weight", "m"), (dx, dw, dm), leaves, strict=True):
        _assert_close(got, leaf.grad, torch.float32, f"grad {name}")


def test_pixel_split_through_fp32_is_exact_where_the_dw_kernel_uses_it():
    # _split_pixel's FDIV path: oh = int((p + 0.5) * fp32(1 / OW)) for p < OH * OW <= 2**21, in
    # fp32 round-to-nearest arithmetic as on the GPU; checked at the pixels either side of every row
    # boundary, where an error would show first
    limit = 1 << 21
    for ow in [*range(1, 130), 511, 1000, 1024, 2047, 4096, 9999]:
        k = torch.arange(0, limit // ow + 1, dtype=torch.int64)
        p = torch.cat([k * ow, k * ow + ow - 1])
        p = p[p < limit]
        inv = torch.tensor(1.0 / ow, dtype=torch.float32)
        oh = ((p.to(torch.float32) + 0.5) * inv).to(torch.int32).to(torch.int64)
        assert torch.equal(oh, p // ow), ow


def test_empty_batch_returns_empty_results():
    weight, bias, f1w, f1b, f2w, f2b = make_params(4, 6, 3, 3, dtype=torch.float32)
    x = torch.empty(0, 4, 7, 6, requires_grad=True)
    m = T.statistical_map(x, f1w, f1b, f2w, f2b, (3, 3), 1e-5)
    y = T.modulated_conv2d(x, weight, m, bias, (1, 1), (1, 1), (1, 1), 1)
    assert m.shape == (0, 3, 3) and y.shape == (0, 6, 7, 6)
    y.sum().backward()
    assert x.grad.shape == x.shape


def test_float64_is_refused_with_a_clear_error():
    weight, bias, f1w, f1b, f2w, f2b = make_params(4, 6, 3, 3, dtype=torch.float64)
    x = rand_x(1, 4, 5, 5, dtype=torch.float64)
    with pytest.raises(TypeError, match="float64"):
        T.statistical_map(x, f1w, f1b, f2w, f2b, (3, 3), 1e-5)
    with pytest.raises(TypeError, match="float64"):
        T.modulated_conv2d(x, weight, torch.rand(1, 3, 3), bias, (1, 1), (1, 1), (1, 1), 1)


def test_autocast_runs_conv_in_autocast_dtype_and_map_in_fp32():
    weight, bias, f1w, f1b, f2w, f2b = make_params(4, 6, 3, 3, dtype=torch.float32)
    x = rand_x(2, 4, 7, 6, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.float16):
        m = T.statistical_map(x, f1w, f1b, f2w, f2b, (3, 3), 1e-5)
        y = T.modulated_conv2d(x, weight, m, bias, (1, 1), (1, 1), (1, 1), 1)
    assert m.dtype == torch.float32 and y.dtype == torch.float16
    y_ref = reference.modulated_conv2d(x.double(), weight.double(), m.double(), bias.double(), 1, 1, 1, 1)
    torch.testing.assert_close(y.double(), y_ref, **tol(torch.float16))


def test_opcheck_custom_ops():
    weight, bias, f1w, f1b, f2w, f2b = make_params(4, 6, 3, 3, groups=2, dtype=torch.float32)
    x = rand_x(2, 4, 6, 5, dtype=torch.float32, channels_last=True)
    m = torch.rand(2, 3, 3)
    for t in (x, weight, m, bias, f1w, f1b, f2w, f2b):
        t.requires_grad_(True)
    torch.library.opcheck(
        torch.ops.shc.triton_modulated_conv2d.default, (x, weight, m, bias, [2, 1], [1, 0], [1, 2], 2)
    )
    torch.library.opcheck(torch.ops.shc.triton_statistical_map.default, (x, f1w, f1b, f2w, None, 3, 3, 1e-5))


# The public API routes backend="triton" to these kernels: drawn shapes through shc.shc_conv2d.
from hypothesis import HealthCheck, assume, given, settings  # noqa: E402

import shc_kernels as shc  # noqa: E402


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(s=layer_shapes(max_n=3, max_per_group=4, max_hw=9))
def test_public_api_triton_backend_matches_reference(s):
    assume(fits(s))
    compare_with_reference("triton", torch.float32, s)


def test_layer_with_triton_backend_matches_reference():
    torch.manual_seed(0)
    layer = shc.SHCConv2d(4, 6, 3, stride=2, padding=1, backend="triton")
    x = torch.randn(2, 4, 9, 7)
    y = layer(x)
    layer.backend = "reference"
    torch.testing.assert_close(y, layer(x), rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("route", ROUTES)
def test_second_order_matches_reference(route):
    # Double backward (a gradient penalty) through every input, fp32 under the interpreter: the
    # Triton backward recomputes through reference.py when create_graph is on.
    torch.manual_seed(0)
    params = [p.requires_grad_() for p in make_params(3, 4, 3, 3, dtype=torch.float32)]
    x = torch.randn(2, 3, 6, 6, requires_grad=True)

    def penalty(backend):
        y = shc.shc_conv2d(x, *params, padding=1, grad_route=route, backend=backend)
        (gx,) = torch.autograd.grad((y * y.detach().sin()).sum(), x, create_graph=True)
        got = torch.autograd.grad(gx.square().sum() + gx.sum(), [x, *params], allow_unused=True)
        return [torch.zeros_like(t) if g is None else g for t, g in zip([x, *params], got, strict=True)]

    for g, e in zip(penalty("triton"), penalty("reference"), strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


@pytest.fixture
def deterministic_mode():
    """torch.use_deterministic_algorithms for one test, restored after it."""
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )

    def set_mode(warn_only):
        torch.use_deterministic_algorithms(True, warn_only=warn_only)

    yield set_mode
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def _conv_grads(need_weight_or_m):
    weight, bias, *_ = make_params(4, 6, 3, 3, dtype=torch.float32)
    x = rand_x(2, 4, 6, 5, dtype=torch.float32).requires_grad_(True)
    m = torch.rand(2, 3, 3, generator=torch.Generator().manual_seed(3))
    weight.requires_grad_(need_weight_or_m)
    y = T.modulated_conv2d(x, weight, m, bias, (1, 1), (1, 1), (1, 1), 1)
    y.sum().backward()
    return x.grad, weight.grad


def test_deterministic_mode_refuses_the_atomic_weight_gradient(deterministic_mode):
    deterministic_mode(warn_only=False)
    with pytest.raises(RuntimeError, match="not deterministic.*backend='reference'"):
        _conv_grads(need_weight_or_m=True)


def test_deterministic_mode_allows_dx_alone_and_warns_in_warn_only_mode(deterministic_mode):
    deterministic_mode(warn_only=False)
    gx, _ = _conv_grads(need_weight_or_m=False)  # dx has no atomics: no error
    assert gx is not None and torch.isfinite(gx).all()
    deterministic_mode(warn_only=True)
    with pytest.warns(UserWarning, match="not deterministic"):
        _, gw = _conv_grads(need_weight_or_m=True)
    assert gw is not None and torch.isfinite(gw).all()
