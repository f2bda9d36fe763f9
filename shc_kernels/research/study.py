"""shc study: does SHC make a network more robust? One resumable command that trains Plain-10
and ResNet-18 (narrow, plain and SHC, several seeds) on Fashion-MNIST and attacks every model on
the same selected test images.

    shc study                      # the committed study: results/fashion_mnist/
    shc study --tiny --data digits --work /tmp/w --out /tmp/r      # a smoke run in seconds

Attacks: the paper's protocol (Tables 1-4 with its eps, alpha and steps, LocSearchAdv with 10
pixels x 150 steps; only the image counts are scaled), then what a defense must face beyond the
paper: L-inf PGD with random starts and restarts, an accuracy-vs-eps curve, Square (gradient
free), transfer between the plain and the SHC model of each seed, and AutoAttack's standard suite;
the gradient-masking checks read from these. Every (model, seed) training and every attack
result is cached under --work, so a rerun skips finished work; the report (--out) is written
from the cache and gives every number as mean +- std over seeds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field

import torch
from torch.utils.data import Subset

from . import args as ca
from . import checkpoint, protocol, train
from . import data as data_mod

__all__ = ["DEFAULT", "TINY", "Study", "build_parser", "main", "model_key"]

# The committed study (46 minutes with one torch thread on a 2-core CPU): 3 full epochs of the
# 60,000 training images (lr / 10 for the last) bring these narrow networks to 91-92%; 32 images
# for LocSearchAdv (about 35 s a model).
DEFAULT = dict(
    archs=("plain10", "resnet18"),
    seeds=(0, 1, 2),
    width=0.125,
    epochs=3,
    steps_per_epoch=469,
    batch_size=128,
    lr=0.1,
    milestones=(2,),
    test_images=2000,
    gaussian_images=1000,
    images=200,
    lsa_images=32,
    lsa_steps=150,
    lsa_pixels=10,
    lsa_candidates=64,
    eps=0.1,
    curve_eps=(0.02, 0.05, 0.1, 0.3),
    curve_images=50,
    pgd_steps=50,
    pgd_restarts=2,
    square_images=50,
    square_queries=1000,
    aa_images=500,
    aa_seeds=3,
    confidence=0.9,
)
# Seconds on digits: a smoke test of every step.
TINY = dict(
    archs=("plain10",),
    seeds=(0, 1),
    width=0.0625,
    epochs=1,
    steps_per_epoch=20,
    batch_size=32,
    lr=0.05,
    milestones=(),
    gaussian_images=16,
    images=4,
    lsa_images=2,
    lsa_steps=2,
    lsa_pixels=2,
    lsa_candidates=4,
    eps=0.3,
    curve_eps=(0.05, 0.3),
    curve_images=4,
    pgd_steps=2,
    pgd_restarts=2,
    square_images=4,
    square_queries=5,
    aa_images=4,
    aa_seeds=1,
    confidence=0.0,
    test_images=None,
)
NAMES = {"plain10": "Plain-10", "resnet18": "ResNet-18"}


def model_key(arch: str, shc: bool, seed: int) -> str:
    return f"{arch}{'_shc' if shc else ''}_s{seed}"


def model_label(arch: str, shc: bool) -> str:
    return NAMES.get(arch, arch) + ("-SHC" if shc else "")


@dataclass
class Study:
    """The settings of one study and where its files go."""

    work: str
    data: str | None
    cfg: dict
    threads: int = 2
    progress: bool = True
    report_only: bool = False
    digits_size: int = 28
    log: list = field(default_factory=list)

    # ------------------------------------------------------------ bookkeeping

    def models(self):
        """(arch, shc, seed) of every model, seeds outermost so a partial run covers all kinds."""
        return [(a, s, seed) for seed in self.cfg["seeds"] for a in self.cfg["archs"] for s in (False, True)]

    def _path(self, *parts) -> str:
        return os.path.join(self.work, *parts)

    def fingerprint(self, *names) -> str:
        """Hash of the settings a cached result depends on (the training ones always)."""
        keys = ("width", "epochs", "steps_per_epoch", "batch_size", "lr", "milestones", "test_images", *names)
        blob = json.dumps({k: self.cfg[k] for k in keys} | {"data": self.data}, sort_keys=True, default=list)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]

    def cached(self, unit: str, key: str, settings: tuple, compute):
        """The cached result of ``unit`` for ``key`` (a model or a pair), computed and stored
        atomically when missing or made with other settings."""
        path = self._path("cache", unit, f"{key}.json")
        fp = self.fingerprint(*settings)
        if os.path.isfile(path):
            with open(path) as f:
                stored = json.load(f)
            if stored.get("fingerprint") == fp:
                self.say(f"  {unit:<10} {key:<18} cached")
                return stored["result"]
        if self.report_only:
            self.say(f"  {unit:<10} {key:<18} missing (--report-only: not computed)")
            return None
        self.say(f"  {unit:<10} {key:<18} running ...")
        t = time.perf_counter()
        result = compute()
        seconds = time.perf_counter() - t
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump({"fingerprint": fp, "seconds": seconds, "result": result}, f)
        os.replace(tmp, path)
        self.say(f"  {unit:<10} {key:<18} done in {seconds:.0f} s")
        return result

    def say(self, line: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)

    # ------------------------------------------------------------ data and models

    def data_arg(self) -> str | None:
        """What ``shc train --data`` gets: the data as named, or, with ``test_images`` set, a
        folder holding the training files (linked) and the first ``test_images`` test images
        (the test set is also what ``shc train`` evaluates after every epoch)."""
        if self.data is None or self.cfg.get("test_images") is None:
            return self.data
        src = data_mod.FASHION_MNIST_DIR if self.data == "fashion-mnist" else self.data
        dst = self._path("data", f"test{self.cfg['test_images']}")
        if not data_mod.is_idx_folder(dst):
            _idx_subset(src, dst, self.cfg["test_images"])
        return dst

    def dataset(self):
        train_set, test_set, num_classes = data_mod.load(self.data_arg(), digits_size=self.digits_size)
        return test_set, num_classes

    def checkpoint(self, arch, shc, seed) -> str:
        return self._path("models", f"{model_key(arch, shc, seed)}-{self.fingerprint()}", checkpoint.FILENAME)

    def train_one(self, arch, shc, seed) -> dict:
        """Train one model with ``shc train`` (resumed when a run was cut off); its metrics."""
        ckpt = self.checkpoint(arch, shc, seed)
        out = os.path.dirname(ckpt)
        metrics = os.path.join(out, train.METRICS)
        if os.path.isfile(ckpt):
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
            if state.get("epoch") == self.cfg["epochs"] and state.get("step", 0) == 0:
                self.say(f"  train      {model_key(arch, shc, seed):<18} cached")
                return self._last_metrics(metrics)
        if self.report_only:
            raise ValueError(f"--report-only: model {model_key(arch, shc, seed)} is not trained yet")
        argv = ["--arch", arch, "--small-input", "--width", str(self.cfg["width"])]
        argv += ["--epochs", str(self.cfg["epochs"]), "--batch-size", str(self.cfg["batch_size"])]
        argv += ["--lr", str(self.cfg["lr"]), "--milestones", *[str(m) for m in self.cfg["milestones"]]]
        argv += ["--max-steps-per-epoch", str(self.cfg["steps_per_epoch"]), "--seed", str(seed), "--out", out]
        argv += ["--data", self.data_arg()] if self.data else ["--digits-size", str(self.digits_size)]
        argv += (["--shc"] if shc else []) + ([] if self.progress else ["--no-progress"])
        if os.path.isfile(ckpt):
            argv.append("--resume")
        self.say(f"  train      {model_key(arch, shc, seed):<18} shc train {' '.join(argv)}")
        t = time.perf_counter()
        try:
            rc = train.main(argv)
        except SystemExit as exc:  # argparse's error exit: report it as this model's failure
            rc = exc.code
        if rc != 0:
            raise RuntimeError(f"shc train {' '.join(argv)} failed with status {rc}")
        self.say(f"  train      {model_key(arch, shc, seed):<18} done in {time.perf_counter() - t:.0f} s")
        return self._last_metrics(metrics)

    @staticmethod
    def _last_metrics(path) -> dict:
        with open(path) as f:
            lines = [json.loads(line) for line in f if line.strip()]
        return lines[-1]

    PGD_SETTINGS = ("images", "eps", "pgd_steps", "pgd_restarts", "seeds", "archs")

    def adv_path(self, key) -> str:
        """Where the PGD examples of model ``key`` are kept (the transfer attack reads them)."""
        return self._path("adv", f"pgd-{key}-{self.fingerprint(*self.PGD_SETTINGS)}.pt")

    def load(self, arch, shc, seed):
        model, _ = checkpoint.load_model(self.checkpoint(arch, shc, seed))
        return model


def _idx_subset(src: str, dst: str, test_images: int) -> None:
    """``dst``: links to the training files of ``src`` and the first ``test_images`` test
    images and labels written back in the IDX format (read through torchvision as the rest)."""
    import gzip
    import struct

    from torchvision.datasets.mnist import read_image_file, read_label_file

    os.makedirs(dst, exist_ok=True)
    for key, stem in data_mod.FASHION_MNIST_FILES.items():
        path = data_mod._idx_path(src, stem)
        if key.startswith("train"):
            link = os.path.join(dst, os.path.basename(path))
            if not os.path.lexists(link):
                os.symlink(os.path.abspath(path), link)
            continue
        t = data_mod._read_idx(path, read_image_file if key.endswith("images") else read_label_file)
        t = t[:test_images].to(torch.uint8).contiguous()  # the label reader returns int64
        head = struct.pack(">BBBB", 0, 0, 0x08, t.dim()) + struct.pack(f">{t.dim()}I", *t.shape)
        tmp = os.path.join(dst, f".{stem}.gz.tmp")
        with gzip.open(tmp, "wb") as f:
            f.write(head + t.numpy().tobytes())
        os.replace(tmp, os.path.join(dst, stem + ".gz"))


def _eps_key(eps: float) -> str:
    return f"{eps:g}"


# ---------------------------------------------------------------- attacks beyond the paper


def _accuracy(model, x, y, batch=256) -> torch.Tensor:
    """Per-image bool: the model classifies x correctly."""
    with torch.no_grad():
        pairs = zip(x.split(batch), y.split(batch), strict=True)
        return torch.cat([model(xb).argmax(1) == yb for xb, yb in pairs])


def pgd_restarts(model, x, y, eps, steps, restarts, seed):
    """torchattacks' L-inf PGD (random start, step 2.5 eps / steps) restarted ``restarts`` times,
    each restart on the images no earlier one fooled; (adversarial images, correct after the
    first restart, correct after all)."""
    import torchattacks

    adv = x.clone()
    correct = torch.ones(len(y), dtype=torch.bool)
    first = None
    for r in range(restarts):
        idx = correct.nonzero().squeeze(1)
        if len(idx):
            torch.manual_seed(seed * 1000 + r)  # torchattacks draws its random start from torch's RNG
            atk = torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / steps, steps=steps, random_start=True)
            cand = atk(x[idx], y[idx])
            fooled = ~_accuracy(model, cand, y[idx])
            adv[idx[fooled]] = cand[fooled]
            correct[idx[fooled]] = False
        if first is None:
            first = correct.clone()
    return adv, first, correct


def _pct(mask: torch.Tensor) -> float:
    return 100.0 * float(mask.float().mean()) if len(mask) else float("nan")


# ---------------------------------------------------------------- the steps


def run_study(study: Study) -> dict:
    """Every step in order; returns the raw per-model results (all cached on disk)."""
    cfg = study.cfg
    torch.set_num_threads(study.threads)
    t0 = time.perf_counter()
    test_set, num_classes = study.dataset()
    if num_classes < 3:
        raise ValueError(f"the data has {num_classes} classes: the RCD score needs at least 3")
    models = study.models()
    raw = {"clean": {}, "paper": {}, "lsa": {}, "pgd": {}, "curve": {}, "square": {}, "transfer": {}}
    raw["autoattack"] = {}

    study.say(f"1/4 training {len(models)} models")
    for arch, shc, seed in models:
        raw["clean"][model_key(arch, shc, seed)] = study.train_one(arch, shc, seed)

    study.say(
        f"2/4 selecting the test images every model classifies correctly (confidence > {cfg['confidence']})"
    )
    nets = {model_key(*m): study.load(*m) for m in models}
    need = max(cfg["images"], cfg["lsa_images"], cfg["curve_images"], cfg["square_images"])
    selected = study.cached(
        "select",
        "all",
        (
            "seeds",
            "archs",
            "confidence",
            "images",
            "lsa_images",
            "curve_images",
            "square_images",
        ),
        lambda: protocol.select_images(nets, test_set, cfg["confidence"], need, 256, "cpu")[0],
    )
    sel = Subset(test_set, selected)
    xs = torch.stack([sel[i][0] for i in range(len(sel))]) if len(sel) else None
    ys = torch.tensor([int(sel[i][1]) for i in range(len(sel))])
    study.say(f"   {len(selected)} images selected (of {need} wanted)")
    if len(selected) == 0:
        raise ValueError(
            f"no test image is classified correctly with confidence > {cfg['confidence']} by every model"
        )

    # Cheapest and most telling first: a run stopped early still has a whole table for every model.
    study.say("3/4 PGD and transfer, then the paper's Tables 1, 2 and 4 on every model")
    x, y = xs[: cfg["images"]], ys[: cfg["images"]]
    pgd_set = Study.PGD_SETTINGS
    for key, net in nets.items():
        raw["pgd"][key] = study.cached(
            "pgd", key, pgd_set, lambda net=net, key=key: _pgd(study, net, key, x, y)
        )
    for arch in cfg["archs"]:
        for seed in cfg["seeds"]:
            for src, dst in ((False, True), (True, False)):
                a, b = model_key(arch, src, seed), model_key(arch, dst, seed)
                raw["transfer"][f"{a}->{b}"] = study.cached(
                    "transfer",
                    f"{a}-to-{b}",
                    pgd_set,
                    lambda a=a, b=b: _transfer(nets[b], study.adv_path(a), y),
                )
    paper_set = ("confidence", "gaussian_images", "images", "seeds", "archs")
    for key, net in nets.items():
        raw["paper"][key] = study.cached(
            "paper", key, paper_set, lambda net=net, key=key: _paper(study, net, key, test_set, sel)
        )
    study.say("4/4 accuracy vs eps, Square, LocSearchAdv (Table 3), AutoAttack")
    curve_set = ("curve_images", "curve_eps", "pgd_steps", "pgd_restarts", "seeds", "archs")
    for key, net in nets.items():
        raw["curve"][key] = study.cached(
            "curve", key, curve_set, lambda net=net, key=key: _curve(study, net, key, xs, ys)
        )
    sq_set = ("square_images", "square_queries", "eps", "seeds", "archs")
    for key, net in nets.items():
        raw["square"][key] = study.cached(
            "square", key, sq_set, lambda net=net, key=key: _square(study, net, key, xs, ys)
        )
    lsa_set = ("confidence", "lsa_images", "lsa_steps", "lsa_pixels", "lsa_candidates", "seeds", "archs")
    for key, net in nets.items():
        raw["lsa"][key] = study.cached(
            "lsa", key, lsa_set, lambda net=net, key=key: _lsa(study, net, key, sel)
        )
    aa_seeds = list(cfg["seeds"])[: cfg["aa_seeds"]]
    for arch, shc, seed in models:
        if seed in aa_seeds:
            key = model_key(arch, shc, seed)
            aa = ("aa_images", "eps")
            raw["autoattack"][key] = study.cached(
                "autoattack", key, aa, lambda net=nets[key], key=key: _autoattack(study, net, key, test_set)
            )
    for unit in ("paper", "lsa", "pgd", "transfer", "curve", "square", "autoattack"):
        raw[unit] = {k: v for k, v in raw[unit].items() if v is not None}
    raw["meta"] = {
        "selected_images": len(selected),
        "num_classes": num_classes,
        "seconds_this_run": time.perf_counter() - t0,
    }
    return raw


def _paper(study: Study, net, key, test_set, sel) -> dict:
    """Tables 1, 2 and 4: Gaussian noise on the first test images, the gradient attacks and the
    route-restricted RAND+FGSM on the selected ones (the paper's settings)."""
    cfg = study.cfg
    gauss = protocol.run_attacks(
        {key: net},
        Subset(test_set, range(min(cfg["gaussian_images"], len(test_set)))),
        attacks_to_run=["gaussian"],
        max_images=1,
        confidence=0.0,
        progress=study.progress,
    )
    rest = protocol.run_attacks(
        {key: net},
        sel,
        attacks_to_run=["fgsm", "fgsm_heavy", "ifgsm", "rand_fgsm", "routes"],
        max_images=cfg["images"],
        confidence=cfg["confidence"],
        progress=study.progress,
    )
    return {
        "gaussian": gauss["gaussian"][key],
        "gradient": rest["gradient"][key],
        "routes": rest["routes"][key],
        "gradient_images": rest["gradient_images"],
    }


def _lsa(study: Study, net, key, sel) -> dict:
    """Table 3: LocSearchAdv with the paper's pixels and steps on the first selected images."""
    cfg = study.cfg
    res = protocol.run_attacks(
        {key: net},
        sel,
        attacks_to_run=["lsa"],
        max_images=cfg["lsa_images"],
        lsa_images=cfg["lsa_images"],
        lsa_steps=cfg["lsa_steps"],
        lsa_pixels=cfg["lsa_pixels"],
        lsa_candidates=cfg["lsa_candidates"],
        confidence=cfg["confidence"],
        progress=study.progress,
    )
    out = {k: v for k, v in res["lsa"][key].items() if not isinstance(v, torch.Tensor)}
    return out | {"images": res["lsa_images"]}


def _pgd(study: Study, net, key, x, y) -> dict:
    import torchattacks

    cfg = study.cfg
    torch.manual_seed(0)
    fgsm = torchattacks.FGSM(net, eps=cfg["eps"])(x, y)
    seed = int(key.rsplit("_s", 1)[1])
    adv, first, final = pgd_restarts(net, x, y, cfg["eps"], cfg["pgd_steps"], cfg["pgd_restarts"], seed)
    path = study.adv_path(key)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(adv, path)
    return {
        "images": len(y),
        "clean": _pct(_accuracy(net, x, y)),
        "fgsm": _pct(_accuracy(net, fgsm, y)),
        "pgd_1_restart": _pct(first),
        "pgd": _pct(final),
    }


def _curve(study: Study, net, key, xs, ys) -> dict:
    cfg = study.cfg
    x, y = xs[: cfg["curve_images"]], ys[: cfg["curve_images"]]
    seed = int(key.rsplit("_s", 1)[1])
    out = {"images": len(y), "acc": {}}
    for eps in cfg["curve_eps"]:
        out["acc"][_eps_key(eps)] = _pct(
            pgd_restarts(net, x, y, eps, cfg["pgd_steps"], cfg["pgd_restarts"], seed)[2]
        )
    return out


def _transfer(target, adv_path, y) -> dict:
    adv = torch.load(adv_path, map_location="cpu", weights_only=True)
    return {"images": len(y), "acc": _pct(_accuracy(target, adv, y))}


def _square(study: Study, net, key, xs, ys) -> dict:
    import torchattacks

    cfg = study.cfg
    x, y = xs[: cfg["square_images"]], ys[: cfg["square_images"]]
    atk = torchattacks.Square(net, eps=cfg["eps"], n_queries=cfg["square_queries"], n_restarts=1, seed=0)
    return {"images": len(y), "queries": cfg["square_queries"], "acc": _pct(_accuracy(net, atk(x, y), y))}


def _autoattack(study: Study, net, key, test_set) -> dict:
    """AutoAttack's standard suite on the first ``aa_images`` test images (not only the
    selected ones, as AutoAttack is usually reported): robust accuracy counts a clean error as
    a failure; the clean accuracy on the same images is beside it."""
    import torchattacks

    n = min(study.cfg["aa_images"], len(test_set))
    x = torch.stack([test_set[i][0] for i in range(n)])
    y = torch.tensor([int(test_set[i][1]) for i in range(n)])
    atk = torchattacks.AutoAttack(
        net, norm="Linf", eps=study.cfg["eps"], version="standard", n_classes=10, seed=0
    )
    return {"images": n, "clean": _pct(_accuracy(net, x, y)), "acc": _pct(_accuracy(net, atk(x, y), y))}


# ---------------------------------------------------------------- command line


def _computed_by(out: str, run_info: dict) -> dict | None:
    """The command and wall time of the run recorded in ``out``/results.json, when it had the
    same settings and data (what a --report-only rewrite of that report should still show)."""
    try:
        with open(os.path.join(out, "results.json")) as f:
            prev = json.load(f)["run"]
    except (OSError, ValueError, KeyError):
        return None
    if prev.get("settings") != run_info["settings"] or prev.get("data") != run_info["data"]:
        return None
    if "computed_by" in prev and prev["computed_by"]:
        return prev["computed_by"]
    return {"command": prev["command"], "wall_s": prev["wall_s_this_run"], "threads": prev["threads"]}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="shc study",
        description=__doc__.split("\n\n")[0],
        epilog="Sizes default to the committed study; --tiny gives a smoke run of every step.",
    )
    p.add_argument(
        "--data", type=data_mod.data_argument(splits=(), digits=True), default="fashion-mnist",
        help="fashion-mnist (the digits when it is not installed), digits, or a folder of IDX files",
    )  # fmt: skip
    p.add_argument("--out", type=ca.writable_dir, default="results/fashion_mnist", help="report folder")
    p.add_argument(
        "--work", type=ca.writable_dir, default="runs/study", help="checkpoints and cached results"
    )
    p.add_argument("--tiny", action="store_true", help="a smoke run: tiny models, a few images, 1-2 steps")
    p.add_argument("--seeds", type=ca.nonnegative_int, nargs="+", default=None, help="training seeds (>= 2)")
    p.add_argument("--archs", nargs="+", choices=sorted(NAMES), default=None)
    p.add_argument("--width", type=ca.positive_float, default=None, help="channel width multiplier")
    p.add_argument("--epochs", type=ca.positive_int, default=None)
    p.add_argument("--steps-per-epoch", type=ca.positive_int, default=None, help="training steps per epoch")
    p.add_argument("--images", type=ca.positive_int, default=None, help="images for Tables 2, 4 and PGD")
    p.add_argument("--gaussian-images", type=ca.positive_int, default=None, help="images for Table 1")
    p.add_argument("--lsa-images", type=ca.positive_int, default=None, help="images for Table 3")
    p.add_argument("--aa-images", type=ca.positive_int, default=None, help="images for AutoAttack")
    p.add_argument("--eps", type=ca.positive_float, default=None, help="L-inf eps of PGD, Square, AutoAttack")
    p.add_argument("--threads", type=ca.positive_int, default=2, help="torch CPU threads")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="write the report from the cached results, compute nothing new",
    )
    p.add_argument("--no-progress", action="store_true")
    return p


def config(args) -> dict:
    cfg = dict(TINY if args.tiny else DEFAULT)
    for name in ("seeds", "archs", "width", "epochs", "steps_per_epoch", "images", "gaussian_images"):
        if getattr(args, name) is not None:
            cfg[name] = getattr(args, name)
    for name in ("lsa_images", "aa_images", "eps"):
        if getattr(args, name) is not None:
            cfg[name] = getattr(args, name)
    cfg["seeds"], cfg["archs"] = tuple(dict.fromkeys(cfg["seeds"])), tuple(dict.fromkeys(cfg["archs"]))
    return cfg


def main(argv: list[str] | None = None) -> int:
    from . import study_report

    parser = build_parser()
    args = parser.parse_args(argv)
    cfg = config(args)
    if len(set(cfg["seeds"])) < 2:
        ca.fail(
            parser, "argument --seeds: give at least 2 different seeds (the spread over seeds is the point)"
        )
    data = args.data
    if data == "fashion-mnist" and not data_mod.fashion_mnist_available():
        print(
            f"shc study: Fashion-MNIST is not installed; {data_mod.INSTALL_HINT}. Using the digits.",
            file=sys.stderr,
        )
        data = "digits"
    study = Study(
        work=args.work,
        data=None if data == "digits" else data,
        cfg=cfg,
        threads=args.threads,
        progress=not args.no_progress,
        report_only=args.report_only,
        digits_size=8 if args.tiny else 28,
    )
    start = time.perf_counter()
    try:
        raw = run_study(study)
    except (FileNotFoundError, ValueError) as exc:
        ca.fail(parser, str(exc))
    run_info = {
        "command": "shc study " + " ".join(argv if argv is not None else sys.argv[1:]),
        "data": data,
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "threads": study.threads,
        "versions": study_report.versions(),
        "wall_s_this_run": time.perf_counter() - start,
        "seconds_cached": study_report.cached_seconds(study.work),
    }
    if args.report_only:  # keep the command and wall time of the run that computed the results
        run_info["computed_by"] = _computed_by(args.out, run_info)
    paths = study_report.write(raw, run_info, args.out)
    print(f"\nreport: {paths[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
