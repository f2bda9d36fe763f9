"""The CPU kernels' per-channel statistics at the edges of float32, against float64.

- Planes whose spread is huge but far inside fp32's range (std 1e18 .. 1e30): the squares of their
  deviations overflow a float sum, so the kernels sum such a plane again scaled by a power of two
  (csrc/cpu/stats.cpp); mu and sigma stay finite and right, on every plane size (the one-plane,
  four-planes and lanes paths) and through the whole layer on every CPU method, fp32 and bf16.
- Planes whose mean is large against their spread: the statistics' backward, dx = grad_mu / HW +
  grad_sigma * (x - mu) / (HW * sigma), sees mu rounded to fp32, whose rounding error is then
  weighed against the spread; the kernels take the plane's mean relative to that rounded mu from x
  (csrc/cpu/stats.h), so dx keeps fp32 accuracy, through shc::channel_stats_backward and through
  the layer's one-call backward (the hypernetwork route) on every CPU method."""

from __future__ import annotations

import pytest
import torch

import shc_kernels as shc
from shc_kernels import ops, reference

pytestmark = pytest.mark.skipif(not ops.compiled_available(), reason="needs the compiled CPU kernel")

# (planes, H, W): 4x4 and 7x7 planes go four at a time (AVX2), 28x28 and 23x23 one at a time
# (blocks of 512 and a tail), a plane count that leaves 1-3 after the fours
PLANE_SHAPES = [(5, 4, 4), (7, 7, 7), (3, 28, 28), (2, 23, 23), (2, 1, 1)]
METHODS = ["auto", "im2col", "shift", "taps", "direct"]


def _stats64(x, eps=1e-5):
    xd = x.double()
    return xd.mean((2, 3)), (xd.var((2, 3), unbiased=False) + eps).sqrt()


def _rel_err(got, want):
    """max |got - want| over max |want| (the error on the scale of the whole result)."""
    return ((got.double() - want).abs().max() / want.abs().max()).item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("std", [1e18, 1e20, 1e30])
@pytest.mark.parametrize("shape", PLANE_SHAPES)
def test_huge_planes_have_finite_right_statistics(shape, std, dtype):
    planes, h, w = shape
    g = torch.Generator().manual_seed(planes * 100 + h)
    # one channel centred, one offset by 3 std (the shift by x[0] and by the mean both overflow)
    x = torch.randn(2, planes, h, w, generator=g) * std
    x[:, 1:2] += 3 * std
    x = x.to(dtype)
    mu, sigma = torch.ops.shc.channel_stats(x, 1e-5)
    want_mu, want_sigma = _stats64(x)
    assert torch.isfinite(mu).all() and torch.isfinite(sigma).all()
    torch.testing.assert_close(mu.double(), want_mu, rtol=1e-5, atol=1e-5 * std)
    torch.testing.assert_close(sigma.double(), want_sigma, rtol=1e-5, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n", [3, 19])
def test_layer_on_huge_planes_is_finite_and_right_on_each_method(monkeypatch, n, method, dtype):
    """shc::shc_conv2d computes the statistics before the conv (im2col, shift), per block of up to
    16 samples (direct) or with the samples in the lanes (taps: 19 is a group of 16, then 1s)."""
    monkeypatch.setenv("SHC_CPU_METHOD", method)
    g = torch.Generator().manual_seed(n)
    d, c, hw, std = 4, 32, 8, 1e19
    x = (torch.randn(n, d, hw, hw, generator=g) * std).to(dtype)
    w = torch.randn(c, d, 3, 3, generator=g).to(dtype)
    # a hypernetwork that keeps m away from 0 and 1 on z of 1e19
    f1w, f1b = torch.randn(8, 2 * d, generator=g) * 1e-20, torch.randn(8, generator=g)
    f2w, f2b = torch.randn(9, 8, generator=g), torch.randn(9, generator=g)
    args = [t.to(dtype) for t in (f1w, f1b, f2w, f2b)]
    y, m, z, _ = torch.ops.shc.shc_conv2d(x, w, None, *args, [1, 1], [1, 1], [1, 1], 1, 1e-5, "both")
    assert torch.isfinite(z).all() and torch.isfinite(y).all(), "statistics overflowed"
    mu, sigma = _stats64(x)
    torch.testing.assert_close(z.double(), torch.cat([mu, sigma], 1), rtol=1e-5, atol=1e-5 * std)
    h = torch.relu(z.double() @ args[0].double().t() + args[1].double())
    m64 = torch.sigmoid(h @ args[2].double().t() + args[3].double()).view(n, 3, 3)
    torch.testing.assert_close(m.double(), m64, rtol=1e-4, atol=1e-4)
    y64 = reference.modulated_conv2d(x.double(), w.double(), m64, None, 1, 1, 1, 1)
    assert _rel_err(y, y64) < (1e-5 if dtype == torch.float32 else 1e-2)


def _offset_planes(n, d, hw, dtype, seed):
    """Planes of mean 1000 (fp32) or 2**14 (bf16: 7 significant bits) and a spread 1e-5 of it."""
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bfloat16:
        return (2.0**14 + torch.randint(-8, 9, (n, d, hw, hw), generator=g) * 2.0**7).to(dtype)
    return 1000.0 + torch.randn(n, d, hw, hw, generator=g) * 0.01


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("hw", [4, 14, 28])
def test_statistics_backward_keeps_fp32_accuracy_on_offset_planes(hw, dtype):
    x = _offset_planes(2, 5, hw, dtype, hw)
    g = torch.Generator().manual_seed(hw + 1)
    gmu, gsigma = torch.randn(2, 5, generator=g), torch.randn(2, 5, generator=g)
    mu, sigma = torch.ops.shc.channel_stats(x, 0.0)
    dx = torch.ops.shc.channel_stats_backward(gmu, gsigma, x, mu, sigma)
    mu64, sigma64 = _stats64(x, 0.0)
    want = (
        gmu.double()[..., None, None]
        + gsigma.double()[..., None, None] * (x.double() - mu64[..., None, None]) / sigma64[..., None, None]
    ) / (hw * hw)
    # dx in fp32: a few ulps of the result's scale (mu rounded to fp32 alone gave 5e-4 .. 9e-4)
    assert dx.dtype == x.dtype
    assert _rel_err(dx, want) < (1e-5 if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("method", ["im2col", "shift", "taps", "direct"])
def test_layer_hyper_route_dx_keeps_fp32_accuracy_on_offset_planes(monkeypatch, method):
    """The layer's one-call backward, dx by the hypernetwork route only, against the reference
    backend in float64 on the same fp32 values."""
    monkeypatch.setenv("SHC_CPU_METHOD", method)
    torch.manual_seed(3)
    layer = shc.SHCConv2d(6, 32, 3, padding=1, grad_route="hyper", backend="cpu")
    with torch.no_grad():  # z is about 1000: a small fc1 and a positive bias keep h > 0, m off its flat ends
        layer.hyper.fc1.weight.normal_(0.0, 1e-4)
        layer.hyper.fc1.bias.fill_(1.0)
    x = _offset_planes(4, 6, 14, torch.float32, 7).requires_grad_(True)
    dy = torch.randn(4, 32, 14, 14, generator=torch.Generator().manual_seed(5))
    (got,) = torch.autograd.grad(layer(x), x, dy)
    ref = shc.SHCConv2d(6, 32, 3, padding=1, grad_route="hyper", backend="reference").double()
    ref.load_state_dict(layer.state_dict())
    x64 = x.detach().double().requires_grad_(True)
    (want,) = torch.autograd.grad(ref(x64), x64, dy.double())
    assert _rel_err(got, want) < 1e-5
