"""Report writing for the robustness protocol (``protocol``): the paper's Tables 1-4 as
Markdown and CSV, results.json, and the figures (Figure 2: one image under growing noise;
Figure 3: LocSearchAdv step by step).
"""

from __future__ import annotations

import csv
import json
import os
import re

import torch

from .protocol import GRADIENT_ATTACKS

__all__ = ["CAPTIONS", "format_tables", "route_label", "table_rows", "write_outputs"]

TITLES = {"fgsm": "FGSM", "fgsm_heavy": "FGSM-Heavy", "ifgsm": "I-FGSM", "rand_fgsm": "RAND+FGSM"}
ROUTE_SUFFIX = {"both": "", "hyper": "-SHC-T", "conv": "-SHC-W"}

# ---------------------------------------------------------------- tables


def table_rows(results) -> dict[str, tuple[list[str], list[list]]]:
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
    for name, (header, rows) in table_rows(results).items():
        if name != "table1_gaussian" and results.get("selected") == 0:
            # No table of NaN: say why there is nothing to attack.
            parts.append(
                CAPTIONS[name].split(",")[0].split(":")[0] + ": not run: no image is classified correctly "
                f"with confidence > {fields['confidence']} by every model "
                "(train longer, or lower --confidence)."
            )
            continue
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
    for name, (header, rows) in table_rows(results).items():
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


def _show(ax, image) -> None:
    """An image (C, H, W) in [0, 1]: RGB as it is, grey (one channel) in grey levels."""
    image = image.clamp(0, 1)
    if image.shape[0] == 1:
        ax.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(image.permute(1, 2, 0).numpy())


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
            _show(inset, r["example_best_image"])
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
                _show(ax, ex["images"][j])
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
