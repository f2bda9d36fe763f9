"""Export to standard ONNX operators, with a dynamic batch.

The layer's custom op ``shc::shc_conv2d`` is not an ONNX operator. While ``torch.onnx.export``
traces a model (either exporter), ``functional.shc_conv2d`` computes the layer with
``decomposed_layer`` instead, and ``to_onnx`` exports a copy of the model in which every
``SHCConv2d`` is replaced by ``DecomposedSHCConv2d``: the same math (docs/design.md §1) in plain
PyTorch operations that every exporter maps to standard ONNX operators:

    statistics   Cast, ReduceMean, Sub, Mul, ReduceMean, Add, Sqrt, Cast
                 (mu, sigma over H×W, accumulated in float64, then float32)
    map          Concat, Gemm, Relu, Gemm, Sigmoid              (m, shape (N, kh*kw))
    convolution  Pad, then per tap t = (i, j): Slice, a 1×1 Conv with the tap's weight
                 W[:, :, i, j], Mul by m[:, t], summed; the bias added once

Why taps as shifted 1×1 convolutions: the per-sample kernel ``W * m[n]`` could also be a grouped
convolution with the batch folded into the groups, but ONNX's ``Conv.group`` is a constant
attribute, so that graph would only take the batch size it was exported with, and it builds the
N×C×D×kh×kw kernels the layer never builds. The kh·kw 1×1 convolutions do the plain conv's
multiply-adds (once each), the batch stays dynamic, and the map scales each tap's output, which
is exactly ``y[n] = sum_t m[n,t] * conv_t(x[n])`` (docs/design.md §3).

``onnx`` is needed to export with torch's exporter and ``onnxruntime`` to check a file
(``check_onnx``); both are imported only when called (the layer imports with torch alone).
"""

from __future__ import annotations

import copy
import io
import os

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import conv_padding, stats_dtype
from .modules import SHCConv2d

__all__ = ["DecomposedSHCConv2d", "decompose", "to_onnx", "check_onnx"]


class DecomposedSHCConv2d(nn.Module):
    """An ``SHCConv2d`` in plain PyTorch operations that export to standard ONNX (see the module
    docstring). Same parameters and state_dict keys; forward only (it is for export)."""

    def __init__(self, layer: SHCConv2d):
        super().__init__()
        if not isinstance(layer, SHCConv2d):
            raise TypeError(f"expected an SHCConv2d, got {type(layer).__name__}")
        self.weight = copy.deepcopy(layer.weight)
        self.bias = copy.deepcopy(layer.bias)
        self.hyper = copy.deepcopy(layer.hyper)
        self.stride, self.dilation, self.groups = tuple(layer.stride), tuple(layer.dilation), layer.groups
        self.eps, self.padding_mode = layer.eps, layer.padding_mode
        padding, explicit = conv_padding(layer.padding, layer.padding_mode, layer.weight, self.stride,
                                         self.dilation)  # fmt: skip
        # F.pad's (left, right, top, bottom): explicit where the layer pads beforehand, else symmetric.
        symmetric = (padding[1], padding[1], padding[0], padding[0])
        self.pad = tuple(explicit) if explicit is not None else symmetric

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fc1, fc2 = self.hyper.fc1, self.hyper.fc2
        return decomposed_layer(x, self.weight, self.bias, fc1.weight, fc1.bias, fc2.weight, fc2.bias,
                                self.stride, self.pad, self.dilation, self.groups, self.eps,
                                self.padding_mode)  # fmt: skip


def decomposed_layer(x, weight, bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, stride, pad, dilation,
                     groups, eps, padding_mode="zeros"):  # fmt: skip
    """The layer in the operations of the module docstring: ``pad`` is F.pad's (left, right,
    top, bottom) applied before the convolution (the statistics see the unpadded x), ``stride``
    and ``dilation`` pairs. Forward only."""
    unbatched = x.dim() == 3
    if unbatched:
        x = x.unsqueeze(0)
    m = map_operations(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, eps)
    if any(pad):
        x = F.pad(x, tuple(pad), mode="constant" if padding_mode == "zeros" else padding_mode)
    y = conv_operations(x, weight, bias, m, tuple(stride), tuple(dilation), groups)
    return y.squeeze(0) if unbatched else y


def map_operations(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, eps):
    """m of shape (N, kh*kw) in the statistics' dtype (float32, float64 for float64 x). The
    statistics accumulate in float64 and are rounded to that dtype, as reference.channel_stats
    does: a float32 plane whose variance overflows float32 (std ~1e19) still has a
    finite sigma, where float32 sums would give an infinite sigma and a NaN output."""
    xs = x.to(torch.float64)
    mu = xs.mean(dim=(2, 3))
    var = (xs - mu[:, :, None, None]).square().mean(dim=(2, 3))
    dt = stats_dtype(x.dtype)
    mu, sigma = mu.to(dt), torch.sqrt(var + eps).to(dt)
    h = torch.relu(F.linear(torch.cat([mu, sigma], dim=1), fc1_weight.to(dt), _cast(fc1_bias, dt)))
    return torch.sigmoid(F.linear(h, fc2_weight.to(dt), _cast(fc2_bias, dt)))


def conv_operations(x, weight, bias, m, stride, dilation, groups):
    """sum over taps t = (i, j) of m[:, t] * (the 1×1 conv with W[:, :, i, j] of the padded x
    shifted by t)."""
    kh, kw = weight.shape[2:]
    (dh, dw), m = dilation, m.to(x.dtype)
    y = None
    for i in range(kh):
        for j in range(kw):
            # The rows/columns tap (i, j) of every output reads: from i*dh, leaving room for the taps
            # below it, so a stride-s 1×1 conv gives exactly the layer's output size.
            end_h, end_w = (kh - 1 - i) * dh, (kw - 1 - j) * dw
            shifted = x[:, :, i * dh : x.shape[2] - end_h, j * dw : x.shape[3] - end_w]
            tap = F.conv2d(shifted, weight[:, :, i : i + 1, j : j + 1], None, stride, 0, 1, groups)
            term = tap * m[:, i * kw + j, None, None, None]
            y = term if y is None else y + term
    return y if bias is None else y + bias[None, :, None, None]


def _cast(t, dtype):
    return None if t is None else t.to(dtype)


def decompose(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` (in eval mode) with every SHCConv2d replaced by a
    DecomposedSHCConv2d; ``model`` itself is left as it is. A model that is itself an SHCConv2d
    gives one DecomposedSHCConv2d."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(model, SHCConv2d):
        return DecomposedSHCConv2d(model).eval()
    out = copy.deepcopy(model).eval()
    done: dict[int, DecomposedSHCConv2d] = {}  # a layer used at several places stays one module
    for _, parent in list(out.named_modules(remove_duplicate=False)):
        for name, child in list(parent._modules.items()):
            if isinstance(child, SHCConv2d):
                if id(child) not in done:
                    done[id(child)] = DecomposedSHCConv2d(child)
                setattr(parent, name, done[id(child)])
    return out


def to_onnx(model: nn.Module, example: torch.Tensor, f, *, dynamic_batch: bool = True, **export_kwargs):
    """Export ``model`` (with its SHC layers as standard ONNX operators, see ``decompose``) to
    ``f`` by ``torch.onnx.export``, the batch dimension of the input and the output dynamic
    (names "x" and "y" unless given). ``export_kwargs`` go to torch.onnx.export; by default its
    TorchScript-based exporter (``dynamo=False``) runs, which needs ``onnx`` only.
    Returns what torch.onnx.export returns."""
    try:
        import onnx  # noqa: F401 - torch.onnx.export needs it; say so before tracing
    except ImportError:
        raise ImportError("to_onnx needs the onnx package: pip install onnx (shc_kernels[export])") from None
    if not isinstance(example, torch.Tensor) or example.dim() != 4:
        raise ValueError("example must be one batched input tensor (N, D, H, W)")
    exportable = decompose(model)
    kwargs = dict(input_names=["x"], output_names=["y"], dynamo=False)
    kwargs.update(export_kwargs)
    if dynamic_batch:
        if kwargs["dynamo"]:
            kwargs.setdefault("dynamic_shapes", ({0: torch.export.Dim("batch")},))
        else:
            names = list(kwargs["input_names"])[:1] + list(kwargs["output_names"])
            kwargs.setdefault("dynamic_axes", {name: {0: "batch"} for name in names})
    with torch.no_grad():
        return torch.onnx.export(exportable, (example,), f, **kwargs)


def check_onnx(f, model: nn.Module, x: torch.Tensor) -> float:
    """Run the ONNX file ``f`` (a path or a BytesIO) on ``x`` in onnxruntime (CPU) and return its
    largest error against ``model(x)`` in eval mode, relative to the output's largest magnitude."""
    try:
        import onnxruntime
    except ImportError:
        raise ImportError(
            "check_onnx needs onnxruntime: pip install onnxruntime (shc_kernels[export])"
        ) from None
    source = f.getvalue() if isinstance(f, io.BytesIO) else os.fspath(f)
    session = onnxruntime.InferenceSession(source, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    got = torch.from_numpy(session.run(None, {name: x.detach().cpu().numpy()})[0])
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            expected = model(x).detach().cpu()
    finally:
        model.train(was_training)
    if got.shape != expected.shape:
        raise ValueError(f"the ONNX model gives shape {tuple(got.shape)}, the model {tuple(expected.shape)}")
    scale = expected.abs().max().clamp_min(1e-30)
    return float((got.double() - expected.double()).abs().max() / scale)
