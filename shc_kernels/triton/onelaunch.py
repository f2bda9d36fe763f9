"""The SHC layer's forward in one launch on the Triton backend: statistics, hypernetwork and
modulated conv as work items of one kernel, each sample's statistics a window ahead of its tiles.

Why: the forward needs every sample's channel statistics before any of its conv tiles can run.
As separate launches (statistics, then the conv) the statistics are a whole pass over x from DRAM
that nothing overlaps, and the conv then reads x from DRAM a second time; at ResNet-50's shapes
that pass is 6-45 % of the layer's forward on an H100 (tools/gpu_model.py; predictions, not
timings). Here the statistics of window w+1 (a few samples) run between the conv tiles of window
w: the memory-bound statistics overlap the tensor-bound tiles, and the tiles of w+1 re-read an x
that the statistics just brought into L2 (the window is sized to fit; ``window_samples``).

Work items, in the order the kernel hands them out (one global ticket counter, one item per
program):
  - statistics items ``(sample, channel block, pixel chunk)``: stats.stats_partial, the same
    code the statistics kernel runs, into (N, D, SPLIT) partials; then a release increment of
    their 16-sample chunk's counter;
  - hypernetwork items, one per 16-sample chunk: wait (acquire) until the chunk's statistics
    items are all done; merge the partials (Chan's formula in float64) into mu (float64) and
    sigma; the two-layer MLP as tensor-core dots over the chunk's 16 samples (fc1 is read once
    per 16 samples, not per sample); write h and m; release the chunk's ready flag;
  - conv tiles (conv.fwd_tile, the forward kernel's code): wait (acquire) for the ready flags of
    the chunks their rows cover, then run.
The ticket order is: window 0's statistics and hypernetwork items; then for each window w its conv
tiles, with window w+1's statistics items spread over the first half of them, window w+1's
hypernetwork items in the middle, and the rest of w's tiles after. Every item waits only for items
with a smaller ticket, and a program takes its ticket when it starts running, so every item it
waits for is running or done: no deadlock, and no assumption that the grid is co-resident (the
same argument as the CUDA one-launch kernel, csrc/cuda/fused_shc.cu). The flags follow the
CUTLASS semaphore pattern: the writing program's threads meet at a barrier and one release atomic
publishes; the waiting program acquires and its threads meet at a barrier before reading.
Under the interpreter programs run one after another in ticket order, so no wait ever spins.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch._prims_common import suggest_memory_format

from .._checks import conv_out_size
from . import conv, interpreting, stats
from .conv import fwd_tile
from .stats import chan_merge, stats_partial

__all__ = ["layer_forward", "window_samples", "BW"]

BW = 16  # samples per hypernetwork item: the rows of its dots (tl.dot needs 16)
# Software-pipelining depth of the items' load loops (cp.async through shared memory): a statistics
# item keeps STATS_STAGES - 1 tiles in flight ahead of the one it reduces, a hypernetwork item
# HYPER_STAGES - 1 iterations of its merge and fc1 loops. The compiled kernel's shared memory and
# registers are checked at ResNet-50's shapes (tests/test_gpu_model.py).
STATS_STAGES = 4
HYPER_STAGES = 3


@triton.jit
def _wait_at_least(ptr, need):
    # acquire: what the publishing program wrote before its release is visible after this
    got = tl.atomic_add(ptr, 0, sem="acquire")
    while got < need:
        got = tl.atomic_add(ptr, 0, sem="acquire")
    tl.debug_barrier()


@triton.jit
def _hyper_item(
    c, N, D, HW, K, T, CHUNK, SPLIT, eps,
    pmean_ptr, pm2_ptr, mu_ptr, sigma_ptr, h_ptr, m_ptr,
    f1w_ptr, f1b_ptr, f2w_ptr, f2b_ptr, ready_ptr,
    HAS_B1: tl.constexpr, HAS_B2: tl.constexpr, MLP_PRECISION: tl.constexpr,
    MLP_J: tl.constexpr, MLP_H: tl.constexpr, BLOCK_T: tl.constexpr, BWC: tl.constexpr, STAGES: tl.constexpr,
):  # fmt: skip
    # chunk c's samples, their statistics items all done (the caller waited)
    offs_w = c * BWC + tl.arange(0, BWC)
    wmask = offs_w < N
    hw = HW.to(tl.float64)
    # mu, sigma of the chunk's samples from the (N, D, SPLIT) partials, merged chunk by chunk (Chan).
    # One loop over (channel block, chunk) pairs, not two nested loops, so that its loads are
    # software-pipelined (STAGES - 1 iterations in flight) across channel blocks too.
    cnt = tl.zeros([BWC, MLP_J], dtype=tl.float64)
    mean = tl.zeros([BWC, MLP_J], dtype=tl.float64)
    m2 = tl.zeros([BWC, MLP_J], dtype=tl.float64)
    for it in tl.range(0, tl.cdiv(D, MLP_J) * SPLIT, num_stages=STAGES):
        db = it // SPLIT
        s = it - db * SPLIT
        offs_d = db * MLP_J + tl.arange(0, MLP_J)
        mask = wmask[:, None] & (offs_d < D)[None, :]
        base = (offs_w[:, None] * D + offs_d[None, :]).to(tl.int64) * SPLIT
        ns = tl.minimum(tl.maximum(HW - s * CHUNK, 0), CHUNK).to(tl.float64)
        pm = tl.load(pmean_ptr + base + s, mask=mask, other=0.0)
        pq = tl.load(pm2_ptr + base + s, mask=mask, other=0.0)
        first = s == 0  # a new channel block: its merge starts from nothing
        cnt = tl.where(first, 0.0, cnt)
        mean = tl.where(first, 0.0, mean)
        m2 = tl.where(first, 0.0, m2)
        cnt, mean, m2 = chan_merge(cnt, mean, m2, ns, pm, pq)
        if s == SPLIT - 1:
            out = offs_w[:, None].to(tl.int64) * D + offs_d[None, :]
            tl.store(mu_ptr + out, mean, mask=mask)
            tl.store(sigma_ptr + out, tl.sqrt(m2 / hw + eps).to(tl.float32), mask=mask)
    tl.debug_barrier()  # the chunk's mu and sigma, written by all threads, are read back below
    # m = sigmoid(fc2(relu(fc1([mu, sigma])))) for the chunk's samples: two dots per fc1 block
    offs_t = tl.arange(0, BLOCK_T)
    tmask = offs_t < T
    logit = tl.zeros([BWC, BLOCK_T], dtype=tl.float32)
    for k0 in range(0, K, MLP_H):
        offs_k = k0 + tl.arange(0, MLP_H)
        kmask = offs_k < K
        pre = tl.zeros([BWC, MLP_H], dtype=tl.float32)
        for j0 in tl.range(0, D, MLP_J, num_stages=STAGES):
            offs_j = j0 + tl.arange(0, MLP_J)
            jmask = offs_j < D
            zoff = offs_w[:, None].to(tl.int64) * D + offs_j[None, :]
            zmask = wmask[:, None] & jmask[None, :]
            z_mu = tl.load(mu_ptr + zoff, mask=zmask, other=0.0).to(tl.float32)
            z_sg = tl.load(sigma_ptr + zoff, mask=zmask, other=0.0)
            # fc1 is (K, 2D): the [MLP_J, MLP_H] blocks of its transpose for the mu and sigma halves
            w_off = offs_k[None, :].to(tl.int64) * (2 * D) + offs_j[:, None]
            w_mask = jmask[:, None] & kmask[None, :]
            w_mu = tl.load(f1w_ptr + w_off, mask=w_mask, other=0.0).to(tl.float32)
            w_sg = tl.load(f1w_ptr + w_off + D, mask=w_mask, other=0.0).to(tl.float32)
            pre = tl.dot(z_mu, w_mu, pre, input_precision=MLP_PRECISION)
            pre = tl.dot(z_sg, w_sg, pre, input_precision=MLP_PRECISION)
        if HAS_B1:
            pre += tl.load(f1b_ptr + offs_k, mask=kmask, other=0.0).to(tl.float32)[None, :]
        hid = tl.maximum(pre, 0.0)
        tl.store(h_ptr + offs_w[:, None].to(tl.int64) * K + offs_k[None, :], hid,
                 mask=wmask[:, None] & kmask[None, :])  # fmt: skip
        w2 = tl.load(f2w_ptr + offs_t[None, :] * K + offs_k[:, None], mask=kmask[:, None] & tmask[None, :],
                     other=0.0).to(tl.float32)  # fmt: skip
        logit = tl.dot(hid, w2, logit, input_precision=MLP_PRECISION)
    if HAS_B2:
        logit += tl.load(f2b_ptr + offs_t, mask=tmask, other=0.0).to(tl.float32)[None, :]
    m = 1.0 / (1.0 + tl.exp(-logit))
    tl.store(m_ptr + offs_w[:, None] * T + offs_t[None, :], m, mask=wmask[:, None] & tmask[None, :])
    tl.debug_barrier()  # every thread's m, h, mu, sigma written before the flag
    tl.atomic_xchg(ready_ptr + c, 1, sem="release")


@triton.jit
def _window_start(w, W0, WS):
    # first sample of window w (window 0 holds W0 samples, the others WS)
    return tl.where(w == 0, 0, W0 + (w - 1) * WS)


@triton.autotune(
    configs=conv.FWD_CONFIGS, key=["NP", "CG", "DG", "T", "OHW", "D", "K"],
    prune_configs_by=conv._prune("NP", "CG", "DG"), do_bench=conv._do_bench,
    reset_to_zero=["sync_ptr"],  # the ticket counter and flags, before each timed run and after tuning
)  # fmt: skip
@triton.jit
def _shc_fwd_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    f1w_ptr, f1b_ptr, f2w_ptr, f2b_ptr,
    m_ptr, mu_ptr, sigma_ptr, h_ptr, pmean_ptr, pm2_ptr, sync_ptr,
    N, NP, OHW, H, W, OW, CG, DG, T, KW, D, HW, K, eps,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    sxn, sxd, sxh, sxw,
    swt, swd, swc,
    syn, syc, syh, syw,
    sqn, sqd, sqq,
    CHUNK, SPLIT, DBLOCKS, W0, WS, NWIN, GROUPS,
    HAS_BIAS: tl.constexpr, HAS_B1: tl.constexpr, HAS_B2: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, MLP_PRECISION: tl.constexpr, DG_POW2: tl.constexpr, DG_DIV: tl.constexpr,
    STATS_D: tl.constexpr, STATS_Q: tl.constexpr, MLP_J: tl.constexpr, MLP_H: tl.constexpr,
    BLOCK_T: tl.constexpr, BWC: tl.constexpr, STATS_STAGES: tl.constexpr, HYPER_STAGES: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DRY_RUN: tl.constexpr = False,
):  # fmt: skip
    ticket = tl.atomic_add(sync_ptr, 1, sem="relaxed")
    nchunks = tl.cdiv(N, BWC)
    done_ptr = sync_ptr + 1
    ready_ptr = sync_ptr + 1 + nchunks
    DS = DBLOCKS * SPLIT
    TILES_M = tl.cdiv(NP, BLOCK_M)
    TILES_N = tl.cdiv(CG, BLOCK_N)
    TNG = TILES_N * GROUPS
    # which item this ticket is: kind 0 statistics (index), 1 hypernetwork (chunk), 2 conv tile
    c0 = tl.minimum(W0, N)
    if ticket < c0 * DS + tl.cdiv(c0, BWC):  # window 0's statistics and hypernetwork items
        is_stats = ticket < c0 * DS
        kind = tl.where(is_stats, 0, 1)
        idx = tl.where(is_stats, ticket, ticket - c0 * DS)
    else:
        # block w (window w's tiles with window w+1's items) starts at ticket
        # B(w) = F(w) * TNG + C(w) * DS + cdiv(C(w), BWC): F(w) the first row tile whose last row is in
        # window w, C(w) the samples of windows 0..w. The largest w with B(w) <= ticket:
        lo = 0
        hi = NWIN - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            c_mid = tl.minimum(_window_start(mid + 1, W0, WS), N)
            b_mid = (_window_start(mid, W0, WS) * OHW // BLOCK_M) * TNG + c_mid * DS + tl.cdiv(c_mid, BWC)
            if b_mid <= ticket:
                lo = mid
            else:
                hi = mid - 1
        w = lo
        cw = tl.minimum(_window_start(w + 1, W0, WS), N)  # samples of windows 0..w
        cn = tl.minimum(_window_start(w + 2, W0, WS), N)  # ... and of w+1
        f_w = _window_start(w, W0, WS) * OHW // BLOCK_M
        f_next = tl.where(w == NWIN - 1, TILES_M, _window_start(w + 1, W0, WS) * OHW // BLOCK_M)
        j = ticket - (f_w * TNG + cw * DS + tl.cdiv(cw, BWC))
        tt = (f_next - f_w) * TNG  # this window's tiles
        e = (cn - cw) * DS  # window w+1's statistics items
        hyp = tl.cdiv(cn, BWC) - tl.cdiv(cw, BWC)  # ... and hypernetwork items
        # window w+1's statistics items spread evenly over the first half of the tiles (the first
        # j positions hold floor(j * e / region) of them), then its hypernetwork items, then the rest
        th = tt // 2
        region = e + th
        before = (j.to(tl.int64) * e // tl.maximum(region, 1)).to(tl.int32)
        after = ((j.to(tl.int64) + 1) * e // tl.maximum(region, 1)).to(tl.int32)
        in_region = j < region
        is_hyp = (j >= region) & (j < region + hyp)
        kind = tl.where(in_region, tl.where(after > before, 0, 2), tl.where(is_hyp, 1, 2))
        tile = tl.where(in_region, j - before, th + (j - region - hyp))
        idx = tl.where(kind == 0, cw * DS + before, tl.where(is_hyp, tl.cdiv(cw, BWC) + (j - region), tile))
        idx = tl.where(kind == 2, f_w * TNG + tile, idx)  # tiles: a global tile number
    # what the item waits for or signals: a statistics item counts into its chunk's done counter; a
    # hypernetwork item waits until that counter reaches its chunk's statistics items; a tile waits
    # for the ready flags of the chunks [lo, hi] its rows' samples fall in
    n_st = idx // DS
    pid_m = idx // TNG
    lo = tl.where(kind == 0, n_st // BWC, tl.where(kind == 1, idx, pid_m * BLOCK_M // OHW // BWC))
    n0 = idx * BWC
    hi = tl.where(
        kind == 1,
        (tl.minimum(n0 + BWC, N) - n0) * DS,
        tl.minimum(pid_m * BLOCK_M + BLOCK_M - 1, NP - 1) // OHW // BWC,
    )
    if DRY_RUN:  # tests: record the schedule (ticket -> kind, index, lo, hi) and run nothing
        tl.store(m_ptr + 4 * ticket, kind)
        tl.store(m_ptr + 4 * ticket + 1, idx)
        tl.store(m_ptr + 4 * ticket + 2, lo)
        tl.store(m_ptr + 4 * ticket + 3, hi)
    elif kind == 0:
        rem = idx - n_st * DS
        db = rem // SPLIT
        stats_partial(
            n_st, db, rem - db * SPLIT, x_ptr, pmean_ptr, pm2_ptr, D, HW, CHUNK, SPLIT, sqn, sqd, sqq,
            STATS_D, STATS_Q, STATS_STAGES,
        )  # fmt: skip
        tl.debug_barrier()  # every thread's partials stored before the count
        tl.atomic_add(done_ptr + lo, 1, sem="release")
    elif kind == 1:
        _wait_at_least(done_ptr + lo, hi)
        _hyper_item(
            idx, N, D, HW, K, T, CHUNK, SPLIT, eps,
            pmean_ptr, pm2_ptr, mu_ptr, sigma_ptr, h_ptr, m_ptr,
            f1w_ptr, f1b_ptr, f2w_ptr, f2b_ptr, ready_ptr,
            HAS_B1, HAS_B2, MLP_PRECISION, MLP_J, MLP_H, BLOCK_T, BWC, HYPER_STAGES,
        )  # fmt: skip
    else:
        rem = idx - pid_m * TNG
        g = rem // TILES_N
        for cc in range(lo, hi + 1):
            _wait_at_least(ready_ptr + cc, 1)
        fwd_tile(
            pid_m, rem - g * TILES_N, g,
            x_ptr, w_ptr, m_ptr, b_ptr, y_ptr,
            NP, OHW, H, W, OW, CG, DG, T, KW,
            stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
            sxn, sxd, sxh, sxw,
            swt, swd, swc,
            syn, syc, syh, syw,
            HAS_BIAS, INPUT_PRECISION, DG_POW2, DG_DIV, BLOCK_M, BLOCK_N, BLOCK_K,
        )  # fmt: skip


def window_samples(n: int, sample_bytes: int, tiles_per_sample: float, device: torch.device) -> tuple:
    """(W0, WS): samples in window 0 and in each later window, multiples of BW.

    Window 0's statistics and hypernetwork run before any tile can, so it is one hypernetwork chunk.
    A later window should hold at least two waves of tiles (so window w+1's statistics have tiles to
    overlap) and, with the next window's x, fit in half the L2 (``sample_bytes``: the bytes of x and
    y one sample's statistics and tiles move through L2, x counted twice); where the two disagree
    the L2 wins. The interpreter takes one chunk per window, so tests see many windows."""
    if interpreting() or device.type != "cuda":
        return BW, BW
    props = torch.cuda.get_device_properties(device)
    wave = math.ceil(4 * props.multi_processor_count / max(tiles_per_sample, 1e-3))  # 2 waves, 2 per SM
    want = triton.cdiv(wave, BW) * BW
    cap = max(BW, (props.L2_cache_size // 2) // max(sample_bytes, 1) // BW * BW)
    return BW, max(BW, min(want, cap, triton.cdiv(n, BW) * BW))


def _mlp_precision(x: torch.Tensor) -> str:
    # the torch path's fp32 GEMMs follow torch.backends.cuda.matmul.allow_tf32; without it three
    # TF32 products (tf32x3) keep fp32's accuracy on the tensor cores. No TF32 on the CPU.
    if not x.is_cuda:
        return "ieee"
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "tf32x3"


def layer_forward(x, weight, bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, stride, padding, dilation,
                  groups, eps):  # fmt: skip
    """(y, m fp32 (N, kh, kw), mu float64 (N, D), sigma fp32 (N, D), h fp32 (N, K)): layer.py's
    forward contract, computed in one launch."""
    n, d, height, width = x.shape
    c, dg, kh, kw = weight.shape
    k = fc1_weight.shape[0]
    oh, ow = conv_out_size(x, weight, stride, padding, dilation)
    dev = x.device
    y = torch.empty((n, c, oh, ow), device=dev, dtype=x.dtype, memory_format=suggest_memory_format(x))
    m = torch.empty((n, kh * kw), device=dev, dtype=torch.float32)
    mu = torch.empty((n, d), device=dev, dtype=torch.float64)
    sigma = torch.empty((n, d), device=dev, dtype=torch.float32)
    h = torch.empty((n, k), device=dev, dtype=torch.float32)
    if n == 0:
        return y, m.view(n, kh, kw), mu, sigma, h
    hw, ohw = height * width, oh * ow
    cg = c // groups
    # twice the statistics kernel's tile along the contiguous axis: 16 KB of bf16 per tile (with 4x
    # the tile the kernel spills), STATS_STAGES - 1 tiles in flight
    block_d, block_q, dblocks, split, chunk, pmean, pm2 = stats.partials(x, q_scale=2)
    nchunks = triton.cdiv(n, BW)
    sync = torch.zeros(1 + 2 * nchunks, device=dev, dtype=torch.int32)
    tiles_per_sample = ohw / 128 * triton.cdiv(cg, 128) * groups
    w0, ws = window_samples(n, x.element_size() * (2 * d * hw + c * ohw), tiles_per_sample, dev)
    nwin = 1 + triton.cdiv(max(n - w0, 0), ws)
    wt = weight.permute(2, 3, 1, 0).contiguous()  # (kh, kw, DG, C), as conv.conv_forward
    f1w, f2w = fc1_weight.contiguous(), fc2_weight.contiguous()
    t = kh * kw
    mlp_j = 32  # the hypernetwork's blocks: at 64 the kernel spills (688+ B of stack at 64@56, sm_90)

    def grid(meta):
        tiles = triton.cdiv(n * ohw, meta["BLOCK_M"]) * triton.cdiv(cg, meta["BLOCK_N"]) * groups
        return (tiles + n * dblocks * split + nchunks,)

    _shc_fwd_kernel[grid](
        x, wt, bias if bias is not None else wt, y,
        f1w, fc1_bias if fc1_bias is not None else f1w, f2w, fc2_bias if fc2_bias is not None else f2w,
        m, mu, sigma, h, pmean, pm2, sync,
        n, n * ohw, ohw, height, width, ow, cg, dg, t, kw, d, hw, k, float(eps),
        stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
        *x.stride(), dg * c, c, 1, *y.stride(), *stats._plane_strides(x),
        chunk, split, dblocks, w0, ws, nwin, groups,
        HAS_BIAS=bias is not None, HAS_B1=fc1_bias is not None, HAS_B2=fc2_bias is not None,
        INPUT_PRECISION=conv._input_precision(x), MLP_PRECISION=_mlp_precision(x),
        STATS_D=block_d, STATS_Q=block_q, MLP_J=mlp_j, MLP_H=mlp_j,
        BLOCK_T=max(16, triton.next_power_of_2(t)), BWC=BW,
        STATS_STAGES=STATS_STAGES, HYPER_STAGES=HYPER_STAGES, **conv._channel_facts(dg),
    )  # fmt: skip
    return y, m.view(n, kh, kw), mu, sigma, h
