"""The host fallbacks of csrc/cuda's inline PTX (csrc/simt/ptx.h, called through shc_cuda::ptx
as the conv tile calls them), checked lane by lane against the layouts the PTX ISA documents
("Warp-level matrix load instruction: ldmatrix", "Matrix fragments for mma.m16n8k16 with
floating point type", "cp.async"): the formulas below are written from that text, not from
ptx.h. A fallback that put an element in the wrong lane would make a wrong kernel pass the
parity tests; these would fail."""

from __future__ import annotations

import pytest
import torch


def ops():
    return torch.ops.shc_sim_test


def _codes():
    # row R (0..31; matrix R // 8, row R % 8), column c (0..7) -> a distinct 16-bit code
    return torch.arange(32 * 8, dtype=torch.int16).view(32, 8) + 100


def _word(lo, hi):
    return (int(lo) & 0xFFFF) | (int(hi) << 16)


@pytest.mark.parametrize("trans", [False, True])
def test_ldmatrix_x4_gives_each_lane_its_documented_elements(sim, trans):
    rows = _codes()
    got = ops().ldmatrix_probe(rows, trans)
    for lane in range(32):
        for i in range(4):  # register i: matrix i
            if not trans:  # row lane / 4, columns 2 * (lane % 4) and the next
                lo, hi = rows[8 * i + lane // 4, 2 * (lane % 4)], rows[8 * i + lane // 4, 2 * (lane % 4) + 1]
            else:  # column lane / 4, rows 2 * (lane % 4) and the next
                lo, hi = rows[8 * i + 2 * (lane % 4), lane // 4], rows[8 * i + 2 * (lane % 4) + 1, lane // 4]
            assert int(got[lane, i]) & 0xFFFFFFFF == _word(lo, hi), (lane, i)


def _bits(v, dtype):
    return torch.tensor(float(v), dtype=dtype).view(torch.int16).item()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_mma_m16n8k16_uses_the_documented_fragments(sim, dtype):
    g = torch.Generator().manual_seed(5)
    A = torch.randint(-4, 5, (16, 16), generator=g).float()
    B = torch.randint(-4, 5, (16, 8), generator=g).float()
    C = torch.randint(-50, 51, (16, 8), generator=g).float()
    a = torch.zeros(32, 4, dtype=torch.int32)
    b = torch.zeros(32, 2, dtype=torch.int32)
    c = torch.zeros(32, 4)
    want = A @ B + C  # small integers: exact in every order of summation
    expect = torch.zeros(32, 4)

    def word(x, y):
        w = _word(_bits(x, dtype), _bits(y, dtype))
        return w - (1 << 32) if w >= 1 << 31 else w

    for lane in range(32):
        gid, t = lane // 4, lane % 4
        a[lane, 0] = word(A[gid, 2 * t], A[gid, 2 * t + 1])
        a[lane, 1] = word(A[gid + 8, 2 * t], A[gid + 8, 2 * t + 1])
        a[lane, 2] = word(A[gid, 2 * t + 8], A[gid, 2 * t + 9])
        a[lane, 3] = word(A[gid + 8, 2 * t + 8], A[gid + 8, 2 * t + 9])
        b[lane, 0] = word(B[2 * t, gid], B[2 * t + 1, gid])
        b[lane, 1] = word(B[2 * t + 8, gid], B[2 * t + 9, gid])
        for q in range(4):
            row, col = gid + 8 * (q // 2), 2 * t + q % 2
            c[lane, q] = C[row, col]
            expect[lane, q] = want[row, col]
    got = ops().mma_probe(a, b, c, dtype == torch.bfloat16)
    torch.testing.assert_close(got, expect, rtol=0, atol=0)


def test_cp_async_lands_at_the_wait_that_covers_its_group(sim):
    out = ops().cp_async_probe("copy")
    assert out[0].item() == -1  # issued only
    assert out[1].item() == -1  # a wait that leaves its group in flight
    assert out[2:].tolist() == [1.0, 2.0, 3.0, 4.0]


def test_cp_async_with_source_size_zero_fills_zeros(sim):
    assert ops().cp_async_probe("zero_fill")[2:].tolist() == [0.0] * 4


def test_a_thread_exiting_with_copies_in_flight_is_an_error(sim):
    with pytest.raises(RuntimeError, match="cp.async"):
        ops().cp_async_probe("no_wait")
