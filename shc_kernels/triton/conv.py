"""The modulated conv (docs/design.md §1 steps 3-4, §3) as three implicit-GEMM Triton kernels.

Forward: rows = output pixels over N·OH·OW, columns = output channels of one group, reduction
tap-major over (tap, input-channel block). Per tap the channel reduction is a plain implicit
GEMM (operands from global to shared to the tensor cores untouched) into a partial sum, which
is added into the accumulator scaled by each row's ``m[n, t]``: one FMA per accumulator element
and tap, and nothing per channel block. Backward:
  - ``dx`` (conv route) as a transposed implicit GEMM, rows = input pixels of one sample: per
    tap, ``V_t = dy ⋆ W_t`` is accumulated over output channels, scaled by the scalar
    ``m[n, t]`` into dx, and ``dm[n, t] += sum(x * V_t)`` is reduced from the x tile kept in
    registers (one fp32 atomic per program and tap); with HYPER (the layer's fused backward,
    layer.py) its epilogue adds the hypernetwork route, so the layer's dx is written once;
  - ``dW`` as the weight-gradient GEMM per tap, reduction over N·OH·OW with the x tile's rows
    scaled by ``m[n, t]``, split along the reduction with fp32 atomics so small C×D layers
    still fill the GPU.
No per-sample kernel and no unfolded input is ever allocated. Strides are passed in, so NCHW
and channels_last tensors both work.
"""

from __future__ import annotations

import warnings

import torch
import triton
import triton.language as tl
import triton.testing
from torch._prims_common import suggest_memory_format

from .._checks import conv_out_size
from . import interpreting

__all__ = ["conv_forward", "conv_backward", "FWD_CONFIGS", "DX_CONFIGS", "DW_CONFIGS"]


def _configs(table):
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
        for bm, bn, bk, w, s in table
    ]


# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages). The interpreter gets one config (no tuning).
if interpreting():
    FWD_CONFIGS = DX_CONFIGS = DW_CONFIGS = _configs([(32, 16, 16, 4, 1)])
else:
    FWD_CONFIGS = _configs(
        [
            (128, 128, 32, 8, 3),
            (128, 64, 64, 4, 3),
            (64, 128, 32, 4, 4),
            (128, 128, 64, 8, 3),
            (64, 64, 32, 4, 4),
        ]
    )
    DX_CONFIGS = _configs(
        [
            (128, 64, 32, 4, 3),
            (64, 64, 32, 4, 3),
            (128, 128, 32, 8, 3),
            (64, 128, 64, 4, 3),
        ]
    )
    DW_CONFIGS = _configs(
        [
            (64, 64, 64, 4, 3),
            (64, 64, 128, 4, 3),
            (128, 64, 64, 8, 3),
            (64, 128, 64, 8, 3),
            (128, 128, 32, 8, 3),
            (128, 128, 64, 8, 3),
        ]
    )


def _prune(rows: str, cols: str, red: str):
    """Drop configs whose tiles are far bigger than the problem (small layers, tests)."""

    def prune(configs, named_args, **kwargs):
        def fits(cfg):
            kw = cfg.kwargs
            return (
                kw["BLOCK_M"] <= max(64, triton.next_power_of_2(named_args[rows]))
                and kw["BLOCK_N"] <= max(32, triton.next_power_of_2(named_args[cols]))
                and kw["BLOCK_K"] <= max(32, triton.next_power_of_2(named_args[red]))
            )

        kept = [c for c in configs if fits(c)]
        return kept or [min(configs, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"])]

    return {"early_config_prune": prune}


def _do_bench(fn, quantiles):
    # Shorter than Triton's default (25 ms warmup, 100 ms reps): enough to rank tile sizes.
    return triton.testing.do_bench(fn, warmup=5, rep=25, quantiles=quantiles)


@triton.autotune(
    configs=FWD_CONFIGS, key=["NP", "CG", "DG", "T", "OHW"], prune_configs_by=_prune("NP", "CG", "DG"),
    do_bench=_do_bench,
)  # fmt: skip
@triton.jit
def _mconv_fwd_kernel(
    x_ptr, w_ptr, m_ptr, b_ptr, y_ptr,
    NP, OHW, H, W, OW, CG, DG, T, KW,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    sxn, sxd, sxh, sxw,
    swt, swd, swc,
    syn, syc, syh, syw,
    HAS_BIAS: tl.constexpr, INPUT_PRECISION: tl.constexpr, DG_POW2: tl.constexpr, DG_DIV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    fwd_tile(
        tl.program_id(0), tl.program_id(1), tl.program_id(2),
        x_ptr, w_ptr, m_ptr, b_ptr, y_ptr,
        NP, OHW, H, W, OW, CG, DG, T, KW,
        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
        sxn, sxd, sxh, sxw,
        swt, swd, swc,
        syn, syc, syh, syw,
        HAS_BIAS, INPUT_PRECISION, DG_POW2, DG_DIV, BLOCK_M, BLOCK_N, BLOCK_K,
    )  # fmt: skip


@triton.jit
def fwd_tile(
    pid_m, pid_n, g,
    x_ptr, w_ptr, m_ptr, b_ptr, y_ptr,
    NP, OHW, H, W, OW, CG, DG, T, KW,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    sxn, sxd, sxh, sxw,
    swt, swd, swc,
    syn, syc, syh, syw,
    HAS_BIAS: tl.constexpr, INPUT_PRECISION: tl.constexpr, DG_POW2: tl.constexpr, DG_DIV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    # One output tile: rows [pid_m * BLOCK_M, +BLOCK_M) of N*OH*OW, columns [pid_n * BLOCK_N, +BLOCK_N)
    # of group g's output channels (the forward kernel's program; onelaunch.py's tile items).
    # y[n, c, p] = sum_t m[n, t] * (sum_d x[n, d, p(+)t] W[c, d, t]): per tap, the channel reduction is a
    # plain implicit GEMM whose operands go from global to shared to the tensor cores untouched (no
    # per-row scaling of the activation tile), into a partial sum v; then acc += m[n(row), t] * v, one
    # FMA per accumulator element and tap. Rows run over N*OH*OW (a tile may span two samples: the
    # scale is per row, so no tile is wasted at a sample's end). The rows' positions, masks and
    # addresses are set once per tap, not per channel block.
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mmask = offs_m < NP
    r = tl.minimum(offs_m, NP - 1)  # rows past the end read sample N-1's m and store nothing
    n = r // OHW
    p = r % OHW
    oh = p // OW
    ow = p % OW
    ih0 = oh * stride_h - pad_h
    iw0 = ow * stride_w - pad_w
    offs_c = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = offs_c < CG
    c_glob = g * CG + offs_c
    x_rows = x_ptr + (n.to(tl.int64) * sxn + (g * DG).to(tl.int64) * sxd) + (ih0 * sxh + iw0 * sxw)
    # rows past the end get an input row far out of range, so the tap masks below drop them too
    ih0 = tl.where(mmask, ih0, -(1 << 24))
    m_rows = m_ptr + n * T
    w_cols = w_ptr + c_glob * swc
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if DG_POW2 <= BLOCK_K:
        # one channel block per tap: v = A_t B_t is one dot with a zero accumulator
        kmask = (offs_k < DG) | (DG_DIV >= BLOCK_K)
        ki = 0
        kj = 0
        for t in range(0, T):
            dh = ki * dil_h
            dw = kj * dil_w
            # one unsigned compare per bound: a negative position wraps to a huge one
            rvalid = ((ih0 + dh).to(tl.uint32, bitcast=True) < H) & (
                (iw0 + dw).to(tl.uint32, bitcast=True) < W
            )
            a = tl.load(
                (x_rows + (dh * sxh + dw * sxw))[:, None] + offs_k[None, :] * sxd,
                mask=rvalid[:, None] & kmask[None, :],
                other=0.0,
            )
            b = tl.load(
                (w_cols + t * swt)[None, :] + offs_k[:, None] * swd,
                mask=kmask[:, None] & cmask[None, :],
                other=0.0,
            )
            v = tl.dot(a, b, input_precision=INPUT_PRECISION)
            acc += tl.load(m_rows + t)[:, None] * v
            kj += 1
            wrap = kj == KW
            ki += wrap.to(tl.int32)
            kj = tl.where(wrap, 0, kj)
    else:
        # several channel blocks per tap: the two loops are flattened into one by the compiler, so
        # loads stream across tap boundaries; the tap's setup and its scaled add run once per tap
        for t in tl.range(0, T, flatten=True):
            ki = t // KW
            dh = ki * dil_h
            dw = (t - ki * KW) * dil_w
            # one unsigned compare per bound: a negative position wraps to a huge one
            rvalid = ((ih0 + dh).to(tl.uint32, bitcast=True) < H) & (
                (iw0 + dw).to(tl.uint32, bitcast=True) < W
            )
            a_rows = x_rows + (dh * sxh + dw * sxw)
            w_tap = w_cols + t * swt
            v = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            for d0 in range(0, DG, BLOCK_K):
                dk = d0 + offs_k
                kmask = (dk < DG) | (DG_DIV >= BLOCK_K)
                a = tl.load(
                    a_rows[:, None] + dk[None, :] * sxd, mask=rvalid[:, None] & kmask[None, :], other=0.0
                )
                b = tl.load(
                    w_tap[None, :] + dk[:, None] * swd, mask=kmask[:, None] & cmask[None, :], other=0.0
                )
                v = tl.dot(a, b, v, input_precision=INPUT_PRECISION)
            acc += tl.load(m_rows + t)[:, None] * v
    if HAS_BIAS:
        acc += tl.load(b_ptr + c_glob, mask=cmask, other=0.0).to(tl.float32)[None, :]
    y_ptrs = (
        y_ptr + (n.to(tl.int64) * syn + oh * syh + ow * syw)[:, None] + c_glob.to(tl.int64)[None, :] * syc
    )
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mmask[:, None] & cmask[None, :])


@triton.autotune(
    configs=DX_CONFIGS, key=["HW", "CG", "DG", "T", "PAR_H", "PAR_W", "NEED_X", "NEED_M", "HYPER"],
    reset_to_zero=["dm_ptr"], prune_configs_by=_prune("HW", "DG", "CG"), do_bench=_do_bench,
)  # fmt: skip
@triton.jit
def _mconv_dx_kernel(
    gy_ptr, x_ptr, w_ptr, m_ptr, dx_ptr, dm_ptr, coef_ptr,
    HW, H, W, OH, OW, CG, DG, T, KW, ND,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, PAR_H, PAR_W,
    sgn, sgc, sgh, sgw,
    sxn, sxd, sxh, sxw,
    swt, swc, swd,
    sdn, sdd, sdh, sdw,
    NEED_X: tl.constexpr, NEED_M: tl.constexpr, HYPER: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    # HYPER: the epilogue adds the hypernetwork route, a[n, d] * ((x - mu_hi[n, d]) - mu_lo[n, d]) +
    # b[n, d] with x read at the positions it writes (coef is (4, N*D) fp32: a, b, mu_hi, mu_lo;
    # stats.hyper_coefficients), so the layer's dx is written once, in one rounding.
    # Row tiles never cross a sample, so m[n, t] is one scalar and dm needs one atomic per tap. A
    # program's rows are one parity class (ih % PAR_H, iw % PAR_W) of the input plane; with PAR =
    # stride a tap is valid for every row of the class or for none, so only the valid taps run
    # (stride 2, 3x3: 2.25 of 9 on average), as tap_ok below.
    hc = tl.cdiv(H, PAR_H)
    wc = tl.cdiv(W, PAR_W)
    num_mb = tl.cdiv(hc * wc, BLOCK_M)
    pid0 = tl.program_id(0)
    ncls = pid0 // num_mb
    n = ncls // (PAR_H * PAR_W)
    cls = ncls - n * (PAR_H * PAR_W)
    ch = cls // PAR_W
    cw = cls - ch * PAR_W
    offs_r = (pid0 - ncls * num_mb) * BLOCK_M + tl.arange(0, BLOCK_M)
    ih = ch + (offs_r // wc) * PAR_H
    iw = cw + (offs_r % wc) * PAR_W
    pid_n = tl.program_id(1)
    g = tl.program_id(2)
    qmask = (offs_r < hc * wc) & (ih < H) & (iw < W)
    offs_d = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    dmask = offs_d < DG
    d_glob = g * DG + offs_d
    n64 = n.to(tl.int64)
    gy_base = gy_ptr + n64 * sgn + (g * CG).to(tl.int64) * sgc
    w_base = w_ptr + (g * CG).to(tl.int64) * swc
    if NEED_M:
        xt = tl.load(
            x_ptr + n64 * sxn + (ih * sxh + iw * sxw)[:, None] + d_glob.to(tl.int64)[None, :] * sxd,
            mask=qmask[:, None] & dmask[None, :],
            other=0.0,
        ).to(tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for t in range(0, T):
        ki = t // KW
        kj = t - ki * KW
        tap_ok = ((ch + pad_h - ki * dil_h) % stride_h == 0) & ((cw + pad_w - kj * dil_w) % stride_w == 0)
        if tap_ok:
            oh_num = ih + pad_h - ki * dil_h
            ow_num = iw + pad_w - kj * dil_w
            # clamp before dividing: the mask below drops the negative positions anyway
            oh = tl.maximum(oh_num, 0) // stride_h
            ow = tl.maximum(ow_num, 0) // stride_w
            valid = (
                qmask
                & (oh_num >= 0)
                & (ow_num >= 0)
                & (oh * stride_h == oh_num)
                & (ow * stride_w == ow_num)
                & (oh < OH)
                & (ow < OW)
            )
            gy_rows = gy_base + oh * sgh + ow * sgw
            v = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            for c0 in range(0, CG, BLOCK_K):
                offs_c = c0 + tl.arange(0, BLOCK_K)
                kcmask = offs_c < CG
                a = tl.load(
                    gy_rows[:, None] + offs_c[None, :] * sgc, mask=valid[:, None] & kcmask[None, :], other=0.0
                )
                b = tl.load(
                    w_base + t * swt + offs_c[:, None] * swc + offs_d[None, :] * swd,
                    mask=kcmask[:, None] & dmask[None, :],
                    other=0.0,
                )
                v = tl.dot(a, b, v, input_precision=INPUT_PRECISION)
            if NEED_X:
                acc += tl.load(m_ptr + n * T + t) * v
            if NEED_M:
                # relaxed: a plain reduction needs no ordering (the default acq_rel adds a fence per atomic)
                dm_t = tl.sum(tl.sum(xt * v, axis=1), axis=0)
                tl.atomic_add(dm_ptr + n * T + t, dm_t, sem="relaxed", scope="gpu")
    if NEED_X:
        if HYPER:
            cf = coef_ptr + n * (DG * tl.num_programs(2)) + d_glob
            ca = tl.load(cf, mask=dmask, other=0.0)
            cb = tl.load(cf + ND, mask=dmask, other=0.0)
            mu_hi = tl.load(cf + 2 * ND, mask=dmask, other=0.0)
            mu_lo = tl.load(cf + 3 * ND, mask=dmask, other=0.0)
            xe = tl.load(
                x_ptr + n64 * sxn + (ih * sxh + iw * sxw)[:, None] + d_glob.to(tl.int64)[None, :] * sxd,
                mask=qmask[:, None] & dmask[None, :],
                other=0.0,
            ).to(tl.float32)
            acc += ca[None, :] * ((xe - mu_hi[None, :]) - mu_lo[None, :]) + cb[None, :]
        dx_ptrs = dx_ptr + n64 * sdn + (ih * sdh + iw * sdw)[:, None] + d_glob.to(tl.int64)[None, :] * sdd
        tl.store(dx_ptrs, acc.to(dx_ptr.dtype.element_ty), mask=qmask[:, None] & dmask[None, :])


@triton.autotune(
    configs=DW_CONFIGS, key=["N", "OHW", "CG", "DG", "T", "NEED_DM"], reset_to_zero=["dw_ptr", "dm_ptr"],
    prune_configs_by=_prune("CG", "DG", "OHW"), do_bench=_do_bench,
)  # fmt: skip
@triton.jit
def _mconv_dw_kernel(
    gy_ptr, x_ptr, m_ptr, dw_ptr, wt_ptr, dm_ptr,
    N, OHW, H, W, OW, CG, DG, T, KW, inv_ow,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    sgn, sgc, sgh, sgw,
    sxn, sxd, sxh, sxw,
    stride_wt,
    INPUT_PRECISION: tl.constexpr, OHW_POW2: tl.constexpr, FDIV: tl.constexpr, GY_FLAT: tl.constexpr,
    OHW_DIV: tl.constexpr, CG_DIV: tl.constexpr, DG_DIV: tl.constexpr, NEED_DM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    # dW[c, d, t] = sum_n m[n, t] * (sum_p dy[n, c, p] * x[n, d, p(+)t]): a program reduces whole
    # samples (a range of them: grid axis 2 splits the batch so small C x D layers still fill the
    # GPU); per sample the pixel reduction is a plain GEMM whose operands go to the tensor cores
    # untouched, into a partial sum v, then acc += m[n, t] * v (a scalar per sample). A sample's
    # last row block is partial when BLOCK_K does not divide OH*OW (49 of 64 rows at 7x7).
    # dw is fp32 (T, C, DG), tap-major, so that neighbouring lanes (along d) add to neighbouring
    # addresses; the atomics are relaxed.
    # NEED_DM: dm[n, t] = sum_{c,d} W[c, d, t] * v[c, d] from the same partial v (the docs/design.md
    # §3 dm reduction, taken here instead of from x in the dx kernel); one relaxed atomic per
    # sample, tap and tile. wt is W as (T, C, DG), dw32's layout.
    num_nb = tl.cdiv(DG, BLOCK_N)
    pid0 = tl.program_id(0)
    pid_m = pid0 // num_nb
    pid_n = pid0 - pid_m * num_nb
    pid1 = tl.program_id(1)
    g = pid1 // T
    t = pid1 - g * T
    ki = t // KW
    kj = t - ki * KW
    per = tl.cdiv(N, tl.num_programs(2))
    n_start = tl.program_id(2) * per
    n_end = tl.minimum(n_start + per, N)
    # the *_DIV facts (powers of two dividing the sizes) drop the masks a tile never needs
    offs_c = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cmask = (offs_c < CG) | (CG_DIV >= BLOCK_M)
    offs_d = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    dmask = (offs_d < DG) | (DG_DIV >= BLOCK_N)
    gy_cols = gy_ptr + (g * CG + offs_c).to(tl.int64) * sgc
    x_cols = x_ptr + (g * DG + offs_d).to(tl.int64) * sxd
    offs_r = tl.arange(0, BLOCK_K)
    tile = t * stride_wt + (g * CG + offs_c).to(tl.int64)[:, None] * DG + offs_d[None, :]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if OHW_POW2 <= BLOCK_K:
        # one row block is the whole plane: rows, masks and offsets are the same for every sample
        rmask = offs_r < OHW
        oh, ow = _split_pixel(offs_r, OW, inv_ow, FDIV)
        ih = oh * stride_h - pad_h + ki * dil_h
        iw = ow * stride_w - pad_w + kj * dil_w
        xvalid = rmask & (ih.to(tl.uint32, bitcast=True) < H) & (iw.to(tl.uint32, bitcast=True) < W)
        gy_off = oh * sgh + ow * sgw
        x_off = ih * sxh + iw * sxw
        for n in range(n_start, n_end):
            n64 = tl.cast(n, tl.int64)
            a = tl.load(
                gy_cols[:, None] + (n64 * sgn + gy_off)[None, :],
                mask=cmask[:, None] & rmask[None, :],
                other=0.0,
            )
            b = tl.load(
                x_cols[None, :] + (n64 * sxn + x_off)[:, None],
                mask=xvalid[:, None] & dmask[None, :],
                other=0.0,
            )
            v = tl.dot(a, b, input_precision=INPUT_PRECISION)
            acc += tl.load(m_ptr + n * T + t) * v
            if NEED_DM:
                _dm_of_partial(v, wt_ptr + tile, cmask[:, None] & dmask[None, :], dm_ptr + n * T + t)
    else:
        # (sample, row block) flattened into one loop by the compiler: loads stream across samples,
        # the scaled add runs once per sample
        for n in tl.range(n_start, n_end, flatten=True):
            n64 = tl.cast(n, tl.int64)
            gy_n = gy_cols + n64 * sgn
            x_n = x_cols + n64 * sxn
            v = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            for p0 in range(0, OHW, BLOCK_K):
                p = p0 + offs_r
                rmask = (p < OHW) | (OHW_DIV >= BLOCK_K)
                oh, ow = _split_pixel(p, OW, inv_ow, FDIV)
                ih = oh * stride_h - pad_h + ki * dil_h
                iw = ow * stride_w - pad_w + kj * dil_w
                xvalid = rmask & (ih.to(tl.uint32, bitcast=True) < H) & (iw.to(tl.uint32, bitcast=True) < W)
                # dy's plane dense (row stride OW * pixel stride): a row's offset needs no (oh, ow)
                gy_off = p * sgw if GY_FLAT else oh * sgh + ow * sgw
                a = tl.load(gy_n[:, None] + gy_off[None, :], mask=cmask[:, None] & rmask[None, :], other=0.0)
                b = tl.load(
                    x_n[None, :] + (ih * sxh + iw * sxw)[:, None],
                    mask=xvalid[:, None] & dmask[None, :],
                    other=0.0,
                )
                v = tl.dot(a, b, v, input_precision=INPUT_PRECISION)
            acc += tl.load(m_ptr + n * T + t) * v
            if NEED_DM:
                _dm_of_partial(v, wt_ptr + tile, cmask[:, None] & dmask[None, :], dm_ptr + n * T + t)
    tl.atomic_add(dw_ptr + tile, acc, mask=cmask[:, None] & dmask[None, :], sem="relaxed", scope="gpu")


@triton.jit
def _dm_of_partial(v, w_ptrs, mask, dm_ptr):
    # relaxed: a plain reduction needs no ordering (the default acq_rel adds a fence per atomic)
    w = tl.load(w_ptrs, mask=mask, other=0.0).to(tl.float32)
    tl.atomic_add(dm_ptr, tl.sum(tl.sum(v * w, axis=1), axis=0), sem="relaxed", scope="gpu")


@triton.jit
def _split_pixel(p, OW, inv_ow, FDIV: tl.constexpr):
    """(p // OW, p % OW) for 0 <= p < OH*OW. FDIV (OH*OW <= 2**21): through fp32, exact there: the
    quotient (p + 0.5) / OW is at least 0.5 / OW from an integer, and two roundings (of 1 / OW and of
    the product) move it by at most (p + 0.5) / OW * 2**-23 < 0.5 / OW; four instructions instead of
    an integer division's twenty."""
    if FDIV:
        oh = ((p.to(tl.float32) + 0.5) * inv_ow).to(tl.int32)
    else:
        oh = p // OW
    return oh, p - oh * OW


def _pow2_div(v: int) -> int:
    """The largest power of two dividing v, at most 128 (a tile size b <= 128 divides v iff this is
    >= b): a compile-time fact that lets a kernel drop the masks of dimensions its tiles divide."""
    return min(v & -v, 128)


def _channel_facts(dg: int) -> dict:
    """Compile-time facts about a reduction's channel count DG, independent of the tile size the
    autotuner picks: DG_POW2 (DG rounded up to a power of two; DG <= BLOCK_K iff DG_POW2 <= BLOCK_K)
    and DG_DIV (the largest power of two dividing DG, at most 128; BLOCK_K divides DG iff
    DG_DIV >= BLOCK_K, and then channel blocks need no mask)."""
    return dict(DG_POW2=triton.next_power_of_2(dg), DG_DIV=_pow2_div(dg))


def _input_precision(x: torch.Tensor) -> str:
    # fp32 dots follow cuDNN's TF32 switch, as F.conv2d does; there is no TF32 on the CPU.
    return "tf32" if (x.is_cuda and torch.backends.cudnn.allow_tf32) else "ieee"


def conv_forward(x, weight, m, bias, stride, padding, dilation, groups):
    """y (N, C, OH, OW) in x's dtype and memory format; m is fp32 (N, kh, kw)."""
    n, _, height, width = x.shape
    c, dg, kh, kw = weight.shape
    oh, ow = conv_out_size(x, weight, stride, padding, dilation)
    y = torch.empty((n, c, oh, ow), device=x.device, dtype=x.dtype, memory_format=suggest_memory_format(x))
    if n == 0:
        return y
    cg = c // groups
    # (kh, kw, DG, C): a [BLOCK_K, BLOCK_N] weight tile of one tap is contiguous along C.
    wt = weight.permute(2, 3, 1, 0).contiguous()
    m = m.contiguous()
    np_ = n * oh * ow

    def grid(meta):
        return (triton.cdiv(np_, meta["BLOCK_M"]), triton.cdiv(cg, meta["BLOCK_N"]), groups)

    _mconv_fwd_kernel[grid](
        x, wt, m, bias if bias is not None else wt, y,
        np_, oh * ow, height, width, ow, cg, dg, kh * kw, kw,
        stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
        *x.stride(), dg * c, c, 1, *y.stride(),
        HAS_BIAS=bias is not None, INPUT_PRECISION=_input_precision(x), **_channel_facts(dg),
    )  # fmt: skip
    return y


# Output planes of at least this many pixels take dm from the dW kernel (see conv_backward).
DM_IN_DW_PIXELS = 256
# The fused layer backward (layer.py) needs dm before dx; on smaller output planes it takes dm from
# dW all the same where FOLD_RATIO * H * W >= T * CG. There dW's per-sample dm reduction (T * CG
# multiply-adds per element of x, on the CUDA cores, not amortised over row blocks) costs less than
# the pass it saves (adding the hypernetwork route to dx in place: read x and dx, write dx). 16 from
# tools/gpu_model.py's predictions (bf16, batch 256; not timings): at 256@28/2 (H*W = 784, T*CG =
# 2304) dm in dW adds ~23 us on an H100 and saves a ~92 us pass; at 256@14 (196) the two are even
# on the H100 and folding saves ~57 us on the A100; at 512@14/2 and 512@7 (196 and 49 against 4608)
# dm in dW adds ~100 us on the H100 to save 47 and 12.
FOLD_RATIO = 16


def dm_before_dx(x_shape, weight_shape, gy_shape, groups) -> bool:
    """Whether the fused layer backward takes dm from dW, before dx (see FOLD_RATIO)."""
    taps = weight_shape[2] * weight_shape[3]
    cg = weight_shape[0] // groups
    return gy_shape[2] * gy_shape[3] >= DM_IN_DW_PIXELS or FOLD_RATIO * x_shape[2] * x_shape[3] >= taps * cg


def _dw_split(n: int, device: torch.device) -> int:
    """The SM count the dW grid's batch split balances over (the interpreter: 16, so small test
    batches still split)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 16


def _dw_programs_split(n: int, base: int, sms: int) -> int:
    """How many programs share the batch (grid axis 2) when `base` programs cover C x D x taps once.
    Each reduces cdiv(n, split) samples (the last one fewer) and adds its tile into dW with
    atomics, so the grid stays within 8 programs per SM; within that, the split balances the work
    over the SMs, n * base / (ceil(grid / sms) * sms * per), to 2% of the best, with the fewest
    programs."""
    cands = []
    for split in range(1, n + 1):
        per = triton.cdiv(n, split)
        if triton.cdiv(n, per) != split:
            continue  # the same programs as a smaller split
        grid = base * split
        if split > 1 and grid > 8 * sms:
            break
        cands.append((n * base / (triton.cdiv(grid, sms) * sms * per), split))
    top = max(eff for eff, _ in cands)
    return min(split for eff, split in cands if eff >= 0.98 * top)


def _alert_not_deterministic() -> None:
    """What torch's own non-deterministic kernels do under torch.use_deterministic_algorithms(True):
    raise, or warn in warn_only mode."""
    if not torch.are_deterministic_algorithms_enabled():
        return
    msg = (
        "shc::triton_modulated_conv2d_backward when the weight or m needs a gradient: dW and dm are "
        "summed with atomics, in an order that varies from run to run, so it is not deterministic. Use "
        "backend='cuda' or 'cpu' outside deterministic mode, backend='reference' for a deterministic "
        "backward, or torch.use_deterministic_algorithms(True, warn_only=True)"
    )
    if torch.is_deterministic_algorithms_warn_only_enabled():
        warnings.warn(msg, stacklevel=3)
    else:
        raise RuntimeError(msg)


def conv_backward(gy, x, weight, m, stride, padding, dilation, groups, need_x, need_w, need_m, hyper=None):
    """(dx conv route, dW, dm); an entry not asked for comes back as an empty tensor.

    ``hyper`` (the fused layer's backward, layer.py): a function dm -> the hypernetwork route's
    coefficients (stats.hyper_coefficients); needs need_x, need_w and need_m. Then dW runs first and
    reduces dm from its partials (on every plane size), ``hyper(dm)`` gives the coefficients, and the
    dx kernel adds the hypernetwork route in its epilogue: the dx returned is the layer's whole dx."""
    if hyper is not None and not (need_x and need_w and need_m):
        raise ValueError("conv_backward: hyper needs dx, dW and dm (dm must exist before the dx kernel)")
    if need_w or need_m:
        _alert_not_deterministic()
    n, d, height, width = x.shape
    c, dg, kh, kw = weight.shape
    t = kh * kw
    cg = c // groups
    _, _, oh, ow = gy.shape
    prec = _input_precision(x)
    m = m.contiguous()
    dx = torch.empty_like(x) if need_x else x.new_empty(0)
    dm = torch.zeros((n, kh, kw), device=x.device, dtype=torch.float32) if need_m else m.new_empty(0)
    dw = weight.new_empty(0)
    if n == 0:
        return dx, (torch.zeros_like(weight) if need_w else dw), dm
    # dm from the dW kernel's per-sample partials where a sample spans many row blocks (its
    # reduction then runs once per sample; on small planes it would run every block): the dx
    # kernel then neither reads x nor reduces x * V_t. The fused backward needs dm before dx: there
    # it always comes from dW.
    dm_in_dw = need_w and need_m and (hyper is not None or oh * ow >= DM_IN_DW_PIXELS)
    wt = weight.permute(2, 3, 0, 1).contiguous() if (need_x or need_m) else None  # (kh, kw, C, DG)
    if need_w:
        dw32 = torch.zeros((kh, kw, c, dg), device=x.device, dtype=torch.float32)
        sms = _dw_split(n, x.device)
        ohw = oh * ow

        def grid_dw(meta):
            base = triton.cdiv(cg, meta["BLOCK_M"]) * triton.cdiv(dg, meta["BLOCK_N"]) * t * groups
            return (base // (t * groups), t * groups, _dw_programs_split(n, base, sms))

        _mconv_dw_kernel[grid_dw](
            # never m as a dummy: the autotuner zeroes dm_ptr between trials
            gy, x, m, dw32, wt if dm_in_dw else dw32, dm if dm_in_dw else torch.zeros(1, device=x.device),
            n, ohw, height, width, ow, cg, dg, t, kw, 1.0 / ow,
            stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
            *gy.stride(), *x.stride(), c * dg,
            INPUT_PRECISION=prec, OHW_POW2=triton.next_power_of_2(ohw), FDIV=ohw <= 1 << 21,
            GY_FLAT=gy.stride(2) == ow * gy.stride(3), OHW_DIV=_pow2_div(ohw), CG_DIV=_pow2_div(cg),
            DG_DIV=_pow2_div(dg), NEED_DM=dm_in_dw,
        )  # fmt: skip
        dw = dw32.permute(2, 3, 0, 1).to(weight.dtype).contiguous()
    if need_x or (need_m and not dm_in_dw):
        dx_m = need_m and not dm_in_dw
        hw = height * width
        coef = hyper(dm) if hyper is not None else None
        if coef is not None and (
            coef.dtype != torch.float32 or coef.shape != (4, n * d) or not coef.is_contiguous()
        ):
            raise ValueError(f"conv_backward: hyper(dm) must be a contiguous (4, {n * d}) float32 tensor")

        par_h, par_w = stride  # one parity class of input positions per program (see the kernel)
        rows = triton.cdiv(height, par_h) * triton.cdiv(width, par_w)

        def grid_dx(meta):
            blocks = n * par_h * par_w * triton.cdiv(rows, meta["BLOCK_M"])
            return (blocks, triton.cdiv(dg, meta["BLOCK_N"]), groups)

        dxs = dx.stride() if need_x else (0, 0, 0, 0)
        _mconv_dx_kernel[grid_dx](
            # unused outputs get dummies; never m: the autotuner zeroes dm_ptr between trials
            gy, x, wt, m, dx if need_x else x, dm if dx_m else torch.zeros(1, device=x.device),
            coef if coef is not None else wt,
            hw, height, width, oh, ow, cg, dg, t, kw, n * d,
            stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1], par_h, par_w,
            *gy.stride(), *x.stride(), c * dg, dg, 1, *dxs,
            NEED_X=need_x, NEED_M=dx_m, HYPER=coef is not None, INPUT_PRECISION=prec,
        )  # fmt: skip
    return dx, dw, dm
