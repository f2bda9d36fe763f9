"""The paper's robustness protocol (§3.2) and its runs: which images, which attacks with which
settings, and the numbers they give (Tables 1-4, Figures 2-3), for models in memory.

Gaussian noise runs over the whole validation set (Table 1). The gradient attacks (Table 2), the
route-restricted RAND+FGSM (Table 4) and LocSearchAdv (Table 3, Figure 3) run on the images that
every compared model classifies correctly with confidence > 0.9. Defaults are the paper's
(``PAPER``); ``run_attacks(..., max_images=..., lsa_images=..., lsa_steps=...)`` shrinks a run.
Tables, CSV, JSON and figures are written by ``report``; ``shc attack`` (``evaluate``) is the
command line over both.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..modules import SHCConv2d
from . import attacks

__all__ = [
    "ATTACKS",
    "GRADIENT_ATTACKS",
    "PAPER",
    "QUICK",
    "default_label",
    "is_shc",
    "lsa_report_steps",
    "probs",
    "run_attacks",
    "select_images",
]

ATTACKS = ("gaussian", "fgsm", "fgsm_heavy", "ifgsm", "rand_fgsm", "lsa", "routes")
GRADIENT_ATTACKS = ("fgsm", "fgsm_heavy", "ifgsm", "rand_fgsm")

# The paper's settings (§3.2).
PAPER = dict(
    gaussian_sigmas=(0.1, 0.2, 0.4),
    gaussian_eps=None,
    gaussian_images=None,
    fgsm_eps=0.02,
    fgsm_heavy_eps=0.1,
    ifgsm_eps=0.02,
    ifgsm_alpha=0.001,
    ifgsm_steps=5,
    rand_eps=0.03125,
    rand_alpha=0.03125,
    rand_variant="paper",
    lsa_pixels=10,
    lsa_steps=150,
    lsa_candidates=64,
    max_images=5000,
    lsa_images=500,
    confidence=0.9,
)
# A run of a few minutes on a 2-core CPU for 16-px digits (the demo): every attack, fewer images,
# a short LocSearchAdv with 1 pixel per step (10 pixels of a 16×16 digit already decide it).
QUICK = dict(max_images=100, lsa_images=10, lsa_steps=20, lsa_pixels=1, lsa_candidates=32)
FIG2_SIGMAS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25)


def default_label(meta: dict) -> str:
    name = {"plain10": "Plain-10", "resnet18": "ResNet-18", "resnet50": "ResNet-50"}.get(
        meta["arch"], meta["arch"]
    )
    return name + ("-SHC" if meta.get("shc") else "")


def is_shc(model: nn.Module) -> bool:
    return any(isinstance(m, SHCConv2d) for m in model.modules())


@torch.no_grad()
def probs(model, x):
    # float64 softmax: RC takes logs of p_y and of a standard deviation, which underflow in fp32.
    return F.softmax(model(x).double(), dim=1)


def _bar(total, desc, progress):
    from tqdm import tqdm

    return tqdm(
        total=total, desc=desc, file=sys.stderr, disable=not progress, dynamic_ncols=True, leave=False
    )


def _loader(dataset, batch_size):
    return DataLoader(dataset, batch_size=batch_size, shuffle=False)


# ---------------------------------------------------------------- the experiments


def _generator(device, seed):
    return torch.Generator(device=device).manual_seed(seed)


def _gaussian(models, dataset, cfg, device, progress):
    """Table 1: clean accuracy, then accuracy and mean RCD under each sigma, over every image
    (the first ``gaussian_images`` when that is set)."""
    out = {}
    for label, model in models.items():
        clean_hits, hits, scores, count = 0, {}, {}, 0
        # The same seed per model: every model sees the same noisy images.
        gens = {s: _generator(device, cfg["seed"] + i) for i, s in enumerate(cfg["gaussian_sigmas"])}
        limit = len(dataset) if cfg["gaussian_images"] is None else min(cfg["gaussian_images"], len(dataset))
        bar = _bar(limit, f"gaussian {label}", progress)
        for x, y in _loader(dataset, cfg["batch_size"]):
            if count >= limit:
                break
            x, y = x[: limit - count].to(device), y[: limit - count].to(device)
            p = probs(model, x)
            clean_hits += int((p.argmax(1) == y).sum())
            count += len(y)
            for s, g in gens.items():
                xa = attacks.gaussian_noise(x, s, cfg["gaussian_eps"], generator=g)
                pa = probs(model, xa)
                hits[s] = hits.get(s, 0) + int((pa.argmax(1) == y).sum())
                scores[s] = scores.get(s, 0.0) + float(attacks.rcd(pa, p, y).sum())
            bar.update(len(y))
        bar.close()
        n = max(count, 1)
        out[label] = {
            "clean_acc": 100.0 * clean_hits / n,
            "sigma": {str(s): {"acc": 100.0 * hits[s] / n, "rcd": scores[s] / n} for s in gens},
            "images": count,
        }
    return out


@torch.no_grad()
def select_images(models, dataset, confidence, max_images, batch_size, device, progress=False):
    """Indices (in dataset order) of the images every model classifies correctly with
    probability > ``confidence``, at most ``max_images``; and their clean images and labels."""
    keep, xs, ys = [], [], []
    start = 0
    bar = _bar(len(dataset), "selecting images", progress)
    for x, y in _loader(dataset, batch_size):
        x, y = x.to(device), y.to(device)
        ok = torch.ones(len(y), dtype=torch.bool, device=device)
        for model in models.values():
            p = probs(model, x)
            ok &= (p.argmax(1) == y) & (p.gather(1, y[:, None]).squeeze(1) > confidence)
        idx = ok.nonzero().squeeze(1)
        keep += (idx + start).tolist()
        xs.append(x[idx])
        ys.append(y[idx])
        start += len(y)
        bar.update(len(y))
        if len(keep) >= max_images:
            break
    bar.close()
    if not xs:
        raise ValueError("the validation set is empty")
    x, y = torch.cat(xs)[:max_images], torch.cat(ys)[:max_images]
    return keep[:max_images], x, y


def _gradient_attack(name, model, x, y, target, cfg, route, gen):
    kw = {"target": target, "grad_route": route}
    if name == "fgsm":
        return attacks.fgsm(model, x, y, cfg["fgsm_eps"], **kw)
    if name == "fgsm_heavy":
        return attacks.fgsm(model, x, y, cfg["fgsm_heavy_eps"], **kw)
    if name == "ifgsm":
        return attacks.ifgsm(model, x, y, cfg["ifgsm_eps"], cfg["ifgsm_alpha"], cfg["ifgsm_steps"], **kw)
    return attacks.rand_fgsm(
        model, x, y, cfg["rand_eps"], cfg["rand_alpha"], variant=cfg["rand_variant"], generator=gen, **kw
    )


def _attack_selected(name, model, x, y, p_clean, cfg, device, route, desc, progress):
    """Mean accuracy (%) and RCD over the selected images after one gradient attack, targeted
    (as in the paper) to the least likely class of the clean prediction ``p_clean``."""
    if len(y) == 0:
        return {"acc": float("nan"), "rcd": float("nan")}
    hits, score = 0, 0.0
    gen = _generator(device, cfg["seed"])  # the same random start for every model
    bar = _bar(len(y), desc, progress)
    bs = cfg["batch_size"]
    for xb, yb, pb in zip(x.split(bs), y.split(bs), p_clean.split(bs), strict=True):
        adv = _gradient_attack(name, model, xb, yb, pb.argmin(1), cfg, route, gen)
        p_clean, p_adv = pb, probs(model, adv)
        hits += int((p_adv.argmax(1) == yb).sum())
        score += float(attacks.rcd(p_adv, p_clean, yb).sum())
        bar.update(len(yb))
    bar.close()
    n = max(len(y), 1)
    return {"acc": 100.0 * hits / n, "rcd": score / n}


def _lsa(models, x, y, cfg, device, progress):
    """Table 3 / Figure 3: mean accuracy, RCD and true-class probability after every step."""
    out = {}
    steps = cfg["lsa_steps"]
    for label, model in models.items():
        gen = _generator(device, cfg["seed"])
        parts = []
        bar = _bar(steps * math.ceil(len(y) / cfg["lsa_batch"]), f"lsa {label}", progress)
        for xb, yb in zip(x.split(cfg["lsa_batch"]), y.split(cfg["lsa_batch"]), strict=True):
            parts.append(
                attacks.local_search(
                    model,
                    xb,
                    yb,
                    cfg["lsa_pixels"],
                    steps,
                    candidates=cfg["lsa_candidates"],
                    batch_size=cfg["batch_size"],
                    generator=gen,
                    progress=bar.update,
                )
            )
        bar.close()
        correct = torch.cat([r.correct for r in parts], dim=1).double()
        score = torch.cat([r.rcd for r in parts], dim=1)
        conf = torch.cat([r.confidence for r in parts], dim=1)
        best = torch.cat([r.best_confidence for r in parts], dim=1)
        out[label] = {
            "acc": (100.0 * correct.mean(1)).tolist(),
            "rcd": score.mean(1).tolist(),
            "confidence": conf.mean(1).tolist(),
            "best_confidence": best.mean(1).tolist(),
            "example_best_image": parts[0].best_images[0].cpu(),
        }
    return out


def lsa_report_steps(steps: int) -> list[int]:
    """30, 60, 90, 120, 150 for the paper's 150 steps; five even points otherwise."""
    return sorted({max(1, round(steps * i / 5)) for i in range(1, 6)}) if steps > 0 else []


def run_attacks(
    models: dict[str, nn.Module],
    val_dataset,
    out_dir: str | None = None,
    *,
    attacks_to_run=ATTACKS,
    seed: int = 0,
    batch_size: int = 64,
    lsa_batch: int = 16,
    device=None,
    progress: bool = True,
    **settings,
) -> dict:
    """Run the paper's attacks on ``models`` ({label: model}, images in [0, 1]) over
    ``val_dataset`` (pairs of image, label); write the tables and figures into ``out_dir`` (when
    given) and return the results. ``settings`` override the paper's (``PAPER``): e.g.
    ``max_images=200, lsa_images=20, lsa_steps=30``, or ``**QUICK``. Models are moved to
    ``device`` (default: that of the first model's parameters) and run in eval mode; each
    module's train/eval mode is restored afterwards."""
    unknown = set(settings) - set(PAPER)
    if unknown:
        raise TypeError(f"unknown settings {sorted(unknown)}; expected some of {sorted(PAPER)}")
    bad = set(attacks_to_run) - set(ATTACKS)
    if bad:
        raise ValueError(f"unknown attacks {sorted(bad)}; expected some of {ATTACKS}")
    if not models:
        raise ValueError("models is empty")
    cfg = {**PAPER, **settings, "seed": seed, "batch_size": batch_size, "lsa_batch": lsa_batch}
    if device is None:
        device = next(next(iter(models.values())).parameters()).device
    device = torch.device(device)
    for m in models.values():
        m.to(device)
    results = {
        "models": list(models),
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()},
        "attacks": list(attacks_to_run),
        "val_images": len(val_dataset),
        "seconds": {},
    }
    t0 = time.perf_counter()
    with contextlib.ExitStack() as modes:  # eval mode throughout, every module's mode restored after
        for m in models.values():
            modes.enter_context(attacks.eval_mode(m))
        if "gaussian" in attacks_to_run:
            t = time.perf_counter()
            results["gaussian"] = _gaussian(models, val_dataset, cfg, device, progress)
            results["seconds"]["gaussian"] = time.perf_counter() - t
        t = time.perf_counter()
        need = max(cfg["max_images"], cfg["lsa_images"] if "lsa" in attacks_to_run else 0)
        indices, x, y = select_images(
            models, val_dataset, cfg["confidence"], need, batch_size, device, progress
        )
        results["seconds"]["select"] = time.perf_counter() - t
        results["selected"] = len(indices)
        results["selected_indices"] = indices
        xg, yg = x[: cfg["max_images"]], y[: cfg["max_images"]]
        results["gradient_images"] = len(yg)
        grad = [a for a in GRADIENT_ATTACKS if a in attacks_to_run]
        if grad or "routes" in attacks_to_run:
            clean = {
                label: torch.cat([probs(m, xb) for xb in xg.split(batch_size)]) if len(yg) else None
                for label, m in models.items()
            }
        if grad:
            results["gradient"] = {}
            for label, model in models.items():
                results["gradient"][label] = {}
                for name in grad:
                    t = time.perf_counter()
                    results["gradient"][label][name] = _attack_selected(
                        name, model, xg, yg, clean[label], cfg, device, None, f"{name} {label}", progress
                    )
                    results["seconds"][name] = results["seconds"].get(name, 0.0) + time.perf_counter() - t
        if "routes" in attacks_to_run:
            t = time.perf_counter()
            results["routes"] = {}
            for label, model in models.items():
                routes = ("both", "hyper", "conv") if is_shc(model) else ("both",)
                rows = {}
                for route in routes:
                    if route == "both" and "rand_fgsm" in results.get("gradient", {}).get(label, {}):
                        rows[route] = results["gradient"][label]["rand_fgsm"]
                    else:
                        rows[route] = _attack_selected(
                            "rand_fgsm",
                            model,
                            xg,
                            yg,
                            clean[label],
                            cfg,
                            device,
                            route,
                            f"routes {label} {route}",
                            progress,
                        )
                results["routes"][label] = rows
            results["seconds"]["routes"] = time.perf_counter() - t
        if "lsa" in attacks_to_run:
            t = time.perf_counter()
            xl, yl = x[: cfg["lsa_images"]], y[: cfg["lsa_images"]]
            results["lsa_images"] = len(yl)
            results["lsa_report_steps"] = lsa_report_steps(cfg["lsa_steps"])
            results["lsa"] = _lsa(models, xl, yl, cfg, device, progress) if len(yl) else {}
            results["seconds"]["lsa"] = time.perf_counter() - t
        if len(y):
            results["example"] = _figure2_data(models, x[0], y[0], cfg, device)
    results["seconds"]["total"] = time.perf_counter() - t0
    if out_dir is not None:
        from .report import write_outputs

        write_outputs(results, out_dir)
    return results


def _figure2_data(models, x, y, cfg, device):
    """One image under growing Gaussian noise: p_y and RCD per sigma and model (Figure 2)."""
    gen = _generator(device, cfg["seed"])
    noise = torch.randn(x.shape, generator=gen, device=device, dtype=x.dtype)
    images = torch.stack([(x + s * noise).clamp(0, 1) for s in FIG2_SIGMAS])
    yy = y.repeat(len(FIG2_SIGMAS))
    rows = {}
    for label, model in models.items():
        p = probs(model, images)
        rows[label] = {
            "p_y": p.gather(1, yy[:, None]).squeeze(1).tolist(),
            "rcd": attacks.rcd(p, p[:1].expand_as(p), yy).tolist(),
        }
    return {"sigmas": list(FIG2_SIGMAS), "label": int(y), "images": images.cpu(), "models": rows}
