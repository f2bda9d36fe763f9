"""The naive per-sample Statistical Hyper-Convolution: the ground truth for every backend.

The layer (paper §2.2, Fig. 1; docs/design.md §1), for x of shape (N, D, H, W) and a conv weight W
of shape (C, D/groups, kh, kw):

1. statistics per sample and input channel, over the H×W plane, in float32 (float64 for
   float64 x): ``mu[n,d] = mean(x[n,d])``, ``sigma[n,d] = sqrt(mean((x[n,d]-mu[n,d])**2) + eps)``;
2. the hypernetwork T_theta: ``z = cat([mu, sigma], 1)``, ``h = relu(fc1(z))``,
   ``m = sigmoid(fc2(h)).view(N, kh, kw)``, every element in (0, 1);
3. the per-sample kernel ``H[n] = W * m[n]`` (one kh×kw map shared by every (c, d) pair);
4. ``y[n] = conv2d(x[n], H[n], bias, stride, padding, dilation, groups)``.

Everything here is plain PyTorch, one conv per sample, differentiated by autograd. It is slow
on purpose: it is what the fused backends are compared against.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F

from . import _checks

__all__ = ["channel_stats", "statistical_map", "modulated_conv2d", "shc_conv2d"]


def channel_stats(x: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(sample, channel) mean and population standard deviation (+eps) over H×W.

    Accumulated in float64 and rounded to the statistics' dtype (as the CPU kernel does), so a
    float32 plane of |x| ~ 1e30, whose variance overflows float32, still has a finite sigma."""
    xs = x.to(torch.float64)
    mu = xs.mean(dim=(2, 3))
    var = (xs - mu[:, :, None, None]).square().mean(dim=(2, 3))
    dt = _checks.stats_dtype(x.dtype)
    return mu.to(dt), torch.sqrt(var + eps).to(dt)


def hypernetwork(mu, sigma, fc1_weight, fc1_bias, fc2_weight, fc2_bias, kernel_size):
    """The two-layer map T_theta(mu, sigma) -> m of shape (N, kh, kw), in the statistics' dtype.

    Runs with autocast off: the map is tiny and its sigmoid wants full precision.
    """
    kh, kw = kernel_size
    dt = mu.dtype
    device = mu.device.type
    off = torch.autocast(device, enabled=False) if torch.amp.is_autocast_available(device) else nullcontext()
    with off:
        z = torch.cat([mu, sigma], dim=1)
        h = torch.relu(F.linear(z, fc1_weight.to(dt), None if fc1_bias is None else fc1_bias.to(dt)))
        logits = F.linear(h, fc2_weight.to(dt), None if fc2_bias is None else fc2_bias.to(dt))
        return torch.sigmoid(logits).view(mu.shape[0], kh, kw)


def statistical_map(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, kernel_size, eps=1e-5):
    """m = T_theta(mu(x), sigma(x)), shape (N, kh, kw), float32 (float64 for float64 x)."""
    kernel_size = _checks.check_map_args(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, kernel_size)
    mu, sigma = channel_stats(x, eps)
    return hypernetwork(mu, sigma, fc1_weight, fc1_bias, fc2_weight, fc2_bias, kernel_size)


def modulated_conv2d(x, weight, m, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """y[n] = conv2d(x[n], weight * m[n], ...), one F.conv2d call per sample. ``padding`` takes
    what F.conv2d takes: an int, a pair, "valid" or "same"."""
    stride, dilation = _checks.pair(stride, "stride"), _checks.pair(dilation, "dilation")
    padding, explicit = _checks.conv_padding(padding, "zeros", weight, stride, dilation)
    if explicit is not None:  # "same" with an even total padding: the extra row/column goes last
        x = F.pad(x, explicit)
    stride, padding, dilation = _checks.check_conv_args(x, weight, m, bias, stride, padding, dilation, groups)
    n = x.shape[0]
    if n == 0:  # an empty result that still connects every input to the graph
        y = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
        return y + m.sum().to(y.dtype)
    outs = []
    for i in range(n):
        kernel = (weight * m[i].to(weight.dtype)).to(x.dtype)
        outs.append(F.conv2d(x[i : i + 1], kernel, bias, stride, padding, dilation, groups))
    return torch.cat(outs, dim=0)


def shc_conv2d(
    x,
    weight,
    bias,
    fc1_weight,
    fc1_bias,
    fc2_weight,
    fc2_bias,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    eps=1e-5,
    grad_route="both",
    *,
    padding_mode="zeros",
):
    """The whole layer. ``grad_route`` picks which route(s) carry the gradient to x.

    "conv" detaches x where it feeds the statistics, "hyper" where it feeds the convolution,
    so the parameter gradients stay exact and dx(both) == dx(conv) + dx(hyper). ``padding`` (an
    int, a pair, "valid" or "same") and ``padding_mode`` are nn.Conv2d's; the statistics are
    those of the unpadded input. ``x`` may be one unbatched sample (D, H, W), as for F.conv2d.
    """
    _checks.check_grad_route(grad_route)
    unbatched = isinstance(x, torch.Tensor) and x.dim() == 3
    if unbatched:
        x = x.unsqueeze(0)
    _checks.check_tensor(x, "x", 4)
    _checks.check_tensor(weight, "weight", 4)
    _checks.check_channels(x, weight, groups)
    stride, dilation = _checks.pair(stride, "stride"), _checks.pair(dilation, "dilation")
    padding, explicit = _checks.conv_padding(padding, padding_mode, weight, stride, dilation)
    x_stats, x_conv = _checks.route_inputs(x, grad_route)
    if explicit is not None:
        x_conv = F.pad(x_conv, explicit, mode="constant" if padding_mode == "zeros" else padding_mode)
    m = statistical_map(x_stats, fc1_weight, fc1_bias, fc2_weight, fc2_bias, tuple(weight.shape[2:]), eps)
    y = modulated_conv2d(x_conv, weight, m, bias, stride, padding, dilation, groups)
    return y.squeeze(0) if unbatched else y
