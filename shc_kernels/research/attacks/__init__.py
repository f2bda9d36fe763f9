"""Attacks of the paper (§2.3) and its robustness score (eq. (5)).

Images are batches (N, C, H, W) in [0, 1] on any device; every attack returns new images in
[0, 1], never modifies its input, runs the model in eval mode and restores its modes afterwards,
and draws its randomness from an optional ``generator`` so a seed reproduces the result.

    gaussian_noise(x, sigma, eps=None, generator=None)                                  eq. (1)
    fgsm(model, x, y, eps, target="least_likely", grad_route=None)                      eq. (2)
    ifgsm(model, x, y, eps, alpha, steps, target="least_likely", grad_route=None)       eq. (3)
    rand_fgsm(model, x, y, eps, alpha, target="least_likely", variant="paper",
              grad_route=None, generator=None)                                          eq. (4)
    local_search(model, x, y, pixels_per_step=10, steps=150, ...)        LocSearchAdv, black box
    rcd(p_adv, p_clean, y), relative_confidence(p, y)                                   eq. (5)
    grad_route(model, route)        context manager: every SHCConv2d's route (Table 4)

Beyond the paper (``robust``): L-inf PGD with per-image eps, minimal eps by binary search,
Square, AutoAttack's standard suite as published, and the adaptive attacks on SHC's maps.
"""

from . import robust
from ._common import eval_mode, grad_route, least_likely
from .gradient import fgsm, gaussian_noise, ifgsm, rand_fgsm
from .local_search import LocalSearchResult, local_search
from .metrics import rcd, relative_confidence

__all__ = [
    "LocalSearchResult",
    "eval_mode",
    "fgsm",
    "gaussian_noise",
    "grad_route",
    "ifgsm",
    "least_likely",
    "local_search",
    "rand_fgsm",
    "rcd",
    "relative_confidence",
    "robust",
]
