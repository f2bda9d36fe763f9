"""The functional API: validate, plan (backend and form), call. The math is in reference.py.

Every caller of the layer, ``SHCConv2d`` and through it ``convert`` and the models, comes through
``shc_conv2d`` here, and ``plan`` is the one place that decides which backend and which form
computes a call (``SHC_BACKEND`` and ``SHC_FORM`` act on every caller alike).
"""

from __future__ import annotations

import os
import sys
import warnings

import torch
import torch.nn.functional as F
from torch.fx import Proxy

from . import backends, reference
from ._checks import (
    check_conv_args,
    check_eps,
    check_grad_route,
    check_layer_conv_args,
    check_map_args,
    check_tensor,
    conv_padding,
    dense_layout,
    pair,
    route_inputs,
    stats_dtype,
)

__all__ = ["statistical_map", "modulated_conv2d", "shc_conv2d"]

FORMS = ("fused", "split")
TIMED_FORMS = ("cuda",)  # the backends whose two forms are timed per shape


def _lib(backend: str):
    """The custom ops a compiled backend runs: ``shc::``, or ``shc_sim::`` for the CUDA kernels
    run on the CPU (the test-only "cuda_sim" backend)."""
    return torch.ops.shc_sim if backend == "cuda_sim" else torch.ops.shc


def forced_form() -> str | None:
    """The form SHC_FORM forces, or None; an unknown value is an error on every call."""
    forced = os.environ.get("SHC_FORM")
    if forced and forced not in FORMS:
        raise ValueError(
            f"the environment variable SHC_FORM must be one of {FORMS} (or unset), got {forced!r}"
        )
    return forced or None


def _onnx_exporting() -> bool:
    """Whether torch.onnx.export is tracing this call (either exporter). Asked only while tracing
    or compiling (an export is one of them), and only once torch.onnx is imported (an export
    imports it): never a cost, or an import, in eager calls."""
    if not (torch.compiler.is_compiling() or torch._C._get_tracing_state() is not None):
        return False
    onnx = sys.modules.get("torch.onnx")
    return onnx is not None and onnx.is_in_onnx_export()


def _transform_active(tensors) -> str | None:
    """The name of the autograd mode the custom ops cannot serve, if one is active: a torch.func
    transform (grad, vjp, jacrev, vmap, jvp, jacfwd...) or forward-mode AD on an input."""
    if torch.compiler.is_compiling():
        return None
    if torch._C._are_functorch_transforms_active():
        return "a torch.func transform"
    if torch.autograd.forward_ad._current_level >= 0:
        for t in tensors:
            if t is not None and torch.autograd.forward_ad.unpack_dual(t).tangent is not None:
                return "forward-mode AD"
    return None


# ---------------------------------------------------------------- backend and form


def _timing_key(x, weight, bias, hyper_params, stride, padding, dilation, groups, grad_route):
    """(whether the call needs gradients, the key under which its timings are cached)."""
    grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, bias, *hyper_params)
    )
    fmt = "cl" if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() else "nchw"
    key = (tuple(x.shape), x.dtype, str(x.device), fmt, tuple(weight.shape), str(stride), str(padding),
           str(dilation), groups, bias is not None, grad, grad_route)  # fmt: skip
    return grad, key


def _runner(layer, x, weight, bias, hyper_params, grad):
    """run(choice) -> what the layer computed in ``choice``: y, then (when ``grad``) the
    gradients of x and of every parameter for one fixed upstream gradient. Fresh leaves, so the
    caller's tensors are untouched; the outputs are what ``backends.fastest`` compares."""
    tensors = (x, weight, bias, *hyper_params)
    upstream = {}

    def run(choice, batch=None):
        leaves = [None if t is None else t.detach().requires_grad_(t.requires_grad) for t in tensors]
        if batch is not None:  # the first ``batch`` samples (the reference's check runs on those)
            leaves[0] = leaves[0][:batch].detach().requires_grad_(x.requires_grad)
        with torch.set_grad_enabled(grad):
            y = layer(choice, *leaves)
        outs = [y.detach()]
        if grad and y.requires_grad:
            if y.shape not in upstream:
                g = torch.Generator(device="cpu").manual_seed(0)
                upstream[y.shape] = torch.randn(y.shape, generator=g).to(y.device, y.dtype)
            y.backward(upstream[y.shape])
            outs += [t.grad for t in leaves if t is not None and t.grad is not None]
        return outs

    return run


def plan(backend, x, weight, bias, hyper_params, stride, padding, dilation, groups, eps, grad_route):
    """(backend, form) for one call of the layer: the one decision every caller goes through.

    Backend: an explicit name (or SHC_BACKEND) is used as it is; "auto" takes the compiled
    backend for x's device, and where there are two (CUDA: "triton" and "cuda") times the layer
    once per shape, checks that they agree, and keeps the faster (``backends.fastest``).
    Form, for "cpu", "cuda" and "cuda_sim" (the others have one):
      "fused"  one op, shc::shc_conv2d: statistics, map and conv in one kernel launch on CUDA
               (csrc/cuda/fused_shc.cu); on CPU the same work as "split" in one dispatcher call;
      "split"  statistical_map's op, then modulated_conv2d's (two launches on CUDA).
    SHC_FORM ("fused" or "split") forces one. CPU uses "fused" (bench/results: the two forms
    time the same there). CUDA times both once per shape, like the backends, and keeps the
    faster; under torch.compile it uses that choice if made, else "fused".
    """
    be, form, _static = _plan(backend, x, weight, bias, hyper_params, stride, padding, dilation, groups, eps,
                              grad_route)  # fmt: skip
    return be, form


def _plan(backend, x, weight, bias, hyper_params, stride, padding, dilation, groups, eps, grad_route):
    """``plan``'s (backend, form), and whether the decision is static: made without timing, so
    the same call (same metadata, arguments and environment) always gets it."""
    form_env = forced_form()
    conf = (stride, padding, dilation, groups, eps, grad_route)
    be, static = _choose_backend(backend, x, weight, bias, hyper_params, *conf)
    if be not in ("cpu", "cuda", "cuda_sim"):
        return be, "split", static
    if form_env:
        return be, form_env, static
    if be not in TIMED_FORMS:
        return be, "fused", static
    grad, key = _timing_key(x, weight, bias, hyper_params, *conf[:4], grad_route)
    key = ("form", be) + key
    if torch.compiler.is_compiling():
        return be, backends.cached_choice(key) or "fused", False

    def layer(form, *leaves):
        return _layer(*leaves, stride, padding, dilation, groups, eps, grad_route, be, form)

    run = _runner(layer, x, weight, bias, hyper_params, grad)
    reference_run = _reference_run(x, weight, bias, hyper_params, conf, grad)
    return be, backends.fastest(key, FORMS, run, x.device.type, reference=reference_run), False


def _reference_run(x, weight, bias, hyper_params, conf, grad):
    """run(batch) for the reference on the first ``batch`` samples: what decides between
    timed candidates that disagree."""
    stride, padding, dilation, groups, eps, grad_route = conf

    def layer(_choice, *leaves):
        return _reference_layer(*leaves, stride, padding, dilation, groups, eps, grad_route)

    run = _runner(layer, x, weight, bias, hyper_params, grad)
    return lambda batch: run("reference", batch)


def _choose_backend(backend, x, weight, bias, hyper_params, stride, padding, dilation, groups, eps,
                    grad_route):  # fmt: skip
    """(the backend for the call, whether it was chosen without timing)."""
    compiling = torch.compiler.is_compiling()
    if backend != "auto" or backends.env_backend() or compiling:
        return backends.resolve(backend, x), not compiling
    candidates = backends.auto_candidates(x)
    if len(candidates) < 2:
        return (candidates[0] if candidates else "reference"), True
    conf = (stride, padding, dilation, groups, eps, grad_route)
    grad, key = _timing_key(x, weight, bias, hyper_params, *conf[:4], grad_route)

    def layer(candidate, *leaves):
        be, form = plan(candidate, *leaves[:3], leaves[3:], *conf)
        return _layer(*leaves, *conf, be, form)

    run = _runner(layer, x, weight, bias, hyper_params, grad)
    reference_run = _reference_run(x, weight, bias, hyper_params, conf, grad)
    be = backends.fastest(
        ("backend",) + key, candidates, run, x.device.type, reference=reference_run, fallback="reference"
    )
    return be, False


# ---------------------------------------------------------------- the three functions


def _fx_node(fn, args, kwargs=None):
    """Under torch.fx symbolic tracing (a Proxy among the tensors), ``fn`` becomes one
    call_function node, as ``torch.fx.wrap`` makes it: the checks and the planning need real
    tensors, so they run when the traced graph runs. None when nothing is a Proxy."""
    for a in args:
        if isinstance(a, Proxy):
            return a.tracer.create_proxy("call_function", fn, tuple(args), dict(kwargs or {}))
    return None


def statistical_map(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, kernel_size, eps=1e-5, *, backend="auto"):
    """The statistical map m = T_theta(mu(x), sigma(x)) of shape (N, kh, kw), every element in
    (0, 1), float32 (float64 for float64 x). See reference.py for the exact math."""
    node = _fx_node(statistical_map, (x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, kernel_size, eps),
                    {"backend": backend})  # fmt: skip
    if node is not None:
        return node
    kernel_size = check_map_args(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, kernel_size)
    eps = check_eps(eps)
    if _onnx_exporting():  # standard ONNX operators in place of the custom op (export.py)
        from .export import map_operations

        m = map_operations(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, eps)
        return m.view(x.shape[0], *kernel_size)
    be = backends.resolve(backend, x)
    if _transform_active((x, fc1_weight, fc1_bias, fc2_weight, fc2_bias)):
        be = "reference"
    if be == "triton":  # statistics and hypernetwork in one kernel
        from .triton.ops import statistical_map as triton_map

        return triton_map(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, kernel_size, eps)
    if be == "reference":
        mu, sigma = reference.channel_stats(x, eps)
    else:
        mu, sigma = _lib(be).channel_stats(dense_layout(x), eps)
    return reference.hypernetwork(mu, sigma, fc1_weight, fc1_bias, fc2_weight, fc2_bias, kernel_size)


def modulated_conv2d(x, weight, m, bias=None, stride=1, padding=0, dilation=1, groups=1, backend="auto"):
    """y[n] = conv2d(x[n], weight * m[n], bias, ...) without building the per-sample kernels.

    ``m`` has shape (N, kh, kw); it is used in float32 (float64 for float64 x). ``padding``
    takes what F.conv2d takes: an int, a pair, "valid" or "same"."""
    node = _fx_node(modulated_conv2d, (x, weight, m, bias, stride, padding, dilation, groups, backend))
    if node is not None:
        return node
    stride, dilation = pair(stride, "stride"), pair(dilation, "dilation")
    padding, explicit = conv_padding(padding, "zeros", weight, stride, dilation)
    if explicit is not None:
        x = F.pad(x, explicit)
    stride, padding, dilation = check_conv_args(x, weight, m, bias, stride, padding, dilation, groups)
    if _onnx_exporting():  # standard ONNX operators in place of the custom op (export.py)
        from .export import conv_operations

        if any(padding):
            x = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
        return conv_operations(x, weight, bias, m.reshape(m.shape[0], -1), stride, dilation, groups)
    be = backends.resolve(backend, x)
    if _transform_active((x, weight, m, bias)):
        be = "reference"
    if be == "reference":
        return reference.modulated_conv2d(x, weight, m, bias, stride, padding, dilation, groups)
    if be == "triton":
        from .triton.ops import modulated_conv2d as triton_conv

        return triton_conv(dense_layout(x), weight, m, bias, stride, padding, dilation, groups)
    return _lib(be).modulated_conv2d(
        dense_layout(x),
        weight.contiguous(),
        m.to(stats_dtype(x.dtype)).contiguous(),
        bias,
        list(stride),
        list(padding),
        list(dilation),
        groups,
    )


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
    backend="auto",
    *,
    padding_mode="zeros",
):
    """The Statistical Hyper-Convolution: statistical_map then modulated_conv2d.

    ``x`` is (N, D, H, W), or (D, H, W) for one unbatched sample (as F.conv2d). ``padding`` is
    an int, a pair, "valid" or "same"; ``padding_mode`` ("zeros", "reflect", "replicate",
    "circular") is nn.Conv2d's. The statistics are always those of the unpadded input.
    ``grad_route``: "both" (exact gradient), "conv" (x's gradient through the convolution only)
    or "hyper" (through the statistics only); parameter gradients are exact under every route.

    Which code computes it: ``plan``. Where the one-launch op cannot express the call (padding
    it cannot do symmetrically with zeros: reflect/replicate/circular, or "same" with an even
    kernel), the input is padded explicitly and the layer runs in the "split" form, the map
    from the unpadded input. Under torch.func transforms and forward-mode AD, which the custom
    ops do not support, the layer runs the reference implementation (pure PyTorch, every
    transform works; slower).
    """
    hyper_params = (fc1_weight, fc1_bias, fc2_weight, fc2_bias)
    if type(x) is not torch.Tensor and isinstance(x, Proxy):  # other Proxies: the checked path below
        return _fx_node(shc_conv2d, (x, weight, bias, *hyper_params, stride, padding, dilation, groups, eps,
                                     grad_route, backend), {"padding_mode": padding_mode})  # fmt: skip
    key = _call_key(x, weight, bias, hyper_params, stride, padding, dilation, groups, eps, grad_route,
                    backend, padding_mode)  # fmt: skip
    known = _KNOWN.get(key) if key is not None else None
    if known is not None and not _transform_active((x, weight, bias, *hyper_params)):
        # These very arguments (by type, shape, dtype, device, in this environment) passed every
        # check before: the checks' results and, where it was made without timing, the plan.
        conf, planned = known
        be, form = planned or plan(backend, x, weight, bias, hyper_params, *conf)
        return _layer(x, weight, bias, *hyper_params, *conf, be, form)
    node = _fx_node(shc_conv2d, (x, weight, bias, *hyper_params, stride, padding, dilation, groups, eps,
                                 grad_route, backend), {"padding_mode": padding_mode})  # fmt: skip
    if node is not None:
        return node
    args = (x, weight, bias, hyper_params, stride, padding, dilation, groups, eps, grad_route, backend,
            padding_mode, key)  # fmt: skip
    if torch.jit.is_tracing():
        # The checks' shape comparisons are constants of a torch.jit.trace, not data flow: their
        # TracerWarnings would only be noise.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            return _checked_shc_conv2d(*args)
    return _checked_shc_conv2d(*args)


def _checked_shc_conv2d(x, weight, bias, hyper_params, stride, padding, dilation, groups, eps, grad_route,
                        backend, padding_mode, key):  # fmt: skip
    """shc_conv2d for a call not known yet: check every argument, plan, run (and remember it)."""
    check_grad_route(grad_route)
    eps = check_eps(eps)
    unbatched = isinstance(x, torch.Tensor) and x.dim() == 3
    if unbatched:
        x = x.unsqueeze(0)
    stride, dilation = pair(stride, "stride"), pair(dilation, "dilation")
    padding, explicit = conv_padding(padding, padding_mode, weight, stride, dilation)
    x_conv = x
    if explicit is not None:  # the route not taken sees x detached, as in _layer
        check_tensor(x, "x", 4)
        x_stats, x_conv = route_inputs(x, grad_route)
        x_conv = _pad(x_conv, explicit, padding_mode)
    # Every argument is checked before a backend or form is timed, so bad input is a clear
    # ValueError/TypeError, never a candidate that "failed" while timing.
    stride, padding, dilation = check_layer_conv_args(x_conv, weight, bias, stride, padding, dilation, groups)
    check_map_args(x, *hyper_params, tuple(weight.shape[2:]))
    conf = (stride, padding, dilation, groups, eps, grad_route)
    if _onnx_exporting():  # standard ONNX operators in place of the custom op (export.py)
        from .export import decomposed_layer

        pad = explicit if explicit is not None else (padding[1], padding[1], padding[0], padding[0])
        y = decomposed_layer(x, weight, bias, *hyper_params, stride, pad, dilation, groups, eps, padding_mode)
    elif _transform_active((x, weight, bias, *hyper_params)):
        y = _reference_layer(x, weight, bias, *hyper_params, *conf, explicit, padding_mode)
    elif explicit is None:
        be, form, static = _plan(backend, x, weight, bias, hyper_params, *conf)
        if key is not None and not unbatched:
            if len(_KNOWN) >= _KNOWN_MAX:
                _KNOWN.clear()
            _KNOWN[key] = (conf, (be, form) if static else None)
        y = _layer(x, weight, bias, *hyper_params, *conf, be, form)
    else:  # one documented route: pad explicitly, map from the unpadded input, "split" form
        forced_form()
        be, _static = _choose_backend(backend, x_conv, weight, bias, hyper_params, *conf)
        m = statistical_map(x_stats, *hyper_params, tuple(weight.shape[2:]), eps, backend=be)
        y = modulated_conv2d(x_conv, weight, m, bias, stride, padding, dilation, groups, backend=be)
    return y.squeeze(0) if unbatched else y


def _refuse_script(name: str):
    def refuse():
        raise RuntimeError(
            f"torch.jit.script cannot compile shc_kernels.{name} (Python that checks and plans each call): "
            "script the module SHCConv2d instead (it runs the compiled op), or use torch.jit.trace, "
            "torch.compile or torch.export (docs/workflows.md)"
        )

    return refuse


# torch.jit.script calls a function's __prepare_scriptable__ before compiling it, also where it
# meets the function inside scripted code: a clear error there, not one from deep inside.
for _fn in (statistical_map, modulated_conv2d, shc_conv2d):
    _fn.__prepare_scriptable__ = _refuse_script(_fn.__name__)


# Calls that passed every check of shc_conv2d, by metadata: a layer called again with tensors of
# the same types, shapes, dtypes and devices, the same arguments and the same SHC_BACKEND and
# SHC_FORM skips the ~20 us of Python checks and planning (bench/results/cpu_call_overhead_*).
# Only plain ints, a float eps, str route and backend and zero padding qualify (so a bool or a
# numpy int is always checked anew); nothing is remembered, or skipped, while torch.compile,
# torch.export or torch.jit.trace traces (an ONNX export is one of them: _onnx_exporting).
_KNOWN: dict = {}
_KNOWN_MAX = 4096


def _plain_pair(v) -> bool:
    return type(v) is int or (type(v) is tuple and len(v) == 2 and type(v[0]) is int and type(v[1]) is int)


def _call_key(x, weight, bias, hyper_params, stride, padding, dilation, groups, eps, grad_route, backend,
              padding_mode):  # fmt: skip
    """The key of ``_KNOWN`` for this call, or None where the call always takes the checks."""
    if (
        padding_mode != "zeros" or type(groups) is not int or type(eps) is not float
        or type(grad_route) is not str or type(backend) is not str
        or not (_plain_pair(stride) and _plain_pair(padding) and _plain_pair(dilation))
        or torch.compiler.is_compiling() or torch._C._get_tracing_state() is not None
    ):  # fmt: skip
        return None
    meta = []
    try:
        for t in (x, weight, bias, *hyper_params):
            meta += (None,) if t is None else (type(t), t.shape, t.dtype, t.device)
    except AttributeError:  # not a tensor: the checks say what is wrong
        return None
    # The dtype checks allow what autocast will cast, so its state is part of the key.
    return (*meta, stride, padding, dilation, groups, eps, grad_route, backend, *_env_switches(),
            torch._C._is_any_autocast_enabled())  # fmt: skip


_ENV_KEYS = (b"SHC_BACKEND", b"SHC_FORM") if os.name == "posix" else None


def _env_switches() -> tuple:
    """(SHC_BACKEND, SHC_FORM) as set now (bytes on POSIX), or None. os.environ keeps every change
    made through it (monkeypatch.setenv too) in its dict ``_data``, with bytes keys on POSIX: read
    there it costs 0.1 us, not os.environ.get's 0.75 us of encoding each."""
    data = getattr(os.environ, "_data", None)
    if _ENV_KEYS is not None and type(data) is dict:
        return data.get(_ENV_KEYS[0]), data.get(_ENV_KEYS[1])
    return os.environ.get("SHC_BACKEND"), os.environ.get("SHC_FORM")


def _pad(x, explicit, padding_mode):
    mode = "constant" if padding_mode == "zeros" else padding_mode
    return F.pad(x, explicit, mode=mode)


def _reference_layer(x, weight, bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, stride, padding, dilation,
                     groups, eps, grad_route, explicit=None, padding_mode="zeros"):  # fmt: skip
    """The layer in plain PyTorch (reference.py), with shc_conv2d's explicit padding."""
    x_stats, x_conv = route_inputs(x, grad_route)
    if explicit is not None:
        x_conv = _pad(x_conv, explicit, padding_mode)
    kernel_size = tuple(weight.shape[2:])
    m = reference.statistical_map(x_stats, fc1_weight, fc1_bias, fc2_weight, fc2_bias, kernel_size, eps)
    return reference.modulated_conv2d(x_conv, weight, m, bias, stride, padding, dilation, groups)


def _layer(x, weight, bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, stride, padding, dilation, groups,
           eps, grad_route, backend, form):  # fmt: skip
    """The layer on a concrete backend in a concrete form (see ``plan``), on checked arguments
    with stride, padding and dilation as pairs."""
    if form == "fused":
        y, _m, _z, _h = _lib(backend).shc_conv2d.default(
            dense_layout(x), weight.contiguous(), bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias,
            list(stride), list(padding), list(dilation), groups, float(eps), grad_route,
        )  # fmt: skip
        return y
    if backend == "triton":  # one op; its backward folds the hypernetwork route into dx's kernel
        from .triton.ops import shc_layer as triton_layer

        return triton_layer(dense_layout(x), weight, bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, stride,
                            padding, dilation, groups, eps, grad_route)  # fmt: skip
    x_stats, x_conv = route_inputs(x, grad_route)
    m = statistical_map(
        x_stats, fc1_weight, fc1_bias, fc2_weight, fc2_bias, tuple(weight.shape[2:]), eps, backend=backend
    )
    return modulated_conv2d(x_conv, weight, m, bias, stride, padding, dilation, groups, backend=backend)
