"""tests/gpu's parity cases on the CPU: the CUDA kernels of csrc/cuda, run through the SIMT layer
(backend="cuda_sim": the package's whole Python path, its checks and autograd formulas, on top of
torch.ops.shc_sim), against the float64 reference — forward and every gradient, both forms (one
launch and split), fp32/fp64/fp16/bf16, NCHW and channels_last, every route, odd sizes, N = 0,
H x W = 1, drawn shapes; each case on one of sim_helpers.EMULATIONS, in turn."""

from __future__ import annotations

import pytest
import torch
from cases import SMALL  # tests/gpu/cases.py
from helpers import FORMS, ROUTES, fits, forced_form, layer_shapes, make_params, rand_x, run_layer
from hypothesis import HealthCheck, given, settings
from sim_helpers import EMULATION_NAMES, EMULATIONS, check_close, emulation, pick

import shc_kernels as shc
from shc_kernels import reference

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# tests/gpu's small cases, and one that spans several row, column and reduction tiles of every
# kernel: (N, D, C, H, W, kernel, stride, padding, dilation, groups).
CASES = {**SMALL, "tiles": (2, 40, 70, 11, 13, 3, 1, 1, 1, 1)}


def layer(form):
    def fn(*a, **k):
        with forced_form(form):
            return shc.shc_conv2d(*a, **k, backend="cuda_sim")

    return fn


def compare(case, dtype, channels_last, grad_route, form, bias=True):
    n, d, c, h, w, k, stride, padding, dilation, groups = case
    params = make_params(d, c, k, k, groups=groups, bias=bias, dtype=dtype)
    x = rand_x(n, d, h, w, dtype=dtype, channels_last=channels_last)
    conf = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, grad_route=grad_route)
    y, grads = run_layer(layer(form), x, params, **conf)
    dbl = [None if p is None else p.double() for p in params]
    y_ref, grads_ref = run_layer(reference.shc_conv2d, x.double(), dbl, **conf)
    assert y.dtype == dtype
    if channels_last and min(y.shape[1:]) > 1:
        assert y.is_contiguous(memory_format=torch.channels_last)
    check_close(y, y_ref, dtype, "y")
    names = ("x", "weight", "bias", "fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias")
    for name, g, g_ref in zip(names, grads, grads_ref, strict=True):
        check_close(g, g_ref, dtype, f"grad {name}")


MATRIX = [
    (name, dtype, cl, form)
    for name in CASES
    for dtype in DTYPES
    for cl in (False, True)
    for form in FORMS
    if name != "tiles" or (dtype in (torch.float32, torch.float16) and not cl)
]


@pytest.mark.parametrize(
    "name, dtype, channels_last, form, emu",
    [(*m, pick(i)) for i, m in enumerate(MATRIX)],
    ids=[f"{m[0]}-{str(m[1])[6:]}-{'cl' if m[2] else 'nchw'}-{m[3]}-{pick(i)}" for i, m in enumerate(MATRIX)],
)
def test_layer_matches_reference(sim, name, dtype, channels_last, form, emu):
    with emulation(**EMULATIONS[emu]):
        compare(CASES[name], dtype, channels_last, "both", form)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("grad_route", ROUTES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_every_grad_route_matches_reference(sim, grad_route, dtype, form):
    with emulation(**EMULATIONS[pick(ROUTES.index(grad_route) + FORMS.index(form))]):
        compare(CASES["3x3-s2-g2-p0"], dtype, True, grad_route, form, bias=False)


@pytest.mark.parametrize("emu", EMULATION_NAMES)
def test_every_emulation_on_the_tiled_case(sim, emu):
    with emulation(**EMULATIONS[emu]):
        compare(CASES["tiles"], torch.float16, True, "both", "fused")


@pytest.mark.parametrize("form", FORMS)
def test_empty_batch(sim, form):
    params = make_params(4, 6, 3, 3, dtype=torch.float32)
    x = torch.empty(0, 4, 7, 6, requires_grad=True)
    y = layer(form)(x, *params, padding=1)
    assert y.shape == (0, 6, 7, 6)
    y.sum().backward()
    assert x.grad.shape == x.shape


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(s=layer_shapes(max_n=3, max_per_group=10, max_hw=9))
def test_drawn_shapes_match_reference(sim, s):
    if not fits(s):
        return
    case = (s["n"], s["d_per_group"] * s["groups"], s["c_per_group"] * s["groups"], s["h"], s["w"], s["k"],
            s["stride"], s["padding"], s["dilation"], s["groups"])  # fmt: skip
    if case[0] == 0:
        return  # test_empty_batch
    kh, kw = s["k"]
    n, d, c, h, w, _, stride, padding, dilation, groups = case
    params = make_params(d, c, kh, kw, groups=groups, bias=s["bias"], dtype=torch.float32)
    x = rand_x(n, d, h, w, dtype=torch.float32, channels_last=s["channels_last"])
    conf = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, grad_route=s["route"])
    form = FORMS[(h + w) % 2]
    with emulation(**EMULATIONS[pick(h * 3 + w)]):
        y, grads = run_layer(layer(form), x, params, **conf)
    dbl = [None if p is None else p.double() for p in params]
    y_ref, grads_ref = run_layer(reference.shc_conv2d, x.double(), dbl, **conf)
    check_close(y, y_ref, torch.float32, "y")
    for i, (g, g_ref) in enumerate(zip(grads, grads_ref, strict=True)):
        check_close(g, g_ref, torch.float32, f"grad {i}")


@pytest.mark.parametrize("mask", [[False, False, True], [True, False, False], [False, True, False]])
def test_backward_output_mask(sim, mask):
    weight, *_ = make_params(4, 6, 3, 3, dtype=torch.float32)
    x = rand_x(2, 4, 7, 6, dtype=torch.float32)
    m = torch.rand(2, 3, 3, generator=torch.Generator().manual_seed(3))
    gy = torch.randn(2, 6, 7, 6, generator=torch.Generator().manual_seed(4))
    args = (gy, x, weight, m, [1, 1], [1, 1], [1, 1], 1)
    full = torch.ops.shc_sim.modulated_conv2d_backward(*args, [True, True, True])
    part = torch.ops.shc_sim.modulated_conv2d_backward(*args, mask)
    for want, a, b in zip(mask, part, full, strict=True):
        if want:
            torch.testing.assert_close(a, b)
        else:
            assert a.numel() == 0


def pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", ["3x3", "3x3-s2-g2-p0", "tiles"])
def test_one_launch_op_returns_m_z_h(sim, case, dtype, channels_last):
    n, d, c, h, w, k, stride, padding, dilation, groups = CASES[case]
    weight, bias, f1w, f1b, f2w, f2b = make_params(d, c, k, k, groups=groups, dtype=dtype)
    x = rand_x(n, d, h, w, dtype=dtype, channels_last=channels_last)
    with emulation(sm_count=2, live_blocks=2, order="shuffled", seed=4):
        geometry = [list(pair(v)) for v in (stride, padding, dilation)]
        y, m, z, hid = torch.ops.shc_sim.shc_conv2d(
            x, weight, bias, f1w, f1b, f2w, f2b, *geometry, groups, 1e-5, "both"
        )
    dbl = [t.double() for t in (x, weight, bias, f1w, f1b, f2w, f2b)]
    y_ref = reference.shc_conv2d(*dbl, stride=stride, padding=padding, dilation=dilation, groups=groups)
    m_ref = reference.statistical_map(dbl[0], *dbl[3:], (k, k))
    mu, sigma = reference.channel_stats(dbl[0])
    z_ref = torch.cat([mu, sigma], 1)
    st = torch.float64 if dtype == torch.float64 else torch.float32
    assert m.dtype == z.dtype == hid.dtype == st
    check_close(m, m_ref, st, "m")
    check_close(z, z_ref, st, "z")
    check_close(hid, torch.relu(z_ref @ dbl[3].T + dbl[4]), st, "h")
    check_close(y, y_ref, dtype, "y")


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_statistics_of_huge_inputs_are_finite(sim, dtype, channels_last):
    # |x| ~ 1e30 (fp32) or the type's largest values: squares overflow fp32, so the kernels
    # accumulate in double like the cpu backend.
    scale = {torch.float32: 1e30, torch.float16: 1e4, torch.bfloat16: 1e30}[dtype]
    x = (rand_x(2, 40, 9, 7, dtype=torch.float64, channels_last=channels_last) * scale / 3).to(dtype)
    mu, sigma = torch.ops.shc_sim.channel_stats(x, 1e-5)
    mu_ref, sigma_ref = reference.channel_stats(x.double())
    assert torch.isfinite(mu).all() and torch.isfinite(sigma).all()
    torch.testing.assert_close(mu.double(), mu_ref, rtol=1e-5, atol=0)
    torch.testing.assert_close(sigma.double(), sigma_ref, rtol=1e-5, atol=0)
    # the one-launch kernel computes the same statistics (z = cat(mu, sigma))
    weight, bias, f1w, f1b, f2w, f2b = make_params(40, 4, 3, 3, dtype=dtype)
    one = [1, 1]
    _, _, z, _ = torch.ops.shc_sim.shc_conv2d(
        x, weight, bias, f1w, f1b, f2w, f2b, one, one, one, 1, 1e-5, "both"
    )
    torch.testing.assert_close(z.double(), torch.cat([mu_ref, sigma_ref], 1), rtol=1e-5, atol=0)


def test_cuda_sim_is_hidden(sim):
    assert "cuda_sim" not in shc.available_backends()


def test_ops_take_any_strides(sim):
    # The kernels read through strides: a sliced (non-contiguous) x and a permuted weight layout.
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 6, 9, 14, generator=g)[:, 1:5, :, ::2]
    weight = torch.randn(3, 4, 3, 3, generator=g)
    m = torch.rand(2, 3, 3, generator=g)
    assert not x.is_contiguous()
    y = torch.ops.shc_sim.modulated_conv2d(x, weight, m, None, [1, 1], [1, 1], [1, 1], 1)
    y_ref = reference.modulated_conv2d(x.double(), weight.double(), m.double(), padding=1)
    check_close(y, y_ref, torch.float32, "y")
    mu, sigma = torch.ops.shc_sim.channel_stats(x, 1e-5)
    mu_ref, sigma_ref = reference.channel_stats(x.double())
    check_close(mu, mu_ref, torch.float32, "mu")
    check_close(sigma, sigma_ref, torch.float32, "sigma")


@pytest.mark.parametrize("form", FORMS)
def test_gradcheck_through_the_emulated_kernels(sim, form):
    # float64 end to end: the backward of every op (their formulas in ops.py run shc_sim's
    # backward kernels) against finite differences of the emulated forward.
    weight, bias, f1w, f1b, f2w, f2b = make_params(2, 2, 3, 3, dtype=torch.float64)
    x = rand_x(1, 2, 4, 3, dtype=torch.float64)
    inputs = [t.detach().clone().requires_grad_(True) for t in (x, weight, bias, f1w, f1b, f2w, f2b)]
    with emulation(sm_count=2):
        assert torch.autograd.gradcheck(lambda *a: layer(form)(*a, padding=1), inputs, eps=1e-6, atol=1e-6)
