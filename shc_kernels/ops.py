"""The ``shc::`` custom ops: schemas and kernels come from the compiled ``shc_kernels._C``; this
file gives them what torch.compile and autograd need: fake (shape) functions, the backward
formulas, and the autocast rule.

Ops (schemas in csrc/shc.cpp):
  shc::channel_stats(x, eps) -> (mu, sigma)                 fp32 (fp64 for fp64 x), (N, D)
  shc::channel_stats_backward(gmu, gsigma, x, mu, sigma) -> dx
  shc::modulated_conv2d(x, weight, m, bias, stride, padding, dilation, groups) -> y
  shc::modulated_conv2d_backward(gy, x, weight, m, stride, padding, dilation, groups, mask)
      -> (dx conv route, dW, dm); an entry whose mask is False comes back as an empty tensor.
  shc::shc_conv2d(x, weight, bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, stride, padding,
      dilation, groups, eps, grad_route) -> (y, m, z, h)
      the whole layer as one op (one kernel launch on CUDA); m, z = cat(mu, sigma) and the
      hidden units h are what its backward needs. grad_route only changes the backward.
"""

from __future__ import annotations

import torch
from torch._prims_common import suggest_memory_format

from ._checks import conv_out_size, stats_dtype


def _check_torch_matches_build() -> None:
    """A compiled extension only loads into the torch release it was built against."""
    try:
        from ._build_info import TORCH_VERSION
    except ImportError:  # a source tree that was never built: nothing to compare
        return
    if TORCH_VERSION != torch.__version__:
        raise ImportError(
            f"shc_kernels was compiled against torch {TORCH_VERSION}, but torch {torch.__version__} is "
            f"installed; install torch {TORCH_VERSION.split('+')[0]} or rebuild shc_kernels "
            "(`pip install --no-build-isolation .`) against this torch"
        )


_check_torch_matches_build()

try:
    from . import _C  # noqa: F401  (loading it registers the shc:: ops)

    LOAD_ERROR: str | None = None
except ModuleNotFoundError:  # the package still works with backend="reference"
    _C = None
    LOAD_ERROR = "the compiled extension shc_kernels._C is not built (run `make setup` or `pip install .`)"
except ImportError as exc:
    _C = None
    LOAD_ERROR = f"the compiled extension shc_kernels._C could not be loaded ({exc})"


def compiled_available() -> bool:
    return _C is not None


def cuda_compiled() -> bool:
    return _C is not None and bool(_C.cuda_compiled())


def _fake_channel_stats(x, eps):
    shape = (x.shape[0], x.shape[1])
    dt = stats_dtype(x.dtype)
    return x.new_empty(shape, dtype=dt), x.new_empty(shape, dtype=dt)


def _fake_channel_stats_backward(grad_mu, grad_sigma, x, mu, sigma):
    return torch.empty_like(x, memory_format=suggest_memory_format(x))


def _fake_modulated_conv2d(x, weight, m, bias, stride, padding, dilation, groups):
    oh, ow = conv_out_size(x, weight, stride, padding, dilation)
    y = x.new_empty((x.shape[0], weight.shape[0], oh, ow))
    return y.contiguous(memory_format=suggest_memory_format(x))


def _fake_modulated_conv2d_backward(grad_y, x, weight, m, stride, padding, dilation, groups, mask):
    gx = torch.empty_like(x, memory_format=suggest_memory_format(x)) if mask[0] else x.new_empty(0)
    gw = torch.empty_like(weight, memory_format=torch.contiguous_format) if mask[1] else weight.new_empty(0)
    gm = torch.empty_like(m, memory_format=torch.contiguous_format) if mask[2] else m.new_empty(0)
    return gx, gw, gm


def _stats_setup_context(ctx, inputs, output):
    x, _eps = inputs
    mu, sigma = output
    ctx.save_for_backward(x, mu, sigma)


def _stats_backward(ctx, grad_mu, grad_sigma):
    x, mu, sigma = ctx.saved_tensors
    grad_mu = torch.zeros_like(mu) if grad_mu is None else grad_mu
    grad_sigma = torch.zeros_like(sigma) if grad_sigma is None else grad_sigma
    dx = torch.ops.shc.channel_stats_backward(grad_mu, grad_sigma, x, mu, sigma)
    return dx, None


def _conv_setup_context(ctx, inputs, output):
    x, weight, m, bias, stride, padding, dilation, groups = inputs
    ctx.save_for_backward(x, weight, m)
    ctx.conf = (stride, padding, dilation, groups)
    ctx.has_bias = bias is not None


def _conv_backward(ctx, grad_y):
    x, weight, m = ctx.saved_tensors
    need_x, need_w, need_m, need_b = ctx.needs_input_grad[:4]
    gx, gw, gm = torch.ops.shc.modulated_conv2d_backward(
        grad_y, x, weight, m, *ctx.conf, [need_x, need_w, need_m]
    )
    gb = grad_y.sum(dim=(0, 2, 3)) if (ctx.has_bias and need_b) else None
    return (
        gx if need_x else None,
        gw if need_w else None,
        gm if need_m else None,
        gb,
        None,
        None,
        None,
        None,
    )


def _fake_shc_conv2d(x, weight, bias, f1w, f1b, f2w, f2b, stride, padding, dilation, groups, eps, grad_route):
    y = _fake_modulated_conv2d(x, weight, None, bias, stride, padding, dilation, groups)
    dt = stats_dtype(x.dtype)
    n = x.shape[0]
    m = x.new_empty((n, weight.shape[2], weight.shape[3]), dtype=dt)
    return y, m, x.new_empty((n, 2 * x.shape[1]), dtype=dt), x.new_empty((n, f1w.shape[0]), dtype=dt)


def _layer_setup_context(ctx, inputs, output):
    x, weight, bias, f1w, f1b, f2w, f2b, stride, padding, dilation, groups, _eps, grad_route = inputs
    _y, m, z, h = output
    ctx.save_for_backward(x, weight, f1w, f2w, m, z, h)
    ctx.conf = (stride, padding, dilation, groups)
    ctx.grad_route = grad_route
    ctx.has_bias = (bias is not None, f1b is not None, f2b is not None)


def _layer_backward(ctx, grad_y, grad_m, grad_z, grad_h):
    """shc::shc_conv2d's backward: the conv's (dx, dW, dm) from modulated_conv2d_backward, then
    the hypernetwork by hand (sigmoid, fc2, relu, fc1) in the statistics' dtype, then the
    statistics' backward for the hypernetwork route of dx (DESIGN.md §3). Gradients that reach
    the outputs m, z, h directly are added where those values enter the chain."""
    x, weight, f1w, f2w, m, z, h = ctx.saved_tensors
    need_x, need_w, need_b, need_f1w, need_f1b, need_f2w, need_f2b = ctx.needs_input_grad[:7]
    route = ctx.grad_route
    conv_x = need_x and route != "hyper"
    hyper_x = need_x and route != "conv"
    need_map = hyper_x or need_f1w or need_f1b or need_f2w or need_f2b
    if grad_y is None:
        grad_y = x.new_zeros(_fake_modulated_conv2d(x, weight, None, None, *ctx.conf).shape)
    mask = [conv_x, need_w, need_map]
    gx, gw, gm = torch.ops.shc.modulated_conv2d_backward(grad_y, x, weight, m, *ctx.conf, mask)
    grads = dict.fromkeys(("x", "weight", "bias", "f1w", "f1b", "f2w", "f2b"))
    grads["x"] = gx if conv_x else None
    grads["weight"] = gw if need_w else None
    if ctx.has_bias[0] and need_b:
        grads["bias"] = grad_y.sum(dim=(0, 2, 3))
    if need_map:
        n, d, taps = x.shape[0], x.shape[1], m.shape[1] * m.shape[2]
        dt = m.dtype
        s = m.reshape(n, taps)
        gl = (gm if grad_m is None else gm + grad_m).reshape(n, taps)
        gl = gl * s * (1 - s)  # through the sigmoid
        grads["f2w"] = gl.t() @ h if need_f2w else None
        grads["f2b"] = gl.sum(0) if ctx.has_bias[2] and need_f2b else None
        gh = gl @ f2w.to(dt)
        if grad_h is not None:
            gh = gh + grad_h
        gpre = gh * (h > 0)  # through the relu
        grads["f1w"] = gpre.t() @ z if need_f1w else None
        grads["f1b"] = gpre.sum(0) if ctx.has_bias[1] and need_f1b else None
        if hyper_x:
            gz = gpre @ f1w.to(dt)
            if grad_z is not None:
                gz = gz + grad_z
            mu, sigma = z[:, :d].contiguous(), z[:, d:].contiguous()
            gmu, gsigma = gz[:, :d].contiguous(), gz[:, d:].contiguous()
            dx_hyper = torch.ops.shc.channel_stats_backward(gmu, gsigma, x, mu, sigma)
            grads["x"] = dx_hyper if grads["x"] is None else grads["x"] + dx_hyper
    return (*grads.values(), None, None, None, None, None, None)


_LIB = torch.library.Library("shc", "IMPL")


def register_autocast_rule(qualname: str, positions: tuple[int, ...], to_autocast_dtype: bool = True) -> None:
    """Like torch.library.register_autocast, but casts to the *active* autocast dtype (fp16 or
    bf16), not a fixed one, and only the floating arguments at ``positions`` (or, with
    ``to_autocast_dtype=False``, casts those to fp32): the conv runs in the autocast dtype while
    the map ``m`` and the hypernetwork stay fp32. Used by the compiled and the Triton ops."""
    op = torch._library.utils.lookup_op(qualname)
    opname = qualname.split("::")[1]
    for device_type in ("cpu", "cuda"):
        key_name = "Autocast" + torch._C._dispatch_key_for_device(device_type)
        key = getattr(torch._C.DispatchKey, key_name)

        def autocast_impl(*args, _device_type=device_type, _key=key):
            target = torch.get_autocast_dtype(_device_type) if to_autocast_dtype else torch.float32
            args = tuple(
                a.to(target)
                if i in positions
                and isinstance(a, torch.Tensor)
                and a.is_floating_point()
                and a.device.type == _device_type
                else a
                for i, a in enumerate(args)
            )
            with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(_key)):
                return op(*args)

        if op.has_kernel_for_dispatch_key(key):
            op.py_kernels.pop(key, None)
        op.py_impl(key)(autocast_impl)
        _LIB.impl(opname, lambda _keyset, *a, _f=autocast_impl: _f(*a), key_name, with_keyset=True)


if _C is not None:
    torch.library.register_fake("shc::channel_stats", _fake_channel_stats)
    torch.library.register_fake("shc::channel_stats_backward", _fake_channel_stats_backward)
    torch.library.register_fake("shc::modulated_conv2d", _fake_modulated_conv2d)
    torch.library.register_fake("shc::modulated_conv2d_backward", _fake_modulated_conv2d_backward)
    torch.library.register_autograd("shc::channel_stats", _stats_backward, setup_context=_stats_setup_context)
    torch.library.register_autograd(
        "shc::modulated_conv2d", _conv_backward, setup_context=_conv_setup_context
    )
    # x, weight, bias in the autocast dtype; m (position 2) stays fp32.
    register_autocast_rule("shc::modulated_conv2d", (0, 1, 3))
    torch.library.register_fake("shc::shc_conv2d", _fake_shc_conv2d)
    torch.library.register_autograd("shc::shc_conv2d", _layer_backward, setup_context=_layer_setup_context)
    # x, weight, bias in the autocast dtype; the hypernetwork's parameters are used in fp32.
    register_autocast_rule("shc::shc_conv2d", (0, 1, 2))
