"""shc study: does SHC make a network more robust? One resumable command: Plain-10, plain and SHC,
trained on Fashion-MNIST over several seeds (and adversarially trained as the positive control),
every model attacked on the same test images; the report's statistics are paired per image.

    shc study                    # the study: units in results/fashion_mnist/units, models in runs/study
    shc study --status           # how many units are done, how much is left (computes nothing)
    shc study --report-only      # rewrite results/fashion_mnist/report.md from the units there
    shc study --quick --out /tmp/r --work /tmp/w      # every stage on a few images, in minutes

The study is a list of units, each one (stage, model, parameter) with a small json file under
OUT/units/ (per-image correctness bits, the model's weights hash, the settings, a hash of the code
that computed it, and where and when). A unit whose file exists with the same key is skipped, so a
stopped run (on any machine with the repository) resumes where it stopped. Each trained model's
weights are kept in OUT/models/ (small, committed with the units), so the attacks go on with the
same weights anywhere; a model with neither those nor a checkpoint (--work is not in git) is
retrained from its seed, and the units of a model whose retrained weights differ from the
recorded ones are recomputed. The order puts the most
telling units first, so a partial run already carries whole tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import os
import platform
import subprocess
import sys
import time

import torch

from . import args as ca
from . import data as data_mod

__all__ = ["DEFAULT", "QUICK", "Unit", "build_parser", "main", "plan"]

# The study as run (about 6 hours of one core of the 2-core VM; every scaling is in SCALED below).
DEFAULT = dict(
    arch="plain10",
    width=0.125,
    seeds=(0, 1, 2, 3, 4),
    epochs=8,
    batch_size=128,
    lr=0.1,
    milestones=(5, 7),
    weight_decay=5e-4,
    max_steps=0,
    adv_seeds=(0, 1),
    adv_eps=0.1,
    adv_alpha=0.125,
    rerun_seeds=(0,),
    images=1000,
    eps_grid=(0.005, 0.01, 0.02, 0.03, 0.04, 0.05),
    adv_eps_grid=(0.05, 0.1, 0.15),
    pgd_steps=50,
    pgd_restarts=1,
    min_eps_max=0.1,
    adv_min_eps_max=0.3,
    min_steps=20,
    min_iters=8,
    mask_eps=0.02,
    mask_steps=200,
    mask_restarts=3,
    mask_big_eps=0.3,
    square_queries=1000,
    adaptive_eps=(0.01, 0.02, 0.05),
    aa_seeds=(0, 1),
    aa_eps=0.02,
    aa_images=500,
    aa_steps=100,
    aa_queries=5000,
    lsa_images=200,
    lsa_steps=30,
    lsa_candidates=64,
)
# Every stage on a few images, one seed, a 15-step training: minutes; what the tests run.
QUICK = DEFAULT | dict(
    width=0.0625,
    seeds=(0,),
    epochs=1,
    batch_size=64,
    milestones=(),
    max_steps=15,
    adv_seeds=(0,),
    rerun_seeds=(0,),
    images=12,
    eps_grid=(0.01, 0.05),
    adv_eps_grid=(0.1,),
    pgd_steps=3,
    min_steps=3,
    min_iters=3,
    mask_steps=4,
    mask_restarts=2,
    square_queries=8,
    adaptive_eps=(0.05,),
    aa_seeds=(0,),
    aa_images=8,
    aa_steps=2,
    aa_queries=8,
    lsa_images=4,
    lsa_steps=3,
    lsa_candidates=8,
)
TRAIN_KEYS = ("arch", "width", "epochs", "batch_size", "lr", "milestones", "weight_decay", "max_steps")
# The settings each stage's result depends on, besides the model's training and the images.
STAGE_KEYS = {
    "train": (),
    "clean": (),
    "pgd": ("pgd_steps", "pgd_restarts"),
    "minimal_eps": ("min_steps", "min_iters"),
    "paper": (),
    "masking": ("pgd_steps", "mask_steps", "mask_restarts", "mask_big_eps", "square_queries"),
    "adaptive": ("pgd_steps",),
    "autoattack": ("aa_steps", "aa_queries"),
    "lsa": ("lsa_images", "lsa_steps", "lsa_candidates"),
    "mechanism": (),
}
# Rough seconds of a unit on one idle core (guesses: the estimate uses measured times once there are any).
COST = dict(train=300, clean=2, pgd=40, minimal_eps=100, paper=10, masking=300, adaptive=100,
            autoattack=900, lsa=100, mechanism=5)  # fmt: skip
CODE_FILES = ("study_units.py", "advtrain.py", "data.py", "attacks", "models")
LIBRARY_FILES = ("functional.py", "modules.py", "ops.py", "backends.py", "reference.py", "_checks.py")
# csrc/cpu files the library hash leaves out: the depthwise method's kernels, which run only for
# grouped convs (depthwise::applies, in the hashed depthwise.h: groups > 1), and Plain-10 has none
# (tests/research/test_study.py checks both), so their speed work does not make the units stale.
LIBRARY_UNUSED = ("depthwise.cpp", "depthwise_kernels.inc")


@dataclasses.dataclass(frozen=True)
class Unit:
    stage: str
    model: str  # "<kind>_<plain|shc>_s<seed>", kind: std, adv (FGSM-RS), rerun (std trained again)
    params: tuple = ()

    @property
    def name(self) -> str:
        tail = "".join(f"__{k}={v:g}" if isinstance(v, float) else f"__{k}={v}" for k, v in self.params)
        return f"{self.model}{tail}"

    @property
    def path(self) -> str:
        return os.path.join(self.stage, self.name + ".json")


def model_key(kind: str, shc: bool, seed: int) -> str:
    return f"{kind}_{'shc' if shc else 'plain'}_s{seed}"


def parse_model(key: str) -> tuple[str, bool, int]:
    kind, net, seed = key.split("_")
    return kind, net == "shc", int(seed[1:])


def plan(cfg: dict) -> list[Unit]:
    """Every unit, most telling first: seed 0's standard pair (clean, PGD grid, minimal eps, paper,
    mechanism), the positive control (adversarially trained pairs: clean, PGD, minimal eps,
    masking), the other seeds' standard pairs, masking and adaptive attacks, LocSearchAdv,
    AutoAttack (the most expensive: adversarially trained pairs first), then the rerun."""
    units: list[Unit] = []

    def pair(kind, seed, stages):
        for shc in (False, True):
            m = model_key(kind, shc, seed)
            for stage, params in stages:
                units.append(Unit(stage, m, tuple(params)))

    core = [("train", ()), ("clean", ())] + [("pgd", (("eps", e),)) for e in cfg["eps_grid"]]
    core += [("minimal_eps", (("eps_max", cfg["min_eps_max"]),)), ("paper", ()), ("mechanism", ())]
    adv = [("train", ()), ("clean", ())] + [("pgd", (("eps", e),)) for e in cfg["adv_eps_grid"]]
    adv += [("minimal_eps", (("eps_max", cfg["adv_min_eps_max"]),)), ("masking", (("eps", cfg["adv_eps"]),))]
    seeds = cfg["seeds"]
    for seed in seeds[:1]:
        pair("std", seed, core)
    for seed in cfg["adv_seeds"]:
        pair("adv", seed, adv)
    for seed in seeds[1:]:
        pair("std", seed, core)
    for seed in seeds:
        pair("std", seed, [("masking", (("eps", cfg["mask_eps"]),))])
        pair("std", seed, [("adaptive", (("eps", e),)) for e in cfg["adaptive_eps"]])
    for seed in cfg["adv_seeds"]:
        pair("adv", seed, [("adaptive", (("eps", cfg["adv_eps"]),)), ("mechanism", ())])
    for seed in seeds:
        pair("std", seed, [("lsa", ())])
    for seed in cfg["adv_seeds"]:
        pair("adv", seed, [("autoattack", (("eps", cfg["adv_eps"]), ("images", cfg["aa_images"])))])
    for seed in cfg["aa_seeds"]:
        pair("std", seed, [("autoattack", (("eps", cfg["aa_eps"]), ("images", cfg["aa_images"])))])
    for seed in cfg["rerun_seeds"]:
        pair("rerun", seed, core[:-2])
    return units


# ---------------------------------------------------------------- provenance and keys


def _hash_paths(paths, leave_out=()) -> str:
    h = hashlib.sha256()
    files = []
    for p in paths:
        if os.path.isdir(p):
            for d, _, names in os.walk(p):
                files += [
                    os.path.join(d, n)
                    for n in names
                    if n.endswith((".py", ".cpp", ".h", ".inc")) and n not in leave_out
                ]
        elif os.path.isfile(p):
            files.append(p)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for f in sorted(files):
        h.update(os.path.relpath(f, root).encode())
        with open(f, "rb") as fh:
            h.update(hashlib.sha256(fh.read()).digest())
    return h.hexdigest()[:16]


def code_hashes() -> dict:
    """{"study": hash of the sources computing a unit, "library": of the layer library and its
    CPU kernels (less LIBRARY_UNUSED)}."""
    here = os.path.dirname(os.path.abspath(__file__))
    lib = os.path.dirname(here)
    csrc = os.path.join(os.path.dirname(lib), "csrc", "cpu")
    return {
        "study": _hash_paths([os.path.join(here, f) for f in CODE_FILES]),
        "library": _hash_paths([os.path.join(lib, f) for f in LIBRARY_FILES] + [csrc], LIBRARY_UNUSED),
    }


def provenance() -> dict:
    """Where and with what a unit was computed."""
    cpu, flags = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and cpu in ("", platform.machine(), platform.processor()):
                    cpu = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    flags = [
                        x
                        for x in ("avx2", "fma", "avx512f", "avx512bw", "avx512_bf16", "amx_tile")
                        if x in have
                    ]
                    break
    except OSError:
        pass
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        commit = subprocess.run(
            ["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--", "shc_kernels", "csrc"],
            capture_output=True, text=True, timeout=10,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", ""
    from .. import backends

    try:
        import torchattacks

        ta = torchattacks.__version__
    except ImportError:
        ta = None
    return {
        "commit": commit or None,
        "uncommitted_changes": bool(dirty),
        "cpu": cpu,
        "isa": flags,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "backend": backends.resolve("auto", torch.zeros(1)),
        "torch": torch.__version__,
        "torchattacks": ta,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


# ---------------------------------------------------------------- the run


class Study:
    def __init__(self, out, work, data, cfg, accept_library=False, progress=True):
        self.out, self.work, self.data, self.cfg = out, work, data, cfg
        self.accept_library, self.progress = accept_library, progress
        self.hashes = code_hashes()
        self._data = None
        self._models: dict = {}
        self._weights: dict = {}
        self.timed: dict[str, list[float]] = {}

    # ------------------------------------------------ storage

    def unit_file(self, unit: Unit) -> str:
        return os.path.join(self.out, "units", unit.path)

    def key(self, unit: Unit) -> dict:
        kind, _, _ = parse_model(unit.model)
        keys = TRAIN_KEYS + STAGE_KEYS[unit.stage] + (("adv_eps", "adv_alpha") if kind == "adv" else ())
        settings = {k: list(v) if isinstance(v, tuple) else v for k, v in self.cfg.items() if k in keys}
        if unit.stage != "train":
            settings["images"] = self.cfg["images"]
        return {"settings": settings, "data": self.data, "code": self.hashes["study"]}

    def read(self, unit: Unit):
        try:
            with open(self.unit_file(unit)) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def status(self, unit: Unit, stored=None) -> str:
        """done, stale (computed with other settings, code or model weights), library (computed
        with another version of the layer library: done with --accept-library-change) or missing."""
        stored = self.read(unit) if stored is None else stored
        if stored is None:
            return "missing"
        if stored.get("key") != self.key(unit):
            return "stale"
        if stored.get("library") != self.hashes["library"] and not self.accept_library:
            return "library"
        if unit.stage != "train":
            train = self.read(Unit("train", unit.model))
            if train is None or train.get("result", {}).get("weights") != stored.get("weights"):
                return "stale"
        return "done"

    def write(self, unit: Unit, result: dict, seconds: float, weights: str | None) -> None:
        path = self.unit_file(unit)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        record = {
            "unit": dataclasses.asdict(unit) | {"params": dict(unit.params)},
            "key": self.key(unit),
            "library": self.hashes["library"],
            "weights": weights,
            "seconds": round(seconds, 2),
            "provenance": provenance(),
            "result": result,
        }
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(record, f, indent=None, separators=(",", ":"))
            f.write("\n")
        os.replace(tmp, path)

    # ------------------------------------------------ data and models

    def dataset(self):
        if self._data is None:
            if self.data == "digits":
                train, test, k = data_mod.digits(28)
                train = torch.utils.data.TensorDataset(train.tensors[0][:, :1].contiguous(), train.tensors[1])
                test = torch.utils.data.TensorDataset(test.tensors[0][:, :1].contiguous(), test.tensors[1])
            else:
                train, test, k = data_mod.load(self.data)
            self._data = (train, test, k)
        return self._data

    def images(self):
        _, test, _ = self.dataset()
        x, y = test.tensors
        n = min(self.cfg["images"], len(y))
        return x[:n].contiguous(), y[:n].contiguous()

    def checkpoint_path(self, model: str) -> str:
        """Under --work, in a folder named by the model and a hash of its training key (a change of
        settings or code never resumes another model's checkpoint)."""
        blob = json.dumps(self.key(Unit("train", model)), sort_keys=True).encode()
        return os.path.join(self.work, f"{model}-{hashlib.sha256(blob).hexdigest()[:10]}", "checkpoint.pt")

    def train(self, model: str) -> dict:
        from . import advtrain

        kind, shc, seed = parse_model(model)
        train_set, test_set, k = self.dataset()
        c = self.cfg
        adv = dict(adv_eps=c["adv_eps"], adv_alpha=c["adv_alpha"]) if kind == "adv" else {}
        return advtrain.fit(
            self.checkpoint_path(model), train_set, test_set, k, arch=c["arch"], shc=shc, width=c["width"],
            seed=seed, epochs=c["epochs"], batch_size=c["batch_size"], lr=c["lr"], milestones=c["milestones"],
            weight_decay=c["weight_decay"], max_steps=c["max_steps"], log=self.say, **adv,
        )  # fmt: skip

    def weights_file(self, model: str) -> str:
        """OUT/models/<model>.pt: the trained model (meta and weights, about 0.3 MB), kept beside
        the units, so that another machine attacks these weights instead of retraining them (a CPU
        with another ISA may train other weights, and then every unit of the model is recomputed)."""
        return os.path.join(self.out, "models", f"{model}.pt")

    def published(self, key: str):
        """The model ``key`` from its weights file where that holds the train unit's weights, else None."""
        from . import advtrain, checkpoint

        path = self.weights_file(key)
        unit = Unit("train", key)
        if not os.path.isfile(path) or self.status(unit) != "done":
            return None
        try:
            net, _ = checkpoint.load_model(path)
        except checkpoint.CheckpointError as exc:
            self.say(f"  {key}: {exc}; not used (its checkpoint, or training it again, gives the model)")
            return None
        if advtrain.weights_hash(net.state_dict()) != self.read(unit)["result"]["weights"]:
            self.say(
                f"  {key}: {path} does not hold the weights its train unit recorded; not used (its "
                "checkpoint, or training it again, gives the model)"
            )
            return None
        return net

    def model(self, key: str):
        """The trained model ``key``: its published weights (weights_file), else its checkpoint,
        else trained (or retrained from its seed) where the checkpoint is missing or unfinished;
        its weights hash is checked against the train unit's."""
        from . import advtrain, checkpoint

        if key in self._models:
            return self._models[key]
        net = self.published(key)
        if net is None:
            unit = Unit("train", key)
            path = self.checkpoint_path(key)
            state = torch.load(path, map_location="cpu", weights_only=True) if os.path.isfile(path) else None
            if state is None or state.get("epoch") != self.cfg["epochs"] or self.status(unit) != "done":
                self.run_unit(unit)
            net, _ = checkpoint.load_model(path)
        torch.set_grad_enabled(True)
        self._models[key] = net
        self._weights[key] = advtrain.weights_hash(net.state_dict())
        return net

    # ------------------------------------------------ units

    def say(self, line: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)

    def run_unit(self, unit: Unit) -> None:
        from . import checkpoint, study_units

        stored = self.read(unit)
        t = time.perf_counter()
        if unit.stage == "train":
            self.say(f"train {unit.model}")
            result = self.train(unit.model)
            old = (stored or {}).get("result", {}).get("weights")
            if old and old != result["weights"]:
                self.say(
                    f"  {unit.model}: the retrained weights differ from the recorded ones ({old[:12]} -> "
                    f"{result['weights'][:12]}): this model's units will be recomputed"
                )
            weights = result["weights"]
            state = checkpoint.read(self.checkpoint_path(unit.model))
            checkpoint.save(self.weights_file(unit.model), {"meta": state["meta"], "model": state["model"]})
        else:
            net = self.model(unit.model)
            ctx = _Context(self, unit)
            result = study_units.run_stage(unit.stage, ctx, net, dict(unit.params))
            weights = self._weights[unit.model]
        seconds = time.perf_counter() - t
        self.write(unit, result, seconds, weights)
        if not (unit.stage == "train" and unit.model.startswith("adv")):
            self.timed.setdefault(unit.stage, []).append(seconds)

    def estimate(self, units) -> float:
        """Seconds left for ``units``: the mean time of each stage in this run or, before one
        finished, in the unit files already written (both on this machine's load), else COST;
        an adversarially trained model's training counts twice."""
        if not self.timed:
            for u in plan(self.cfg):
                rec = self.read(u)
                if rec is not None and not (u.stage == "train" and u.model.startswith("adv")):
                    self.timed.setdefault(u.stage, []).append(rec["seconds"])
        total = 0.0
        for u in units:
            times = self.timed.get(u.stage)
            cost = sum(times) / len(times) if times else COST[u.stage]
            total += 2 * cost if u.stage == "train" and u.model.startswith("adv") else cost
        return total

    def run(self, units, limit_s: float | None = None) -> int:
        todo = [u for u in units if self.status(u) != "done"]
        self.say(f"{len(units) - len(todo)} of {len(units)} units done; {len(todo)} to run, est. "
                 f"{_hours(self.estimate(todo))} left")  # fmt: skip
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=len(units), initial=len(units) - len(todo), unit="unit", file=sys.stdout)
        start = time.perf_counter()
        for i, unit in enumerate(todo):
            if limit_s is not None and time.perf_counter() - start > limit_s:
                self.say(f"--limit reached: {len(todo) - i} units left")
                break
            if self.status(unit) == "done":  # a model's train unit, run on demand by an earlier unit
                continue
            if unit.stage != "train":  # run_unit says "train <model>" itself
                self.say(f"{unit.stage} {unit.name}")
            self.run_unit(unit)
            left = todo[i + 1 :]
            done = len(units) - len(left)
            self.say(f"  {done} of {len(units)} units done, est. {_hours(self.estimate(left))} left")
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        return sum(self.status(u) != "done" for u in units)


class _Context:
    """What a stage reads: the images, settings, seed, class count and the pair's other model."""

    def __init__(self, study: Study, unit: Unit):
        self.study, self.unit, self.cfg = study, unit, study.cfg
        self.x, self.y = study.images()
        self.num_classes = study.dataset()[2]
        kind, shc, seed = parse_model(unit.model)
        self.seed, self._partner = seed, model_key(kind, not shc, seed)

    def partner(self):
        return self.study.model(self._partner)


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


# ---------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shc study", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data", type=data_mod.data_argument(splits=(), digits=True), default="fashion-mnist",
        help="fashion-mnist (the digits when it is not installed), digits, or a folder of IDX files",
    )  # fmt: skip
    p.add_argument("--out", type=ca.writable_dir, default="results/fashion_mnist", help="units and report")
    p.add_argument("--work", type=ca.writable_dir, default="runs/study", help="checkpoints (not committed)")
    p.add_argument("--quick", action="store_true", help="every stage on a few images, one seed: minutes")
    p.add_argument("--threads", type=ca.positive_int, default=1, help="torch CPU threads (1: reproducible)")
    p.add_argument("--status", action="store_true", help="say what is done and left, compute nothing")
    p.add_argument(
        "--report-only", action="store_true", help="write the report from the units, compute nothing"
    )
    p.add_argument(
        "--limit", type=ca.positive_float, default=None, help="stop starting units after S seconds"
    )
    p.add_argument(
        "--accept-library-change", action="store_true",
        help="reuse units computed with another version of the layer library (the report says so)",
    )  # fmt: skip
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    from . import study_report

    parser = build_parser()
    args = parser.parse_args(argv)
    cfg = dict(QUICK if args.quick else DEFAULT)
    data = args.data
    if data == "fashion-mnist" and not data_mod.fashion_mnist_available():
        print(f"shc study: Fashion-MNIST is not installed; {data_mod.INSTALL_HINT}. Using the digits.",
              file=sys.stderr)  # fmt: skip
        data = "digits"
    torch.set_num_threads(args.threads)
    study = Study(args.out, args.work, data, cfg, args.accept_library_change, not args.no_progress)
    units = plan(cfg)
    if args.status:
        counts: dict[str, int] = {}
        todo = []
        for u in units:
            s = study.status(u)
            counts[s] = counts.get(s, 0) + 1
            if s != "done":
                todo.append(u)
        left = _hours(study.estimate(todo))
        print(f"{counts.get('done', 0)} of {len(units)} units done ({counts.get('stale', 0)} stale, "
              f"{counts.get('missing', 0)} missing); est. {left} of one core left")  # fmt: skip
        if counts.get("library"):
            print(f"{counts['library']} units were computed with another version of the layer library "
                  f"(its hash is not {study.hashes['library']}): they count as not done; "
                  "--accept-library-change reuses them")  # fmt: skip
        if todo:
            print(f"next: {todo[0].stage} {todo[0].name}")
        return 0
    left = 0
    if not args.report_only:
        left = study.run(units, args.limit)
    path = study_report.write(study, units)
    print(
        f"report: {path}"
        + (f" ({left} units not done yet: rerun the same command to resume)" if left else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
