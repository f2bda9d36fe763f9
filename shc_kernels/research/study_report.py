"""The report of ``shc study``, written from the unit files alone (OUT/units/**.json): what a
later session or a reader can rebuild without any checkpoint.

Statistics: every SHC - plain comparison is paired per image (the same test images for both)
and pooled over the seeds that have both models: McNemar's exact test on the discordant
(image, seed) pairs, a bootstrap 95% interval of the accuracy difference (images resampled, the
same draw for every seed), and Holm's correction over all the comparisons of the report's
family (the table says how many). Those treat the trained models as given: they say whether
these models differ on these images. Whether training SHC instead of plain would give the
difference again, with other seeds, is what the second interval says: seeds and images both
resampled (a two-level bootstrap), so a difference that one seed's pair carries and another's
does not gets an interval that spans 0. A difference is called one only if its Holm-adjusted p
is below 0.05 AND that seeds-and-images interval excludes 0 (which needs two seeds at least);
Holm alone gives "these models only".
"""

from __future__ import annotations

import json
import math
import os

import torch

from .study_units import unbits

__all__ = ["bootstrap_diff", "bootstrap_diff_seeds", "holm", "load_units", "mcnemar", "verdict", "write"]

ALPHA = 0.05
BOOT = 2000
FMNIST_BENCHMARK = (
    "Fashion-MNIST benchmarks (Xiao et al. 2017 and its leaderboard): linear/MLP 84-88%, small CNNs "
    "91-93%, ResNet-18 and wider CNNs 93-95%"
)
DIFFERENCES = [
    "Data: Fashion-MNIST (28 x 28 grey, 10 classes), not ImageNet (256 px, 1,000 classes).",
    "Network: Plain-10 only (no ResNet-18/50), with a 3x3 stride-1 stem and no max-pool for 28 px, at "
    "1/8 width (8-16-32-64 channels, not 64-512).",
    "Training: 8 epochs of SGD (lr 0.1, /10 at epochs 5 and 7, weight decay 5e-4, batch 128), not the "
    "paper's ImageNet schedule; the positive control adds FGSM-RS adversarial training at eps 0.1.",
    "Images: the first 1,000 test images for every attack (the paper: 5,000 ImageNet validation images "
    "classified correctly with confidence > 0.9); AutoAttack uses the first 500; "
    "LocSearchAdv the first 200.",
    "Gradient attacks as printed in the paper (least-likely target) with their effective L-inf budgets: "
    "FGSM 0.02 and 0.1, I-FGSM 5 x 0.001 = 0.005, RAND+FGSM eq. (4) alpha + eps = 0.0625; Gaussian noise "
    "untruncated, sigma 0.1/0.2/0.4.",
    "LocSearchAdv: 1 pixel a step (0.13% of a 28 x 28 image; the paper's 10 pixels of 256^2 are 0.015%), "
    "30 steps, 64 candidates, steps 1-10 and pixels to the first misclassification reported; the paper "
    "runs 150 steps of 10 pixels.",
    "Beyond the paper: untargeted PGD (50 steps, step 2.5 eps/50, random start) over eps 0.005-0.05, "
    "per-image minimal eps (PGD-20, binary search, 8 halvings of [0, 0.1]), AutoAttack standard "
    "(APGD-CE, APGD-T, FAB-T at 100 iterations, Square 5,000 queries), the adaptive attacks on the maps, "
    "masking checks, 5 seeds, and a rerun of seed 0's pair.",
]


# ---------------------------------------------------------------- statistics


def mcnemar(b: int, c: int) -> float:
    """Exact two-sided McNemar p for b and c discordant pairs (binomial(b + c, 1/2))."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    # integer numerator and denominator: Python divides them correctly rounded at any size, where
    # 2.0**n overflows a float past n = 1023 (two seeds' minimal eps pool about 1,500 pairs)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2.0 * tail)


def bootstrap_diff(plain: torch.Tensor, shc: torch.Tensor, n_boot: int = BOOT, seed: int = 0):
    """95% percentile interval of mean(shc) - mean(plain) in points, (seeds, images) bool arrays,
    images resampled (the same draw for every seed)."""
    s, n = plain.shape
    d = (shc.float() - plain.float()).mean(0)  # per image, over seeds
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n, (n_boot, n), generator=gen)
    boots = d[idx].mean(1) * 100
    lo, hi = torch.quantile(boots, torch.tensor([0.025, 0.975])).tolist()
    return lo, hi


def bootstrap_diff_seeds(plain: torch.Tensor, shc: torch.Tensor, n_boot: int = BOOT, seed: int = 0):
    """95% percentile interval of mean(shc) - mean(plain), in the arrays' units, for (seeds,
    images) arrays, with the seeds resampled as well as the images (a two-level bootstrap: each
    draw takes seeds with replacement, then images with replacement, the same images for every
    seed drawn). With one seed there is nothing to resample across training runs: returns None."""
    s, n = plain.shape
    if s < 2:
        return None
    d = shc.double() - plain.double()  # (seeds, images)
    gen = torch.Generator().manual_seed(seed)
    boots = torch.empty(n_boot, dtype=torch.float64)
    chunk = max(1, 4_000_000 // (s * n))  # bounded memory at 5 seeds x 1,000 images
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        si = torch.randint(0, s, (b, s), generator=gen)
        ii = torch.randint(0, n, (b, n), generator=gen)
        boots[start : start + b] = d[si[:, :, None], ii[:, None, :]].mean(dim=(1, 2))
    lo, hi = torch.quantile(boots, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return lo, hi


def verdict(holm_p: float, ci_seeds) -> str:
    """'yes' only where the Holm-adjusted p is below ALPHA and the seeds-and-images interval
    excludes 0; 'these models only' where Holm alone holds; else 'no'."""
    if holm_p >= ALPHA:
        return "no"
    if ci_seeds is not None and (ci_seeds[0] > 0 or ci_seeds[1] < 0):
        return "yes"
    return "these models only"


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given)."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adj, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adj[i] = running
    return adj


# ---------------------------------------------------------------- units


def load_units(out: str) -> dict:
    """{(stage, model, params tuple): record} of every unit file under out/units."""
    found = {}
    root = os.path.join(out, "units")
    for d, _, names in os.walk(root):
        for name in names:
            if name.endswith(".json"):
                with open(os.path.join(d, name)) as f:
                    rec = json.load(f)
                u = rec["unit"]
                found[(u["stage"], u["model"], tuple(sorted(u["params"].items())))] = rec
    return found


def _fmt(v, digits=1) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _p(p) -> str:
    return "—" if p is None else ("<0.001" if p < 0.001 else f"{p:.3f}")


class _Report:
    def __init__(self, study, units):
        self.study, self.units, self.cfg = study, units, study.cfg
        self.done = {u: study.status(u) == "done" for u in units}
        self.rec = {u: study.read(u) for u in units if self.done[u]}
        self.comparisons: list[dict] = []  # the Holm family

    def result(self, unit):
        r = self.rec.get(unit)
        return None if r is None else r["result"]

    def seeds_with(self, kind, stage, params, key=None):
        """Seeds where both models of the pair have the unit (and the entry ``key``)."""
        from .study import Unit, model_key

        seeds = (
            self.cfg["seeds"]
            if kind == "std"
            else self.cfg["adv_seeds"]
            if kind == "adv"
            else self.cfg["rerun_seeds"]
        )
        out = []
        for s in seeds:
            pair = [self.result(Unit(stage, model_key(kind, shc, s), params)) for shc in (False, True)]
            if all(p is not None and (key is None or key in p) for p in pair):
                out.append((s, pair))
        return out

    def paired(self, label, kind, stage, params, key=None, n=None):
        """A comparison row of per-image bits: plain and SHC accuracy (pooled over seeds), the
        difference with its bootstrap interval, McNemar's p (Holm-adjusted later)."""
        rows = self.seeds_with(kind, stage, params, key)
        if not rows:
            return None
        get = (lambda r: r[key]["bits"]) if key else (lambda r: r["bits"])
        plain = torch.stack([unbits(get(p))[:n] for _, (p, _) in rows])
        shc = torch.stack([unbits(get(q))[:n] for _, (_, q) in rows])
        b = int((plain & ~shc).sum())
        c = int((~plain & shc).sum())
        lo, hi = bootstrap_diff(plain, shc)
        ci_seeds = bootstrap_diff_seeds(plain.float() * 100, shc.float() * 100)
        row = {
            "label": label,
            "seeds": len(rows),
            "images": plain.shape[1],
            "plain": 100 * float(plain.float().mean()),
            "shc": 100 * float(shc.float().mean()),
            "plain_by_seed": [100 * float(v) for v in plain.float().mean(1)],
            "shc_by_seed": [100 * float(v) for v in shc.float().mean(1)],
            "b": b,
            "c": c,
            "p": mcnemar(b, c),
            "ci": (lo, hi),
            "ci_seeds": ci_seeds,
        }
        row["diff"] = row["shc"] - row["plain"]
        row["diff_by_seed"] = [q - p for p, q in zip(row["plain_by_seed"], row["shc_by_seed"], strict=True)]
        self.comparisons.append(row)
        return row


def _table(rows, title_cols=("comparison",)) -> list[str]:
    out = [
        f"| {' | '.join(title_cols)} | seeds x images | plain % | SHC % | SHC - plain (95% CI) | "
        "per seed | seeds and images resampled (95% CI) | plain-only / SHC-only correct | McNemar p | "
        "Holm p | difference? |",
        "|" + "---|" * (len(title_cols) + 10),
    ]
    for r in rows:
        if r is None:
            continue
        out.append(
            f"| {r['label']} | {r['seeds']} x {r['images']} | {_fmt(r['plain'])} | {_fmt(r['shc'])} | "
            f"{r['diff']:+.1f} ({r['ci'][0]:+.1f}, {r['ci'][1]:+.1f}) | {_by_seed(r.get('diff_by_seed'))} | "
            f"{_ci(r.get('ci_seeds'))} | {r['b']} / {r['c']} | {_p(r['p'])} | "
            f"{_p(r['holm'])} | {verdict(r['holm'], r.get('ci_seeds'))} |"
        )
    return out


def _by_seed(diffs, digits=1) -> str:
    return "—" if not diffs else ", ".join(f"{d:+.{digits}f}" for d in diffs)


def _ci(ci, digits=1) -> str:
    return "— (one seed)" if ci is None else f"({ci[0]:+.{digits}f}, {ci[1]:+.{digits}f})"


def write(study, units) -> str:
    """Write OUT/report.md and OUT/summary.json from the units; returns the report's path."""
    from .study import Unit, model_key

    rep = _Report(study, units)
    cfg = study.cfg
    done = sum(rep.done.values())
    lines = [
        "# Does SHC make Plain-10 more robust? (Fashion-MNIST)",
        "",
        f"Written by `shc study` from the {done} of {len(units)} units in `units/` that are done "
        "(each unit: per-image results, the model's weights hash, settings, code hash, commit, CPU, date). "
        + ("**The study is not finished: every table below holds what exists; rerun `make study` "
           "(or `shc study`) to resume.**" if done < len(units) else "The study is complete."),
        "",
    ]  # fmt: skip
    # ---------------- models
    lines += ["## Models", "", f"{FMNIST_BENCHMARK}.", ""]
    lines += ["| model | seeds trained | test accuracy (10,000 images), mean ± sd | weights reproduced? |",
              "|---|---|---|---|"]  # fmt: skip
    for kind, seeds in (("std", cfg["seeds"]), ("adv", cfg["adv_seeds"])):
        for shc in (False, True):
            accs = []
            for s in seeds:
                r = rep.result(Unit("train", model_key(kind, shc, s)))
                if r is not None:
                    accs.append(r["test_acc"])
            same = []
            if kind == "std":
                for s in cfg["rerun_seeds"]:
                    a = rep.result(Unit("train", model_key("std", shc, s)))
                    b = rep.result(Unit("train", model_key("rerun", shc, s)))
                    if a and b:
                        same.append(
                            f"seed {s}: {'identical' if a['weights'] == b['weights'] else 'DIFFERENT'}"
                        )
            m = sum(accs) / len(accs) if accs else float("nan")
            sd = (sum((a - m) ** 2 for a in accs) / (len(accs) - 1)) ** 0.5 if len(accs) > 1 else float("nan")
            name = ("Plain-10" + ("-SHC" if shc else "")) + (", FGSM-RS eps 0.1" if kind == "adv" else "")
            lines.append(f"| {name} | {len(accs)} of {len(seeds)} | {_fmt(m, 2)} ± {_fmt(sd, 2)} | "
                         f"{'; '.join(same) or '—'} |")  # fmt: skip
    lines.append("")

    lines += _per_model_lines(rep, Unit, model_key)

    sections = []
    # ---------------- accuracy vs eps (standard models)
    rows = [rep.paired("clean", "std", "clean", ())]
    rows += [
        rep.paired(f"PGD-{cfg['pgd_steps']} eps={e:g}", "std", "pgd", (("eps", e),)) for e in cfg["eps_grid"]
    ]
    sections.append(("Accuracy under PGD, eps 0.005-0.05 (standard training)", rows, None))
    # ---------------- positive control
    rows = [rep.paired("clean", "adv", "clean", ())]
    rows += [
        rep.paired(f"PGD-{cfg['pgd_steps']} eps={e:g}", "adv", "pgd", (("eps", e),))
        for e in cfg["adv_eps_grid"]
    ]
    aa = (("eps", cfg["adv_eps"]), ("images", cfg["aa_images"]))
    for comp in ("apgd-ce", "apgd-t", "fab-t", "square"):
        rows.append(
            rep.paired(f"AutoAttack eps={cfg['adv_eps']:g} after {comp}", "adv", "autoattack", aa, comp)
        )
    sections.append((
        "Positive control: FGSM-RS adversarial training at eps 0.1 (Wong et al. 2020)", rows,
        "Published adversarially trained CNNs on Fashion-MNIST reach 60-80% at eps 0.1; the pipeline sees "
        "robustness where it exists if these rows are far above 0.",
    ))  # fmt: skip
    # ---------------- AutoAttack on standard models
    aa = (("eps", cfg["aa_eps"]), ("images", cfg["aa_images"]))
    rows = [rep.paired(f"AutoAttack eps={cfg['aa_eps']:g} after {comp}", "std", "autoattack", aa, comp)
            for comp in ("clean", "apgd-ce", "apgd-t", "fab-t", "square")]  # fmt: skip
    sections.append(("AutoAttack standard (standard training)", rows, None))
    # ---------------- adaptive
    rows = []
    for kind, eps_list in (("std", cfg["adaptive_eps"]), ("adv", (cfg["adv_eps"],))):
        for e in eps_list:
            rows.append(rep.paired(f"{kind} eps={e:g}: PGD keeping channel mean and std", kind, "adaptive",
                                   (("eps", e),), "PGD keeping channel mean and std"))  # fmt: skip
    sections.append((
        "Adaptive attacks on the mechanism", rows,
        "The SHC-only attacks (maps frozen at the clean input, conv route only) have no plain counterpart: "
        "they are in the next table against the SHC model's own PGD at the same eps.",
    ))  # fmt: skip
    # ---------------- paper protocol
    rows = []
    p0 = rep.result(Unit("paper", model_key("std", False, cfg["seeds"][0])))
    for name in p0 or {}:
        rows.append(rep.paired(name, "std", "paper", (), name))
    sections.append(("The paper's attacks with their effective budgets (standard training)", rows, None))
    # ---------------- LSA
    rows = []
    for step in range(1, min(10, cfg["lsa_steps"]) + 1):
        r = rep.seeds_with("std", "lsa", ())
        if r:
            plain = torch.stack([unbits(p["per_step"][step]) for _, (p, _) in r])
            shc = torch.stack([unbits(q["per_step"][step]) for _, (_, q) in r])
            row = _bits_row(rep, f"LocSearchAdv, {step} pixel{'s' if step > 1 else ''}", plain, shc)
            rows.append(row)
    sections.append(("LocSearchAdv, 1 pixel a step (Table 3 at 28 px)", rows, None))

    minimal = _minimal_eps_rows(rep)  # in the Holm family too
    adj = holm([r["p"] for r in rep.comparisons])
    for r, a in zip(rep.comparisons, adj, strict=True):
        r["holm"] = a
    lines += [
        "## Paired comparisons (SHC - plain)",
        "",
        f"Every row pools the seeds that have both models (the same {cfg['images']} test images; accuracy "
        f"counts a clean error as a failure). McNemar's exact test on the (image, seed) pairs where exactly "
        f"one model is right; 95% bootstrap interval ({BOOT} resamples of the images); Holm's correction "
        "over "
        f"all {len(rep.comparisons)} comparisons of this report. Those say whether these trained models "
        "differ on these images. 'per seed' is each seed's SHC - plain; the seeds-and-images interval "
        f"({BOOT} draws of seeds, then images, with replacement) says whether training SHC instead of plain "
        "gives the difference again with other seeds. 'difference?': yes only if Holm p < "
        f"{ALPHA} and that interval excludes 0; 'these models only' if Holm p < {ALPHA} but the interval "
        "spans 0 (or one seed). With two seeds that interval asks little more than that both seeds point "
        "the same way (a bootstrap over 2 draws understates the spread between training runs); it means "
        "more with the 5 seeds of the standard models.",
        "",
    ]
    for title, rows, note in sections:
        lines += [f"### {title}", ""]
        if note:
            lines += [note, ""]
        rows = [r for r in rows if r is not None]
        lines += _table(rows) if rows else ["(no units done yet)"]
        lines.append("")

    lines += _minimal_eps_lines(rep, minimal)
    lines += _masking_section(rep, Unit, model_key)
    lines += _shc_only_section(rep, Unit, model_key)
    lines += _lsa_first_section(rep, Unit, model_key)
    lines += _mechanism_section(rep, Unit, model_key)
    lines += _rerun_section(rep, Unit, model_key)
    lines += ["## Every difference from the paper", ""] + [f"- {d}" for d in DIFFERENCES] + [""]
    lines += _provenance_section(rep)

    os.makedirs(study.out, exist_ok=True)
    path = os.path.join(study.out, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    summary = {
        "units_done": done,
        "units": len(units),
        "comparisons": [{k: v for k, v in r.items()} for r in rep.comparisons],
    }
    with open(os.path.join(study.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return path


def _per_model_lines(rep, Unit, model_key) -> list[str]:
    """Every model's own numbers (whatever exists, also where its pair is not done yet)."""
    cfg = rep.cfg
    lines = ["## Per model (the first images; accuracy %, a clean error counts as a failure)", ""]
    for kind, seeds, grid, emax in (
        ("std", cfg["seeds"], cfg["eps_grid"], cfg["min_eps_max"]),
        ("adv", cfg["adv_seeds"], cfg["adv_eps_grid"], cfg["adv_min_eps_max"]),
        ("rerun", cfg["rerun_seeds"], cfg["eps_grid"], cfg["min_eps_max"]),
    ):
        head = ["model", "test set (10,000)", "clean"] + [f"PGD {e:g}" for e in grid] + ["median minimal eps"]
        rows = []
        for s in seeds:
            for shc in (False, True):
                key = model_key(kind, shc, s)
                train = rep.result(Unit("train", key))
                if train is None:
                    continue
                clean = rep.result(Unit("clean", key))
                cells = [key, f"{train['test_acc']:.2f}", _fmt(clean["acc"]) if clean else "—"]
                for e in grid:
                    r = rep.result(Unit("pgd", key, (("eps", e),)))
                    cells.append(_fmt(r["acc"]) if r else "—")
                m = rep.result(Unit("minimal_eps", key, (("eps_max", emax),)))
                if m:
                    v = sorted(2 * emax if x is None else x for x in m["eps"])
                    cells.append(f"{v[len(v) // 2]:.4f}")
                else:
                    cells.append("—")
                rows.append("| " + " | ".join(cells) + " |")
        if rows:
            lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *rows, ""]
    if len(lines) == 2:
        lines += ["(no model trained yet)", ""]
    return lines


def _bits_row(rep, label, plain, shc):
    b, c = int((plain & ~shc).sum()), int((~plain & shc).sum())
    lo, hi = bootstrap_diff(plain, shc)
    row = {"label": label, "seeds": plain.shape[0], "images": plain.shape[1],
           "plain": 100 * float(plain.float().mean()), "shc": 100 * float(shc.float().mean()),
           "b": b, "c": c, "p": mcnemar(b, c), "ci": (lo, hi),
           "ci_seeds": bootstrap_diff_seeds(plain.float() * 100, shc.float() * 100),
           "diff_by_seed": (100 * (shc.float().mean(1) - plain.float().mean(1))).tolist()}  # fmt: skip
    row["diff"] = row["shc"] - row["plain"]
    rep.comparisons.append(row)
    return row


def _minimal_eps_rows(rep) -> list[dict]:
    """Per training kind: the per-image minimal eps of SHC against plain (pooled over seeds): a
    sign test (McNemar on the images where one needs more) and a bootstrap interval of the mean."""
    cfg, out = rep.cfg, []
    for kind, emax in (("std", cfg["min_eps_max"]), ("adv", cfg["adv_min_eps_max"])):
        rows = rep.seeds_with(kind, "minimal_eps", (("eps_max", emax),))
        if not rows:
            continue

        def arr(r, emax=emax):
            return torch.tensor([emax * 2 if v is None else v for v in r["eps"]], dtype=torch.float64)

        plain = torch.stack([arr(p) for _, (p, _) in rows])
        shc = torch.stack([arr(q) for _, (_, q) in rows])
        more, less = int((shc > plain).sum()), int((shc < plain).sum())
        d = (shc - plain).mean(0)
        gen = torch.Generator().manual_seed(0)
        boots = d[torch.randint(0, len(d), (BOOT, len(d)), generator=gen)].mean(1)
        lo, hi = torch.quantile(boots, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
        row = {"label": f"minimal eps ({kind})", "kind": kind, "p": mcnemar(more, less), "seeds": len(rows),
               "images": plain.shape[1], "plain": float(plain.median()), "shc": float(shc.median()),
               "diff": float(d.mean()), "ci": (lo, hi), "more": more, "less": less,
               "same": plain.numel() - more - less, "ci_seeds": bootstrap_diff_seeds(plain, shc),
               "diff_by_seed": (shc - plain).mean(1).tolist()}  # fmt: skip
        rep.comparisons.append(row)
        out.append(row)
    return out


def _minimal_eps_lines(rep, rows) -> list[str]:
    cfg = rep.cfg
    lines = ["### Per-image minimal eps (PGD-20 with a binary search; upper bounds)", ""]
    lines += ["| training | seeds x images | plain median | SHC median | (image, seed) pairs where SHC needs "
              "more / less / same | sign test p | Holm p | mean SHC - plain (95% CI) | per seed | "
              "seeds and images resampled (95% CI) | difference? |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(
            f"| {r['kind']} | {r['seeds']} x {r['images']} | {r['plain']:.4f} | {r['shc']:.4f} | "
            f"{r['more']} / "
            f"{r['less']} / {r['same']} | {_p(r['p'])} | {_p(r['holm'])} | {r['diff']:+.4f} "
            f"({r['ci'][0]:+.4f}, {r['ci'][1]:+.4f}) | {_by_seed(r['diff_by_seed'], 4)} | "
            f"{_ci(r['ci_seeds'], 4)} | {verdict(r['holm'], r['ci_seeds'])} |"
        )
    if not rows:
        lines.append("| (no units done yet) ||||||||||||")
    lines += ["", f"Not fooled at eps_max counts as 2 x eps_max; resolution eps_max / 2^{cfg['min_iters']}; "
              "0 is a clean error.", ""]  # fmt: skip
    return lines


def _masking_section(rep, Unit, model_key) -> list[str]:
    cfg = rep.cfg
    lines = ["### Gradient-masking checks at an eps where PGD is not at 0%", ""]
    lines += ["| model | eps | FGSM | PGD-10 | PGD-50 | PGD-many | Square | transfer | PGD eps 0.3 | "
              "checks (PGD-50 <= FGSM, <= Square, <= transfer; many <= 50; eps 0.3 -> 0) |",
              "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for kind, seeds, eps in (
        ("std", cfg["seeds"], cfg["mask_eps"]),
        ("adv", cfg["adv_seeds"], cfg["adv_eps"]),
    ):
        for s in seeds:
            for shc in (False, True):
                r = rep.result(Unit("masking", model_key(kind, shc, s), (("eps", eps),)))
                if r is None:
                    continue
                v = {k: e["acc"] for k, e in r.items()}
                names = list(v)
                fgsm, p10, p50, many, sq, tr, big = (v[n] for n in names)
                ok = [p50 <= fgsm, p50 <= sq, p50 <= tr, many <= p50, big == 0.0]
                lines.append(
                    f"| {model_key(kind, shc, s)} | {eps:g} | {fgsm:.1f} | {p10:.1f} | {p50:.1f} | "
                    f"{many:.1f} | "
                    f"{sq:.1f} | {tr:.1f} | {big:.1f} | {'all pass' if all(ok) else 'FAIL: ' + str(ok)} |"
                )
    if lines[-1].startswith("|---"):
        lines.append("| (no units done yet) |" + "|" * 9)
    lines.append("")
    return lines


def _shc_only_section(rep, Unit, model_key) -> list[str]:
    cfg = rep.cfg
    lines = ["### SHC models: adaptive attacks against their own PGD", ""]
    lines += ["| model | eps | PGD | maps frozen at clean input | conv route only | keeping mean/std | "
              "max mean / std gap |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for kind, seeds, eps_list, pgd_grid in (
        ("std", cfg["seeds"], cfg["adaptive_eps"], cfg["eps_grid"]),
        ("adv", cfg["adv_seeds"], (cfg["adv_eps"],), cfg["adv_eps_grid"]),
    ):
        for s in seeds:
            key = model_key(kind, True, s)
            for e in eps_list:
                r = rep.result(Unit("adaptive", key, (("eps", e),)))
                if r is None:
                    continue
                pg = rep.result(Unit("pgd", key, (("eps", e),))) if e in pgd_grid else None
                ms = r["PGD keeping channel mean and std"]
                lines.append(
                    f"| {key} | {e:g} | {_fmt(pg['acc'] if pg else None)} | "
                    f"{r['PGD, maps frozen at the clean input']['acc']:.1f} | "
                    f"{r['PGD, conv route only']['acc']:.1f} | "
                    f"{ms['acc']:.1f} | {ms['max_mean_gap']:.1e} / {ms['max_std_gap']:.1e} |"
                )
    if lines[-1].startswith("|---"):
        lines.append("| (no units done yet) |" + "|" * 6)
    lines.append("")
    lines += ["Table 4's routes (RAND+FGSM eq. (4), SHC models only; the plain model's RAND+FGSM is in the "
              "paired table):", "",
              "| model | both routes | conv route (SHC-W) | hypernetwork route (SHC-T) |",
              "|---|---|---|---|"]  # fmt: skip
    n = 0
    for kind, seeds in (("std", cfg["seeds"]),):
        for s in seeds:
            r = rep.result(Unit("paper", model_key(kind, True, s)))
            if r is None:
                continue
            n += 1
            both = r["RAND+FGSM eq. (4) (L-inf 0.0625)"]["acc"]
            conv, hyper = r["RAND+FGSM route=conv"]["acc"], r["RAND+FGSM route=hyper"]["acc"]
            lines.append(f"| {model_key(kind, True, s)} | {both:.1f} | {conv:.1f} | {hyper:.1f} |")
    if not n:
        lines.append("| (no units done yet) ||||")
    lines.append("")
    return lines


def _lsa_first_section(rep, Unit, model_key) -> list[str]:
    rows = rep.seeds_with("std", "lsa", ())
    lines = ["### LocSearchAdv: pixels to the first misclassification", ""]
    if not rows:
        return lines + ["(no units done yet)", ""]
    cap = rep.cfg["lsa_steps"]

    def med(vals):
        v = sorted(cap + 1 if x is None else x for x in vals)
        return v[len(v) // 2]

    lines += [
        "| seed | images | plain median | SHC median | never within the steps: plain / SHC |",
        "|---|---|---|---|---|",
    ]
    for s, (p, q) in rows:
        a, b = p["first_wrong_pixels"], q["first_wrong_pixels"]
        lines.append(f"| {s} | {len(a)} | {med(a)} | {med(b)} | {a.count(None)} / {b.count(None)} |")
    lines += [
        "",
        f"Median over images; never fooled within {cap} pixels counts as {cap + 1}; 0: a clean error.",
        "",
    ]
    return lines


def _mechanism_section(rep, Unit, model_key) -> list[str]:
    cfg = rep.cfg
    lines = ["### Mechanism: do the maps m vary with the input?", ""]
    lines += ["| model | layers | mean m | std of m across images (mean over layers) | largest layer std | "
              "clean % | clean % with every map at its mean | same prediction % |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for kind, seeds in (("std", cfg["seeds"]), ("adv", cfg["adv_seeds"])):
        for s in seeds:
            for shc in (False, True):
                r = rep.result(Unit("mechanism", model_key(kind, shc, s)))
                if r is None:
                    continue
                lay = r["layers"].values()
                stds = [v["std_across_images"] for v in lay]
                means = [v["mean"] for v in lay]
                name = model_key(kind, shc, s) + (" (converted)" if r["converted_plain"] else "")
                lines.append(
                    f"| {name} | {len(stds)} | {sum(means) / len(means):.3f} | {sum(stds) / len(stds):.4f} | "
                    f"{max(stds):.4f} | {r['clean']['acc']:.1f} | {r['maps_at_their_mean']['acc']:.1f} | "
                    f"{r['same_prediction_pct']:.1f} |"
                )
    lines += ["", "A plain model converted with `convert` has every map at exactly 0.5 (the zero line).", ""]
    return lines


def _rerun_section(rep, Unit, model_key) -> list[str]:
    cfg = rep.cfg
    lines = ["### Rerun: seed " + ", ".join(map(str, cfg["rerun_seeds"])) + " trained and attacked again", ""]
    lines += [
        "| model | unit | images that differ between the runs | accuracy run 1 / run 2 |",
        "|---|---|---|---|",
    ]
    any_row = False
    for s in cfg["rerun_seeds"]:
        for shc in (False, True):
            for stage, params in [("clean", ())] + [("pgd", (("eps", e),)) for e in cfg["eps_grid"]]:
                a = rep.result(Unit(stage, model_key("std", shc, s), params))
                b = rep.result(Unit(stage, model_key("rerun", shc, s), params))
                if a and b:
                    any_row = True
                    diff = int((unbits(a["bits"]) != unbits(b["bits"])).sum())
                    label = stage + (f" eps={params[0][1]:g}" if params else "")
                    lines.append(
                        f"| {model_key('std', shc, s)} | {label} | {diff} | {a['acc']:.1f} / {b['acc']:.1f} |"
                    )
    if not any_row:
        lines.append("| (the rerun is the study's last units: not done yet) ||||")
    lines.append("")
    return lines


def _provenance_section(rep) -> list[str]:
    seen: dict[tuple, int] = {}
    for rec in rep.rec.values():
        p = rec["provenance"]
        k = (p["commit"] and p["commit"][:10], p["uncommitted_changes"], p["cpu"], ",".join(p["isa"]),
             p["backend"], p["torch"], p["threads"], rec["key"]["code"], rec["library"])  # fmt: skip
        seen[k] = seen.get(k, 0) + 1
    dates = sorted(rec["provenance"]["date"] for rec in rep.rec.values())
    lines = ["## Provenance", ""]
    if dates:
        lines.append(f"Units computed {dates[0]} to {dates[-1]}.")
        lines.append("")
    lines += ["| units | commit | uncommitted changes | CPU | ISA | backend | torch | threads | code hash | "
              "library hash |",
              "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for k, n in sorted(seen.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {n} | " + " | ".join(str(v) for v in k) + " |")
    lines.append("")
    return lines
