"""shc_kernels.reference against docs/design.md §1 written out by hand in float64."""

from __future__ import annotations

import pytest
import torch
from helpers import make_params, rand_x

import shc_kernels as shc


def formula(x, weight, bias, f1w, f1b, f2w, f2b, stride, padding, dilation, groups, eps):
    """DESIGN §1 with sums and slices only: no F.conv2d, no nn.Linear."""
    n, d, h, w = x.shape
    c, dg, kh, kw = weight.shape
    mu = x.sum(dim=(2, 3)) / (h * w)
    sigma = torch.sqrt(((x - mu[:, :, None, None]) ** 2).sum(dim=(2, 3)) / (h * w) + eps)
    z = torch.cat([mu, sigma], dim=1)
    hidden = torch.clamp(z @ f1w.T + f1b, min=0.0)
    m = (1.0 / (1.0 + torch.exp(-(hidden @ f2w.T + f2b)))).view(n, kh, kw)
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    xp = x.new_zeros(n, d, h + 2 * ph, w + 2 * pw)
    xp[:, :, ph : ph + h, pw : pw + w] = x
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    y = x.new_zeros(n, c, oh, ow)
    cg = c // groups
    for i in range(kh):
        for j in range(kw):
            patch = xp[
                :, :, i * dh : i * dh + sh * (oh - 1) + 1 : sh, j * dw : j * dw + sw * (ow - 1) + 1 : sw
            ]
            for g in range(groups):
                contrib = torch.einsum(
                    "cd,ndhw->nchw", weight[g * cg : (g + 1) * cg, :, i, j], patch[:, g * dg : (g + 1) * dg]
                )
                y[:, g * cg : (g + 1) * cg] += m[:, i, j, None, None, None] * contrib
    if bias is not None:
        y += bias[None, :, None, None]
    return y, m


CASES = [
    # n, d, c, h, w, k, stride, padding, dilation, groups, bias
    (2, 3, 5, 7, 6, (3, 3), 1, 1, 1, 1, True),
    (3, 4, 6, 9, 9, (3, 3), 2, 0, 1, 2, False),
    (1, 6, 4, 11, 8, (5, 5), 1, 2, 2, 2, True),
    (2, 5, 3, 6, 7, (3, 1), (2, 1), (1, 0), 1, 1, True),
    (2, 2, 2, 1, 1, (1, 1), 1, 0, 1, 1, True),
]


@pytest.mark.parametrize("case", CASES)
def test_reference_matches_written_out_formula(case):
    n, d, c, h, w, k, stride, padding, dilation, groups, bias = case
    params = make_params(d, c, *k, groups=groups, bias=bias)
    x = rand_x(n, d, h, w)
    y = shc.reference.shc_conv2d(x, *params, stride=stride, padding=padding, dilation=dilation, groups=groups)
    pair = shc._checks.pair
    y_ref, m_ref = formula(
        x, *params, pair(stride, "s"), pair(padding, "p"), pair(dilation, "d"), groups, 1e-5
    )
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    m = shc.reference.statistical_map(x, *params[2:], k)
    torch.testing.assert_close(m, m_ref, rtol=1e-12, atol=1e-12)


def test_map_is_in_open_unit_interval_and_fp32_for_half_input():
    params = make_params(8, 4, 3, 3, dtype=torch.float32)
    x = rand_x(3, 8, 5, 5, dtype=torch.float16) * 50 + 1000  # large mean: fp32 statistics needed
    m = shc.reference.statistical_map(x, *params[2:], (3, 3))
    assert m.dtype == torch.float32 and m.shape == (3, 3, 3)
    assert bool(((m > 0) & (m < 1)).all())


def test_single_pixel_plane_has_sigma_sqrt_eps():
    x = rand_x(2, 3, 1, 1)
    mu, sigma = shc.reference.channel_stats(x, eps=1e-5)
    torch.testing.assert_close(mu, x[:, :, 0, 0])
    torch.testing.assert_close(sigma, torch.full_like(sigma, 1e-5**0.5))


@pytest.mark.parametrize("kernel, padding_mode", [((3, 3), "zeros"), ((3, 4), "zeros"), ((2, 4), "reflect")])
def test_reference_takes_padding_same_and_padding_mode_as_the_layer(kernel, padding_mode):
    layer = shc.SHCConv2d(3, 4, kernel, padding="same", padding_mode=padding_mode).double()
    x = rand_x(2, 3, 7, 8)
    y = shc.reference.shc_conv2d(x, layer.weight, layer.bias, *layer._hyper_params(), padding="same",
                                 padding_mode=padding_mode)  # fmt: skip
    assert y.shape == (2, 4, 7, 8)
    torch.testing.assert_close(y, layer(x))
    one = shc.reference.shc_conv2d(x[0], layer.weight, layer.bias, *layer._hyper_params(), padding="same",
                                   padding_mode=padding_mode)  # fmt: skip
    torch.testing.assert_close(one, y[0])


@pytest.mark.parametrize("d, c", [(4, 6), (4, 5), (3, 4), (2, 2), (5, 7), (6, 8), (8, 16), (40, 4)])
def test_the_test_parameters_have_a_live_hypernetwork(d, c):
    """tests/helpers.make_params must give parameters whose hypernetwork route carries gradient on
    rand_x: with every relu unit dead, m is constant and a test of the hypernetwork route of dx or
    of fc1's gradients compares zeros with zeros (make_params(4, 6, ...) did, for most of the suite)."""
    w, b, f1w, f1b, f2w, f2b = make_params(d, c, 3, 3)
    x = rand_x(2, d, 7, 6)
    dx = {}
    for route in ("hyper", "conv"):
        xr = x.clone().requires_grad_(True)
        y = shc.reference.shc_conv2d(xr, w, b, f1w, f1b, f2w, f2b, padding=1, grad_route=route)
        y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(0), dtype=y.dtype))
        dx[route] = xr.grad.norm()
    assert dx["hyper"] > 1e-3 * dx["conv"]
