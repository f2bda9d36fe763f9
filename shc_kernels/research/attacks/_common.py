"""What every attack shares: the checks of its arguments, eval mode restored afterwards,
gradient routes, input gradients.

Every public attack checks all its arguments here, before any work: a bad value is a
TypeError (wrong kind) or ValueError (out of range) naming the argument.
"""

from __future__ import annotations

import contextlib
import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn

from ..._checks import GRAD_ROUTES
from ...modules import SHCConv2d

__all__ = [
    "check_count",
    "check_images",
    "check_labels",
    "check_number",
    "check_route",
    "eval_mode",
    "grad_route",
    "input_grad",
    "least_likely",
    "require_gradients",
    "resolve_target",
]


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
    check_route(route)
    layers = [mod for mod in model.modules() if isinstance(mod, SHCConv2d)]
    old = [layer.grad_route for layer in layers]
    try:
        for layer in layers:
            layer.grad_route = route
        yield model
    finally:
        for layer, value in zip(layers, old, strict=True):
            layer.grad_route = value


def check_number(name: str, value, minimum: float = 0.0) -> None:
    """A real, finite number >= minimum (eps, alpha, sigma)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number >= {minimum:g}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum:g}, got {value!r}")


def check_count(name: str, value, minimum: int) -> None:
    """A whole number (an int, not 2.7 or True) >= minimum (steps, pixels, sizes)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def check_route(route) -> None:
    if route is not None and route not in GRAD_ROUTES:
        raise ValueError(f"grad_route must be None or one of {GRAD_ROUTES}, got {route!r}")


def require_gradients(attack: str) -> None:
    """Gradient attacks differentiate the model: inference mode forbids it, so say so (under
    torch.no_grad they work, enabling gradients themselves)."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            f"{attack} needs gradients, which torch.inference_mode() disables: call it outside "
            "inference mode (torch.no_grad() is fine)"
        )


def check_images(x, name: str = "x") -> None:
    """A floating-point batch (N, C, H, W) with every value in [0, 1]."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        got = f"dtype {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"{name} must be a floating-point torch.Tensor, got {got}")
    if x.dim() != 4:
        raise ValueError(f"{name} must be a batch of images (N, C, H, W), got shape {tuple(x.shape)}")
    if x.numel() and not bool(((x >= 0) & (x <= 1)).all()):  # NaN fails both comparisons
        lo, hi = x.min().item(), x.max().item()
        raise ValueError(f"{name} must hold images in [0, 1], got values in [{lo:g}, {hi:g}]")


def check_labels(y, x, name: str = "y") -> torch.Tensor:
    """Integer class indices, one per image of ``x``; any integer dtype is accepted and cast to
    int64 (cross_entropy's), on x's device."""
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of class indices, got {type(y).__name__}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class indices, got dtype {y.dtype}")
    if y.shape != (x.shape[0],):
        raise ValueError(
            f"{name} must have shape ({x.shape[0]},) (one label per image), got {tuple(y.shape)}"
        )
    return y.to(device=x.device, dtype=torch.long)


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
            raise ValueError(f"target must be 'least_likely', None or a tensor of classes, got {target!r}")
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
