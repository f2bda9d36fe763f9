"""The attacks a defense must face beyond the paper: L-inf PGD (per-image eps, restarts, a gradient
route, a projection), per-image minimal eps by binary search, Square, AutoAttack's standard suite
as published, and the two adaptive attacks on SHC's mechanism.

Every function takes images (N, C, H, W) in [0, 1] and labels, runs the model in eval mode
(restoring each module's mode), and returns per-image results: ``correct`` is a bool tensor, True
where the model still classifies the attacked image correctly (a clean error counts as a
failure of the model, as AutoAttack reports robust accuracy).

    correct(model, x, y)                                   clean correctness per image
    pgd(model, x, y, eps, steps, ...)                      -> (adv, correct)   Madry et al. 2018
    minimal_eps(model, x, y, eps_max, ...)                 -> smallest eps PGD found, per image
    square(model, x, y, eps, queries, seed)                -> (adv, correct)   Andriushchenko 2020
    autoattack(model, x, y, eps, ...)                      -> {component: correct after it}
    frozen_maps_forward(model)                             BPDA: every SHC map held at the clean input
    mean_std_projection(adv, x0, eps)                      keep each channel's mean and std

Adaptive attacks on SHC (its kernel is modulated by maps m computed from each layer's input
statistics): ``pgd(..., forward=frozen_maps_forward(model))`` attacks the network whose maps are
frozen at their values for the clean image (the attack sees a plain convolution network; the
adversarial images are then scored on the real model); ``pgd(..., grad_route="conv")`` lets the
maps follow the adversarial image in the forward pass but carries no gradient through them;
``pgd(..., project=mean_std_projection)`` keeps every image channel's mean and standard deviation,
so the first layer's maps cannot move at all.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from ... import functional
from ...modules import SHCConv2d
from ._common import check_images, check_labels, check_number, eval_mode
from ._common import grad_route as route_ctx

__all__ = [
    "AUTOATTACK_STANDARD",
    "autoattack",
    "channel_stat_gap",
    "correct",
    "frozen_maps_forward",
    "mean_std_projection",
    "minimal_eps",
    "pgd",
    "square",
]

# AutoAttack "standard" as published (Croce & Hein 2020): torchattacks' AutoAttack shortcut builds
# the same four attacks with its components' default 10 iterations; these are the paper's.
AUTOATTACK_STANDARD = dict(apgd_steps=100, apgdt_steps=100, fab_steps=100, square_queries=5000)


@torch.no_grad()
def correct(model, x, y, batch: int = 500) -> torch.Tensor:
    """Per-image bool: ``model`` classifies x correctly (eval mode)."""
    with eval_mode(model):
        pairs = zip(x.split(batch), y.split(batch), strict=True)
        return torch.cat([model(xb).argmax(1) == yb for xb, yb in pairs]) if len(y) else y.bool()


def _per_image(eps, n, like) -> torch.Tensor:
    """eps as a (N, 1, 1, 1) tensor: a number for all images or one value per image."""
    t = torch.as_tensor(eps, dtype=like.dtype, device=like.device)
    if t.dim() == 0:
        t = t.expand(n)
    if t.shape != (n,) or not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
        raise ValueError(f"eps must be a number >= 0 or {n} such numbers, got shape {tuple(t.shape)}")
    return t.view(n, 1, 1, 1)


def _clip(adv, x0, eps):
    return torch.minimum(torch.maximum(adv, x0 - eps), x0 + eps).clamp(0, 1)


def pgd(
    model,
    x,
    y,
    eps,
    steps: int = 50,
    alpha=None,
    restarts: int = 1,
    seed: int = 0,
    grad_route: str | None = None,
    forward=None,
    project=None,
):
    """Untargeted L-inf PGD with a uniform random start (Madry et al. 2018), cross-entropy ascent
    with signed steps of ``alpha`` (default 2.5 eps / steps), restarted ``restarts`` times, each
    restart on the images no earlier one fooled. ``eps`` is a number or one per image.

    ``forward(adv, x0)`` replaces ``model(adv)`` for the gradient (e.g. ``frozen_maps_forward``);
    ``project(adv, x0, eps)`` is applied after each step before the final clip to the eps-ball and
    [0, 1]; ``grad_route`` sets every SHCConv2d's route for the gradient. Success is always judged
    on ``model`` itself. Returns (adversarial images, per-image correct after all restarts)."""
    check_images(x)
    y = check_labels(y, x)
    if steps < 1 or restarts < 1:
        raise ValueError(f"steps and restarts must be >= 1, got {steps} and {restarts}")
    x0 = x.detach()
    eps_t = _per_image(eps, len(x0), x0)
    alpha_t = 2.5 * eps_t / steps if alpha is None else _per_image(alpha, len(x0), x0)
    gen = torch.Generator(device=x0.device).manual_seed(seed)
    fwd = forward if forward is not None else (lambda a, _x0: model(a))
    adv = x0.clone()
    ok = correct(model, x0, y)
    with eval_mode(model), route_ctx(model, grad_route):
        for _ in range(restarts):
            idx = ok.nonzero().squeeze(1)
            if not len(idx):
                break
            xi, yi, ei, ai = x0[idx], y[idx], eps_t[idx], alpha_t[idx]
            noise = torch.rand(xi.shape, generator=gen, device=xi.device, dtype=xi.dtype) * 2 - 1
            a = _clip(xi + noise * ei, xi, ei)
            for _ in range(steps):
                a.requires_grad_(True)
                with torch.enable_grad():
                    loss = F.cross_entropy(fwd(a, xi), yi, reduction="sum")
                    (g,) = torch.autograd.grad(loss, [a])
                a = a.detach() + ai * g.sign()
                if project is not None:
                    a = project(a, xi, ei)
                a = _clip(a, xi, ei)
            fooled = ~correct(model, a, yi)
            adv[idx[fooled]] = a[fooled]
            ok[idx[fooled]] = False
    return adv, ok


def minimal_eps(
    model, x, y, eps_max: float, steps: int = 20, iters: int = 8, restarts: int = 1, seed: int = 0
):
    """Per image, the smallest L-inf eps at which PGD found an adversarial example, by binary
    search in [0, eps_max] (``iters`` halvings: resolution eps_max / 2**iters). 0 for an image the
    model gets wrong clean; ``inf`` where PGD at eps_max does not fool it. An upper bound on the
    true minimal eps (a stronger attack can only lower it)."""
    check_number("eps_max", eps_max)
    y = check_labels(y, x)
    n = len(y)
    ok = correct(model, x, y)
    hi = torch.full((n,), float(eps_max), dtype=torch.float64)
    lo = torch.zeros(n, dtype=torch.float64)
    result = torch.zeros(n, dtype=torch.float64)
    _, still = pgd(model, x, y, eps_max, steps, restarts=restarts, seed=seed)
    result[still] = float("inf")
    active = (ok & ~still).nonzero().squeeze(1)
    for it in range(iters):
        if not len(active):
            break
        mid = (lo[active] + hi[active]) / 2
        _, survived = pgd(
            model, x[active], y[active], mid.to(x.dtype), steps, restarts=restarts, seed=seed + it + 1
        )
        lo[active[survived]] = mid[survived]
        hi[active[~survived]] = mid[~survived]
    searched = ok & ~still
    result[searched] = hi[searched]
    return result


def square(model, x, y, eps: float, queries: int, seed: int = 0):
    """torchattacks' L-inf Square attack (score-based, no gradient), one restart; (adv, correct)."""
    import torchattacks

    check_images(x)
    y = check_labels(y, x)
    with eval_mode(model):
        adv = torchattacks.Square(model, norm="Linf", eps=eps, n_queries=queries, n_restarts=1, seed=seed)(
            x, y
        )
    return adv, correct(model, adv, y)


def autoattack(
    model,
    x,
    y,
    eps: float,
    n_classes: int,
    seed: int = 0,
    apgd_steps: int = 100,
    apgdt_steps: int = 100,
    fab_steps: int = 100,
    square_queries: int = 5000,
):
    """AutoAttack's standard suite (Croce & Hein 2020) from torchattacks' components, in its order:
    APGD-CE, APGD-T (n_classes - 1 target classes), FAB-T (likewise), Square; each runs on the
    images every earlier one left correct. The published settings are ``AUTOATTACK_STANDARD``
    (the defaults). Returns {"clean", "apgd-ce", "apgd-t", "fab-t", "square"}: per-image correct
    after that component (cumulative; the last is AutoAttack's robust accuracy)."""
    import torchattacks

    check_images(x)
    y = check_labels(y, x)
    kw = dict(norm="Linf", eps=eps, n_restarts=1, seed=seed)
    components = (
        ("apgd-ce", lambda: torchattacks.APGD(model, steps=apgd_steps, loss="ce", **kw)),
        ("apgd-t", lambda: torchattacks.APGDT(model, steps=apgdt_steps, n_classes=n_classes, **kw)),
        ("fab-t", lambda: torchattacks.FAB(
            model, steps=fab_steps, multi_targeted=True, n_classes=n_classes, **kw
        )),
        ("square", lambda: torchattacks.Square(model, n_queries=square_queries, **kw)),
    )  # fmt: skip
    ok = correct(model, x, y)
    out = {"clean": ok.clone()}
    with eval_mode(model):
        for name, make in components:
            idx = ok.nonzero().squeeze(1)
            if len(idx):
                adv = make()(x[idx], y[idx])
                bad = (adv - x[idx]).abs().amax() > eps + 1e-6
                if bad:  # never count an example outside the budget
                    raise RuntimeError(f"autoattack: {name} left the eps-ball ({eps})")
                ok[idx[~correct(model, adv, y[idx])]] = False
            out[name] = ok.clone()
    return out


@contextlib.contextmanager
def _frozen(model, b: int):
    """Every SHCConv2d computes its map from the first ``b`` samples of its input (detached) and
    applies it to both halves of a (2b, ...) batch: [clean; adversarial]."""
    layers = [mod for mod in model.modules() if isinstance(mod, SHCConv2d)]

    def make(layer):
        def forward(z):
            if layer.padding_mode != "zeros":
                raise NotImplementedError("frozen maps: only zero padding")
            m = functional.statistical_map(
                z[:b].detach(), *layer._hyper_params(), layer.kernel_size, layer.eps
            )
            m = torch.cat([m, m]).detach()
            return functional.modulated_conv2d(
                z, layer.weight, m, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups
            )

        return forward

    try:
        for layer in layers:
            layer.forward = make(layer)
        yield
    finally:
        for layer in layers:
            del layer.forward  # the instance attribute: the class's forward is back


def frozen_maps_forward(model):
    """``forward(adv, x0)`` for :func:`pgd`: the logits of ``adv`` with every SHC layer's map held
    at its value for the clean image x0 (BPDA on the hypernetwork: the gradient reaches adv through
    the convolution only). A network without SHC layers is unchanged."""

    def forward(adv, x0):
        with _frozen(model, len(x0)):
            return model(torch.cat([x0, adv]))[len(x0) :]

    return forward


def mean_std_projection(adv, x0, eps, iters: int = 5):
    """Alternating projection: each image channel of ``adv`` rescaled to the mean and standard
    deviation of that channel of ``x0``, then clipped to the eps-ball around x0 and to [0, 1];
    ``iters`` rounds (the clip is exact, the statistics approximate: ``channel_stat_gap`` measures
    what is left)."""
    eps_t = _per_image(eps, len(x0), x0) if not torch.is_tensor(eps) or eps.dim() != 4 else eps
    mu0, sd0 = x0.mean((2, 3), keepdim=True), x0.std((2, 3), keepdim=True)
    a = adv
    for _ in range(iters):
        mu, sd = a.mean((2, 3), keepdim=True), a.std((2, 3), keepdim=True)
        a = (a - mu) / sd.clamp_min(1e-12) * sd0 + mu0
        a = _clip(a, x0, eps_t)
    return a


def channel_stat_gap(adv, x0) -> tuple[float, float]:
    """Largest |mean(adv) - mean(x0)| and |std(adv) - std(x0)| over images and channels."""
    dm = (adv.mean((2, 3)) - x0.mean((2, 3))).abs().max()
    ds = (adv.std((2, 3)) - x0.std((2, 3))).abs().max()
    return float(dm), float(ds)
