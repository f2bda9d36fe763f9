"""The CUDA conv-route dx of a strided conv by output parity (csrc/cuda/conv_tile.cuh launch_conv):
one launch per class (ih % sh, iw % sw) of input pixels, each running only the taps whose output
pixel (ih + ph - i dh) / sh is whole for its rows. Against the float64 reference on the tensor-core
tile (both copy paths) and the SIMT tile, with classes that no tap reaches (1x1 at stride 2,
dilation 2 at stride 2) and odd planes; and the tensor-core MMAs counted: exactly those of the valid
taps (stride 2, 3x3: 9 taps over the 4 classes where every row ran all 9)."""

from __future__ import annotations

import math

import pytest
import torch
from sim_helpers import emulation, make_conv_case, pair

from shc_kernels import reference

# (N, D, C, H, W, kernel, stride, padding, dilation, groups)
CASES = {
    "s2": (2, 16, 24, 9, 10, 3, 2, 1, 1, 1),
    "s2-even-g2": (2, 32, 16, 8, 8, 3, 2, 1, 1, 2),
    "s2-1x1": (2, 16, 16, 7, 6, 1, 2, 0, 1, 1),  # odd rows and columns get no tap: zeros
    "s21-dil2": (2, 16, 8, 9, 9, 3, (2, 1), 2, 2, 1),  # at stride 2 dilation 2 odd rows get no tap
    "s3": (2, 8, 16, 10, 11, 3, 3, 1, 1, 1),
    "s2-k4": (1, 8, 8, 9, 9, 4, 2, 1, 1, 1),
}
TOL = {torch.bfloat16: 6e-3, torch.float16: 1e-3, torch.float32: 2e-5, torch.float64: 1e-12}


def dx_of(sim, x, weight, m, gy, geo, groups):
    sim.reset_counters()
    dx, _, _ = torch.ops.shc_sim.modulated_conv2d_backward(
        gy, x, weight, m, *geo, groups, [True, False, False]
    )
    return dx, sim.counters()


def dx_reference(x, weight, m, gy, geo, groups):
    xd = x.detach().double().requires_grad_(True)
    y = reference.modulated_conv2d(
        xd, weight.double(), m.double(), None, stride=geo[0], padding=geo[1], dilation=geo[2], groups=groups
    )
    y.backward(gy.double())
    return xd.grad


def rel_err(got, want):
    return ((got.double() - want).abs().max() / want.abs().max()).item()


MATRIX = [
    (name, dtype, cl)
    for name in CASES
    for dtype in (torch.bfloat16, torch.float16, torch.float32, torch.float64)
    for cl in (True, False)
    if (dtype in (torch.bfloat16, torch.float32)) == cl or name == "s2"
]


@pytest.mark.parametrize(
    "name, dtype, channels_last",
    MATRIX,
    ids=[f"{m[0]}-{str(m[1])[6:]}-{'cl' if m[2] else 'nchw'}" for m in MATRIX],
)
def test_strided_dx_matches_reference(sim, name, dtype, channels_last):
    x, weight, m, gy, geo, groups = make_conv_case(CASES[name], dtype, channels_last)
    with emulation(sm_count=2, order="shuffled", seed=3):
        dx, _ = dx_of(sim, x, weight, m, gy, geo, groups)
    want = dx_reference(x, weight, m, gy, geo, groups)
    assert dx.shape == x.shape and dx.dtype == dtype
    if channels_last:
        assert dx.is_contiguous(memory_format=torch.channels_last)
    assert torch.isfinite(dx).all()
    assert rel_err(dx, want) <= TOL[dtype], f"dx: {rel_err(dx, want):.3e}"
    # the pixels that no output pixel reads stay exactly zero
    assert (dx.double()[want == 0] == 0).all()


def valid_tap_work(case, bm=128, bn=64, bk=32):
    """(tiles x taps x reduction blocks) over the dx launches of the tensor-core tile: per parity
    class of input pixels and only its valid taps (stride 1: one class, every tap)."""
    n, d, c, h, w, k, stride, padding, dilation, groups = case
    (sh, sw), (ph, pw), (dh, dw) = (pair(v) for v in (stride, padding, dilation))
    work = 0
    for ch in range(min(sh, h)):
        for cw in range(min(sw, w)):
            rows = n * math.ceil((h - ch) / sh) * math.ceil((w - cw) / sw)
            taps_h = sum((ch + ph - i * dh) % sh == 0 for i in range(k))
            taps_w = sum((cw + pw - j * dw) % sw == 0 for j in range(k))
            tiles = math.ceil(rows / bm) * math.ceil(d // groups / bn) * groups
            work += tiles * taps_h * taps_w * math.ceil(c // groups / bk)
    return work


def test_only_the_valid_taps_run(sim):
    # The emulator counts mma.sync calls; one (tile, tap, reduction block) step is a fixed number of
    # them, calibrated on a stride-1 layer where every tap of every row is valid.
    one = (2, 16, 24, 9, 10, 3, 1, 1, 1, 1)
    x, weight, m, gy, geo, groups = make_conv_case(one, torch.bfloat16, True)
    _, counts = dx_of(sim, x, weight, m, gy, geo, groups)
    per_step = counts["mma_sync"] / valid_tap_work(one)
    assert per_step == int(per_step) > 0
    for name in ("s2", "s2-even-g2", "s2-1x1", "s21-dil2", "s3"):
        x, weight, m, gy, geo, groups = make_conv_case(CASES[name], torch.bfloat16, True)
        _, counts = dx_of(sim, x, weight, m, gy, geo, groups)
        assert counts["mma_sync"] == per_step * valid_tap_work(CASES[name]), name
