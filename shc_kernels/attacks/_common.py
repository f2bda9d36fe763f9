"""What every attack shares: eval mode restored afterwards, gradient routes, input gradients."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import GRAD_ROUTES
from ..modules import SHCConv2d

__all__ = ["eval_mode", "grad_route", "input_grad", "least_likely", "resolve_target"]


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Put ``model`` in eval mode; afterwards give every submodule back its own previous mode."""
    modes = [(mod, mod.training) for mod in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for mod, training in modes:
            mod.training = training


@contextlib.contextmanager
def grad_route(model: nn.Module, route: str | None):
    """Set ``grad_route`` on every SHCConv2d of ``model`` (the paper's Table 4: "conv" is SHC-W,
    "hyper" is SHC-T), restoring each layer's own value afterwards. ``None`` changes nothing."""
    if route is None:
        yield model
        return
    if route not in GRAD_ROUTES:
        raise ValueError(f"grad_route must be None or one of {GRAD_ROUTES}, got {route!r}")
    layers = [mod for mod in model.modules() if isinstance(mod, SHCConv2d)]
    old = [layer.grad_route for layer in layers]
    try:
        for layer in layers:
            layer.grad_route = route
        yield model
    finally:
        for layer, value in zip(layers, old, strict=True):
            layer.grad_route = value


def check_images(x, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must be a batch of images (N, C, H, W), got shape {tuple(x.shape)}")


def check_labels(y, x, name: str = "y") -> torch.Tensor:
    if not isinstance(y, torch.Tensor) or y.dtype != torch.long or y.shape != (x.shape[0],):
        got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"{name} must be a LongTensor of shape ({x.shape[0]},), got {got}")
    return y.to(x.device)


@torch.no_grad()
def least_likely(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """arg min_c p(c | x): the paper's target class y_t (§2.3)."""
    return model(x).argmin(dim=1)


def resolve_target(model, x, y, target):
    """(labels for the loss, sign of the step): targeted attacks descend the target's loss."""
    if target is None:
        return check_labels(y, x), 1.0
    if isinstance(target, str):
        if target != "least_likely":
            raise ValueError(f"target must be 'least_likely', None or a LongTensor, got {target!r}")
        return least_likely(model, x), -1.0
    return check_labels(target, x, "target"), -1.0


def input_grad(model, x, labels, route) -> torch.Tensor:
    """d CE(model(x), labels) / dx (summed over the batch, so each image gets its own gradient),
    through ``route``; zeros where no route reaches x. Parameter .grad fields are untouched."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad(), grad_route(model, route):
        loss = F.cross_entropy(model(x), labels, reduction="sum")
        (g,) = torch.autograd.grad(loss, [x], allow_unused=True)
    return torch.zeros_like(x) if g is None else g
