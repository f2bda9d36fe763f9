"""shc::channel_stats's CUDA kernels (csrc/cuda/channel_stats.cuh) on the CPU through the SIMT
layer, against float64 statistics of the same input: the wide two-stage pass in both layouts,
with and without 16-byte vectors, split over several pixel chunks or not, the general-stride
fallback, and the edges of fp32 (a large mean over a small spread, a spread of 1e19-1e38)."""

from __future__ import annotations

import pytest
import torch
from sim_helpers import emulation

EPS = 1e-5
RTOL = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 1e-6, torch.bfloat16: 1e-6}


def _stats64(x):
    x = x.double()
    return x.mean(dim=(2, 3)), (x.var(dim=(2, 3), correction=0) + EPS).sqrt()


def _layout(x, layout):
    if layout == "cl":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "stride2":  # every other element: one pixel stride of 2, scalar loads
        return torch.cat([x, x], dim=3)[:, :, :, ::2]
    if layout == "gapped":  # rows apart by more than W: no single pixel stride, block_stats
        return torch.cat([x, x], dim=2)[:, :, ::2]
    if layout == "offset":  # one element off 16-byte alignment: scalar loads
        return torch.cat([x.new_zeros(1), x.flatten()])[1:].view(x.shape)
    return x.contiguous()


def _check(x, sm_count=132):
    with emulation(sm_count=sm_count) as sim:
        before = sim.counters()["launches"]
        mu, sigma = torch.ops.shc_sim.channel_stats(x, EPS)
        launches = sim.counters()["launches"] - before
    want_mu, want_sigma = _stats64(x)
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    assert mu.dtype == dt and sigma.dtype == dt
    assert torch.isfinite(mu).all() and torch.isfinite(sigma).all()
    rtol = RTOL[x.dtype]
    torch.testing.assert_close(mu.double(), want_mu, rtol=rtol, atol=rtol * want_sigma.max().item())
    torch.testing.assert_close(sigma.double(), want_sigma, rtol=rtol, atol=0)
    return launches


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", ["nchw", "cl", "stride2", "gapped", "offset"])
@pytest.mark.parametrize("hw", [(8, 8), (13, 11)], ids=["8x8", "13x11"])
def test_channel_stats_match_float64_in_every_layout(sim, dtype, layout, hw):
    g = torch.Generator().manual_seed(hw[0])
    x = _layout((torch.randn(2, 24, *hw, generator=g, dtype=torch.float64) * 3 + 1).to(dtype), layout)
    launches = _check(x)
    assert launches == (1 if layout == "gapped" else 2)  # the wide pass is two kernels


@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("sm_count", [2, 132])
def test_channel_stats_merge_pixel_chunks_for_a_large_mean_over_a_small_spread(sim, layout, sm_count):
    # mean 1e6, spread 0.25: sums of squares around zero would cancel even in double (~1e-3 of
    # sigma); 132 SMs split each plane into several chunks, 2 SMs into one.
    g = torch.Generator().manual_seed(1)
    x = _layout((torch.randn(2, 16, 30, 31, generator=g, dtype=torch.float64) * 0.25 + 1e6).float(), layout)
    _check(x, sm_count)


@pytest.mark.parametrize("scale", [1e19, 1e20, 1e30, 1.5e38])
@pytest.mark.parametrize("layout", ["nchw", "cl"])
def test_channel_stats_stay_finite_for_huge_spreads(sim, scale, layout):
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(2, 8, 9, 7, generator=g, dtype=torch.float64).clamp(-2, 2) * scale).float()
    assert torch.isfinite(x).all()
    _check(_layout(x, layout))
