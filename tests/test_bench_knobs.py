"""The CPU kernel's tuning knobs (SHC_CPU_* environment variables, csrc/cpu/knobs.cpp) are
checked on every call: a bad value is a one-line error naming the variable, never a crash
(SHC_CPU_CHUNKS_PER_THREAD=0 used to kill the process with SIGFPE)."""

from __future__ import annotations

import pytest
import torch

from shc_kernels import ops, reference

pytestmark = pytest.mark.skipif(not ops.compiled_available(), reason="needs the compiled CPU kernel")

KNOBS = ["SHC_CPU_COLS", "SHC_CPU_COLS_BWD", "SHC_CPU_KROWS", "SHC_CPU_WS_BYTES", "SHC_CPU_CHUNKS_PER_THREAD"]
BAD = ["0", "-3", "abc", "12x", "1e3", "99999999999999999999999"]


def _layer_inputs(n=6):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, 5, 5, generator=g, requires_grad=True)
    w = torch.randn(6, 4, 3, 3, generator=g, requires_grad=True)
    m = torch.rand(n, 3, 3, generator=g, requires_grad=True)
    return x, w, m


def _forward_backward(x, w, m):
    y = torch.ops.shc.modulated_conv2d(x, w, m, None, [1, 1], [1, 1], [1, 1], 1)
    y.sum().backward()
    return y


@pytest.mark.parametrize("value", BAD)
@pytest.mark.parametrize("name", KNOBS)
def test_bad_knob_is_an_error_naming_it(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(RuntimeError, match=name):
        _forward_backward(*_layer_inputs())


@pytest.mark.parametrize("value", ["2", "yes", "-1"])
def test_bad_no_brgemm_is_an_error(monkeypatch, value):
    monkeypatch.setenv("SHC_CPU_NO_BRGEMM", value)
    with pytest.raises(RuntimeError, match="SHC_CPU_NO_BRGEMM"):
        _forward_backward(*_layer_inputs())


@pytest.mark.parametrize(
    "env",
    [
        {"SHC_CPU_CHUNKS_PER_THREAD": "1", "SHC_CPU_COLS": "7"},
        {"SHC_CPU_KROWS": "1", "SHC_CPU_COLS_BWD": "3", "SHC_CPU_WS_BYTES": "1"},
        {"SHC_CPU_NO_BRGEMM": "1", "SHC_CPU_KROWS": "100000"},
        {"SHC_CPU_NO_BRGEMM": "0", "SHC_CPU_COLS": ""},
    ],
)
def test_good_knobs_give_the_reference_result(monkeypatch, env):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    x, w, m = _layer_inputs()
    y = _forward_backward(x, w, m)
    x2, w2, m2 = (t.detach().clone().requires_grad_(True) for t in (x, w, m))
    y_ref = reference.modulated_conv2d(x2, w2, m2, None, (1, 1), (1, 1), (1, 1), 1)
    y_ref.sum().backward()
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    for got, want in ((x.grad, x2.grad), (w.grad, w2.grad), (m.grad, m2.grad)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
