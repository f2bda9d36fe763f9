"""LocSearchAdv (Narodytska & Kasiviswanathan 2016), the paper's black-box attack (§2.3, Table 3).

Only the model's output probabilities are used: the whole search runs under ``torch.no_grad``,
so no graph is built and nothing can be back-propagated. Images stay in [0, 1]: perturbing a
pixel moves each of its channels to the bound (0 or 1) farther from its current value, the
[0, 1] analogue of the original's ``p * sign(I)`` with a large p.

Each step, for every image at once: the candidates are the not yet perturbed pixels within
``radius`` of the previous step's pixels (in random order) topped up with random ones, up to
``candidates``; each candidate is tried alone on the current adversarial image (all images ×
all candidates go through the model in chunks of ``batch_size``), and the ``pixels_per_step``
candidates that lower the true class's probability most are perturbed together.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ._common import check_count, check_images, check_labels, eval_mode
from .metrics import rcd

__all__ = ["LocalSearchResult", "local_search"]


@dataclass
class LocalSearchResult:
    """Row s of every (steps + 1, N) array is after s steps (row 0: the clean images)."""

    images: torch.Tensor  # (N, C, H, W) after the last step
    best_images: torch.Tensor  # (N, C, H, W) at the step of lowest true-class probability
    confidence: torch.Tensor  # p_y per step
    best_confidence: torch.Tensor  # running minimum of confidence: never rises
    correct: torch.Tensor  # bool, arg max == y per step
    rcd: torch.Tensor  # eq. (5) against the clean image per step
    perturbed: torch.Tensor  # (N, H, W) bool, the pixels changed by the end

    def __getitem__(self, key):  # dict-style access too: result["confidence"]
        return getattr(self, key)


def _probs(model, x, batch_size):
    # float64 softmax: RC takes the log of p_y and of a standard deviation, which underflow in fp32.
    return torch.cat([F.softmax(model(c).double(), dim=1) for c in x.split(batch_size)])


def _flip(values):
    """Every channel to the farther bound: the per-pixel perturbation."""
    return (values < 0.5).to(values.dtype)


@torch.no_grad()
def local_search(
    model,
    x,
    y,
    pixels_per_step=10,
    steps=150,
    candidates=64,
    radius=1,
    batch_size=256,
    generator=None,
    progress=None,
):
    """LocSearchAdv on a batch ``x`` (N, C, H, W) in [0, 1] with true labels ``y``; returns a
    :class:`LocalSearchResult`. ``generator`` (on x's device) draws the random candidates;
    ``progress`` is an optional callable run after each step (e.g. a tqdm bar's update)."""
    check_images(x)
    y = check_labels(y, x)
    for name, value in {
        "pixels_per_step": pixels_per_step,
        "candidates": candidates,
        "batch_size": batch_size,
    }.items():
        check_count(name, value, 1)
    check_count("steps", steps, 0)
    check_count("radius", radius, 0)
    n, c, h, w = x.shape
    hw = h * w
    k = min(candidates, hw)
    t = min(pixels_per_step, k)
    rows = torch.arange(n, device=x.device)[:, None]

    with eval_mode(model):
        adv = x.detach().clone()
        p_clean = _probs(model, adv, batch_size)
        perturbed = torch.zeros(n, hw, dtype=torch.bool, device=x.device)
        last = torch.zeros(n, hw, dtype=torch.bool, device=x.device)
        conf = [p_clean.gather(1, y[:, None]).squeeze(1)]
        correct = [p_clean.argmax(1) == y]
        scores = [torch.zeros(n, dtype=p_clean.dtype, device=x.device)]
        best = [conf[0]]
        best_images = adv.clone()
        for step in range(steps):
            if perturbed.all():
                # Every pixel of every image is perturbed: no step can change anything more, so
                # the remaining rows repeat the last one (the model is deterministic in eval mode).
                for _ in range(steps - step):
                    for row in (conf, best, correct, scores):
                        row.append(row[-1])
                    if progress is not None:
                        progress()
                break
            # Neighbours of the last step's pixels come first (priority >= 1), in random order,
            # then random pixels; perturbed pixels are never candidates again.
            near = F.max_pool2d(last.view(n, 1, h, w).to(x.dtype), 2 * radius + 1, 1, radius).view(n, hw) > 0
            priority = torch.rand(n, hw, generator=generator, device=x.device, dtype=x.dtype)
            priority = priority + near.to(x.dtype)
            priority = priority.masked_fill(perturbed, -1.0)
            prio, cand = priority.topk(k, dim=1)  # (n, k)
            valid = prio >= 0

            # Every image × every candidate, each with only that one pixel perturbed.
            flat = adv.view(n, c, hw)
            trial = flat[:, None].expand(n, k, c, hw).clone()
            idx = cand[:, :, None, None].expand(n, k, c, 1)
            trial.scatter_(3, idx, _flip(trial.gather(3, idx)))
            p_trial = _probs(model, trial.view(n * k, c, h, w), batch_size).view(n, k, -1)
            score = p_trial.gather(2, y[:, None, None].expand(n, k, 1)).squeeze(2)
            score = score.masked_fill(~valid, float("inf"))

            chosen_pos = score.topk(t, dim=1, largest=False).indices
            chosen = cand.gather(1, chosen_pos)
            ok = valid.gather(1, chosen_pos)
            chosen = torch.where(ok, chosen, cand[:, :1])  # placeholders, masked below
            mask = torch.zeros(n, hw, dtype=torch.bool, device=x.device)
            mask[rows.expand_as(chosen)[ok], chosen[ok]] = True
            flat = torch.where(mask[:, None], _flip(flat), flat)
            adv = flat.view(n, c, h, w)
            perturbed |= mask
            last = mask

            p = _probs(model, adv, batch_size)
            p_y = p.gather(1, y[:, None]).squeeze(1)
            better = p_y < best[-1]
            best_images[better] = adv[better]
            conf.append(p_y)
            best.append(torch.minimum(best[-1], p_y))
            correct.append(p.argmax(1) == y)
            scores.append(rcd(p, p_clean, y))
            if progress is not None:
                progress()
    return LocalSearchResult(
        images=adv,
        best_images=best_images,
        confidence=torch.stack(conf),
        best_confidence=torch.stack(best),
        correct=torch.stack(correct),
        rcd=torch.stack(scores),
        perturbed=perturbed.view(n, h, w),
    )
