"""``shc attack``: the paper's robustness tables (1–4) and figures (2–3) for trained checkpoints.

    shc attack --checkpoint runs/plain/checkpoint.pt runs/shc/checkpoint.pt --out runs/attack

Gaussian noise runs over the whole validation set (Table 1). The gradient attacks (Table 2), the
route-restricted RAND+FGSM (Table 4) and LocSearchAdv (Table 3, Figure 3) run on the images that
every compared model classifies correctly with confidence > 0.9. Defaults are the paper's (§3.2);
``--max-images``, ``--lsa-images`` and ``--lsa-steps`` shrink the run.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import re
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from . import attacks
from . import data as data_mod
from . import models as models_mod
from .modules import SHCConv2d

__all__ = [
    "ATTACKS",
    "PAPER",
    "QUICK",
    "build_parser",
    "format_tables",
    "load_checkpoint",
    "load_model",
    "main",
    "run_attacks",
    "write_outputs",
]

ATTACKS = ("gaussian", "fgsm", "fgsm_heavy", "ifgsm", "rand_fgsm", "lsa", "routes")
GRADIENT_ATTACKS = ("fgsm", "fgsm_heavy", "ifgsm", "rand_fgsm")
TITLES = {"fgsm": "FGSM", "fgsm_heavy": "FGSM-Heavy", "ifgsm": "I-FGSM", "rand_fgsm": "RAND+FGSM"}
ROUTE_SUFFIX = {"both": "", "hyper": "-SHC-T", "conv": "-SHC-W"}

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


class CheckpointError(ValueError):
    pass


# ---------------------------------------------------------------- models and data


def load_checkpoint(path: str, device="cpu") -> tuple[nn.Module, dict]:
    """(model in eval mode, meta) from a checkpoint of ``shc train`` (a dict with "meta" and
    "model"); a CheckpointError (a ValueError) that says what is wrong otherwise."""
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file gets the same clear message
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {exc}") from exc
    if not isinstance(state, dict) or not isinstance(state.get("meta"), dict) or "model" not in state:
        raise CheckpointError(
            f'{path} has no "meta"/"model" entries: expected a checkpoint written by `shc train` '
            "(meta = {arch, shc, small_input, num_classes})"
        )
    try:
        model = models_mod.build(**state["meta"])
        model.load_state_dict(state["model"])
    except (TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: cannot rebuild the model from meta {state['meta']}: {exc}") from exc
    return model.to(device).eval(), dict(state["meta"])


def load_model(path: str, device="cpu") -> nn.Module:
    """The model of a checkpoint of ``shc train``, in eval mode."""
    return load_checkpoint(path, device)[0]


def default_label(meta: dict) -> str:
    name = {"plain10": "Plain-10", "resnet18": "ResNet-18", "resnet50": "ResNet-50"}.get(
        meta["arch"], meta["arch"]
    )
    return name + ("-SHC" if meta.get("shc") else "")


def is_shc(model: nn.Module) -> bool:
    return any(isinstance(m, SHCConv2d) for m in model.modules())


@torch.no_grad()
def _probs(model, x):
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
            p = _probs(model, x)
            clean_hits += int((p.argmax(1) == y).sum())
            count += len(y)
            for s, g in gens.items():
                xa = attacks.gaussian_noise(x, s, cfg["gaussian_eps"], generator=g)
                pa = _probs(model, xa)
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
            p = _probs(model, x)
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
        p_clean, p_adv = pb, _probs(model, adv)
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
                label: torch.cat([_probs(m, xb) for xb in xg.split(batch_size)]) if len(yg) else None
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
        p = _probs(model, images)
        rows[label] = {
            "p_y": p.gather(1, yy[:, None]).squeeze(1).tolist(),
            "rcd": attacks.rcd(p, p[:1].expand_as(p), yy).tolist(),
        }
    return {"sigmas": list(FIG2_SIGMAS), "label": int(y), "images": images.cpu(), "models": rows}


# ---------------------------------------------------------------- tables


def _table_rows(results) -> dict[str, tuple[list[str], list[list]]]:
    """{name: (header, rows)} for each table present, numbers unformatted."""
    tables = {}
    if "gaussian" in results:
        sigmas = results["settings"]["gaussian_sigmas"]
        header = ["Network", "clean Acc.(%)"]
        for s in sigmas:
            header += [f"sigma={s} Acc.(%)", f"sigma={s} RCD"]
        rows = []
        for label, r in results["gaussian"].items():
            row = [label, r["clean_acc"]]
            for s in sigmas:
                row += [r["sigma"][str(s)]["acc"], r["sigma"][str(s)]["rcd"]]
            rows.append(row)
        tables["table1_gaussian"] = (header, rows)
    if "gradient" in results:
        names = [a for a in GRADIENT_ATTACKS if a in results["attacks"]]
        header = ["Network"] + [f"{TITLES[a]} {k}" for a in names for k in ("Acc.(%)", "RCD")]
        rows = [
            [label] + [v for a in names for v in (r[a]["acc"], r[a]["rcd"])]
            for label, r in results["gradient"].items()
        ]
        tables["table2_gradient"] = (header, rows)
    if results.get("lsa"):
        steps = results["lsa_report_steps"]
        header = ["Network"] + [f"Step {s} {k}" for s in steps for k in ("Acc.(%)", "RCD")]
        rows = [
            [label] + [v for s in steps for v in (r["acc"][s], r["rcd"][s])]
            for label, r in results["lsa"].items()
        ]
        tables["table3_lsa"] = (header, rows)
    if "routes" in results:
        header = ["Network", "RAND+FGSM Acc.(%)", "RAND+FGSM RCD"]
        rows = [
            [route_label(label, route), r["acc"], r["rcd"]]
            for label, routes in results["routes"].items()
            for route, r in routes.items()
        ]
        tables["table4_routes"] = (header, rows)
    return tables


def route_label(label: str, route: str) -> str:
    """The paper's names: ResNet-18-SHC attacked through the hypernetworks only is ResNet-18-SHC-T."""
    if route == "both":
        return label
    return (label[: -len("-SHC")] if label.endswith("-SHC") else label) + ROUTE_SUFFIX[route]


CAPTIONS = {
    "table1_gaussian": "Table 1: accuracy and mean RCD under Gaussian noise, over {gaussian_count} "
    "validation images.",
    "table2_gradient": "Table 2: accuracy and mean RCD after the gradient attacks, over {gradient_images} "
    "images every model classifies correctly with confidence > {confidence}.",
    "table3_lsa": "Table 3: accuracy and mean RCD during LocSearchAdv ({lsa_pixels} pixel(s) per step), "
    "over {lsa_images} such images.",
    "table4_routes": "Table 4: RAND+FGSM with the gradient of one route only (SHC-T: hypernetwork route, "
    "SHC-W: convolution route), over {gradient_images} such images.",
}


def _fmt(v) -> str:
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def format_tables(results: dict) -> str:
    """The paper's Tables 1–4 (those that were run) as Markdown."""
    fields = {
        **results["settings"],
        "gaussian_count": next(iter(results.get("gaussian", {}).values()), {}).get("images"),
        "gradient_images": results.get("gradient_images"),
        "lsa_images": results.get("lsa_images"),
    }
    parts = []
    for name, (header, rows) in _table_rows(results).items():
        lines = [CAPTIONS[name].format(**fields), "", "| " + " | ".join(header) + " |"]
        lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
        lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


# ---------------------------------------------------------------- files and figures


def _jsonable(results: dict) -> dict:
    out = {k: v for k, v in results.items() if k != "example"}
    if "lsa" in out:
        out["lsa"] = {
            label: {k: v for k, v in r.items() if not isinstance(v, torch.Tensor)}
            for label, r in out["lsa"].items()
        }
    if "example" in results:
        out["example"] = {k: v for k, v in results["example"].items() if k != "images"}
    return out


def write_outputs(results: dict, out_dir: str) -> list[str]:
    """tables.md, one CSV per table, results.json and the PNG figures; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    md = os.path.join(out_dir, "tables.md")
    with open(md, "w") as f:
        f.write(format_tables(results))
    paths.append(md)
    for name, (header, rows) in _table_rows(results).items():
        path = os.path.join(out_dir, f"{name}.csv")
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)
        paths.append(path)
    path = os.path.join(out_dir, "results.json")
    with open(path, "w") as f:
        json.dump(_jsonable(results), f, indent=1)
    paths.append(path)
    paths += _plots(results, out_dir)
    return paths


def _plots(results, out_dir) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    if results.get("lsa"):
        fig, axes = plt.subplots(1, 3, figsize=(14, 4))
        for label, r in results["lsa"].items():
            steps = range(len(r["acc"]))
            axes[0].plot(steps, r["acc"], label=label)
            axes[1].plot(steps, r["rcd"], label=label)
            axes[2].plot(steps, r["best_confidence"], label=label)
        for ax, title in zip(axes, ("accuracy (%)", "mean RCD", "mean best-so-far p_y"), strict=True):
            ax.set_xlabel("LSA step")
            ax.set_title(title)
            ax.grid(alpha=0.3)
        axes[0].legend()
        fig.suptitle(f"LocSearchAdv, {results['lsa_images']} images (Figure 3 style)")
        fig.tight_layout()
        path = os.path.join(out_dir, "fig3_lsa.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
        # Per model, as Figure 3: p_y (brown) and RCD (blue) against the step, best image inset.
        for i, (label, r) in enumerate(results["lsa"].items()):
            fig, ax = plt.subplots(figsize=(6, 4))
            ax.plot(r["confidence"], color="tab:brown", label="mean p_y")
            ax.set_xlabel("LSA step")
            ax.set_ylabel("mean p_y", color="tab:brown")
            ax2 = ax.twinx()
            ax2.plot(r["rcd"], color="tab:blue", label="mean RCD")
            ax2.set_ylabel("mean RCD", color="tab:blue")
            ax.set_title(f"LocSearchAdv on {label}")
            fig.tight_layout()
            inset = fig.add_axes([0.55, 0.3, 0.22, 0.3])
            inset.imshow(r["example_best_image"].permute(1, 2, 0).clamp(0, 1).numpy())
            inset.set_axis_off()
            inset.set_title("best adversarial (first image)", fontsize=7)
            path = os.path.join(out_dir, f"fig3_lsa_{i}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', label)}.png")
            fig.savefig(path, dpi=100)
            plt.close(fig)
            paths.append(path)
    ex = results.get("example")
    if ex:
        n_models, n_sig = len(ex["models"]), len(ex["sigmas"])
        fig, axes = plt.subplots(n_models, n_sig, figsize=(2 * n_sig, 2.7 * n_models + 0.4), squeeze=False)
        for i, (label, r) in enumerate(ex["models"].items()):
            for j, s in enumerate(ex["sigmas"]):
                ax = axes[i][j]
                ax.imshow(ex["images"][j].permute(1, 2, 0).clamp(0, 1).numpy())
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_title(f"RCD={r['rcd'][j]:.2f}\nsigma={s:.2f}, p_y={r['p_y'][j]:.2f}", fontsize=8)
                if j == 0:
                    ax.set_ylabel(label, fontsize=8)
        fig.suptitle("Gaussian noise on one image (Figure 2 style)", fontsize=9)
        fig.tight_layout()
        path = os.path.join(out_dir, "fig2_gaussian_example.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


# ---------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shc attack", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--checkpoint", nargs="+", required=True, metavar="PATH", help="checkpoints of `shc train`"
    )
    p.add_argument("--label", nargs="+", default=None, metavar="NAME", help="one name per checkpoint")
    p.add_argument("--data", default=None, help="ImageNet-style folder with val/ (default: digits)")
    p.add_argument("--image-size", type=int, default=224, help="crop size for --data")
    p.add_argument("--digits-size", type=int, default=32, help="image size of the embedded digits data")
    p.add_argument("--attacks", nargs="+", choices=ATTACKS, default=list(ATTACKS))
    p.add_argument("--gaussian-images", type=int, default=None, help="images for Table 1 (default: all)")
    p.add_argument("--max-images", type=int, default=PAPER["max_images"], help="images for Tables 2 and 4")
    p.add_argument("--lsa-images", type=int, default=PAPER["lsa_images"], help="images for Table 3")
    p.add_argument("--lsa-steps", type=int, default=PAPER["lsa_steps"])
    p.add_argument("--lsa-pixels", type=int, default=PAPER["lsa_pixels"], help="pixels perturbed per step")
    p.add_argument(
        "--lsa-candidates", type=int, default=PAPER["lsa_candidates"], help="pixels tried per step"
    )
    p.add_argument("--rand-variant", choices=["paper", "tramer"], default="paper")
    p.add_argument("--confidence", type=float, default=PAPER["confidence"])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--out", default="runs/attack", help="folder for the tables and figures")
    p.add_argument("--no-progress", action="store_true")
    return p


def run(args) -> dict:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.label is not None and len(args.label) != len(args.checkpoint):
        raise ValueError(f"{len(args.label)} --label names for {len(args.checkpoint)} checkpoints")
    models, metas = {}, []
    for i, path in enumerate(args.checkpoint):
        model, meta = load_checkpoint(path, device)
        metas.append(meta)
        label = args.label[i] if args.label else default_label(meta)
        while label in models:
            label += "'"
        models[label] = model
    _, val, num_classes = data_mod.load(
        args.data, args.image_size, paper_eval=True, digits_size=args.digits_size
    )
    for path, meta in zip(args.checkpoint, metas, strict=True):
        if meta["num_classes"] != num_classes:
            raise ValueError(f"{path} has {meta['num_classes']} classes but the data has {num_classes}")
    results = run_attacks(
        models,
        val,
        args.out,
        attacks_to_run=args.attacks,
        seed=args.seed,
        batch_size=args.batch_size,
        device=device,
        progress=not args.no_progress,
        max_images=args.max_images,
        gaussian_images=args.gaussian_images,
        lsa_images=args.lsa_images,
        lsa_steps=args.lsa_steps,
        lsa_pixels=args.lsa_pixels,
        lsa_candidates=args.lsa_candidates,
        rand_variant=args.rand_variant,
        confidence=args.confidence,
    )
    print(format_tables(results))
    print(f"tables and figures in {args.out}")
    return results


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"shc attack: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
