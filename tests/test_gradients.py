"""Exact gradients: gradcheck in float64 for x, weight, bias and the four hypernetwork tensors,
and the gradient routes of the paper's Table 4 (DESIGN §1)."""

from __future__ import annotations

import pytest
import torch
from helpers import CPU_BACKENDS, FORMS, make_params, rand_x, run_layer

import shc_kernels as shc

ALL = ["reference", *CPU_BACKENDS]


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize(
    "conf",
    [
        dict(stride=1, padding=1, dilation=1, groups=1),
        dict(stride=2, padding=2, dilation=2, groups=2),
    ],
)
@pytest.mark.parametrize("form", FORMS)
def test_gradcheck_float64_every_input(backend, conf, form, monkeypatch):
    if backend == "reference" and form != FORMS[0]:
        pytest.skip("the reference has one form")
    monkeypatch.setenv("SHC_FORM", form)
    params = make_params(4, 6, 3, 3, groups=conf["groups"])
    x = rand_x(2, 4, 6, 5)
    inputs = [t.detach().clone().requires_grad_(True) for t in (x, *params)]

    def fn(*args):
        return shc.shc_conv2d(*args, **conf, backend=backend)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradcheck_ops_separately(backend):
    weight, bias, f1w, f1b, f2w, f2b = make_params(3, 4, 3, 3)
    x = rand_x(2, 3, 5, 5).requires_grad_(True)
    m = torch.rand(2, 3, 3, dtype=torch.float64).requires_grad_(True)
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda *a: shc.modulated_conv2d(*a, padding=1, backend=backend), (x, weight, m, bias)
    )
    params = [p.requires_grad_(True) for p in (f1w, f1b, f2w, f2b)]
    assert torch.autograd.gradcheck(
        lambda *a: shc.statistical_map(a[0], *a[1:], (3, 3), backend=backend), (x, *params)
    )


@pytest.mark.parametrize("backend", ALL)
def test_dx_both_is_sum_of_routes_and_param_grads_agree(backend):
    params = make_params(6, 8, 3, 3)
    x = rand_x(3, 6, 7, 7)
    grads = {
        route: run_layer(shc.shc_conv2d, x, params, padding=1, grad_route=route, backend=backend)[1]
        for route in ("both", "conv", "hyper")
    }
    dx = {route: g[0] for route, g in grads.items()}
    torch.testing.assert_close(dx["both"], dx["conv"] + dx["hyper"], rtol=1e-10, atol=1e-10)
    # Both routes carry a real, different gradient.
    assert dx["conv"].abs().max() > 1e-3 and dx["hyper"].abs().max() > 1e-6
    assert not torch.allclose(dx["conv"], dx["hyper"])
    for route in ("conv", "hyper"):
        for a, b in zip(grads[route][1:], grads["both"][1:], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", ALL)
def test_hyper_route_dx_matches_statistics_formula(backend):
    # dx(hyper) = dmu/HW + dsigma * (x - mu) / (HW * sigma), with dmu, dsigma from autograd
    # through the hypernetwork on (mu, sigma) as leaves.
    weight, bias, f1w, f1b, f2w, f2b = make_params(4, 5, 3, 3)
    x = rand_x(2, 4, 6, 6)
    _, g = run_layer(
        shc.shc_conv2d, x, [weight, bias, f1w, f1b, f2w, f2b], padding=1, grad_route="hyper", backend=backend
    )
    mu, sigma = shc.reference.channel_stats(x)
    mu.requires_grad_(True)
    sigma.requires_grad_(True)
    m = shc.reference.hypernetwork(mu, sigma, f1w, f1b, f2w, f2b, (3, 3))
    y = shc.reference.modulated_conv2d(x, weight, m, bias, padding=1)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    dmu, dsigma = torch.autograd.grad(y, (mu, sigma), gy)
    hw = x.shape[2] * x.shape[3]
    expected = dmu[:, :, None, None] / hw + dsigma[:, :, None, None] * (x - mu.detach()[:, :, None, None]) / (
        hw * sigma.detach()[:, :, None, None]
    )
    torch.testing.assert_close(g[0], expected, rtol=1e-9, atol=1e-12)
