"""shc::channel_stats_backward's CUDA kernel (csrc/cuda/channel_stats.cuh, the hypernetwork route
of dx) on the CPU through the SIMT layer, against the same gradient in float64, where a plane's mean
is large against its spread: the saved mu is rounded to fp32, and x - mu would carry that rounding
into every element (about three digits at mean 1000, spread 0.01). The launcher moves it into the
per-plane constant (issue 32)."""

from __future__ import annotations

import pytest
import torch
from sim_helpers import emulation

EPS = 1e-5


def _dx64(gmu, gsig, x):
    """The statistics' backward in float64 at x's own float64 statistics."""
    x = x.double()
    hw = x.shape[2] * x.shape[3]
    mu = x.mean(dim=(2, 3), keepdim=True)
    sigma = (x.var(dim=(2, 3), correction=0, keepdim=True) + EPS).sqrt()
    return gmu.double()[..., None, None] / hw + gsig.double()[..., None, None] * (x - mu) / (hw * sigma)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("mean, spread", [(0.0, 1.0), (1e3, 1e-2), (-3e4, 0.5), (1e6, 4.0)])
def test_stats_backward_keeps_its_digits_when_the_mean_dwarfs_the_spread(sim, dtype, layout, mean, spread):
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(2, 6, 9, 11, generator=g, dtype=torch.float64) * spread + mean).to(dtype)
    if layout == "cl":
        x = x.contiguous(memory_format=torch.channels_last)
    gmu = torch.randn(2, 6, generator=g, dtype=torch.float64).to(dtype)
    gsig = torch.randn(2, 6, generator=g, dtype=torch.float64).to(dtype)
    with emulation():
        mu, sigma = torch.ops.shc_sim.channel_stats(x, EPS)
        dx = torch.ops.shc_sim.channel_stats_backward(gmu, gsig, x, mu, sigma)
    assert dx.dtype == dtype and dx.shape == x.shape
    want = _dx64(gmu, gsig, x)
    # fp32: a few ulps of the largest element (before the fix, (1e3, 1e-2) was off by 1e-3 of it);
    # fp64: the float64 reference itself is only good to about eps64 * |mean| / spread
    if dtype == torch.float64:
        tol = max(1e-13, 16 * 2.2e-16 * abs(mean) / spread)
    else:
        tol = 2e-6
    err = ((dx.double() - want).abs().max() / want.abs().max()).item()
    assert err < tol, f"max error {err:.2e} of the largest element (tolerance {tol:.0e})"
