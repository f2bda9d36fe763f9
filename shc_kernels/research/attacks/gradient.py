"""Gaussian noise and the fast-gradient-sign family: the paper's eqs. (1)–(4).

Every attack works on a batch of images in [0, 1], returns new images in [0, 1] (the input is
never modified), runs the model in eval mode and restores each module's mode afterwards.
Targeted attacks (the default, ``target="least_likely"``: the least likely class of the clean
prediction, as in the paper) step *down* the target's cross-entropy; ``target=None`` steps up the
true class's. ``grad_route`` ("both", "conv", "hyper") restricts, for the gradient only, the
route through every SHCConv2d (Table 4); the model's own routes are restored afterwards.
Every argument is checked before any work (``_common``); the gradient attacks refuse to run
under ``torch.inference_mode()``, which forbids the gradients they need.
"""

from __future__ import annotations

import torch

from ._common import (
    check_count,
    check_images,
    check_labels,
    check_number,
    check_route,
    eval_mode,
    input_grad,
    require_gradients,
    resolve_target,
)

__all__ = ["fgsm", "gaussian_noise", "ifgsm", "rand_fgsm"]


def _check_gradient_attack(name, x, y, target, grad_route, **numbers) -> None:
    """What fgsm, ifgsm and rand_fgsm all take, checked before any work."""
    require_gradients(name)
    check_images(x)
    if target is None or y is not None:  # targeted attacks do not need y, but a wrong y is a mistake
        check_labels(y, x)
    if isinstance(target, str):
        if target != "least_likely":
            raise ValueError(f"target must be 'least_likely', None or a tensor of classes, got {target!r}")
    elif target is not None:
        check_labels(target, x, "target")
    check_route(grad_route)
    for key, value in numbers.items():
        check_number(key, value)


def gaussian_noise(x, sigma, eps=None, generator=None):
    """Eq. (1): ``clip_[0,1](x + clip_[-eps,eps](N(0, sigma^2)))`` (no truncation when eps is
    None). ``generator`` must live on x's device."""
    check_images(x)
    check_number("sigma", sigma)
    if eps is not None:
        check_number("eps", eps)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) * sigma
    if eps is not None:
        noise = noise.clamp(-eps, eps)
    return (x + noise).clamp(0, 1)


def fgsm(model, x, y, eps, target="least_likely", grad_route=None):
    """Eq. (2), one step of size eps: ``x - eps*sign(grad CE(target))`` (targeted) or
    ``x + eps*sign(grad CE(y))`` (``target=None``), clipped to [0, 1]. ``target`` may also be a
    LongTensor of target classes."""
    _check_gradient_attack("fgsm", x, y, target, grad_route, eps=eps)
    with eval_mode(model):
        labels, sign = resolve_target(model, x, y, target)
        g = input_grad(model, x, labels, grad_route)
    return (x.detach() + sign * eps * g.sign()).clamp(0, 1)


def ifgsm(model, x, y, eps, alpha, steps, target="least_likely", grad_route=None):
    """Eq. (3): ``steps`` FGSM steps of size alpha, each followed by the projection onto the
    L-inf eps-ball around x and onto [0, 1]. The target is fixed from the clean prediction."""
    _check_gradient_attack("ifgsm", x, y, target, grad_route, eps=eps, alpha=alpha)
    check_count("steps", steps, 0)
    x0 = x.detach()
    lo, hi = (x0 - eps).clamp(0, 1), (x0 + eps).clamp(0, 1)
    with eval_mode(model):
        labels, sign = resolve_target(model, x0, y, target)
        adv = x0.clone()
        for _ in range(steps):
            g = input_grad(model, adv, labels, grad_route)
            adv = torch.minimum(torch.maximum(adv + sign * alpha * g.sign(), lo), hi)
    return adv


def rand_fgsm(
    model, x, y, eps, alpha, target="least_likely", variant="paper", grad_route=None, generator=None
):
    """Eq. (4), RAND+FGSM (Tramèr et al. 2017): ``x0 = clip(x + alpha*sign(N(0, I)))``, then one
    FGSM step from x0: of size eps as the paper prints it (``variant="paper"``, total change up
    to eps + alpha), or eps - alpha as Tramèr et al. define it (``variant="tramer"``, total change
    within eps). The target is the least likely class of the clean x. ``generator`` must live on
    x's device."""
    _check_gradient_attack("rand_fgsm", x, y, target, grad_route, eps=eps, alpha=alpha)
    if variant not in ("paper", "tramer"):
        raise ValueError(f"variant must be 'paper' or 'tramer', got {variant!r}")
    step = eps if variant == "paper" else eps - alpha
    if step < 0:
        raise ValueError(f"variant='tramer' needs alpha <= eps, got alpha={alpha}, eps={eps}")
    x = x.detach()
    with eval_mode(model):
        labels, sign = resolve_target(model, x, y, target)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x0 = (x + alpha * noise.sign()).clamp(0, 1)
        g = input_grad(model, x0, labels, grad_route)
    return (x0 + sign * step * g.sign()).clamp(0, 1)
