"""Every autograd mode gives the reference's numbers on every backend (issue: no silent zeros):
second order (double backward, Hessian-vector products, gradgradcheck) and torch.func (grad,
vjp, jacrev, vmap, jvp, jacfwd, forward_ad). Float64, small shapes."""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from helpers import CPU_BACKENDS, FORMS, ROUTES, forced_form, make_params
from torch import func

import shc_kernels as shc

# (backend, form) pairs: the compiled backend in both of its forms.
COMPILED = [(b, f) for b in CPU_BACKENDS for f in FORMS]
CONF = dict(padding=1, stride=1)


def _inputs(n=2, d=2, c=3, hw=5, seed=0):
    torch.manual_seed(seed)
    params = [p.requires_grad_() for p in make_params(d, c, 3, 3, seed=seed)]
    x = torch.randn(n, d, hw, hw, dtype=torch.float64, requires_grad=True)
    return x, params


def _layer(backend, route="both"):
    return lambda x, *p: shc.shc_conv2d(x, *p, grad_route=route, backend=backend, **CONF)


def _grads(outputs, inputs):
    got = torch.autograd.grad(outputs, inputs, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for t, g in zip(inputs, got, strict=True)]


def _gradient_penalty(backend, route, x, params):
    """d/d(x, params) of ||dL/dx||^2: a double backward through every input."""
    y = _layer(backend, route)(x, *params)
    (gx,) = torch.autograd.grad((y * y.detach().sin()).sum(), x, create_graph=True)
    return _grads(gx.square().sum() + gx.sum(), [x, *params])


@pytest.mark.parametrize("backend, form", COMPILED)
@pytest.mark.parametrize("route", ROUTES)
def test_double_backward_equals_reference(backend, form, route):
    x, params = _inputs()
    expected = _gradient_penalty("reference", route, x, params)
    with forced_form(form):
        got = _gradient_penalty(backend, route, x, params)
    assert expected[0].abs().max() > 0 or route == "conv"  # a real signal where there is one
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("backend, form", COMPILED)
def test_second_order_of_parameter_gradients_equals_reference(backend, form):
    # A gradient penalty on the weight gradient (as in meta-learning): the backward of dW.
    x, params = _inputs()

    def penalty(be):
        y = _layer(be)(x, *params)
        gw, gf2 = torch.autograd.grad(y.square().sum(), [params[0], params[4]], create_graph=True)
        return _grads(gw.square().sum() + gf2.sum(), [x, *params])

    expected = penalty("reference")
    with forced_form(form):
        got = penalty(backend)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("backend, form", COMPILED)
def test_hessian_vector_product_equals_reference(backend, form):
    x, params = _inputs(n=1, hw=4)
    v = torch.randn_like(x)

    def hvp(be):
        return torch.autograd.functional.hvp(lambda xx: _layer(be)(xx, *params).tanh().sum(), x, v)[1]

    with forced_form(form):
        got = hvp(backend)
    torch.testing.assert_close(got, hvp("reference"), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("backend, form", COMPILED)
def test_gradgradcheck(backend, form):
    # Only the exact gradient ("both") can match finite differences; the other routes are
    # compared with the reference's double backward above.
    x, params = _inputs(n=2, d=2, c=2, hw=4)
    with forced_form(form):
        assert torch.autograd.gradgradcheck(_layer(backend), (x, *params))


# ---------------------------------------------------------------- torch.func


def _loss(backend):
    return lambda params, x: _layer(backend)(x, *params).square().sum()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_func_grad_and_vjp_equal_reference(backend):
    x, params = _inputs()
    params = [p.detach() for p in params]
    x = x.detach()
    expected = func.grad(_loss("reference"))(params, x)
    for g, e in zip(func.grad(_loss(backend))(params, x), expected, strict=True):
        torch.testing.assert_close(g, e)
    gy = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    _, vjp_fn = func.vjp(lambda xx: _layer(backend)(xx, *params), x)
    _, vjp_ref = func.vjp(lambda xx: _layer("reference")(xx, *params), x)
    torch.testing.assert_close(vjp_fn(gy)[0], vjp_ref(gy)[0])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_per_sample_gradients_with_vmap_equal_reference(backend):
    # What Opacus / DP-SGD code computes: vmap(grad) over the batch, one sample at a time.
    x, params = _inputs(n=3)
    params = [p.detach() for p in params]
    x = x.detach()

    def per_sample(be):
        return func.vmap(func.grad(lambda p, xi: _loss(be)(p, xi[None])), in_dims=(None, 0))(params, x)

    got, expected = per_sample(backend), per_sample("reference")
    for g, e, p in zip(got, expected, params, strict=True):
        assert g.shape == (3, *p.shape)
        torch.testing.assert_close(g, e)
    # ... and they sum to the batch gradient
    batch = func.grad(_loss(backend))(params, x)
    torch.testing.assert_close(got[0].sum(0), batch[0])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_jacrev_and_vmap_forward_equal_reference(backend):
    x, params = _inputs(n=2, hw=4)
    params = [p.detach() for p in params]
    x = x.detach()
    jac = func.jacrev(lambda xx: _layer(backend)(xx, *params))(x)
    torch.testing.assert_close(jac, func.jacrev(lambda xx: _layer("reference")(xx, *params))(x))
    out = func.vmap(lambda xi: _layer(backend)(xi, *params))(x)  # unbatched samples inside vmap
    torch.testing.assert_close(out, _layer("reference")(x, *params))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_forward_mode_equals_reference(backend):
    x, params = _inputs(n=2, hw=4)
    params = [p.detach() for p in params]
    x, t = x.detach(), torch.randn_like(x)
    _, jvp = func.jvp(lambda xx: _layer(backend)(xx, *params), (x,), (t,))
    _, jvp_ref = func.jvp(lambda xx: _layer("reference")(xx, *params), (x,), (t,))
    assert jvp_ref.abs().max() > 0
    torch.testing.assert_close(jvp, jvp_ref)
    jf = func.jacfwd(lambda w: _layer(backend)(x, w, *params[1:]))(params[0])
    torch.testing.assert_close(jf, func.jacfwd(lambda w: _layer("reference")(x, w, *params[1:]))(params[0]))
    with fwAD.dual_level():
        tangent = fwAD.unpack_dual(_layer(backend)(fwAD.make_dual(x, t), *params)).tangent
    torch.testing.assert_close(tangent, jvp_ref)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_module_under_functional_call_and_vmap(backend):
    # torch.func.functional_call over SHCConv2d's parameters: the module path takes the same
    # fallback as the functional API.
    torch.manual_seed(0)
    layer = shc.SHCConv2d(2, 3, 3, padding=1, backend=backend).double()
    ref = shc.SHCConv2d(2, 3, 3, padding=1, backend="reference").double()
    ref.load_state_dict(layer.state_dict())
    x = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    params = {k: v.detach() for k, v in layer.named_parameters()}

    def per_sample(mod):
        def loss(p, xi):
            return func.functional_call(mod, p, (xi[None],)).square().sum()

        return func.vmap(func.grad(loss), in_dims=(None, 0))(params, x)

    got, expected = per_sample(layer), per_sample(ref)
    for k in params:
        torch.testing.assert_close(got[k], expected[k])
