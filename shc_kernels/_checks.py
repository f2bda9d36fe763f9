"""Argument checks shared by every backend: bad input gets a ValueError/TypeError that names
the argument and what was expected, before any kernel runs."""

from __future__ import annotations

import math
import numbers
import operator

import torch

GRAD_ROUTES = ("both", "conv", "hyper")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def stats_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics and the map are float32, or float64 for float64 input."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _int(v, name: str, value) -> int:
    """An int, a numpy integer or anything with __index__, as F.conv2d takes; not a bool."""
    if isinstance(v, bool) or (hasattr(v, "dtype") and str(getattr(v, "dtype", "")) == "bool"):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    try:
        return operator.index(v)
    except TypeError:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}") from None


def pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
        return (_int(value[0], name, value), _int(value[1], name, value))
    if isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be an int or a pair of ints, got a tensor")
    v = _int(value, name, value)
    return (v, v)


PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def conv_padding(padding, padding_mode, weight, stride, dilation):
    """(padding the op applies, explicit F.pad amounts or None) for F.conv2d's ``padding`` (an
    int, a pair, "valid" or "same") and nn.Conv2d's ``padding_mode``. The op pads with zeros,
    symmetrically; anything else ("same" with an even kernel, a non-zero mode) is padded
    explicitly beforehand, as nn.Conv2d does (the extra row/column of "same" goes last)."""
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    explicit = None
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0, 0)
        elif padding == "same":
            check_tensor(weight, "weight", 4)
            if stride != (1, 1):
                raise ValueError(f"padding='same' is not supported for strided convolutions: stride={stride}")
            totals = [d * (k - 1) for d, k in zip(dilation, weight.shape[2:], strict=True)]
            if any(t % 2 for t in totals):
                (th, tw) = totals
                explicit = (tw // 2, tw - tw // 2, th // 2, th - th // 2)
                padding = (0, 0)
            else:
                padding = (totals[0] // 2, totals[1] // 2)
        else:
            raise ValueError(f"padding must be an int, a pair of ints, 'valid' or 'same', got {padding!r}")
    else:
        padding = pair(padding, "padding")
    if padding_mode != "zeros" and explicit is None and padding != (0, 0):
        if min(padding) < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        explicit = (padding[1], padding[1], padding[0], padding[0])
        padding = (0, 0)
    return padding, explicit


def dense_layout(t: torch.Tensor) -> torch.Tensor:
    """The kernels take NCHW-contiguous or channels_last tensors; anything else is copied to
    NCHW-contiguous first."""
    if t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)):
        return t
    return t.contiguous()


def check_eps(eps) -> float:
    """eps, added to the variance: a finite number > 0 (sigma = sqrt(eps) for a constant plane)."""
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a float, got {type(eps).__name__}")
    eps = float(eps)
    if not (eps > 0 and math.isfinite(eps)):
        raise ValueError(f"eps must be a finite number > 0, got {eps}")
    return eps


def check_tensor(t, name: str, ndim: int | None = None, optional: bool = False):
    if t is None and optional:
        return
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating-point tensor (fp16/bf16/fp32/fp64), got {t.dtype}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")


def _same_device(ref: torch.Tensor, **others) -> None:
    for name, t in others.items():
        if t is not None and t.device != ref.device:
            raise ValueError(f"{name} is on {t.device} but x is on {ref.device}; move both to one device")


def conv_out_size(x, weight, stride, padding, dilation) -> tuple[int, int]:
    h, w = x.shape[2], x.shape[3]
    kh, kw = weight.shape[2], weight.shape[3]
    oh = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return oh, ow


def check_conv_args(x, weight, m, bias, stride, padding, dilation, groups):
    """Validate modulated_conv2d's arguments; returns (stride, padding, dilation) as pairs."""
    stride, padding, dilation = check_layer_conv_args(x, weight, bias, stride, padding, dilation, groups)
    check_tensor(m, "m", 3)
    _same_device(x, m=m)
    n, kh, kw = x.shape[0], weight.shape[2], weight.shape[3]
    if tuple(m.shape) != (n, kh, kw):
        raise ValueError(f"m must have shape (N, kh, kw) = {(n, kh, kw)}, got {tuple(m.shape)}")
    return stride, padding, dilation


def check_layer_conv_args(x, weight, bias, stride, padding, dilation, groups):
    """Validate the conv's arguments other than the map; returns (stride, padding, dilation)."""
    check_tensor(x, "x", 4)
    check_tensor(weight, "weight", 4)
    check_tensor(bias, "bias", 1, optional=True)
    _same_device(x, weight=weight, bias=bias)
    # Under autocast the conv casts x, weight and bias to the autocast dtype itself.
    device = x.device.type
    autocast = torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)
    if weight.dtype != x.dtype and not autocast:
        raise TypeError(f"weight dtype {weight.dtype} differs from x dtype {x.dtype}")
    if bias is not None and bias.dtype != x.dtype and not autocast:
        raise TypeError(f"bias dtype {bias.dtype} differs from x dtype {x.dtype}")
    stride, padding, dilation = pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "dilation")
    if min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
        raise ValueError(
            f"need stride >= 1, dilation >= 1, padding >= 0; got stride={stride}, "
            f"padding={padding}, dilation={dilation}"
        )
    check_channels(x, weight, groups)
    c, _, kh, kw = weight.shape
    if bias is not None and tuple(bias.shape) != (c,):
        raise ValueError(f"bias must have shape ({c},), got {tuple(bias.shape)}")
    oh, ow = conv_out_size(x, weight, stride, padding, dilation)
    if oh < 1 or ow < 1:
        raise ValueError(
            f"input of size {tuple(x.shape[2:])} is too small for kernel {(kh, kw)} with "
            f"padding={padding}, dilation={dilation}: output would be {(oh, ow)}"
        )
    return stride, padding, dilation


def check_channels(x, weight, groups) -> None:
    """x (N, D, H, W) and weight (C, D/groups, kh, kw) agree; groups divides D and C."""
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    d = x.shape[1]
    c, dg, kh, kw = weight.shape
    if c == 0 or kh == 0 or kw == 0:
        raise ValueError(f"weight must have C, kh, kw >= 1, got shape {tuple(weight.shape)}")
    if c % groups or d % groups:
        raise ValueError(f"in_channels ({d}) and out_channels ({c}) must be divisible by groups ({groups})")
    if dg * groups != d:
        raise ValueError(
            f"x has {d} channels but weight of shape {tuple(weight.shape)} with groups={groups} "
            f"expects {dg * groups} (weight must be (C, D/groups, kh, kw))"
        )


def check_map_args(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, kernel_size):
    """Validate statistical_map's arguments; returns kernel_size as a pair."""
    check_tensor(x, "x", 4)
    check_tensor(fc1_weight, "fc1_weight", 2)
    check_tensor(fc1_bias, "fc1_bias", 1, optional=True)
    check_tensor(fc2_weight, "fc2_weight", 2)
    check_tensor(fc2_bias, "fc2_bias", 1, optional=True)
    _same_device(x, fc1_weight=fc1_weight, fc1_bias=fc1_bias, fc2_weight=fc2_weight, fc2_bias=fc2_bias)
    kh, kw = pair(kernel_size, "kernel_size")
    if kh < 1 or kw < 1:
        raise ValueError(f"kernel_size must be >= 1, got {(kh, kw)}")
    d = x.shape[1]
    k = fc1_weight.shape[0]
    if tuple(fc1_weight.shape) != (k, 2 * d):
        raise ValueError(
            f"fc1_weight must have shape (hidden, 2*D) = (hidden, {2 * d}) for x with D={d} "
            f"channels, got {tuple(fc1_weight.shape)}"
        )
    if fc1_bias is not None and tuple(fc1_bias.shape) != (k,):
        raise ValueError(f"fc1_bias must have shape ({k},), got {tuple(fc1_bias.shape)}")
    if tuple(fc2_weight.shape) != (kh * kw, k):
        raise ValueError(
            f"fc2_weight must have shape (kh*kw, hidden) = {(kh * kw, k)}, got {tuple(fc2_weight.shape)}"
        )
    if fc2_bias is not None and tuple(fc2_bias.shape) != (kh * kw,):
        raise ValueError(f"fc2_bias must have shape ({kh * kw},), got {tuple(fc2_bias.shape)}")
    return kh, kw


def check_grad_route(grad_route) -> None:
    if grad_route not in GRAD_ROUTES:
        raise ValueError(f"grad_route must be one of {GRAD_ROUTES}, got {grad_route!r}")


def route_inputs(x: torch.Tensor, grad_route: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x for the statistics, x for the convolution): the route not taken sees x detached."""
    x_stats = x.detach() if grad_route == "conv" else x
    x_conv = x.detach() if grad_route == "hyper" else x
    return x_stats, x_conv
