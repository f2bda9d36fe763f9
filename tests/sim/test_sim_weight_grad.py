"""The weight-gradient kernels (csrc/cuda/weight_grad.cuh) alone, dW and dm against the float64
reference on the same rounded inputs: fp16/bf16 on the tensor-core tile (dw_kernel: 16-byte cp.async
copies, channels_last with channel counts in whole 8-channel chunks; dw_general_kernel: register
copies, NCHW, odd channel counts, a misaligned source), fp32/fp64 on the SIMT tile. The cases span
partial row / column tiles, partial pixel blocks, several pixel blocks a sample, output rows
wider and narrower than a pixel block (the cursor's carry), strides 1 and 2, dilation, groups; on 2
emulated SMs a CTA folds several samples (the per-sample m[n, t] scale and dm partials), on 132 one;
two CTAs live at once.
Only dW and dm are asked for, so the emulator's counters are the weight-gradient kernel's."""

from __future__ import annotations

import pytest
import torch
from sim_helpers import emulation, make_conv_case

from shc_kernels import reference

# (N, D, C, H, W, kernel, stride, padding, dilation, groups)
CASES = {
    "3x3": (3, 16, 24, 9, 10, 3, 1, 1, 1, 1),  # one partial tile, 90 pixels: 3 blocks, the last partial
    "s2-g2": (3, 32, 16, 9, 8, 3, 2, 1, 1, 2),
    "tiles": (2, 72, 136, 7, 7, 3, 1, 1, 1, 1),  # 3 x 2 tiles, both partial; 49 pixels
    "wide": (2, 8, 16, 3, 37, 3, 1, 1, 1, 1),  # rows of 37 pixels: a block within a row, with carries
    "row32-1x1": (2, 16, 8, 4, 32, 1, 1, 0, 1, 1),  # rows of exactly one block
    "dil2-s21": (2, 16, 16, 9, 9, 3, (2, 1), 2, 2, 1),
    "odd": (2, 12, 10, 5, 7, 3, 2, 1, 1, 1),  # channels not in 8-chunks: register copies
}
# max |got - ref| / max |ref|: the rounding of dW to the dtype (2^-9 bf16, 2^-12 fp16) and fp32 sums;
# dm stays fp32 (m's dtype). A bug (one sample's scale, a lost pixel block, a wrong tap) is O(0.1).
TOL = {
    torch.bfloat16: (6e-3, 2e-5),
    torch.float16: (1e-3, 2e-5),
    torch.float32: (2e-5, 2e-5),
    torch.float64: (1e-12, 1e-12),
}
SMS = {"2sm": 2, "h100": 132}


def reference_grads(x, weight, m, gy, geo, groups):
    xd, wd, md = (t.detach().double().requires_grad_(True) for t in (x, weight, m))
    y = reference.modulated_conv2d(
        xd, wd, md, None, stride=geo[0], padding=geo[1], dilation=geo[2], groups=groups
    )
    y.backward(gy.double())
    return wd.grad, md.grad


def rel_err(got, want):
    return ((got.double() - want).abs().max() / want.abs().max()).item()


def weight_grads(sim, x, weight, m, gy, geo, groups, mask=(False, True, True)):
    sim.reset_counters()
    _, gw, dm = torch.ops.shc_sim.modulated_conv2d_backward(gy, x, weight, m, *geo, groups, list(mask))
    return gw, dm, sim.counters()


MATRIX = [
    (name, dtype, cl, sms)
    for name in CASES
    for dtype in (torch.bfloat16, torch.float16)
    for cl in (True, False)
    for sms in SMS
    if (name != "tiles" or sms == "2sm") and ((dtype == torch.bfloat16) == (sms == "2sm") or name == "3x3")
]


@pytest.mark.parametrize(
    "name, dtype, channels_last, sms",
    MATRIX,
    ids=[f"{m[0]}-{str(m[1])[6:]}-{'cl' if m[2] else 'nchw'}-{m[3]}" for m in MATRIX],
)
def test_tensor_core_weight_grad_matches_reference(sim, name, dtype, channels_last, sms):
    x, weight, m, gy, geo, groups = make_conv_case(CASES[name], dtype, channels_last)
    with emulation(sm_count=SMS[sms], live_blocks=2, order="shuffled", seed=1):  # CTAs' atomics interleaved
        gw, dm, counts = weight_grads(sim, x, weight, m, gy, geo, groups)
    gw_ref, dm_ref = reference_grads(x, weight, m, gy, geo, groups)
    assert gw.dtype == dtype and dm.dtype == m.dtype
    tol_w, tol_m = TOL[dtype]
    assert rel_err(gw, gw_ref) <= tol_w, f"dW: {rel_err(gw, gw_ref):.3e}"
    assert rel_err(dm, dm_ref) <= tol_m, f"dm: {rel_err(dm, dm_ref):.3e}"
    assert counts["mma_sync"] > 0 and counts["ldmatrix"] > 0, counts
    vec = channels_last and name != "odd"
    assert (counts["cp_async"] > 0) == vec, (
        f"cp.async copies {counts['cp_async']} (channels_last: {channels_last})"
    )


@pytest.mark.parametrize("mask", [(False, True, False), (False, False, True)], ids=["dW", "dm"])
def test_dw_alone_and_dm_alone(sim, mask):
    x, weight, m, gy, geo, groups = make_conv_case(CASES["s2-g2"], torch.bfloat16, True)
    with emulation(sm_count=2):
        gw, dm, _ = weight_grads(sim, x, weight, m, gy, geo, groups, mask)
    gw_ref, dm_ref = reference_grads(x, weight, m, gy, geo, groups)
    if mask[1]:
        assert dm.numel() == 0 and rel_err(gw, gw_ref) <= TOL[torch.bfloat16][0]
    else:
        assert gw.numel() == 0 and rel_err(dm, dm_ref) <= TOL[torch.bfloat16][1]


def test_a_misaligned_channels_last_source_takes_the_register_copies(sim):
    x, weight, m, gy, geo, groups = make_conv_case(CASES["3x3"], torch.bfloat16, True)
    base = torch.empty(x.numel() + 1, dtype=x.dtype)
    n, d, h, w = x.shape
    xm = base[1:].view(n, h, w, d).permute(0, 3, 1, 2)
    xm.copy_(x)
    assert xm.stride(1) == 1 and xm.data_ptr() % 16 != 0
    with emulation(sm_count=2):
        gw, dm, counts = weight_grads(sim, xm, weight, m, gy, geo, groups)
    assert counts["cp_async"] == 0 and counts["mma_sync"] > 0
    gw_ref, dm_ref = reference_grads(x, weight, m, gy, geo, groups)
    assert rel_err(gw, gw_ref) <= TOL[torch.bfloat16][0] and rel_err(dm, dm_ref) <= TOL[torch.bfloat16][1]


@pytest.mark.parametrize("channels_last", [True, False], ids=["cl", "nchw"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_simt_weight_grad_matches_reference(sim, dtype, channels_last):
    for name in ("3x3", "s2-g2"):
        x, weight, m, gy, geo, groups = make_conv_case(CASES[name], dtype, channels_last)
        with emulation(sm_count=2, order="reverse"):
            gw, dm, counts = weight_grads(sim, x, weight, m, gy, geo, groups)
        assert counts["mma_sync"] == 0 and counts["cp_async"] == 0
        gw_ref, dm_ref = reference_grads(x, weight, m, gy, geo, groups)
        tol_w, tol_m = TOL[dtype]
        assert rel_err(gw, gw_ref) <= tol_w and rel_err(dm, dm_ref) <= tol_m, name
