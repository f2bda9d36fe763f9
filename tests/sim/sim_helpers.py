"""Shared by tests/sim: loading _C_sim, emulation settings, comparisons with the reference."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/helpers.py

# Emulated machines the parity tests cycle through (every case runs on one of them, chosen by its
# index, so each setting meets every kind of case without multiplying the run time):
#   sm_count 132 (an H100: the dW split counts and the one-launch grid) and 2; 1 and 2 blocks live
#   at once (2: the one-launch handshake really runs across blocks); fibers resumed forward,
#   reverse or shuffled; the hardware's WMMA fragment mapping or a scrambled one.
EMULATIONS = {
    "h100": dict(sm_count=132, live_blocks=1, order="forward", mapping="hardware", seed=0),
    "2sm-2live-reverse": dict(sm_count=2, live_blocks=2, order="reverse", mapping="hardware", seed=0),
    "h100-2live-shuffled-scrambled": dict(
        sm_count=132, live_blocks=2, order="shuffled", mapping="scrambled", seed=1
    ),
    "2sm-shuffled-scrambled": dict(sm_count=2, live_blocks=1, order="shuffled", mapping="scrambled", seed=2),
}
EMULATION_NAMES = list(EMULATIONS)

# Relative to max |reference| (the reference runs in float64 on the same rounded inputs).
REL_TOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 4e-2}


def load():
    """Import _C_sim and register the shc_sim:: ops' Python side (ops.load_sim, the lead's hook).
    SHC_SIM_SO=path loads that build of it instead (a sanitizer build: tools/simt_sanitize.sh)."""
    so = os.environ.get("SHC_SIM_SO")
    if so and "shc_kernels._C_sim" not in sys.modules:
        spec = importlib.util.spec_from_file_location("shc_kernels._C_sim", so)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules["shc_kernels._C_sim"] = module
        import shc_kernels

        shc_kernels._C_sim = module
    from shc_kernels import ops

    if hasattr(ops, "load_sim"):
        reason = ops.load_sim()
        assert reason is None, reason
    from shc_kernels import _C_sim

    return _C_sim


@contextlib.contextmanager
def emulation(**settings):
    """_C_sim.configure(**settings) inside the block, the previous settings after it."""
    sim = load()
    old = sim.settings()
    sim.configure(**settings)
    try:
        yield sim
    finally:
        sim.configure(**old)


def pick(i: int) -> str:
    return EMULATION_NAMES[i % len(EMULATION_NAMES)]


def check_close(got, want, dtype, what):
    assert (got is None) == (want is None), what
    if got is None:
        return
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} vs {tuple(want.shape)}"
    assert torch.isfinite(got).all(), f"{what}: non-finite values"
    err = (got.double() - want.double()).abs().max().item() if got.numel() else 0.0
    scale = max(want.abs().max().item() if want.numel() else 0.0, 1e-3)
    assert err <= REL_TOL[dtype] * scale, f"{what}: max error {err:.3e} vs max |ref| {scale:.3e}"


def pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def make_conv_case(case, dtype, channels_last, seed=0):
    """x, weight, m, dy, [stride, padding, dilation] as pairs, groups for a case (n, d, c, h, w, k,
    stride, padding, dilation, groups) of the modulated conv's backward kernels."""
    n, d, c, h, w, k, stride, padding, dilation, groups = case
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, h, w, generator=g).to(dtype)
    weight = (torch.randn(c, d // groups, k, k, generator=g) * 0.2).to(dtype)
    mdt = torch.float64 if dtype == torch.float64 else torch.float32
    m = (torch.rand(n, k, k, generator=g) * 1.5 + 0.25).to(mdt)
    geo = [list(pair(v)) for v in (stride, padding, dilation)]
    oh = (h + 2 * geo[1][0] - geo[2][0] * (k - 1) - 1) // geo[0][0] + 1
    ow = (w + 2 * geo[1][1] - geo[2][1] * (k - 1) - 1) // geo[0][1] + 1
    gy = torch.randn(n, c, oh, ow, generator=g).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        gy = gy.contiguous(memory_format=torch.channels_last)
    return x, weight, m, gy, geo, groups
