"""The tensor-core conv tile (csrc/cuda/conv_tile.cuh, conv_tile_tc) on its two ways of filling
its stages, against the float64 reference: 16-byte cp.async copies (channels_last sources whose
channels per group are multiples of 8: conv_kernel, and the one-launch kernel's run-time choice)
and register copies (NCHW: conv_general_kernel). tests/sim/test_sim_parity.py's cases have too
few channels for the first; these span several row, column, k-block and tap steps, partial k
blocks and tiles, a sample across row tiles, groups, strides (the dx's residue test), dilation.
The emulator's counters show which path ran."""

from __future__ import annotations

import pytest
import torch
from helpers import FORMS
from sim_helpers import EMULATIONS, emulation, pick
from test_sim_parity import compare

# (N, D, C, H, W, kernel, stride, padding, dilation, groups); D and C per group multiples of 8
VEC_CASES = {
    "3x3": (2, 16, 24, 9, 10, 3, 1, 1, 1, 1),
    "tiles": (2, 40, 72, 11, 13, 3, 1, 1, 1, 1),
    "s2-g2": (3, 32, 16, 9, 8, 3, 2, 1, 1, 2),
    "dil2-s21": (2, 16, 16, 9, 9, 3, (2, 1), 2, 2, 1),
    "1x1": (2, 64, 32, 5, 7, 1, 1, 0, 1, 1),
}
MATRIX = [
    (name, dtype, cl, form)
    for name in VEC_CASES
    for dtype in (torch.float16, torch.bfloat16)
    for cl in (True, False)
    for form in FORMS
]


@pytest.mark.parametrize(
    "name, dtype, channels_last, form, emu",
    [(*m, pick(i)) for i, m in enumerate(MATRIX)],
    ids=[f"{m[0]}-{str(m[1])[6:]}-{'cl' if m[2] else 'nchw'}-{m[3]}-{pick(i)}" for i, m in enumerate(MATRIX)],
)
def test_tensor_core_tile_matches_reference(sim, name, dtype, channels_last, form, emu):
    with emulation(**EMULATIONS[emu]):
        sim.reset_counters()
        compare(VEC_CASES[name], dtype, channels_last, "both", form)
        counts = sim.counters()
    assert counts["mma_sync"] > 0 and counts["ldmatrix"] > 0
    if channels_last:  # every operand of the conv tiles by cp.async
        assert counts["cp_async"] > 0
    elif form == "split":  # NCHW: conv_general_kernel, register copies only
        assert counts["cp_async"] == 0


def test_a_misaligned_channels_last_source_takes_the_register_copies(sim):
    # 8 channels per group but a source starting 2 bytes past a 16-byte boundary
    base = torch.randn(2 * 9 * 10 * 16 + 1, dtype=torch.float16)
    x = base[1:].view(2, 9, 10, 16).permute(0, 3, 1, 2)
    assert x.stride(1) == 1 and x.data_ptr() % 16 != 0
    w = torch.randn(8, 16, 3, 3, dtype=torch.float16)
    m = torch.rand(2, 3, 3)
    sim.reset_counters()
    y = torch.ops.shc_sim.modulated_conv2d(x, w, m, None, [1, 1], [1, 1], [1, 1], 1)
    assert sim.counters()["cp_async"] == 0
    ref = torch.stack(
        [
            torch.nn.functional.conv2d(x[n : n + 1].double(), w.double() * m[n].double(), None, 1, 1)[0]
            for n in range(2)
        ]
    )
    assert (y.double() - ref).abs().max().item() <= 1e-2 * ref.abs().max().item()
