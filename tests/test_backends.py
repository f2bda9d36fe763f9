"""Every compiled backend returns what shc_kernels.reference returns, forward and backward,
for every gradient route, on shapes drawn by hypothesis (the foundation issue, item 7)."""

from __future__ import annotations

import pytest
import torch
from helpers import (
    CPU_BACKENDS,
    FORMS,
    ROUTES,
    compare_with_reference,
    fits,
    forced_form,
    layer_shapes,
    make_params,
    rand_x,
)
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import shc_kernels as shc


def test_cpu_backend_is_built():
    # `make setup` builds the extension: a missing "cpu" backend is a failure, not a skip.
    assert "cpu" in shc.available_backends(), shc.backends.unavailable_reason("cpu")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(s=layer_shapes(), form=st.sampled_from(FORMS))
def test_backend_matches_reference_fp64_hypothesis(backend, s, form):
    assume(fits(s))
    with forced_form(form):
        compare_with_reference(backend, torch.float64, s)


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
@pytest.mark.parametrize("form", FORMS)
def test_backend_matches_reference_fp32(backend, route, case, channels_last, form, monkeypatch):
    monkeypatch.setenv("SHC_FORM", form)
    n, d, c, h, w, k, stride, padding, dilation, groups, bias = case
    s = dict(n=n, groups=groups, d_per_group=d // groups, c_per_group=c // groups, h=h, w=w, k=k,
             stride=stride, padding=padding, dilation=dilation, bias=bias, route=route,
             channels_last=channels_last)  # fmt: skip
    y = compare_with_reference(backend, torch.float32, s)
    if channels_last:
        assert y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("hw", [(1, 1), (2, 3), (7, 7), (8, 6), (9, 4), (56, 56)], ids=str)
def test_downsampling_conv_matches_reference(backend, hw):
    # The 3x3 stride-2 padding-1 conv has its own im2col on CPU (phase planes, csrc/cpu): odd and
    # even sides, a 1x1 input, and a 56x56 plane the kernel splits into blocks of output rows.
    h, w = hw
    s = dict(n=3, groups=1, d_per_group=5, c_per_group=4, h=h, w=w, k=(3, 3), stride=2, padding=1,
             dilation=1, bias=True, route="both", channels_last=False)  # fmt: skip
    compare_with_reference(backend, torch.float64, s)


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


def test_fastest_times_once_per_key_and_skips_a_failing_backend(monkeypatch):
    import time

    monkeypatch.setattr(shc.backends, "_FASTEST", {})
    calls = []

    def run(name):
        calls.append(name)
        if name == "broken":
            raise RuntimeError("kernel failed")
        time.sleep({"slow": 0.02, "quick": 0.001}[name])

    with pytest.warns(UserWarning, match="'broken' failed while timing k: kernel failed"):
        assert shc.backends.fastest("k", ["slow", "broken", "quick"], run, "cpu") == "quick"
    n = len(calls)
    assert shc.backends.fastest("k", ["slow", "broken", "quick"], run, "cpu") == "quick"
    assert len(calls) == n  # cached: nothing ran again
    with pytest.raises(RuntimeError, match="nothing among"), pytest.warns(UserWarning):
        shc.backends.fastest("k2", ["broken"], run, "cpu")


def test_auto_with_two_candidates_times_them_and_stays_correct(monkeypatch):
    # On a GPU "auto" chooses between "triton" and "cuda"; here the same machinery runs with the
    # two CPU-tensor backends standing in for them.
    monkeypatch.setattr(shc.backends, "_FASTEST", {})
    monkeypatch.setattr(shc.backends, "auto_candidates", lambda x: ["cpu", "reference"])
    monkeypatch.delenv("SHC_BACKEND", raising=False)
    torch.manual_seed(0)
    layer = shc.SHCConv2d(4, 6, 3, padding=1)
    x = torch.randn(2, 4, 7, 7, requires_grad=True)
    y = layer(x)
    assert len(shc.backends._FASTEST) == 1
    assert next(iter(shc.backends._FASTEST.values())) in ("cpu", "reference")
    layer.backend = "reference"
    torch.testing.assert_close(y, layer(x), rtol=1e-5, atol=1e-5)
    layer.backend = "cpu"  # an explicit choice is never timed
    layer(x)
    assert len(shc.backends._FASTEST) == 1


def test_cuda_forms_are_timed_once_per_shape_and_agree(monkeypatch):
    # On a GPU the "cuda" backend times its one-launch and two-launch forms per shape; here the
    # same machinery runs on the "cpu" backend, whose two forms are the same ops.
    if "cpu" not in CPU_BACKENDS:
        pytest.skip("extension not built")
    monkeypatch.setattr(shc.backends, "_FASTEST", {})
    monkeypatch.setattr(shc.functional, "TIMED_FORMS", ("cpu",))
    monkeypatch.delenv("SHC_FORM", raising=False)
    params = make_params(4, 6, 3, 3)
    x = rand_x(2, 4, 7, 7)
    y = shc.shc_conv2d(x, *params, padding=1, backend="cpu")
    ((key, form),) = shc.backends._FASTEST.items()
    assert key[:2] == ("form", "cpu") and form in FORMS
    shc.shc_conv2d(x, *params, padding=1, backend="cpu")
    assert len(shc.backends._FASTEST) == 1  # cached: the same shape is not timed again
    shc.shc_conv2d(x[:1], *params, padding=1, backend="cpu")
    assert len(shc.backends._FASTEST) == 2
    for other in FORMS:
        monkeypatch.setenv("SHC_FORM", other)
        torch.testing.assert_close(shc.shc_conv2d(x, *params, padding=1, backend="cpu"), y)


def test_unknown_shc_form_is_a_clear_error(monkeypatch):
    if "cpu" not in CPU_BACKENDS:
        pytest.skip("extension not built")
    monkeypatch.setenv("SHC_FORM", "both")
    with pytest.raises(ValueError, match="SHC_FORM must be one of"):
        shc.shc_conv2d(rand_x(1, 4, 5, 5), *make_params(4, 6, 3, 3), padding=1, backend="cpu")


def test_bad_input_is_a_clear_error_even_when_auto_would_time_backends(monkeypatch):
    # Arguments are checked before any timing: a bad shape must not surface as every candidate
    # "failing" while timed.
    monkeypatch.setattr(shc.backends, "_FASTEST", {})
    monkeypatch.setattr(shc.backends, "auto_candidates", lambda x: ["cpu", "reference"])
    monkeypatch.setattr(shc.functional, "TIMED_FORMS", ("cpu",))
    monkeypatch.delenv("SHC_BACKEND", raising=False)
    monkeypatch.delenv("SHC_FORM", raising=False)
    weight, bias, f1w, f1b, f2w, f2b = make_params(4, 6, 3, 3)
    x = rand_x(2, 4, 7, 7)
    for backend in ("auto", "cpu"):
        with pytest.raises(ValueError, match="fc1_weight must have shape"):
            shc.shc_conv2d(x, weight, bias, f1w[:, :5], f1b, f2w, f2b, padding=1, backend=backend)
        with pytest.raises(ValueError, match="too small for kernel"):
            shc.shc_conv2d(x[:, :, :1, :1], weight, bias, f1w, f1b, f2w, f2b, backend=backend)
    assert shc.backends._FASTEST == {}


@pytest.fixture
def deterministic_mode():
    """torch.use_deterministic_algorithms for one test, restored after it."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    yield lambda warn_only: torch.use_deterministic_algorithms(True, warn_only=warn_only)
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def test_auto_on_a_gpu_takes_the_reference_in_deterministic_mode(monkeypatch, deterministic_mode):
    """The Triton and CUDA backwards raise in deterministic mode (atomic dW and dm), so "auto" must
    not pick them there while autograd records; inference and warn_only mode keep them. No GPU is
    needed: the choice reads only x's device and dtype."""
    from types import SimpleNamespace

    monkeypatch.setattr(shc.backends, "unavailable_reason", lambda name: None)
    x = SimpleNamespace(device=torch.device("cuda"), dtype=torch.float16)
    assert shc.backends.auto_candidates(x) == ["triton", "cuda"]
    deterministic_mode(warn_only=False)
    assert shc.backends.auto_candidates(x) == []
    assert shc.backends.resolve("auto", x) == "reference"
    with torch.no_grad():
        assert shc.backends.auto_candidates(x) == ["triton", "cuda"]
    cpu = SimpleNamespace(device=torch.device("cpu"), dtype=torch.float32)
    assert shc.backends.auto_candidates(cpu) == ["cpu"]  # the CPU backward is deterministic
    deterministic_mode(warn_only=True)
    assert shc.backends.auto_candidates(x) == ["triton", "cuda"]
