"""Every CUDA backend against the reference on a GPU: fp32/fp16/bf16, forward and every gradient,
every grad_route, NCHW and channels_last, small odd shapes and ResNet-sized ones.

Run on a GPU machine with ``pytest -m gpu tests/gpu`` (bench/gpu_check.sh does). The reference
runs in float64 on the same (rounded) inputs; errors are measured relative to the largest
reference value, so big reductions (dW over the whole batch) get a fair tolerance.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/helpers.py
from helpers import FORMS, ROUTES, forced_form, make_params, rand_x, run_layer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # cases.py, shared with tests/sim
from cases import LARGE, SMALL  # noqa: E402

import shc_kernels as shc  # noqa: E402
from shc_kernels import reference  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

GPU_BACKENDS = [b for b in shc.available_backends() if b in ("triton", "cuda")]
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Relative to max |reference|: fp32 is IEEE here (TF32 switched off by the fixture below).
REL_TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 4e-2}


@pytest.fixture(autouse=True)
def _no_tf32():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _in_form(backend, form):
    def fn(*a, **k):
        with forced_form(form):
            return shc.shc_conv2d(*a, **k, backend=backend)

    return fn


def _layer_fns():
    """The "triton" backend, and the "cuda" backend in each form: "cuda:fused" (one launch), "cuda:split"."""
    fns = {}
    for b in GPU_BACKENDS:
        if b == "cuda":
            fns.update({f"cuda:{form}": _in_form("cuda", form) for form in FORMS})
        else:
            fns[b] = lambda *a, _b=b, **k: shc.shc_conv2d(*a, **k, backend=_b)
    return fns


LAYER_FNS = _layer_fns() if torch.cuda.is_available() else {}


def _check(got, want, dtype, what):
    assert (got is None) == (want is None), what
    if got is None:
        return
    assert got.dtype in (dtype, torch.float32), f"{what}: dtype {got.dtype}"
    assert got.shape == want.shape, what
    assert torch.isfinite(got).all(), f"{what}: non-finite values"
    err = (got.double() - want.double()).abs().max().item()
    scale = max(want.abs().max().item(), 1e-3)
    assert err <= REL_TOL[dtype] * scale, f"{what}: max error {err:.3e} vs max |ref| {scale:.3e}"


def _compare(fn, case, dtype, channels_last, grad_route, bias=True):
    n, d, c, h, w, k, stride, padding, dilation, groups = case
    params = [None if p is None else p.cuda() for p in make_params(d, c, k, k, groups=groups, bias=bias,
                                                                     dtype=dtype)]  # fmt: skip
    x = rand_x(n, d, h, w, dtype=dtype, channels_last=channels_last).cuda()
    conf = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, grad_route=grad_route)
    y, grads = run_layer(fn, x, params, **conf)
    y_ref, grads_ref = run_layer(reference.shc_conv2d, x.double(), [None if p is None else p.double()
                                                                for p in params], **conf)  # fmt: skip
    assert y.dtype == dtype
    if channels_last and min(y.shape[1:]) > 1:
        assert y.is_contiguous(memory_format=torch.channels_last)
    _check(y, y_ref, dtype, "y")
    names = ("x", "weight", "bias", "fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias")
    for name, g, g_ref in zip(names, grads, grads_ref, strict=True):
        _check(g, g_ref, dtype, f"grad {name}")


needs_backend = pytest.mark.skipif(not LAYER_FNS, reason="no CUDA backend (triton/cuda) is available")


@needs_backend
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", SMALL.values(), ids=SMALL.keys())
@pytest.mark.parametrize("backend", LAYER_FNS.keys())
def test_small_shapes_match_reference(backend, case, dtype, channels_last):
    _compare(LAYER_FNS[backend], case, dtype, channels_last, "both")


@needs_backend
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("grad_route", ROUTES)
@pytest.mark.parametrize("backend", LAYER_FNS.keys())
def test_every_grad_route_matches_reference(backend, grad_route, dtype, channels_last):
    _compare(LAYER_FNS[backend], SMALL["3x3-s2-g2-p0"], dtype, channels_last, grad_route, bias=False)


@needs_backend
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", LARGE.values(), ids=LARGE.keys())
@pytest.mark.parametrize("backend", LAYER_FNS.keys())
def test_large_shapes_match_reference(backend, case, dtype, channels_last):
    _compare(LAYER_FNS[backend], case, dtype, channels_last, "both")


@needs_backend
@pytest.mark.parametrize("backend", LAYER_FNS.keys())
def test_empty_batch(backend):
    params = [p.cuda() for p in make_params(4, 6, 3, 3, dtype=torch.float32)]
    x = torch.empty(0, 4, 7, 6, device="cuda", requires_grad=True)
    y = LAYER_FNS[backend](x, *params, stride=1, padding=1, dilation=1, groups=1, grad_route="both")
    assert y.shape == (0, 6, 7, 6)
    y.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.skipif("triton" not in GPU_BACKENDS and not LAYER_FNS, reason="triton not available")
def test_triton_fp32_uses_tf32_only_when_cudnn_allows_it():
    from shc_kernels.triton.conv import _input_precision

    x = torch.ones(1, device="cuda")
    torch.backends.cudnn.allow_tf32 = False
    assert _input_precision(x) == "ieee"
    torch.backends.cudnn.allow_tf32 = True
    assert _input_precision(x) == "tf32"


needs_cuda_backend = pytest.mark.skipif("cuda" not in GPU_BACKENDS, reason="CUDA kernels not available")


@needs_cuda_backend
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("case", SMALL.values(), ids=SMALL.keys())
def test_cuda_float64_matches_reference(case, form):
    n, d, c, h, w, k, stride, padding, dilation, groups = case
    params = [p.cuda() for p in make_params(d, c, k, k, groups=groups, dtype=torch.float64)]
    x = rand_x(n, d, h, w, dtype=torch.float64).cuda()
    conf = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, grad_route="both")
    y, grads = run_layer(LAYER_FNS[f"cuda:{form}"], x, params, **conf)
    y_ref, grads_ref = run_layer(reference.shc_conv2d, x, params, **conf)
    for a, b in zip([y, *grads], [y_ref, *grads_ref], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@needs_cuda_backend
@pytest.mark.parametrize("mask", [[False, False, True], [True, False, False], [False, True, False]])
def test_cuda_backward_output_mask(mask):
    weight, _, *_ = make_params(4, 6, 3, 3, dtype=torch.float32)
    x = rand_x(2, 4, 7, 6, dtype=torch.float32).cuda()
    weight, m = weight.cuda(), torch.rand(2, 3, 3, device="cuda")
    gy = torch.randn(2, 6, 7, 6, device="cuda")
    args = (gy, x, weight, m, [1, 1], [1, 1], [1, 1], 1)
    full = torch.ops.shc.modulated_conv2d_backward(*args, [True, True, True])
    part = torch.ops.shc.modulated_conv2d_backward(*args, mask)
    for want, a, b in zip(mask, part, full, strict=True):
        if want:
            torch.testing.assert_close(a, b)
        else:
            assert a.numel() == 0


@needs_cuda_backend
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "case", [SMALL["3x3"], SMALL["3x3-s2-g2-p0"], LARGE["r50-l4"]], ids=["3x3", "s2g2", "r50l4"]
)
def test_one_launch_forward_matches_reference(case, dtype, channels_last):
    n, d, c, h, w, k, stride, padding, dilation, groups = case
    weight, bias, f1w, f1b, f2w, f2b = [p.cuda() for p in make_params(d, c, k, k, groups=groups, dtype=dtype)]
    x = rand_x(n, d, h, w, dtype=dtype, channels_last=channels_last).cuda()
    y, m, z, h = torch.ops.shc.shc_conv2d(
        x,
        weight,
        bias,
        f1w,
        f1b,
        f2w,
        f2b,
        list(pair(stride)),
        list(pair(padding)),
        list(pair(dilation)),
        groups,
        1e-5,
        "both",
    )
    dbl = [t.double() for t in (x, weight, bias, f1w, f1b, f2w, f2b)]
    y_ref = reference.shc_conv2d(*dbl, stride=stride, padding=padding, dilation=dilation, groups=groups)
    m_ref = reference.statistical_map(dbl[0], *dbl[3:], (k, k))
    mu, sigma = reference.channel_stats(dbl[0])
    z_ref = torch.cat([mu, sigma], 1)
    _check(m, m_ref, torch.float32, "m")
    _check(z, z_ref, torch.float32, "z")
    _check(h, torch.relu(z_ref @ dbl[3].T + dbl[4]), torch.float32, "h")
    _check(y, y_ref, dtype, "y")


def pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


@needs_cuda_backend
def test_cuda_backend_times_its_two_forms_once_per_shape(monkeypatch):
    monkeypatch.delenv("SHC_FORM", raising=False)
    monkeypatch.setattr(shc.backends, "_FASTEST", {})
    params = [p.cuda() for p in make_params(8, 8, 3, 3, dtype=torch.float16)]
    x = rand_x(4, 8, 12, 12, dtype=torch.float16).cuda()
    y = shc.shc_conv2d(x, *params, padding=1, backend="cuda")
    chosen = {k: v for k, v in shc.backends._FASTEST.items() if k[:2] == ("form", "cuda")}
    assert len(chosen) == 1 and next(iter(chosen.values())) in FORMS
    shc.shc_conv2d(x, *params, padding=1, backend="cuda")
    assert len(shc.backends._FASTEST) == len(chosen)  # not timed again
    y_ref = reference.shc_conv2d(x.double(), *[p.double() for p in params], padding=1)
    _check(y, y_ref, torch.float16, "y")


@needs_cuda_backend
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_cuda_statistics_of_huge_inputs_are_finite(channels_last):
    # fp32 squares of |x| ~ 1e30 overflow: the kernels accumulate in double (tests/sim checks the
    # same on the CPU-run build).
    x = (rand_x(2, 40, 9, 7, dtype=torch.float64, channels_last=channels_last) * 1e30 / 3).float().cuda()
    mu, sigma = torch.ops.shc.channel_stats(x, 1e-5)
    mu_ref, sigma_ref = reference.channel_stats(x.double())
    assert torch.isfinite(mu).all() and torch.isfinite(sigma).all()
    torch.testing.assert_close(mu.double(), mu_ref, rtol=1e-5, atol=0)
    torch.testing.assert_close(sigma.double(), sigma_ref, rtol=1e-5, atol=0)
