"""Relative confidence and the RCD score, eq. (5)."""

from __future__ import annotations

import torch

__all__ = ["rcd", "relative_confidence"]


def relative_confidence(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """RC(p) = log(p_y / SD_{k != y} p_k) per row of the probabilities ``p`` (N, C), with SD the
    population standard deviation over the C - 1 other classes. Both terms are clamped to the
    dtype's smallest normal number, so a saturated softmax gives a large finite value."""
    if p.dim() != 2 or p.shape[1] < 3:
        raise ValueError(f"p must be probabilities of shape (N, C) with C >= 3, got {tuple(p.shape)}")
    y = y.to(p.device).long()
    if y.shape != (p.shape[0],):
        raise ValueError(f"y must have shape ({p.shape[0]},), got {tuple(y.shape)}")
    others = torch.ones_like(p, dtype=torch.bool).scatter_(1, y[:, None], False)
    rest = p[others].view(p.shape[0], p.shape[1] - 1)
    sd = rest.std(dim=1, correction=0)
    tiny = torch.finfo(p.dtype).tiny
    p_y = p.gather(1, y[:, None]).squeeze(1)
    return p_y.clamp_min(tiny).log() - sd.clamp_min(tiny).log()


def rcd(p_adv: torch.Tensor, p_clean: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Eq. (5): RCD = RC(p_clean) - RC(p_adv), one value per image (larger: more confused)."""
    if p_adv.shape != p_clean.shape:
        raise ValueError(f"p_adv {tuple(p_adv.shape)} and p_clean {tuple(p_clean.shape)} differ in shape")
    return relative_confidence(p_clean, y) - relative_confidence(p_adv, y)
