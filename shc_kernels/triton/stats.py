"""Statistics and hypernetwork (DESIGN.md §1 steps 1-2) as Triton kernels.

Forward, one program per sample: two-pass mean / population std (+eps) of every channel over
H×W in fp32, scaled so that it stays finite for any finite x (|x| ~ 1e30 included), then
``m = sigmoid(fc2(relu(fc1(cat[mu, sigma]))))``. Backward, one program per
sample: the MLP backward from ``dm`` to ``dmu``, ``dsigma`` (the batch-reduced parameter
gradients are two small matmuls in torch); then one elementwise kernel for the
hypernetwork-route ``dx``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["stats_map_forward", "stats_map_backward"]

# Tile sizes: the kernels are bandwidth-bound and tiny next to the conv; no autotuning.
_BLOCK_D = 32
_BLOCK_Q = 128
_BLOCK_K = 32
_NUM_WARPS = 4


@triton.jit
def _stats_map_fwd_kernel(
    x_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr,
    mu_ptr, sigma_ptr, h_ptr, m_ptr,
    D, HW, K, T,
    stride_xn, stride_xd, stride_xq,
    inv_hw, eps,
    HAS_B1: tl.constexpr, HAS_B2: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_T: tl.constexpr,
):  # fmt: skip
    n = tl.program_id(0)
    x_base = x_ptr + n.to(tl.int64) * stride_xn
    # 1. statistics, two passes per channel block, finite for any finite fp32 x: the mean sums
    # x/HW (never above max|x|), and the spread is summed in units of a power of two >= max|x|
    # (so (x - mu)^2 cannot overflow, and the scaling itself rounds nothing).
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        dmask = offs_d < D
        s = tl.zeros([BLOCK_D], dtype=tl.float32)
        amax = tl.zeros([BLOCK_D], dtype=tl.float32)
        for q0 in range(0, HW, BLOCK_Q):
            offs_q = q0 + tl.arange(0, BLOCK_Q)
            mask = dmask[:, None] & (offs_q < HW)[None, :]
            ptrs = x_base + offs_d[:, None] * stride_xd + offs_q[None, :] * stride_xq
            v = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
            s += tl.sum(v * inv_hw, axis=1)
            amax = tl.maximum(amax, tl.max(tl.abs(v), axis=1))
        mu = s
        # 2^-126 <= scale <= 2^127: a normal power of two, and log2 never sees 0.
        exponent = tl.minimum(tl.ceil(tl.log2(tl.maximum(amax, 1.1754943508222875e-38))), 127.0)
        scale = tl.exp2(exponent)
        inv_scale = tl.exp2(-exponent)
        mu_s = mu * inv_scale
        ss = tl.zeros([BLOCK_D], dtype=tl.float32)
        for q0 in range(0, HW, BLOCK_Q):
            offs_q = q0 + tl.arange(0, BLOCK_Q)
            mask = dmask[:, None] & (offs_q < HW)[None, :]
            ptrs = x_base + offs_d[:, None] * stride_xd + offs_q[None, :] * stride_xq
            v = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
            dv = tl.where(mask, v * inv_scale[:, None] - mu_s[:, None], 0.0)
            ss += tl.sum(dv * dv, axis=1)
        spread = scale * tl.sqrt(ss * inv_hw)  # the population std without eps
        # sqrt(spread^2 + eps); above 1e18 eps is below fp32's resolution and spread^2 could overflow
        capped = tl.minimum(spread, 1e18)
        sigma = tl.where(spread > 1e18, spread, tl.sqrt(capped * capped + eps))
        tl.store(mu_ptr + n * D + offs_d, mu, mask=dmask)
        tl.store(sigma_ptr + n * D + offs_d, sigma, mask=dmask)
    tl.debug_barrier()  # mu/sigma written by other threads of this program are read below
    # 2. h = relu(fc1([mu, sigma])), fc1_weight is (K, 2D) contiguous.
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        kmask = offs_k < K
        acc = tl.zeros([BLOCK_K], dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            dmask = offs_d < D
            mu = tl.load(mu_ptr + n * D + offs_d, mask=dmask, other=0.0)
            sg = tl.load(sigma_ptr + n * D + offs_d, mask=dmask, other=0.0)
            wmask = kmask[:, None] & dmask[None, :]
            wrow = w1_ptr + offs_k[:, None] * (2 * D) + offs_d[None, :]
            w_mu = tl.load(wrow, mask=wmask, other=0.0).to(tl.float32)
            w_sg = tl.load(wrow + D, mask=wmask, other=0.0).to(tl.float32)
            acc += tl.sum(w_mu * mu[None, :] + w_sg * sg[None, :], axis=1)
        if HAS_B1:
            acc += tl.load(b1_ptr + offs_k, mask=kmask, other=0.0).to(tl.float32)
        tl.store(h_ptr + n * K + offs_k, tl.maximum(acc, 0.0), mask=kmask)
    tl.debug_barrier()
    # 3. m = sigmoid(fc2(h)), fc2_weight is (T, K) contiguous.
    offs_t = tl.arange(0, BLOCK_T)
    tmask = offs_t < T
    logit = tl.zeros([BLOCK_T], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        kmask = offs_k < K
        hk = tl.load(h_ptr + n * K + offs_k, mask=kmask, other=0.0)
        w2 = tl.load(
            w2_ptr + offs_t[:, None] * K + offs_k[None, :], mask=tmask[:, None] & kmask[None, :], other=0.0
        ).to(tl.float32)
        logit += tl.sum(w2 * hk[None, :], axis=1)
    if HAS_B2:
        logit += tl.load(b2_ptr + offs_t, mask=tmask, other=0.0).to(tl.float32)
    tl.store(m_ptr + n * T + offs_t, 1.0 / (1.0 + tl.exp(-logit)), mask=tmask)


@triton.jit
def _map_bwd_kernel(
    dm_ptr, m_ptr, h_ptr, w1_ptr, w2_ptr,
    dlogit_ptr, dpre_ptr, dmu_ptr, dsigma_ptr,
    D, K, T,
    BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_T: tl.constexpr,
):  # fmt: skip
    n = tl.program_id(0)
    offs_t = tl.arange(0, BLOCK_T)
    tmask = offs_t < T
    m = tl.load(m_ptr + n * T + offs_t, mask=tmask, other=0.0)
    dl = tl.load(dm_ptr + n * T + offs_t, mask=tmask, other=0.0) * m * (1.0 - m)
    tl.store(dlogit_ptr + n * T + offs_t, dl, mask=tmask)
    # dpre = (dlogit @ fc2_weight) * (h > 0)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        kmask = offs_k < K
        w2 = tl.load(
            w2_ptr + offs_t[:, None] * K + offs_k[None, :], mask=tmask[:, None] & kmask[None, :], other=0.0
        ).to(tl.float32)
        dh = tl.sum(w2 * dl[:, None], axis=0)
        hk = tl.load(h_ptr + n * K + offs_k, mask=kmask, other=0.0)
        tl.store(dpre_ptr + n * K + offs_k, tl.where(hk > 0.0, dh, 0.0), mask=kmask)
    tl.debug_barrier()
    # [dmu, dsigma] = dpre @ fc1_weight
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        dmask = offs_d < D
        g_mu = tl.zeros([BLOCK_D], dtype=tl.float32)
        g_sg = tl.zeros([BLOCK_D], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            kmask = offs_k < K
            dp = tl.load(dpre_ptr + n * K + offs_k, mask=kmask, other=0.0)
            wmask = kmask[:, None] & dmask[None, :]
            wrow = w1_ptr + offs_k[:, None] * (2 * D) + offs_d[None, :]
            g_mu += tl.sum(tl.load(wrow, mask=wmask, other=0.0).to(tl.float32) * dp[:, None], axis=0)
            g_sg += tl.sum(tl.load(wrow + D, mask=wmask, other=0.0).to(tl.float32) * dp[:, None], axis=0)
        tl.store(dmu_ptr + n * D + offs_d, g_mu, mask=dmask)
        tl.store(dsigma_ptr + n * D + offs_d, g_sg, mask=dmask)


@triton.jit
def _stats_dx_kernel(
    x_ptr, dx_ptr, mu_ptr, sigma_ptr, dmu_ptr, dsigma_ptr,
    D, HW,
    stride_xn, stride_xd, stride_xq, stride_gn, stride_gd, stride_gq,
    inv_hw,
    BLOCK_D: tl.constexpr, BLOCK_Q: tl.constexpr,
):  # fmt: skip
    # dx = dmu/HW + dsigma * (x - mu) / (HW * sigma) = a * x + b per (n, d)
    n = tl.program_id(0)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_q = tl.program_id(2) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    dmask = offs_d < D
    mask = dmask[:, None] & (offs_q < HW)[None, :]
    mu = tl.load(mu_ptr + n * D + offs_d, mask=dmask, other=0.0)
    sg = tl.load(sigma_ptr + n * D + offs_d, mask=dmask, other=1.0)
    a = tl.load(dsigma_ptr + n * D + offs_d, mask=dmask, other=0.0) * inv_hw / sg
    b = tl.load(dmu_ptr + n * D + offs_d, mask=dmask, other=0.0) * inv_hw - a * mu
    n64 = n.to(tl.int64)
    x = tl.load(
        x_ptr + n64 * stride_xn + offs_d[:, None] * stride_xd + offs_q[None, :] * stride_xq,
        mask=mask,
        other=0.0,
    )
    dx = a[:, None] * x.to(tl.float32) + b[:, None]
    dx_ptrs = dx_ptr + n64 * stride_gn + offs_d[:, None] * stride_gd + offs_q[None, :] * stride_gq
    tl.store(dx_ptrs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


def _plane_strides(x: torch.Tensor) -> tuple[int, int, int]:
    """(stride_n, stride_d, stride_q) with q = h*W + w: valid for NCHW and channels_last."""
    sn, sd, sh, sw = x.stride()
    if x.shape[2] > 1 and x.shape[3] > 1 and sh != x.shape[3] * sw:
        raise ValueError("x must be NCHW-contiguous or channels_last")
    return sn, sd, (sw if x.shape[3] > 1 else sh)


def _block_t(t: int) -> int:
    return max(16, triton.next_power_of_2(t))


def stats_map_forward(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, kh, kw, eps):
    """(m (N, kh, kw), mu (N, D), sigma (N, D), h (N, K)), all fp32."""
    n, d, height, width = x.shape
    k, t = fc1_weight.shape[0], kh * kw
    f32 = dict(device=x.device, dtype=torch.float32)
    m = torch.empty((n, kh, kw), **f32)
    mu, sigma, h = torch.empty((n, d), **f32), torch.empty((n, d), **f32), torch.empty((n, k), **f32)
    if n == 0:
        return m, mu, sigma, h
    hw = height * width
    w1, w2 = fc1_weight.contiguous(), fc2_weight.contiguous()
    b1 = fc1_bias.contiguous() if fc1_bias is not None else w1
    b2 = fc2_bias.contiguous() if fc2_bias is not None else w2
    _stats_map_fwd_kernel[(n,)](
        x, w1, b1, w2, b2, mu, sigma, h, m,
        d, hw, k, t, *_plane_strides(x), 1.0 / hw, float(eps),
        HAS_B1=fc1_bias is not None, HAS_B2=fc2_bias is not None,
        BLOCK_D=_BLOCK_D, BLOCK_Q=_BLOCK_Q, BLOCK_K=_BLOCK_K, BLOCK_T=_block_t(t),
        num_warps=_NUM_WARPS,
    )  # fmt: skip
    return m, mu, sigma, h


def stats_map_backward(dm, x, fc1_weight, fc2_weight, m, mu, sigma, h, need_x):
    """(dx hypernetwork route or empty, d fc1_weight, d fc1_bias, d fc2_weight, d fc2_bias)."""
    n, d, height, width = x.shape
    k, t = fc1_weight.shape[0], m.shape[1] * m.shape[2]
    f32 = dict(device=x.device, dtype=torch.float32)
    dlogit, dpre = torch.zeros((n, t), **f32), torch.zeros((n, k), **f32)
    dmu, dsigma = torch.zeros((n, d), **f32), torch.zeros((n, d), **f32)
    if n > 0:
        _map_bwd_kernel[(n,)](
            dm.float().contiguous(), m.contiguous(), h.contiguous(),
            fc1_weight.contiguous(), fc2_weight.contiguous(),
            dlogit, dpre, dmu, dsigma, d, k, t,
            BLOCK_D=_BLOCK_D, BLOCK_K=_BLOCK_K, BLOCK_T=_block_t(t), num_warps=_NUM_WARPS,
        )  # fmt: skip
    # Parameter gradients are sums over the batch: two small GEMMs.
    z = torch.cat([mu, sigma], dim=1)
    g_w1 = (dpre.t() @ z).to(fc1_weight.dtype)
    g_b1 = dpre.sum(0)
    g_w2 = (dlogit.t() @ h).to(fc2_weight.dtype)
    g_b2 = dlogit.sum(0)
    if not need_x:
        return x.new_empty(0), g_w1, g_b1, g_w2, g_b2
    dx = torch.empty_like(x)  # keeps x's memory format
    if n > 0:
        hw = height * width
        grid = (n, triton.cdiv(d, _BLOCK_D), triton.cdiv(hw, _BLOCK_Q))
        _stats_dx_kernel[grid](
            x, dx, mu, sigma, dmu, dsigma, d, hw, *_plane_strides(x), *_plane_strides(dx), 1.0 / hw,
            BLOCK_D=_BLOCK_D, BLOCK_Q=_BLOCK_Q, num_warps=_NUM_WARPS,
        )  # fmt: skip
    return dx, g_w1, g_b1, g_w2, g_b2
