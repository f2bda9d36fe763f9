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
  shc::shc_conv2d_backward(gy, x, weight, m, z, h, fc1_weight, fc2_weight, stride, padding,
      dilation, groups, grad_route, mask) -> the 7 gradients of x, weight, bias, fc1_weight,
      fc1_bias, fc2_weight, fc2_bias (empty where mask is False): shc_conv2d's first-order
      backward in one call, CPU only (the other devices and second order compose the ops above).
  shc::shc_conv2d_grad(grad_y, grad_m, grad_z, grad_h, x, weight, m, z, h, fc1_weight, fc2_weight,
      stride, padding, dilation, groups, grad_route, has_bias, mask) -> the same 7 gradients,
      composed of the ops above (_layer_grad, CompositeImplicitAutograd): what the CPU's C++
      autograd kernel of shc_conv2d (csrc/cpu/shc_autograd.cpp) runs for second order.
"""

from __future__ import annotations

import torch
from torch._prims_common import suggest_memory_format

from ._checks import conv_out_size, dense_layout, route_inputs, stats_dtype


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


def _given(grad, ref: torch.Tensor):
    """An incoming gradient that carries something: None for a missing or empty one."""
    return grad if grad is not None and grad.numel() and grad.shape == ref.shape else None


def _add(total, term):
    return term if total is None else total + term


# ---------------------------------------------------------------- shc::channel_stats


def _stats_setup_context(ctx, inputs, output):
    x, _eps = inputs
    mu, sigma = output
    ctx.save_for_backward(x, mu, sigma)


def _stats_backward(ctx, grad_mu, grad_sigma):
    x, mu, sigma = ctx.saved_tensors
    grad_mu = torch.zeros_like(mu) if grad_mu is None else grad_mu
    grad_sigma = torch.zeros_like(sigma) if grad_sigma is None else grad_sigma
    dx = ctx.lib.channel_stats_backward(grad_mu.contiguous(), grad_sigma.contiguous(), x, mu, sigma)
    return dx, None


def _stats_backward_setup_context(ctx, inputs, output):
    _grad_mu, grad_sigma, x, mu, sigma = inputs
    ctx.save_for_backward(grad_sigma, x, mu, sigma)


def _stats_backward_backward(ctx, ggx):
    """Derivative of dx = grad_mu/HW + grad_sigma * (x - mu) / (HW * sigma) (per (n, d), over
    the plane) with respect to each of its five inputs, in plain (differentiable) torch ops."""
    grad_sigma, x, mu, sigma = ctx.saved_tensors
    need_gmu, need_gsigma, need_x, need_mu, need_sigma = ctx.needs_input_grad
    dt = mu.dtype
    hw = x.shape[2] * x.shape[3]
    g = ggx.to(dt)
    scale = grad_sigma / (hw * sigma)  # (N, D)
    g_sum = g.sum(dim=(2, 3))
    gc_sum = (g * (x.to(dt) - mu[:, :, None, None])).sum(dim=(2, 3)) if need_gsigma or need_sigma else None
    return (
        g_sum / hw if need_gmu else None,
        gc_sum / (hw * sigma) if need_gsigma else None,
        (g * scale[:, :, None, None]).to(x.dtype) if need_x else None,
        -g_sum * scale if need_mu else None,
        -gc_sum * scale / sigma if need_sigma else None,
    )


# ---------------------------------------------------------------- shc::modulated_conv2d


def _conv_setup_context(ctx, inputs, output):
    x, weight, m, bias, stride, padding, dilation, groups = inputs
    ctx.save_for_backward(x, weight, m)
    ctx.conf = (stride, padding, dilation, groups)
    ctx.has_bias = bias is not None


def _conv_backward(ctx, grad_y):
    x, weight, m = ctx.saved_tensors
    need_x, need_w, need_m, need_b = ctx.needs_input_grad[:4]
    # dense_layout, not .contiguous(): a channels_last grad_y stays channels_last (the CUDA kernels
    # read any strides; an NCHW copy of it would cost a pass over dy on every backward).
    gx, gw, gm = ctx.lib.modulated_conv2d_backward(
        dense_layout(grad_y), x, weight, m, *ctx.conf, [need_x, need_w, need_m]
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


def _conv_backward_setup_context(ctx, inputs, output):
    grad_y, x, weight, m, stride, padding, dilation, groups, mask = inputs
    ctx.save_for_backward(grad_y, x, weight, m)
    ctx.conf = (stride, padding, dilation, groups)
    ctx.mask = tuple(mask)


def _conv_backward_backward(ctx, ggx, ggw, ggm):
    """Derivative of modulated_conv2d_backward. With A(x, W, m) the modulated conv (linear in
    each of x, W and m), its outputs are dx = A(., W, m)^T gy, dW = A(x, ., m)^T gy and
    dm = A(x, W, .)^T gy, so <ggx, dx> + <ggW, dW> + <ggm, dm> equals
    <A(ggx, W, m) + A(x, ggW, m) + A(x, W, ggm), gy>: its gradient with respect to gy is those
    three forward calls, and with respect to x, W, m the backward op applied to gy with one
    argument replaced. Both ops are differentiable in turn, so every order works."""
    grad_y, x, weight, m = ctx.saved_tensors
    need = dict(zip(("gy", "x", "w", "m"), ctx.needs_input_grad[:4], strict=True))
    lib, conf = ctx.lib, ctx.conf
    incoming = zip((ggx, ggw, ggm), (x, weight, m), ctx.mask, strict=True)
    given = [_given(g, ref) if on else None for g, ref, on in incoming]
    out = dict.fromkeys(("gy", "x", "w", "m"))
    # Term i replaces argument i of (x, W, m) by its incoming gradient.
    for i, gg in enumerate(given):
        if gg is None:
            continue
        args = [x, weight, m]
        args[i] = dense_layout(gg)
        if need["gy"]:
            out["gy"] = _add(out["gy"], lib.modulated_conv2d(*args, None, *conf))
        mask = [need[k] and j != i for j, k in enumerate(("x", "w", "m"))]
        if any(mask):
            parts = lib.modulated_conv2d_backward(grad_y, *args, *conf, mask)
            for j, k in enumerate(("x", "w", "m")):
                if mask[j]:
                    out[k] = _add(out[k], parts[j])
    return out["gy"], out["x"], out["w"], out["m"], None, None, None, None, None


# ---------------------------------------------------------------- shc::shc_conv2d (the layer)


def _fake_shc_conv2d(x, weight, bias, f1w, f1b, f2w, f2b, stride, padding, dilation, groups, eps, grad_route):
    y = _fake_modulated_conv2d(x, weight, None, bias, stride, padding, dilation, groups)
    dt = stats_dtype(x.dtype)
    n = x.shape[0]
    m = x.new_empty((n, weight.shape[2], weight.shape[3]), dtype=dt)
    return y, m, x.new_empty((n, 2 * x.shape[1]), dtype=dt), x.new_empty((n, f1w.shape[0]), dtype=dt)


def _fake_shc_conv2d_backward(
    gy, x, weight, m, z, h, f1w, f2w, stride, padding, dilation, groups, route, mask
):
    likes = (x, weight, weight, f1w, f1w, f2w, f2w)
    shapes = (x.shape, weight.shape, weight.shape[:1], f1w.shape, f1w.shape[:1], f2w.shape, f2w.shape[:1])
    out = [like.new_empty(shape if on else (0,)) for like, shape, on in zip(likes, shapes, mask, strict=True)]
    if mask[0]:
        out[0] = out[0].contiguous(memory_format=suggest_memory_format(x))
    return tuple(out)


def _layer_setup_context(ctx, inputs, output):
    x, weight, bias, f1w, f1b, f2w, f2b, stride, padding, dilation, groups, _eps, grad_route = inputs
    _y, m, z, h = output
    ctx.save_for_backward(x, weight, f1w, f2w, m, z, h)
    ctx.conf = (stride, padding, dilation, groups)
    ctx.grad_route = grad_route
    ctx.has_bias = (bias is not None, f1b is not None, f2b is not None)
    # Outputs nobody differentiates (m, z, h almost always) reach the backward as None, not zeros.
    ctx.set_materialize_grads(False)


def _layer_grad(lib, grad_y, grad_m, grad_z, grad_h, x, weight, m, z, h, f1w, f2w, conf, route, has_bias,
                need):  # fmt: skip
    """shc::shc_conv2d's backward composed of differentiable ops: the conv's (dx, dW, dm) from
    modulated_conv2d_backward, then the hypernetwork by hand (sigmoid, fc2, relu, fc1) in the
    statistics' dtype, then the statistics' backward for the hypernetwork route of dx (docs/design.md
    §3). Gradients that reach the outputs m, z, h directly (from a double backward, say) are added
    where those values enter the chain. create_graph=True thus gives second order; the route not
    taken sees x detached, as the reference's route_inputs does. ``lib``: the namespace's ops;
    ``need``: which of the 7 gradients (x, weight, bias, fc1_weight, fc1_bias, fc2_weight,
    fc2_bias) to compute; returns them, None where not computed."""
    need_x, need_w, need_b, need_f1w, need_f1b, need_f2w, need_f2b = need
    x_stats, x_conv = route_inputs(x, route)
    conv_x = need_x and route != "hyper"
    hyper_x = need_x and route != "conv"
    need_map = hyper_x or need_f1w or need_f1b or need_f2w or need_f2b
    if grad_y is None:
        grad_y = x.new_zeros(_fake_modulated_conv2d(x, weight, None, None, *conf).shape)
    mask = [conv_x, need_w, need_map]
    gx, gw, gm = lib.modulated_conv2d_backward(dense_layout(grad_y), x_conv, weight, m, *conf, mask)
    grads = dict.fromkeys(("x", "weight", "bias", "f1w", "f1b", "f2w", "f2b"))
    grads["x"] = gx if conv_x else None
    grads["weight"] = gw if need_w else None
    if has_bias[0] and need_b:
        grads["bias"] = grad_y.sum(dim=(0, 2, 3))
    if need_map:
        n, d, taps = x.shape[0], x.shape[1], m.shape[1] * m.shape[2]
        dt = m.dtype
        s = m.reshape(n, taps)
        gl = (gm if grad_m is None else gm + grad_m).reshape(n, taps)
        gl = gl * s * (1 - s)  # through the sigmoid
        grads["f2w"] = (gl.t() @ h).to(f2w.dtype) if need_f2w else None
        grads["f2b"] = gl.sum(0).to(f2w.dtype) if has_bias[2] and need_f2b else None
        gh = gl @ f2w.to(dt)
        if grad_h is not None:
            gh = gh + grad_h
        gpre = gh * (h > 0)  # through the relu
        grads["f1w"] = (gpre.t() @ z).to(f1w.dtype) if need_f1w else None
        grads["f1b"] = gpre.sum(0).to(f1w.dtype) if has_bias[1] and need_f1b else None
        if hyper_x:
            gz = gpre @ f1w.to(dt)
            if grad_z is not None:
                gz = gz + grad_z
            mu, sigma = z[:, :d].contiguous(), z[:, d:].contiguous()
            gmu, gsigma = gz[:, :d].contiguous(), gz[:, d:].contiguous()
            dx_hyper = lib.channel_stats_backward(gmu, gsigma, x_stats, mu, sigma)
            grads["x"] = dx_hyper if grads["x"] is None else grads["x"] + dx_hyper
    return tuple(grads.values())


def _layer_backward(ctx, grad_y, grad_m, grad_z, grad_h):
    """shc::shc_conv2d's autograd formula on every device but the CPU, whose autograd kernel is
    C++ (csrc/cpu/shc_autograd.cpp: first order in the one call shc::shc_conv2d_backward, else
    shc::shc_conv2d_grad, which is _layer_grad)."""
    x, weight, f1w, f2w, m, z, h = ctx.saved_tensors
    grads = _layer_grad(
        ctx.lib, grad_y, grad_m, grad_z, grad_h, x, weight, m, z, h, f1w, f2w, ctx.conf, ctx.grad_route,
        ctx.has_bias, ctx.needs_input_grad[:7],
    )  # fmt: skip
    return (*grads, None, None, None, None, None, None)


def _register_layer_grad(namespace: str) -> None:
    """shc::shc_conv2d_grad (the C++ autograd kernel's backward for second order) is _layer_grad,
    as a CompositeImplicitAutograd kernel: autograd records the ops it runs."""
    lib = getattr(torch.ops, namespace)

    def layer_grad(grad_y, grad_m, grad_z, grad_h, x, weight, m, z, h, f1w, f2w, stride, padding, dilation,
                   groups, grad_route, has_bias, output_mask):  # fmt: skip
        conf = (stride, padding, dilation, groups)
        grads = _layer_grad(
            lib, grad_y, grad_m, grad_z, grad_h, x, weight, m, z, h, f1w, f2w, conf, grad_route, has_bias,
            output_mask,
        )  # fmt: skip
        return [g if g is not None else x.new_empty((0,)) for g in grads]

    _impl_lib(namespace).impl("shc_conv2d_grad", layer_grad, "CompositeImplicitAutograd")


_IMPL_LIBS: dict[str, torch.library.Library] = {}


def _impl_lib(namespace: str) -> torch.library.Library:
    if namespace not in _IMPL_LIBS:
        _IMPL_LIBS[namespace] = torch.library.Library(namespace, "IMPL")
    return _IMPL_LIBS[namespace]


def register_autocast_rule(qualname: str, positions: tuple[int, ...], to_autocast_dtype: bool = True) -> None:
    """Like torch.library.register_autocast, but casts to the *active* autocast dtype (fp16 or
    bf16), not a fixed one, and only the floating arguments at ``positions`` (or, with
    ``to_autocast_dtype=False``, casts those to fp32): the conv runs in the autocast dtype while
    the map ``m`` and the hypernetwork stay fp32. Used by the compiled and the Triton ops."""
    op = torch._library.utils.lookup_op(qualname)
    namespace, opname = qualname.split("::")
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
        lib = _impl_lib(namespace)
        lib.impl(opname, lambda _keyset, *a, _f=autocast_impl: _f(*a), key_name, with_keyset=True)


def _register_autograd(namespace: str, opname: str, backward, setup_context) -> None:
    """register_autograd whose ctx also carries the namespace's ops (``ctx.lib``), so one set of
    formulas serves ``shc::`` and the CUDA-on-CPU build's ``shc_sim::``."""
    lib = getattr(torch.ops, namespace)

    def setup(ctx, inputs, output):
        ctx.lib = lib
        setup_context(ctx, inputs, output)

    torch.library.register_autograd(f"{namespace}::{opname}", backward, setup_context=setup)


def register_namespace(namespace: str) -> None:
    """Fake functions, autograd formulas (every order) and autocast rules for the ops of
    ``namespace`` (schemas in csrc/shc.cpp): "shc", or "shc_sim" for the CUDA kernels run on the
    CPU (csrc/simt/)."""
    fakes = {
        "channel_stats": _fake_channel_stats,
        "channel_stats_backward": _fake_channel_stats_backward,
        "modulated_conv2d": _fake_modulated_conv2d,
        "modulated_conv2d_backward": _fake_modulated_conv2d_backward,
        "shc_conv2d": _fake_shc_conv2d,
        "shc_conv2d_backward": _fake_shc_conv2d_backward,
    }
    for opname, fake in fakes.items():
        torch.library.register_fake(f"{namespace}::{opname}", fake)
    _register_autograd(namespace, "channel_stats", _stats_backward, _stats_setup_context)
    _register_autograd(
        namespace, "channel_stats_backward", _stats_backward_backward, _stats_backward_setup_context
    )
    _register_autograd(namespace, "modulated_conv2d", _conv_backward, _conv_setup_context)
    _register_autograd(
        namespace, "modulated_conv2d_backward", _conv_backward_backward, _conv_backward_setup_context
    )
    _register_autograd(namespace, "shc_conv2d", _layer_backward, _layer_setup_context)
    _register_layer_grad(namespace)
    # x, weight, bias in the autocast dtype; m (position 2) and the hypernetwork stay fp32.
    register_autocast_rule(f"{namespace}::modulated_conv2d", (0, 1, 3))
    register_autocast_rule(f"{namespace}::shc_conv2d", (0, 1, 2))


if _C is not None:
    register_namespace("shc")


SIM_LOAD_ERROR: str | None = "not loaded yet"


def load_sim() -> str | None:
    """Load the CUDA kernels built to run on the CPU (``shc_kernels._C_sim``, ops ``shc_sim::``,
    built by ``make cuda-sim``; never in the wheel) and register their Python side once. Returns
    why it cannot be loaded, or None."""
    global SIM_LOAD_ERROR
    if SIM_LOAD_ERROR != "not loaded yet":
        return SIM_LOAD_ERROR
    try:
        from . import _C_sim  # noqa: F401
    except ImportError as exc:
        SIM_LOAD_ERROR = f"the CUDA-on-CPU build shc_kernels._C_sim is not built (`make cuda-sim`): {exc}"
        return SIM_LOAD_ERROR
    try:
        register_namespace("shc_sim")
    except RuntimeError as exc:  # a build from older sources lacks an op of csrc/shc.cpp
        SIM_LOAD_ERROR = (
            f"the CUDA-on-CPU build shc_kernels._C_sim is out of date; rebuild it (`make cuda-sim`): {exc}"
        )
        return SIM_LOAD_ERROR
    SIM_LOAD_ERROR = None
    return None
