"""SHCConv2d, a drop-in nn.Conv2d whose kernel is modulated per sample, and ``convert``."""

from __future__ import annotations

import torch
from torch import nn

from . import functional
from ._checks import check_channels, check_grad_route, check_tensor, pair, route_inputs
from .backends import BACKENDS

__all__ = ["HyperNetwork", "SHCConv2d", "convert"]


class HyperNetwork(nn.Module):
    """T_theta: (mu, sigma) of D channels -> logits of the kh×kw map, via 2D -> hidden -> kh*kw."""

    def __init__(self, in_channels, kernel_size, hidden=None, device=None, dtype=None):
        super().__init__()
        kh, kw = pair(tuple(kernel_size), "kernel_size")
        hidden = max(1, in_channels // 2) if hidden is None else hidden
        if hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {hidden}")
        self.fc1 = nn.Linear(2 * in_channels, hidden, device=device, dtype=dtype)
        self.fc2 = nn.Linear(hidden, kh * kw, device=device, dtype=dtype)


class SHCConv2d(nn.Conv2d):
    """Statistical Hyper-Convolution: ``nn.Conv2d`` whose kernel for sample n is ``weight * m[n]``,
    with ``m[n]`` (kh×kw, in (0, 1)) computed by ``self.hyper`` from the channel means and
    standard deviations of that sample's input.

    Extra keyword arguments: ``hidden`` (hypernetwork width, default max(1, in_channels // 2)),
    ``eps`` (added to the variance), ``grad_route`` ("both", "conv", "hyper": which route carries
    the gradient to the input) and ``backend`` ("auto", "reference", "cpu", "triton", "cuda").
    """

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups=1,
        bias=True,
        padding_mode="zeros",
        device=None,
        dtype=None,
        *,
        hidden=None,
        eps=1e-5,
        grad_route="both",
        backend="auto",
    ):
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            device=device,
            dtype=dtype,
        )
        check_grad_route(grad_route)
        if backend != "auto" and backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS + ('auto',)}")
        self.hyper = HyperNetwork(in_channels, self.kernel_size, hidden, device, dtype)
        self.eps = float(eps)
        self.grad_route = grad_route
        self.backend = backend

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, hidden={self.hyper.fc1.out_features}, "
            f"grad_route={self.grad_route!r}, backend={self.backend!r}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor(x, "x", 4)
        check_channels(x, self.weight, self.groups)
        x_stats, x_conv = route_inputs(x, self.grad_route)
        padding = self.padding
        if self.padding_mode != "zeros" or isinstance(padding, str):
            # Non-zero padding modes and "same"/"valid" pad explicitly, as nn.Conv2d does; the
            # statistics are those of the unpadded input.
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            x_conv = nn.functional.pad(x_conv, self._reversed_padding_repeated_twice, mode=mode)
            padding = 0
        hyper = (self.hyper.fc1.weight, self.hyper.fc1.bias, self.hyper.fc2.weight, self.hyper.fc2.bias)
        be = functional.choose_backend(
            self.backend, x_conv, self.weight, self.bias, hyper, self.stride, padding, self.dilation,
            self.groups, self.eps, self.grad_route,
        )  # fmt: skip
        m = functional.statistical_map(x_stats, *hyper, self.kernel_size, self.eps, backend=be)
        return functional.modulated_conv2d(
            x_conv, self.weight, m, self.bias, self.stride, padding, self.dilation, self.groups, backend=be
        )


def _normalize_kernel_sizes(kernel_sizes):
    if kernel_sizes is None:
        return None
    return {pair(tuple(k) if isinstance(k, list) else k, "kernel_sizes entry") for k in kernel_sizes}


def _to_shc(conv: nn.Conv2d, m0: float, shc_kwargs) -> SHCConv2d:
    new = SHCConv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        conv.bias is not None,
        conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
        **shc_kwargs,
    )
    with torch.no_grad():
        # m starts at m0 everywhere whatever the input (fc2 = 0, bias = logit(m0)), and the
        # weight is divided by m0, so the converted layer computes what the plain one did.
        new.weight.copy_(conv.weight / m0)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
        new.hyper.fc2.weight.zero_()
        new.hyper.fc2.bias.fill_(torch.logit(torch.tensor(m0, dtype=torch.float64)).item())
    new.weight.requires_grad_(conv.weight.requires_grad)
    new.train(conv.training)
    return new


def convert(model: nn.Module, kernel_sizes=((3, 3),), **shc_kwargs) -> nn.Module:
    """Replace, in place, every ``nn.Conv2d`` of ``model`` whose kernel size is in
    ``kernel_sizes`` (None: every size) with an output-preserving ``SHCConv2d``; return ``model``
    (or the new layer when ``model`` itself is such a conv). ``shc_kwargs`` go to SHCConv2d."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    sizes = _normalize_kernel_sizes(kernel_sizes)
    m0 = 0.5  # sigmoid(0): exact in every float format, so the division by it is exact too

    def wanted(mod):
        return (
            isinstance(mod, nn.Conv2d)
            and not isinstance(mod, SHCConv2d)
            and (sizes is None or tuple(mod.kernel_size) in sizes)
        )

    if wanted(model):
        return _to_shc(model, m0, shc_kwargs)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if wanted(child):
                setattr(parent, name, _to_shc(child, m0, shc_kwargs))
    return model
