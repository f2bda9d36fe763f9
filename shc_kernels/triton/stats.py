"""Statistics and hypernetwork (docs/design.md §1 steps 1-2) on the Triton backend.

Forward: the statistics are a memory-bound pass over x, spread over (sample, channel block,
pixel chunk) programs so that many wide loads are in flight (``_stats_fwd_kernel``); each program
keeps, per channel, its chunk's mean and sum of squared deviations from that mean (M2), merged
tile by tile with Chan's formula in float64. A second small kernel (``_stats_combine_kernel``)
merges a plane's chunks the same way (M2 = sum M2_i + sum n_i (mean_i - mean)^2) and writes mu
(float64: the backward centres x on it) and sigma = sqrt(M2 / HW + eps) (fp32). Nothing is
subtracted from a sum of squares, so a large mean over a small spread does not cancel, and
float64 holds the square of any finite fp32 value, so sigma is finite for every finite x. The
hypernetwork over the batch is two small GEMMs in torch:
``m = sigmoid(fc2(relu(fc1(cat[mu, sigma]))))``.

Backward: the MLP backward from ``dm`` to ``dmu``, ``dsigma`` is again batched GEMMs in torch;
then one elementwise kernel writes the hypernetwork-route ``dx`` in centred form,
``dmu / HW + dsigma * (x - mu) / (HW * sigma)`` with ``x - mu`` in float64 (``a * x + b`` would
cancel where the mean is large against the spread), or adds it in place to the conv route's dx.
The whole layer's backward (layer.py) folds this term into the conv's dx kernel instead where it
can (``hyper_coefficients``), and this kernel does not run.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import interpreting

__all__ = ["stats_map_forward", "stats_map_backward", "mlp_backward", "hyper_dx", "hyper_coefficients"]

_NUM_WARPS = 4
_MAX_SPLIT = 64  # pixel chunks per plane (the combine kernel holds them in one tile)


def _tiles(x: torch.Tensor) -> tuple[int, int]:
    """(BLOCK_D, BLOCK_Q) of the statistics' tile: long along the contiguous axis (pixels for NCHW,
    channels for channels_last), 4096 elements: four 16-byte loads per thread and step in bf16."""
    if x.stride(1) == 1 and x.shape[1] > 1:
        return 64, 64
    return 8, 512


@triton.jit
def _stats_fwd_kernel(
    x_ptr, mean_ptr, m2_ptr,
    D, HW, CHUNK, SPLIT,
    stride_xn, stride_xd, stride_xq,
    BLOCK_D: tl.constexpr, BLOCK_Q: tl.constexpr,
):  # fmt: skip
    stats_partial(
        tl.program_id(0), tl.program_id(1), tl.program_id(2), x_ptr, mean_ptr, m2_ptr,
        D, HW, CHUNK, SPLIT, stride_xn, stride_xd, stride_xq, BLOCK_D, BLOCK_Q, 1,
    )  # fmt: skip


@triton.jit
def chan_merge(count, mean, m2, n_b, mean_b, m2_b):
    # Chan's merge of a running (count, mean, M2) with a part's (n_b, mean_b, M2_b): nothing is
    # subtracted from a sum of squares (stats_partial's tiles, onelaunch.py's chunk partials)
    total = count + n_b
    delta = mean_b - mean
    mean += delta * (n_b / total)
    m2 += m2_b + delta * delta * (count * (n_b / total))
    return total, mean, m2


@triton.jit
def stats_partial(
    n, db, s, x_ptr, mean_ptr, m2_ptr,
    D, HW, CHUNK, SPLIT,
    stride_xn, stride_xd, stride_xq,
    BLOCK_D: tl.constexpr, BLOCK_Q: tl.constexpr, STAGES: tl.constexpr,
):  # fmt: skip
    # Channels [db * BLOCK_D, +BLOCK_D) of sample n over pixels [s * CHUNK, +CHUNK): (mean, M2) into
    # the (N, D, SPLIT) partials (the statistics kernel's program; onelaunch.py's statistics items).
    # STAGES > 1: the tile loads are software-pipelined through shared memory (cp.async), STAGES - 1
    # tiles in flight ahead of the one being reduced, so a program keeps more bytes in flight than
    # its registers could hold (onelaunch.py: an item holds a block slot for fewer round trips).
    offs_d = db * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    q_start = s * CHUNK
    q_end = tl.minimum(q_start + CHUNK, HW)
    base = x_ptr + n.to(tl.int64) * stride_xn + offs_d.to(tl.int64)[:, None] * stride_xd
    mean = tl.zeros([BLOCK_D], dtype=tl.float64)
    m2 = tl.zeros([BLOCK_D], dtype=tl.float64)
    count = tl.zeros([BLOCK_D], dtype=tl.float64)
    for q0 in tl.range(q_start, q_end, BLOCK_Q, num_stages=STAGES):
        offs_q = q0 + tl.arange(0, BLOCK_Q)
        mask = dmask[:, None] & (offs_q < q_end)[None, :]
        v = tl.load(base + offs_q[None, :] * stride_xq, mask=mask, other=0.0).to(tl.float64)
        nb = tl.minimum(q_end - q0, BLOCK_Q).to(tl.float64)
        t_mean = tl.sum(v, axis=1) / nb
        dv = tl.where(mask, v - t_mean[:, None], 0.0)
        t_m2 = tl.sum(dv * dv, axis=1)
        count, mean, m2 = chan_merge(count, mean, m2, nb, t_mean, t_m2)
    out = (n * D + offs_d).to(tl.int64) * SPLIT + s
    tl.store(mean_ptr + out, mean, mask=dmask)
    tl.store(m2_ptr + out, m2, mask=dmask)


@triton.jit
def _stats_combine_kernel(
    mean_ptr, m2_ptr, mu_ptr, sigma_ptr,
    D, HW, CHUNK, SPLIT, eps,
    BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    n = tl.program_id(0)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_s = tl.arange(0, BLOCK_S)
    dmask = offs_d < D
    smask = offs_s < SPLIT
    mask = dmask[:, None] & smask[None, :]
    cnt = tl.minimum(tl.maximum(HW - offs_s * CHUNK, 0), CHUNK).to(tl.float64)
    idx = (n * D + offs_d).to(tl.int64)[:, None] * SPLIT + offs_s[None, :]
    means = tl.load(mean_ptr + idx, mask=mask, other=0.0)
    m2s = tl.load(m2_ptr + idx, mask=mask, other=0.0)
    hw = tl.sum(cnt, axis=0)  # = HW, in float64
    mu = tl.sum(cnt[None, :] * means, axis=1) / hw
    dm = tl.where(mask, means - mu[:, None], 0.0)
    m2 = tl.sum(m2s + cnt[None, :] * dm * dm, axis=1)
    sigma = tl.sqrt(m2 / hw + eps)
    tl.store(mu_ptr + n * D + offs_d, mu, mask=dmask)
    tl.store(sigma_ptr + n * D + offs_d, sigma.to(tl.float32), mask=dmask)


@triton.jit
def _stats_dx_kernel(
    x_ptr, dx_ptr, mu_ptr, sigma_ptr, dmu_ptr, dsigma_ptr,
    D, HW,
    stride_xn, stride_xd, stride_xq, stride_gn, stride_gd, stride_gq,
    inv_hw,
    ACCUMULATE: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_Q: tl.constexpr,
):  # fmt: skip
    # dx = dmu/HW + dsigma * (x - mu) / (HW * sigma), centred: x - mu in float64 (mu is float64).
    # ACCUMULATE: added to the dx already there (the conv route's), read and written in place.
    n = tl.program_id(0)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_q = tl.program_id(2) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    dmask = offs_d < D
    mask = dmask[:, None] & (offs_q < HW)[None, :]
    mu = tl.load(mu_ptr + n * D + offs_d, mask=dmask, other=0.0).to(tl.float64)
    sg = tl.load(sigma_ptr + n * D + offs_d, mask=dmask, other=1.0)
    a = tl.load(dsigma_ptr + n * D + offs_d, mask=dmask, other=0.0) * inv_hw / sg
    b = tl.load(dmu_ptr + n * D + offs_d, mask=dmask, other=0.0) * inv_hw
    n64 = n.to(tl.int64)
    x = tl.load(
        x_ptr + n64 * stride_xn + offs_d[:, None] * stride_xd + offs_q[None, :] * stride_xq,
        mask=mask,
        other=0.0,
    )
    centred = (x.to(tl.float64) - mu[:, None]).to(tl.float32)
    dx = a[:, None] * centred + b[:, None]
    dx_ptrs = dx_ptr + n64 * stride_gn + offs_d[:, None] * stride_gd + offs_q[None, :] * stride_gq
    if ACCUMULATE:
        dx += tl.load(dx_ptrs, mask=mask, other=0.0).to(tl.float32)
    tl.store(dx_ptrs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


def _plane_strides(x: torch.Tensor) -> tuple[int, int, int]:
    """(stride_n, stride_d, stride_q) with q = h*W + w: valid for NCHW and channels_last."""
    sn, sd, sh, sw = x.stride()
    if x.shape[2] > 1 and x.shape[3] > 1 and sh != x.shape[3] * sw:
        raise ValueError("x must be NCHW-contiguous or channels_last")
    return sn, sd, (sw if x.shape[3] > 1 else sh)


def _split(n: int, dblocks: int, hw: int, block_q: int, device: torch.device) -> tuple[int, int]:
    """(split, chunk): pixel chunks per plane so that the grid has about 4 programs per SM."""
    if device.type == "cuda":
        target = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    else:
        target = 2 * n * dblocks if interpreting() else 1  # the interpreter: exercise the merge
    split = max(1, min(_MAX_SPLIT, triton.cdiv(target, n * dblocks), triton.cdiv(hw, block_q)))
    chunk = triton.cdiv(triton.cdiv(hw, split), block_q) * block_q
    return triton.cdiv(hw, chunk), chunk


def partials(x: torch.Tensor, q_scale: int = 1):
    """The statistics' split of x's planes into (sample, channel block, pixel chunk) programs:
    (BLOCK_D, BLOCK_Q, channel blocks, chunks per plane, chunk, the (N, D, chunks) float64 buffers
    of the chunks' means and M2). ``q_scale`` widens the tile along its contiguous axis
    (onelaunch.py's statistics items)."""
    n, d, height, width = x.shape
    block_d, block_q = _tiles(x)
    block_q *= q_scale
    dblocks = triton.cdiv(d, block_d)
    split, chunk = _split(n, dblocks, height * width, block_q, x.device)
    means = torch.empty((n, d, split), device=x.device, dtype=torch.float64)
    return block_d, block_q, dblocks, split, chunk, means, torch.empty_like(means)


def channel_stats(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu float64, sigma fp32), each (N, D), over x's H x W planes."""
    n, d, height, width = x.shape
    hw = height * width
    mu = torch.empty((n, d), device=x.device, dtype=torch.float64)
    sigma = torch.empty((n, d), device=x.device, dtype=torch.float32)
    if n == 0 or d == 0:
        return mu, sigma
    block_d, block_q, dblocks, split, chunk, means, m2s = partials(x)
    _stats_fwd_kernel[(n, dblocks, split)](
        x, means, m2s, d, hw, chunk, split, *_plane_strides(x),
        BLOCK_D=block_d, BLOCK_Q=block_q, num_warps=_NUM_WARPS,
    )  # fmt: skip
    _stats_combine_kernel[(n, triton.cdiv(d, 32))](
        means, m2s, mu, sigma, d, hw, chunk, split, float(eps),
        BLOCK_D=32, BLOCK_S=max(2, triton.next_power_of_2(split)), num_warps=_NUM_WARPS,
    )  # fmt: skip
    return mu, sigma


def stats_map_forward(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, kh, kw, eps):
    """(m (N, kh, kw) fp32, mu (N, D) float64, sigma (N, D) fp32, h (N, K) fp32)."""
    n = x.shape[0]
    mu, sigma = channel_stats(x, eps)
    z = torch.cat([mu.float(), sigma], dim=1)
    w1, w2 = fc1_weight.float(), fc2_weight.float()
    pre = z @ w1.t() if fc1_bias is None else torch.addmm(fc1_bias.float(), z, w1.t())
    h = pre.relu_()
    logit = h @ w2.t() if fc2_bias is None else torch.addmm(fc2_bias.float(), h, w2.t())
    return logit.sigmoid_().view(n, kh, kw), mu, sigma, h


def mlp_backward(dm, fc1_weight, fc2_weight, m, mu, sigma, h):
    """The hypernetwork's backward from dm (batched GEMMs in torch, fp32): (dmu, dsigma, d fc1_weight,
    d fc1_bias, d fc2_weight, d fc2_bias); dmu and dsigma (N, D) fp32, the bias gradients fp32."""
    n, d = mu.shape
    t = m.shape[1] * m.shape[2]
    sm = m.reshape(n, t).float()
    dlogit = dm.reshape(n, t).float() * sm * (1 - sm)  # through the sigmoid
    dpre = (dlogit @ fc2_weight.float()) * (h > 0)  # through fc2 and the relu
    dz = dpre @ fc1_weight.float()
    dmu, dsigma = dz[:, :d].contiguous(), dz[:, d:].contiguous()
    # Parameter gradients are sums over the batch: two small GEMMs.
    z = torch.cat([mu.float(), sigma], dim=1)
    g_w1 = (dpre.t() @ z).to(fc1_weight.dtype)
    g_b1 = dpre.sum(0)
    g_w2 = (dlogit.t() @ h).to(fc2_weight.dtype)
    g_b2 = dlogit.sum(0)
    return dmu, dsigma, g_w1, g_b1, g_w2, g_b2


def hyper_dx(x, mu, sigma, dmu, dsigma, dx=None):
    """The hypernetwork route's dx (``_stats_dx_kernel``): a new tensor in x's memory format, or, given
    ``dx`` (the conv route's, x's layout), added to it in place (one pass: read x and dx, write dx)."""
    n, d, height, width = x.shape
    accumulate = dx is not None
    if dx is None:
        dx = torch.empty_like(x)  # keeps x's memory format
    if n > 0 and d > 0:
        hw = height * width
        block_d, block_q = _tiles(x)
        grid = (n, triton.cdiv(d, block_d), triton.cdiv(hw, block_q))
        _stats_dx_kernel[grid](
            x, dx, mu, sigma, dmu, dsigma, d, hw, *_plane_strides(x), *_plane_strides(dx), 1.0 / hw,
            ACCUMULATE=accumulate, BLOCK_D=block_d, BLOCK_Q=block_q, num_warps=_NUM_WARPS,
        )  # fmt: skip
    return dx


def hyper_coefficients(mu, sigma, dmu, dsigma, hw):
    """(4, N*D) fp32: the hypernetwork route's dx per element is ``a * ((x - mu_hi) - mu_lo) + b``
    with rows a = dsigma / (HW * sigma), b = dmu / HW, mu_hi = fp32(mu), mu_lo = fp32(mu - mu_hi): the
    conv's dx kernel adds it in its epilogue (conv._mconv_dx_kernel, HYPER). The centring keeps
    ``_stats_dx_kernel``'s digits without float64 in the GEMM kernel: where x is near mu (a large
    mean over a small spread, where ``a * x + b`` would cancel) x - mu_hi is exact (Sterbenz), and
    mu_lo carries the float64 mean's next 24 bits."""
    inv_hw = 1.0 / hw
    mu_hi = mu.float()
    mu_lo = (mu - mu_hi.double()).float()
    return torch.stack([dsigma * inv_hw / sigma, dmu * inv_hw, mu_hi, mu_lo]).reshape(4, -1).contiguous()


def stats_map_backward(dm, x, fc1_weight, fc2_weight, m, mu, sigma, h, need_x):
    """(dx hypernetwork route or empty, d fc1_weight, d fc1_bias, d fc2_weight, d fc2_bias)."""
    dmu, dsigma, g_w1, g_b1, g_w2, g_b2 = mlp_backward(dm, fc1_weight, fc2_weight, m, mu, sigma, h)
    if not need_x:
        return x.new_empty(0), g_w1, g_b1, g_w2, g_b2
    return hyper_dx(x, mu, sigma, dmu, dsigma), g_w1, g_b1, g_w2, g_b2
