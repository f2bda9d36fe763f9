"""The Triton backend as ``shc::triton_*`` custom ops (fake functions, autograd, autocast) and
the three functions the functional API calls: ``statistical_map``, ``modulated_conv2d`` and
``shc_layer`` (the whole layer, what shc_conv2d runs on this backend).

Ops:
  shc::triton_statistical_map(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, kh, kw, eps)
      -> (m, mu, sigma, h)        fp32 but mu float64 (the backward centres x on it); mu, sigma,
                                  h are saved for the backward only
  shc::triton_statistical_map_backward(dm, x, fc1_weight, fc2_weight, m, mu, sigma, h, need_x)
      -> (dx hypernetwork route, d fc1_weight, d fc1_bias, d fc2_weight, d fc2_bias)
  shc::triton_modulated_conv2d(x, weight, m, bias, stride, padding, dilation, groups) -> y
  shc::triton_modulated_conv2d_backward(grad_y, x, weight, m, stride, padding, dilation, groups,
      need_x, need_weight, need_m) -> (dx conv route, d weight, dm); unneeded ones are empty.
  shc::triton_shc_layer(x, weight, bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, stride, padding,
      dilation, groups, eps, grad_route) -> (y, m, mu, sigma, h); m, mu, sigma, h for the backward
  shc::triton_shc_layer_backward(grad_y, x, weight, m, mu, sigma, h, fc1_weight, fc2_weight, stride,
      padding, dilation, groups, conv_x, hyper_x, need_weight, need_map)
      -> (dx, d weight, d fc1_weight, d fc1_bias, d fc2_weight, d fc2_bias): the layer's backward
      with the hypernetwork route of dx in the dx kernel's epilogue (layer.py)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch._prims_common import suggest_memory_format

from .._checks import conv_out_size
from ..ops import register_autocast_rule
from . import conv, interpreting, layer, stats

__all__ = ["statistical_map", "modulated_conv2d", "shc_layer"]


def _computable(*tensors: torch.Tensor | None) -> None:
    """Refuse what the kernels cannot compute right: the interpreter (TRITON_INTERPRET=1) has no
    bfloat16 and would return garbage. Checked in every op, so autocast's casts are seen too."""
    if interpreting() and any(t is not None and t.dtype == torch.bfloat16 for t in tensors):
        raise ValueError(
            "the triton backend under TRITON_INTERPRET=1 cannot compute bfloat16 (the interpreter "
            "has no bfloat16): use float32 or float16, or a GPU"
        )


def _dense(t: torch.Tensor) -> torch.Tensor:
    """The kernels take NCHW-contiguous or channels_last 4-d tensors; anything else is copied."""
    if t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last):
        return t
    return t.contiguous(memory_format=suggest_memory_format(t))


# --- statistical map -------------------------------------------------------------------------


@torch.library.custom_op("shc::triton_statistical_map", mutates_args=())
def _map_op(
    x: torch.Tensor,
    fc1_weight: torch.Tensor,
    fc1_bias: torch.Tensor | None,
    fc2_weight: torch.Tensor,
    fc2_bias: torch.Tensor | None,
    kh: int,
    kw: int,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    _computable(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias)
    return stats.stats_map_forward(_dense(x), fc1_weight, fc1_bias, fc2_weight, fc2_bias, kh, kw, eps)


@_map_op.register_fake
def _map_fake(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, kh, kw, eps):
    n, d = x.shape[0], x.shape[1]
    f32 = dict(dtype=torch.float32)
    return (
        x.new_empty((n, kh, kw), **f32),
        x.new_empty((n, d), dtype=torch.float64),
        x.new_empty((n, d), **f32),
        x.new_empty((n, fc1_weight.shape[0]), **f32),
    )


@torch.library.custom_op("shc::triton_statistical_map_backward", mutates_args=())
def _map_backward_op(
    dm: torch.Tensor,
    x: torch.Tensor,
    fc1_weight: torch.Tensor,
    fc2_weight: torch.Tensor,
    m: torch.Tensor,
    mu: torch.Tensor,
    sigma: torch.Tensor,
    h: torch.Tensor,
    need_x: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    _computable(dm, x, fc1_weight, fc2_weight)
    return stats.stats_map_backward(dm, _dense(x), fc1_weight, fc2_weight, m, mu, sigma, h, need_x)


@_map_backward_op.register_fake
def _(dm, x, fc1_weight, fc2_weight, m, mu, sigma, h, need_x):
    dx = torch.empty_like(x, memory_format=suggest_memory_format(x)) if need_x else x.new_empty(0)
    f32 = dict(dtype=torch.float32)
    return (
        dx,
        torch.empty_like(fc1_weight),
        fc1_weight.new_empty((fc1_weight.shape[0],), **f32),
        torch.empty_like(fc2_weight),
        fc2_weight.new_empty((fc2_weight.shape[0],), **f32),
    )


def _second_order(fn, inputs, needs, grads_out):
    """The backward recomputed through a differentiable path (reference.py's plain PyTorch),
    its graph kept: what create_graph=True (second order) gets from the Triton backend, whose
    kernels have no derivatives of their own."""
    with torch.enable_grad():
        outs = fn(*inputs)
    wanted = [t for t, n in zip(inputs, needs, strict=True) if n and t is not None]
    got = iter(torch.autograd.grad(outs, wanted, grads_out, create_graph=True, allow_unused=True))
    return tuple(next(got) if (n and t is not None) else None for t, n in zip(inputs, needs, strict=True))


def _map_setup_context(ctx, inputs, output):
    x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, kh, kw, eps = inputs
    m, mu, sigma, h = output
    ctx.mark_non_differentiable(mu, sigma, h)
    ctx.save_for_backward(x, fc1_weight, fc2_weight, m, mu, sigma, h, fc1_bias, fc2_bias)
    ctx.map_conf = ((kh, kw), eps)
    ctx.bias_dtypes = (
        None if fc1_bias is None else fc1_bias.dtype,
        None if fc2_bias is None else fc2_bias.dtype,
    )


def _map_backward(ctx, dm, _dmu, _dsigma, _dh):
    x, fc1_weight, fc2_weight, m, mu, sigma, h, fc1_bias, fc2_bias = ctx.saved_tensors
    need = ctx.needs_input_grad
    if dm is None:
        dm = torch.zeros_like(m)
    if torch.is_grad_enabled():  # create_graph=True

        def fn(*args):
            from ..reference import statistical_map

            return statistical_map(*args, *ctx.map_conf)

        inputs = (x, fc1_weight, fc1_bias, fc2_weight, fc2_bias)
        return (*_second_order(fn, inputs, need[:5], dm), None, None, None)
    dx, g_w1, g_b1, g_w2, g_b2 = torch.ops.shc.triton_statistical_map_backward(
        dm, x, fc1_weight, fc2_weight, m, mu, sigma, h, bool(need[0])
    )
    b1_dt, b2_dt = ctx.bias_dtypes
    return (
        dx if need[0] else None,
        g_w1 if need[1] else None,
        g_b1.to(b1_dt) if (need[2] and b1_dt is not None) else None,
        g_w2 if need[3] else None,
        g_b2.to(b2_dt) if (need[4] and b2_dt is not None) else None,
        None,
        None,
        None,
    )


_map_op.register_autograd(_map_backward, setup_context=_map_setup_context)


# --- modulated conv --------------------------------------------------------------------------


@torch.library.custom_op("shc::triton_modulated_conv2d", mutates_args=())
def _conv_op(
    x: torch.Tensor,
    weight: torch.Tensor,
    m: torch.Tensor,
    bias: torch.Tensor | None,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
) -> torch.Tensor:
    _computable(x, weight, m, bias)
    return conv.conv_forward(
        _dense(x), weight, m.float(), bias, tuple(stride), tuple(padding), tuple(dilation), groups
    )


@_conv_op.register_fake
def _conv_fake(x, weight, m, bias, stride, padding, dilation, groups):
    oh, ow = conv_out_size(x, weight, stride, padding, dilation)
    y = x.new_empty((x.shape[0], weight.shape[0], oh, ow))
    return y.contiguous(memory_format=suggest_memory_format(x))


@torch.library.custom_op("shc::triton_modulated_conv2d_backward", mutates_args=())
def _conv_backward_op(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    m: torch.Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    need_x: bool,
    need_weight: bool,
    need_m: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _computable(grad_y, x, weight, m)
    return conv.conv_backward(
        _dense(grad_y), _dense(x), weight, m.float(), tuple(stride), tuple(padding), tuple(dilation),
        groups, need_x, need_weight, need_m,
    )  # fmt: skip


@_conv_backward_op.register_fake
def _(grad_y, x, weight, m, stride, padding, dilation, groups, need_x, need_weight, need_m):
    dx = torch.empty_like(x, memory_format=suggest_memory_format(x)) if need_x else x.new_empty(0)
    dw = (
        torch.empty_like(weight, memory_format=torch.contiguous_format)
        if need_weight
        else weight.new_empty(0)
    )
    dm = m.new_empty(m.shape, dtype=torch.float32) if need_m else m.new_empty(0)
    return dx, dw, dm


def _conv_setup_context(ctx, inputs, output):
    x, weight, m, bias, stride, padding, dilation, groups = inputs
    ctx.save_for_backward(x, weight, m)
    ctx.conf = (list(stride), list(padding), list(dilation), groups)
    ctx.has_bias = bias is not None


def _conv_backward(ctx, grad_y):
    x, weight, m = ctx.saved_tensors
    need_x, need_w, need_m, need_b = ctx.needs_input_grad[:4]
    if torch.is_grad_enabled():  # create_graph=True

        def fn(xx, ww, mm):
            from ..reference import modulated_conv2d

            return modulated_conv2d(xx, ww, mm, None, *ctx.conf)

        grads = _second_order(fn, (x, weight, m), (need_x, need_w, need_m), grad_y)
        gb = grad_y.sum(dim=(0, 2, 3)) if (ctx.has_bias and need_b) else None
        return (*grads, gb, None, None, None, None)
    gx, gw, gm = torch.ops.shc.triton_modulated_conv2d_backward(
        grad_y, x, weight, m, *ctx.conf, bool(need_x), bool(need_w), bool(need_m)
    )
    gb = (
        grad_y.sum(dim=(0, 2, 3), dtype=torch.float32).to(grad_y.dtype) if (ctx.has_bias and need_b) else None
    )
    return (
        gx if need_x else None,
        gw if need_w else None,
        gm.to(m.dtype) if need_m else None,
        gb,
        None,
        None,
        None,
        None,
    )


_conv_op.register_autograd(_conv_backward, setup_context=_conv_setup_context)


# --- the whole layer: one op, its backward with the hypernetwork route in dx's epilogue --------


@torch.library.custom_op("shc::triton_shc_layer", mutates_args=())
def _layer_op(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    fc1_weight: torch.Tensor,
    fc1_bias: torch.Tensor | None,
    fc2_weight: torch.Tensor,
    fc2_bias: torch.Tensor | None,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    eps: float,
    grad_route: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    _computable(x, weight, bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias)
    return layer.layer_forward(
        _dense(x), weight, bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, tuple(stride), tuple(padding),
        tuple(dilation), groups, eps,
    )  # fmt: skip


@_layer_op.register_fake
def _(x, weight, bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, stride, padding, dilation, groups, eps,
      grad_route):  # fmt: skip
    y = _conv_fake(x, weight, None, bias, stride, padding, dilation, groups)
    m, mu, sigma, h = _map_fake(
        x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, weight.shape[2], weight.shape[3], eps
    )
    return y, m, mu, sigma, h


@torch.library.custom_op("shc::triton_shc_layer_backward", mutates_args=())
def _layer_backward_op(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    m: torch.Tensor,
    mu: torch.Tensor,
    sigma: torch.Tensor,
    h: torch.Tensor,
    fc1_weight: torch.Tensor,
    fc2_weight: torch.Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    conv_x: bool,
    hyper_x: bool,
    need_weight: bool,
    need_map: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    _computable(grad_y, x, weight, fc1_weight, fc2_weight)
    return layer.layer_backward(
        _dense(grad_y), _dense(x), weight, m, mu, sigma, h, fc1_weight, fc2_weight, tuple(stride),
        tuple(padding), tuple(dilation), groups, conv_x, hyper_x, need_weight, need_map,
    )  # fmt: skip


@_layer_backward_op.register_fake
def _(grad_y, x, weight, m, mu, sigma, h, fc1_weight, fc2_weight, stride, padding, dilation, groups, conv_x,
      hyper_x, need_weight, need_map):  # fmt: skip
    need_x = conv_x or hyper_x
    need_map = need_map or hyper_x
    dx = torch.empty_like(x, memory_format=suggest_memory_format(x)) if need_x else x.new_empty(0)
    dw = weight.new_empty(0)
    if need_weight:
        dw = torch.empty_like(weight, memory_format=torch.contiguous_format)
    if not need_map:
        return dx, dw, *(x.new_empty(0) for _ in range(4))
    f32 = dict(dtype=torch.float32)
    return (
        dx,
        dw,
        torch.empty_like(fc1_weight),
        fc1_weight.new_empty((fc1_weight.shape[0],), **f32),
        torch.empty_like(fc2_weight),
        fc2_weight.new_empty((fc2_weight.shape[0],), **f32),
    )


def _layer_setup_context(ctx, inputs, output):
    x, weight, bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias = inputs[:7]
    stride, padding, dilation, groups, eps, route = inputs[7:]
    _y, m, mu, sigma, h = output
    ctx.mark_non_differentiable(m, mu, sigma, h)
    ctx.save_for_backward(x, weight, bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, m, mu, sigma, h)
    ctx.conf = (list(stride), list(padding), list(dilation), groups)
    ctx.eps, ctx.route = eps, route


def _layer_backward(ctx, grad_y, _dm, _dmu, _dsigma, _dh):
    x, weight, bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, m, mu, sigma, h = ctx.saved_tensors
    need = ctx.needs_input_grad[:7]
    tail = (None,) * 6  # stride, padding, dilation, groups, eps, grad_route
    if torch.is_grad_enabled():
        # create_graph=True (second order): the composed path's answer, recomputed through
        # reference.py (plain PyTorch) with its graph kept; the fused kernels have no derivatives
        def fn(*args):
            from ..reference import shc_conv2d

            return shc_conv2d(*args, *ctx.conf, ctx.eps, ctx.route)

        inputs = (x, weight, bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias)
        return (*_second_order(fn, inputs, need, grad_y), *tail)
    need_x, need_w, need_b, need_f1w, need_f1b, need_f2w, need_f2b = need
    conv_x = bool(need_x) and ctx.route != "hyper"
    hyper_x = bool(need_x) and ctx.route != "conv"
    need_map = bool(need_f1w or need_f1b or need_f2w or need_f2b)
    gx, gw, g_w1, g_b1, g_w2, g_b2 = torch.ops.shc.triton_shc_layer_backward(
        grad_y, x, weight, m, mu, sigma, h, fc1_weight, fc2_weight, *ctx.conf, conv_x, hyper_x, bool(need_w),
        need_map,
    )  # fmt: skip
    gb = None
    if bias is not None and need_b:
        gb = grad_y.sum(dim=(0, 2, 3), dtype=torch.float32).to(grad_y.dtype)
    return (
        gx if need_x else None,
        gw if need_w else None,
        gb,
        g_w1 if need_f1w else None,
        g_b1.to(fc1_bias.dtype) if (need_f1b and fc1_bias is not None) else None,
        g_w2 if need_f2w else None,
        g_b2.to(fc2_bias.dtype) if (need_f2b and fc2_bias is not None) else None,
        *tail,
    )


_layer_op.register_autograd(_layer_backward, setup_context=_layer_setup_context)


# --- autocast: the conv in the autocast dtype, the map in fp32 --------------------------------

# conv: x, weight, bias in the autocast dtype, m (position 2) stays fp32.
register_autocast_rule("shc::triton_modulated_conv2d", (0, 1, 3))
# map: x as it is (the statistics accumulate in fp32 anyway), the MLP parameters in fp32.
register_autocast_rule("shc::triton_statistical_map", (1, 2, 3, 4), to_autocast_dtype=False)
# the layer: x, weight, bias in the autocast dtype (the statistics are those of the x the conv sees, as
# the compiled shc::shc_conv2d's), the hypernetwork in fp32 whatever its parameters' dtype
register_autocast_rule("shc::triton_shc_layer", (0, 1, 2))


# --- the interface functional.py calls (arguments already validated) ------------------------


def _check_dtype(x: torch.Tensor) -> None:
    if x.dtype == torch.float64:
        raise TypeError("the triton backend supports float32, float16 and bfloat16 x, not float64")
    _computable(x)


def statistical_map(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, kernel_size, eps):
    """m (N, kh, kw) fp32; differentiable wrt x and the four MLP tensors."""
    _check_dtype(x)
    kh, kw = kernel_size
    m, _mu, _sigma, _h = torch.ops.shc.triton_statistical_map(
        x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, int(kh), int(kw), float(eps)
    )
    return m


def modulated_conv2d(x, weight, m, bias, stride, padding, dilation, groups):
    """y (N, C, OH, OW) in x's dtype and memory format; differentiable wrt x, weight, m, bias."""
    _check_dtype(x)
    if m.dtype != torch.float32:
        m = m.float()
    return torch.ops.shc.triton_modulated_conv2d(
        x, weight, m, bias, list(stride), list(padding), list(dilation), int(groups)
    )


def shc_layer(x, weight, bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, stride, padding, dilation, groups,
              eps, grad_route):  # fmt: skip
    """The whole layer (statistics, map, conv) as one op whose first-order backward folds the
    hypernetwork route of dx into the conv's dx kernel (layer.py); y in x's dtype and memory format,
    differentiable wrt x, weight, bias and the four hypernetwork tensors under ``grad_route``."""
    _check_dtype(x)
    y, _m, _mu, _sigma, _h = torch.ops.shc.triton_shc_layer(
        x, weight, bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, list(stride), list(padding),
        list(dilation), int(groups), float(eps), str(grad_route),
    )  # fmt: skip
    return y
