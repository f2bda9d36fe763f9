"""The report of ``shc study``: per-seed results aggregated to mean +- std over seeds, SHC against
plain for every number, the gradient-masking checks, and the files (report.md, summary.csv,
results.json, acc_vs_eps.png, lsa_curve.png, routes.png).

A difference SHC - plain "exceeds the seed-to-seed spread" when |mean(SHC) - mean(plain)| is
larger than std(plain) + std(SHC) (sample standard deviations over the seeds): a plain rule, not a
significance test, stated beside every table.
"""

from __future__ import annotations

import csv
import glob
import json
import math
import os
import statistics

__all__ = ["aggregate", "cached_seconds", "masking_checks", "metric_rows", "versions", "write"]

SIGMAS = ("0.1", "0.2", "0.4")
T2 = {"fgsm": "FGSM", "fgsm_heavy": "FGSM-Heavy", "ifgsm": "I-FGSM", "rand_fgsm": "RAND+FGSM"}
ROUTES = {
    "both": "both routes",
    "hyper": "hypernetwork route only (SHC-T)",
    "conv": "convolution route only (SHC-W)",
}
TITLES = {
    "Clean": "Clean accuracy",
    "Table 1": "Table 1: Gaussian noise (paper eq. (1))",
    "Table 2": "Table 2: FGSM, FGSM-Heavy, I-FGSM, RAND+FGSM, targeted to the least likely class",
    "Table 3": "Table 3: LocSearchAdv (black box)",
    "Table 4": "Table 4: RAND+FGSM through one gradient route",
    "Beyond": "Beyond the paper: untargeted L-inf attacks a defense must face",
    "Accuracy vs eps": "Accuracy vs eps (PGD)",
}
ZERO_AT_LARGE_EPS = 2.0  # % accuracy that counts as "driven to ~0"


def versions() -> dict:
    import torch
    import torchvision

    out = {"python": __import__("platform").python_version(), "torch": torch.__version__}
    out["torchvision"] = torchvision.__version__
    try:
        import torchattacks

        out["torchattacks"] = torchattacks.__version__
    except ImportError:
        out["torchattacks"] = "not installed"
    from .. import __version__

    out["shc_kernels"] = __version__
    return out


def cached_seconds(work: str) -> dict:
    """Compute seconds recorded in the cache, per unit, and the training time from the metrics."""
    out = {}
    for path in glob.glob(os.path.join(work, "cache", "*", "*.json")):
        unit = os.path.basename(os.path.dirname(path))
        with open(path) as f:
            out[unit] = out.get(unit, 0.0) + json.load(f).get("seconds", 0.0)
    for path in glob.glob(os.path.join(work, "models", "*", "metrics.jsonl")):
        with open(path) as f:
            out["train"] = out.get("train", 0.0) + sum(json.loads(x)["epoch_time_s"] for x in f if x.strip())
    return {k: round(v, 1) for k, v in sorted(out.items())}


def _split(key: str) -> tuple[str, bool, int]:
    name, seed = key.rsplit("_s", 1)
    return name.removesuffix("_shc"), name.endswith("_shc"), int(seed)


def _label(arch: str, shc: bool) -> str:
    from .study import model_label

    return model_label(arch, shc)


def metric_rows(raw: dict, settings: dict) -> list[tuple[str, str, str, float]]:
    """(section, metric, model key, value) for every number of every model and seed."""
    from .protocol import lsa_report_steps

    rows = []
    for key, m in raw["clean"].items():
        rows.append(("Clean", "accuracy on the test images (%)", key, 100.0 * m["top1"]))
    for key, p in raw["paper"].items():
        g = p["gaussian"]
        rows.append(("Table 1", f"clean acc. ({g['images']} images, %)", key, g["clean_acc"]))
        for s in SIGMAS:
            rows.append(("Table 1", f"sigma={s} acc. (%)", key, g["sigma"][s]["acc"]))
            rows.append(("Table 1", f"sigma={s} RCD", key, g["sigma"][s]["rcd"]))
        for a, title in T2.items():
            rows.append(("Table 2", f"{title} acc. (%)", key, p["gradient"][a]["acc"]))
            rows.append(("Table 2", f"{title} RCD", key, p["gradient"][a]["rcd"]))
        for route, r in p["routes"].items():
            rows.append(("Table 4", f"RAND+FGSM, {ROUTES[route]}: acc. (%)", key, r["acc"]))
            rows.append(("Table 4", f"RAND+FGSM, {ROUTES[route]}: RCD", key, r["rcd"]))
    for key, r in raw.get("lsa", {}).items():
        for s in lsa_report_steps(settings["lsa_steps"]):
            rows.append(("Table 3", f"LSA step {s} acc. (%)", key, r["acc"][s]))
            rows.append(("Table 3", f"LSA step {s} RCD", key, r["rcd"][s]))
    eps = settings["eps"]
    for key, r in raw["pgd"].items():
        rows.append(("Beyond", f"FGSM untargeted, eps={eps:g} (%)", key, r["fgsm"]))
        rows.append(
            ("Beyond", f"PGD-{settings['pgd_steps']}, eps={eps:g}, 1 start (%)", key, r["pgd_1_restart"])
        )
        rows.append(
            (
                "Beyond",
                f"PGD-{settings['pgd_steps']}, eps={eps:g}, {settings['pgd_restarts']} restarts (%)",
                key,
                r["pgd"],
            )
        )
    for key, r in raw["square"].items():
        rows.append(("Beyond", f"Square ({r['queries']} queries), eps={eps:g} (%)", key, r["acc"]))
    for pair, r in raw["transfer"].items():
        src, dst = pair.split("->")
        rows.append(
            (
                "Beyond",
                f"transfer: PGD examples of the paired {'SHC' if _split(src)[1] else 'plain'} model (%)",
                dst,
                r["acc"],
            )
        )
    for key, r in raw["autoattack"].items():
        n = r["images"]
        rows.append(
            ("Beyond", f"clean accuracy on the first {n} test images (AutoAttack's) (%)", key, r["clean"])
        )
        rows.append(("Beyond", f"AutoAttack standard, eps={eps:g}, first {n} test images (%)", key, r["acc"]))
    for key, r in raw["curve"].items():
        for e, acc in r["acc"].items():
            rows.append(("Accuracy vs eps", f"PGD eps={e} (%)", key, acc))
    return rows


def _stats(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return float("nan"), float("nan")
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else float("nan"))


def aggregate(rows, archs) -> list[dict]:
    """One row per (section, metric, arch): plain and SHC mean +- std over seeds, the
    difference and whether it exceeds the seed-to-seed spread."""
    table: dict = {}
    for section, metric, key, value in rows:
        arch, shc, seed = _split(key)
        table.setdefault((section, metric, arch), {}).setdefault(shc, {})[seed] = value
    out = []
    for (section, metric, arch), by in table.items():
        row = {"section": section, "metric": metric, "arch": arch}
        for shc, name in ((False, "plain"), (True, "shc")):
            vals = by.get(shc, {})
            mean, std = _stats(list(vals.values()))
            row |= {f"{name}_mean": mean, f"{name}_std": std, f"{name}_n": len(vals)}
            row[f"{name}_values"] = [vals[s] for s in sorted(vals)]
        diff = row["shc_mean"] - row["plain_mean"]
        spread = row["plain_std"] + row["shc_std"]
        row["diff"] = diff
        row["spread"] = spread
        if math.isnan(diff):
            row["exceeds_spread"] = None
        elif math.isnan(spread):
            row["exceeds_spread"] = None  # one seed: no spread to compare with
        else:
            row["exceeds_spread"] = abs(diff) > spread
        out.append(row)
    return out


def masking_checks(raw: dict, settings: dict) -> list[dict]:
    """Per model and seed: iterative >= single step, white box >= black box, large eps -> ~0%."""
    out = []
    big = max(settings["curve_eps"])
    for key, r in raw["pgd"].items():
        arch, shc, seed = _split(key)
        checks = {"PGD <= FGSM (iterative at least as strong as one step)": r["pgd"] <= r["fgsm"]}
        if key in raw["square"]:
            checks["PGD <= Square (white box at least as strong as black box)"] = (
                r["pgd"] <= raw["square"][key]["acc"]
            )
        for pair, t in raw["transfer"].items():
            if pair.endswith("->" + key):
                checks["PGD <= transfer (white box at least as strong as transfer)"] = r["pgd"] <= t["acc"]
        if key in raw["curve"]:
            acc = raw["curve"][key]["acc"][f"{big:g}"]
            checks[f"PGD at eps={big:g} <= {ZERO_AT_LARGE_EPS:g}% (a large eps drives accuracy to ~0)"] = (
                acc <= ZERO_AT_LARGE_EPS
            )
        out.append({"model": key, "label": _label(arch, shc), "seed": seed, "checks": checks})
    return out


def _fmt(mean, std) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def _signed(v) -> str:
    return "-" if math.isnan(v) else f"{v:+.2f}"


def _verdict_word(row) -> str:
    if row["exceeds_spread"] is None:
        return "n/a (1 seed)" if not math.isnan(row["diff"]) else "-"
    return "**yes**" if row["exceeds_spread"] else "no"


def markdown(aggr, checks, run_info, raw) -> str:
    s = run_info["settings"]
    seeds = s["seeds"]
    lines = [
        "# Does SHC make a network more robust? Fashion-MNIST study",
        "",
        f"Command: `{run_info['command']}` (every result read from or added to the cache of `shc study`)  ",
        f"Data: {run_info['data']}; machine: {run_info['machine']}, {run_info['threads']} torch threads  ",
        f"Versions: {', '.join(f'{k} {v}' for k, v in run_info['versions'].items())}  ",
        f"Compute time (s, summed over every run of the cache): {run_info['seconds_cached']}  ",
        f"Wall time of the last invocation: {run_info['wall_s_this_run']:.0f} s" + _computed_words(run_info),
        "",
        f"Models: {', '.join(s['archs'])} at width {s['width']} (channels {_widths(s['width'])}), 3x3 stem "
        f"without max-pool, each plain and SHC, seeds {seeds}; trained {s['epochs']} epochs x "
        f"{s['steps_per_epoch']} steps x batch {s['batch_size']} ({_epoch_words(s)}), SGD lr {s['lr']} "
        f"(/10 at epochs {s['milestones']}). {_clean_words(aggr, s, run_info['data'])} Test images: "
        f"{raw['meta']['selected_images']} of the {_test_count(s)} test images that every model classifies "
        "correctly with confidence > 0.9 (the same images for every model); Table 1 uses the first "
        f"{s['gaussian_images']} test images.",
        "",
        f"Every number is mean ± std over the {len(seeds)} seeds (sample std). **SHC − plain exceeds "
        "the spread** when |mean(SHC) − mean(plain)| > std(plain) + std(SHC). Attack settings: the "
        f"paper's (FGSM eps 0.02, FGSM-Heavy 0.1, I-FGSM eps 0.02 alpha 0.001 x 5, RAND+FGSM eps = alpha "
        f"= 0.03125, targeted to the least likely class; LSA {s['lsa_pixels']} pixels x {s['lsa_steps']} "
        f"steps, {s['lsa_candidates']} candidates per step) on {s['images']} images ({s['lsa_images']} for "
        f"LSA); beyond the paper, untargeted L-inf at eps {s['eps']}: torchattacks' PGD "
        f"({s['pgd_steps']} steps, step 2.5·eps/steps, random start, {s['pgd_restarts']} restarts, each "
        f"on the images still correct) and FGSM on {s['images']} images, Square ({s['square_queries']} "
        f"queries) on {s['square_images']}, the PGD curve on {s['curve_images']}; AutoAttack (torchattacks' "
        f"'standard' suite: APGD-CE and APGD-T at torchattacks' default 10 steps, FAB-T, Square with 5000 "
        f"queries) on the first {s['aa_images']} test images (robust accuracy: a "
        f"clean error counts as a failure) {_aa_seed_words(s)}.",
    ]
    if 28 * 28 < s["lsa_pixels"] * s["lsa_steps"]:
        lines += [
            "",
            f"Note: {s['lsa_pixels']} pixels x {s['lsa_steps']} steps = {s['lsa_pixels'] * s['lsa_steps']} "
            f"pixels is more than the 784 of a 28x28 image: from step {784 // s['lsa_pixels'] + 1} on, "
            "every pixel has been flipped and LSA changes nothing more.",
        ]
    order = ["Clean", "Table 1", "Table 2", "Table 3", "Table 4", "Beyond", "Accuracy vs eps"]
    sections = [name for name in order if any(row["section"] == name for row in aggr)]
    for section in sections:
        lines += ["", f"## {TITLES[section]}", ""]
        lines.append("| metric | arch | plain | SHC | SHC − plain | exceeds spread? |")
        lines.append("|---|---|---:|---:|---:|---|")
        for row in aggr:
            if row["section"] != section:
                continue
            lines.append(
                f"| {row['metric']} | {row['arch']} | {_fmt(row['plain_mean'], row['plain_std'])} | "
                f"{_fmt(row['shc_mean'], row['shc_std'])} | "
                f"{_signed(row['diff'])} | {_verdict_word(row)} |"
            )
    lines += ["", "## Gradient-masking checks", ""]
    names = []
    for c in checks:
        names += [n for n in c["checks"] if n not in names]
    lines.append("| model | " + " | ".join(names) + " |")
    lines.append("|---|" + "---|" * len(names))
    by_label: dict = {}
    for c in checks:
        by_label.setdefault(c["label"], []).append(c["checks"])
    for label, runs in by_label.items():
        cells = []
        for n in names:
            got = [r[n] for r in runs if n in r]
            cells.append(f"{sum(got)}/{len(got)} seeds pass" if got else "-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "![accuracy vs eps](acc_vs_eps.png)",
        "",
        "![LSA](lsa_curve.png)",
        "",
        "![routes](routes.png)",
        "",
    ]
    return "\n".join(lines)


def _computed_words(run_info) -> str:
    by = run_info.get("computed_by")
    if not by:
        return ""
    return (
        f"; the results were computed by `{by['command']}` in {by['wall_s'] / 60:.0f} min of wall time "
        f"({by['threads']} torch thread(s))"
    )


TRAIN_IMAGES = 60_000  # Fashion-MNIST's training set
# What small CNNs reach on Fashion-MNIST's test set: simple 2-3-conv networks are commonly
# reported at 90-93% (and "stuck around 92%"); the study's models are compared with that.
TYPICAL_CLEAN = "about 90-93%"


def _epoch_words(s) -> str:
    if s["steps_per_epoch"] * s["batch_size"] >= TRAIN_IMAGES:
        return "every training image once per epoch"
    return f"{s['steps_per_epoch'] * s['batch_size']:,} random training images each epoch"


def _clean_words(aggr, s, data) -> str:
    """The models' clean test accuracy against what small CNNs typically reach."""
    rows = [r for r in aggr if r["section"] == "Clean"]
    vals = [r[f"{w}_mean"] for r in rows for w in ("plain", "shc") if not math.isnan(r[f"{w}_mean"])]
    if not vals:
        return ""
    if data == "digits":
        return f"Clean accuracy, mean over seeds per model: {min(vals):.1f}-{max(vals):.1f}%."
    return (
        f"Clean accuracy on the {_test_count(s)} test images, mean over seeds per model: "
        f"{min(vals):.1f}-{max(vals):.1f}% (small CNNs "
        f"typically reach {TYPICAL_CLEAN} on Fashion-MNIST)."
    )


def _aa_seed_words(s) -> str:
    if s["aa_seeds"] >= len(s["seeds"]):
        return "for every seed"
    return f"for the first {s['aa_seeds']} seed(s) only (its cost)"


def _test_count(settings) -> str:
    n = settings.get("test_images")
    return "10,000" if n is None else f"first {n:,} (of 10,000)"


def _widths(width) -> str:
    from .models import scaled_widths

    return "-".join(str(c) for c in scaled_widths(width))


def _plots(aggr, out_dir, archs) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []

    def series(section, prefix, suffix, arch, which):
        xs, ms, ss = [], [], []
        for row in aggr:
            if row["section"] == section and row["arch"] == arch and row["metric"].startswith(prefix):
                if not row["metric"].endswith(suffix):
                    continue
                num = row["metric"][len(prefix) :].split(" ")[0]
                xs.append(float(num))
                ms.append(row[f"{which}_mean"])
                ss.append(0.0 if math.isnan(row[f"{which}_std"]) else row[f"{which}_std"])
        order = sorted(range(len(xs)), key=xs.__getitem__)
        return [xs[i] for i in order], [ms[i] for i in order], [ss[i] for i in order]

    fig, ax = plt.subplots(figsize=(6, 4))
    for arch in archs:
        for which, style in (("plain", "-o"), ("shc", "--s")):
            x, m, s = series("Accuracy vs eps", "PGD eps=", "(%)", arch, which)
            if x:
                ax.errorbar(x, m, yerr=s, fmt=style, capsize=3, label=_label(arch, which == "shc"))
    ax.set_xlabel("L-inf eps (pixels in [0, 1])")
    ax.set_ylabel("accuracy under PGD (%)")
    ax.set_title("Accuracy vs eps (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "acc_vs_eps.png"))
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for arch in archs:
        for which, style in (("plain", "-o"), ("shc", "--s")):
            for ax, suffix in zip(axes, ("acc. (%)", "RCD"), strict=True):
                x, m, s = series("Table 3", "LSA step ", suffix, arch, which)
                if x:
                    ax.errorbar(x, m, yerr=s, fmt=style, capsize=3, label=_label(arch, which == "shc"))
    axes[0].set_ylabel("accuracy (%)")
    axes[1].set_ylabel("mean RCD")
    for ax in axes:
        ax.set_xlabel("LSA step")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("LocSearchAdv (Table 3), mean ± std over seeds")
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "lsa_curve.png"))
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    bars, labels = [], []
    for arch in archs:
        for row in aggr:
            if row["section"] == "Table 4" and row["arch"] == arch and row["metric"].endswith("acc. (%)"):
                if "both" in row["metric"] and not math.isnan(row["plain_mean"]):
                    bars.append((row["plain_mean"], row["plain_std"]))
                    labels.append(_label(arch, False))
                if not math.isnan(row["shc_mean"]):
                    bars.append((row["shc_mean"], row["shc_std"]))
                    suffix = {"both": "", "hyper": "-T", "conv": "-W"}
                    route = next(r for r in ROUTES if ROUTES[r] in row["metric"])
                    labels.append(_label(arch, True) + suffix[route])
    if bars:
        ax.bar(
            range(len(bars)),
            [b[0] for b in bars],
            yerr=[0 if math.isnan(b[1]) else b[1] for b in bars],
            capsize=3,
        )
        ax.set_xticks(range(len(bars)), labels, rotation=20, fontsize=8)
    ax.set_ylabel("accuracy after RAND+FGSM (%)")
    ax.set_title("Table 4: RAND+FGSM through one gradient route (mean ± std)")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "routes.png"))
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths


def write(raw: dict, run_info: dict, out_dir: str) -> list[str]:
    """report.md, summary.csv, results.json and the three plots in ``out_dir``; their paths."""
    os.makedirs(out_dir, exist_ok=True)
    settings = run_info["settings"]
    rows = metric_rows(raw, settings)
    aggr = aggregate(rows, settings["archs"])
    checks = masking_checks(raw, settings)
    md = os.path.join(out_dir, "report.md")
    with open(md, "w") as f:
        f.write(markdown(aggr, checks, run_info, raw))
    csv_path = os.path.join(out_dir, "summary.csv")
    fields = [
        "section",
        "metric",
        "arch",
        "plain_mean",
        "plain_std",
        "plain_n",
        "shc_mean",
        "shc_std",
        "shc_n",
    ]
    fields += ["diff", "spread", "exceeds_spread", "plain_values", "shc_values"]
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for row in aggr:
            w.writerow({k: (json.dumps(v) if isinstance(v, list) else v) for k, v in row.items()})
    js = os.path.join(out_dir, "results.json")
    with open(js, "w") as f:
        json.dump({"run": run_info, "per_model": raw, "summary": aggr, "masking_checks": checks}, f, indent=1)
    return [md, csv_path, js, *_plots(aggr, out_dir, settings["archs"])]
