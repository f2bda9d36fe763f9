"""``shc train``: train Plain-10 / ResNet-18 / ResNet-50, with or without SHC layers, on one
process or under ``torchrun`` (DDP: NCCL on GPUs, Gloo on CPUs).

Defaults are He et al.'s: SGD with momentum 0.9, lr 0.1 × global batch / 256, weight decay 1e-4
on every weight (the hypernetworks included: the paper's l2 term), lr ÷10 at epochs 30 and 60 of
90. Nothing is lost on a crash: a checkpoint is written atomically at the end of every epoch
(and every ``--save-every`` steps), and ``--resume`` continues exactly where it stopped, mid-epoch
included: the sampler starts at the saved batch, and every sample's augmentation is seeded by
(seed, epoch, position), so it does not depend on the batches skipped or on ``--workers``.
A resume takes the run's options (data, model, optimiser, seed, batch size, epochs) from its
checkpoint: ``--resume --out OUT`` is enough. Given again, they must agree with the run's, except
``--epochs`` (a new length) and ``--batch-size`` at the end of an epoch; resuming a finished run
says so and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from .. import backends
from ..modules import convert
from . import args as ca
from . import checkpoint, models
from . import data as data_mod

METRICS = "metrics.jsonl"


class DataError(ValueError):
    """An image of the data folder cannot be read."""


def _plain(text: str) -> str:
    return text.replace("``", "")


def build_parser() -> argparse.ArgumentParser:
    A = ca
    p = argparse.ArgumentParser(prog="shc train", description=_plain(__doc__.split("\n\n")[0]))
    p.add_argument("--arch", choices=sorted(models.ARCHS), default="plain10")
    p.add_argument("--shc", action="store_true", help="SHC layers in place of the 3x3 convs")
    p.add_argument("--small-input", action="store_true", help="3x3 stride-1 stem, no max-pool")
    p.add_argument(
        "--data",
        type=data_mod.data_argument(),
        default=None,
        help="fashion-mnist, or an ImageNet-style folder with train/ and val/ (default: digits)",
    )
    p.add_argument("--paper-eval", action="store_true", help="evaluate with resize 299, centre crop 256")
    p.add_argument("--image-size", type=A.positive_int, default=224, help="crop size for --data")
    p.add_argument(
        "--digits-size", type=A.positive_int, default=32, help="image size of the embedded digits data"
    )
    p.add_argument("--epochs", type=A.positive_int, default=90)
    p.add_argument("--batch-size", type=A.positive_int, default=256, help="per process")
    p.add_argument("--lr", type=A.positive_float, default=None, help="default 0.1 x global batch / 256")
    p.add_argument("--momentum", type=A.nonnegative_float, default=0.9)
    p.add_argument("--weight-decay", type=A.nonnegative_float, default=1e-4)
    p.add_argument(
        "--milestones", type=A.positive_int, nargs="*", default=[30, 60], help="epochs where lr /= 10"
    )
    p.add_argument("--out", type=A.writable_dir, default="runs/train", help="checkpoint and metrics folder")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument(
        "--init-from", type=A.existing_file, default=None, help="plain checkpoint or torchvision weights"
    )
    p.add_argument("--amp", choices=["bf16", "fp16"], default=None)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--grad-route", choices=["both", "conv", "hyper"], default="both")
    p.add_argument("--backend", choices=["auto", *backends.BACKENDS], default="auto", help="SHC backend")
    p.add_argument(
        "--device", type=A.device, default=None, help="default: cuda:LOCAL_RANK with a GPU, else cpu"
    )
    p.add_argument("--workers", type=A.nonnegative_int, default=0, help="DataLoader worker processes")
    p.add_argument("--seed", type=A.nonnegative_int, default=0)
    p.add_argument(
        "--save-every", type=A.nonnegative_int, default=0, help="also checkpoint every N steps (0: off)"
    )
    p.add_argument(
        "--max-steps-per-epoch", type=A.nonnegative_int, default=0, help="cap steps per epoch (0: all)"
    )
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--width", type=A.positive_float, default=1.0, help="channel width multiplier")
    return p


def _width_kwargs(args) -> dict:
    # Only a non-default width reaches models.build and the checkpoint, so old checkpoints load.
    return {"width": args.width} if args.width != 1 else {}


# ---------------------------------------------------------------- distributed set-up


def _setup_distributed(device_arg: str | None):
    """(rank, world, device), initialising the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(device_arg or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        if world > 1 and device.index is not None:
            raise ValueError(f"--device {device_arg}: under torchrun each process uses cuda:LOCAL_RANK")
        device = torch.device("cuda", local_rank if device.index is None else device.index)
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def _teardown_distributed(world: int) -> None:
    if world > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _all_sum(values: list[float], device) -> list[float]:
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


# ---------------------------------------------------------------- data


def _sample_seed(seed: int, epoch: int, position: int) -> int:
    return ((seed * 0x9E3779B1 + epoch) * 0x85EBCA77 + position) % (1 << 63)


class SeededSamples(Dataset):
    """``dataset``, read with torch's and Python's generators seeded per sample from the
    (index, seed) pairs EpochSampler yields, so a sample's augmentation does not depend on the
    worker that reads it or on what was read before. A plain index reads it unseeded. An image
    that cannot be read is a DataError naming the file."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, None)
        try:
            if seed is None:
                return self.dataset[index]
            with _seeded(seed):
                return self.dataset[index]
        except (OSError, SyntaxError, ValueError) as exc:  # PIL's errors for a damaged image
            samples = getattr(self.dataset, "samples", None)
            if samples is None:
                raise
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(f"cannot read image {samples[index][0]}: {first}") from None


@contextlib.contextmanager
def _seeded(seed: int):
    python_state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # the CPU one only: CUDA streams are left alone
        random.seed(seed)
        try:
            yield
        finally:
            random.setstate(python_state)


class EpochSampler(Sampler):
    """This process's share of a permutation of the training set seeded by (seed, epoch),
    whole batches only, from batch ``start`` on; yields (index, the sample's seed)."""

    def __init__(self, size: int, batch_size: int, rank: int = 0, world: int = 1, seed: int = 0):
        self.size, self.batch_size, self.rank, self.world, self.seed = size, batch_size, rank, world, seed
        self.epoch = self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def batches(self) -> int:
        return self.size // self.world // self.batch_size

    def __len__(self) -> int:
        return (self.batches() - self.start) * self.batch_size

    def __iter__(self):
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        mine = order[: self.batches() * self.batch_size * self.world][self.rank :: self.world].tolist()
        for pos in range(self.start * self.batch_size, len(mine)):
            yield mine[pos], _sample_seed(self.seed, self.epoch, pos * self.world + self.rank)


def load_data(args, rank: int):
    """(train, val, num_classes), each set wrapped in SeededSamples."""
    train_set, val_set, num_classes = data_mod.load(
        args.data, args.image_size, args.paper_eval, args.digits_size
    )
    if rank == 0 and num_classes < checkpoint.RCD_MIN_CLASSES:
        print(
            f"shc train: warning: the data has {num_classes} classes; `shc attack` needs a model "
            f"of >= {checkpoint.RCD_MIN_CLASSES} classes (RCD compares the top class with two others)",
            file=sys.stderr,
        )
    return SeededSamples(train_set), SeededSamples(val_set), num_classes


def make_loader(train_set, args, rank: int, world: int, device) -> tuple[EpochSampler, DataLoader, int]:
    """(sampler, loader, steps per epoch)."""
    sampler = EpochSampler(len(train_set), args.batch_size, rank, world, args.seed)
    steps = sampler.batches()
    if args.max_steps_per_epoch:
        steps = min(steps, args.max_steps_per_epoch)
    if steps == 0:
        raise ValueError(
            f"--batch-size {args.batch_size} x {world} processes is larger than the training set "
            f"({len(train_set)} images)"
        )
    loader = DataLoader(
        train_set,
        batch_size=args.batch_size,
        sampler=sampler,
        num_workers=args.workers,
        drop_last=True,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(args.seed),  # leaves the global generator alone
    )
    return sampler, loader, steps


# ---------------------------------------------------------------- model


def _model_meta(args, num_classes) -> dict:
    meta = {"arch": args.arch, "shc": args.shc, "small_input": args.small_input, "num_classes": num_classes}
    return meta | _width_kwargs(args)


def init_weights(path: str, args, num_classes: int) -> torch.nn.Module:
    """Load a plain checkpoint (ours) or a torchvision state_dict into the plain model, then
    convert it to SHC (output-preserving) when --shc is given."""
    state = checkpoint.read(path, "--init-from")
    if isinstance(state, dict) and "model" in state:
        state = state["model"]
    plain = models.build(
        args.arch, num_classes, shc=False, small_input=args.small_input, **_width_kwargs(args)
    )
    what = f"a plain {args.arch} with {num_classes} classes"
    checkpoint.load_weights(plain, state, "--init-from", path, what)
    if args.shc:
        convert(plain, kernel_sizes=((3, 3),), grad_route=args.grad_route, backend=args.backend)
    return plain


def build_model(args, num_classes: int, device) -> torch.nn.Module:
    if args.init_from:
        model = init_weights(args.init_from, args, num_classes)
    else:
        shc_kwargs = {"grad_route": args.grad_route, "backend": args.backend} if args.shc else {}
        model = models.build(
            args.arch,
            num_classes,
            shc=args.shc,
            small_input=args.small_input,
            **_width_kwargs(args),
            **shc_kwargs,
        )
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def build_optimizer(args, model, world: int):
    """(SGD, its MultiStepLR schedule, the fp16 GradScaler)."""
    lr = args.lr if args.lr is not None else 0.1 * args.batch_size * world / 256
    optimizer = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=args.momentum, weight_decay=args.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=args.milestones, gamma=0.1)
    device_type = next(model.parameters()).device.type
    scaler = torch.amp.GradScaler(device_type, enabled=args.amp == "fp16")
    return optimizer, scheduler, scaler


def wrap_model(model, args, world: int, device):
    net = torch.compile(model) if args.compile else model
    if world > 1:
        net = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    return net


def autocast_for(amp: str | None, device):
    """A function returning the autocast context of --amp (a null context without it)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}[amp]

    def autocast():
        return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)

    return autocast


# ---------------------------------------------------------------- checkpoints


@dataclass
class EpochSums:
    """What an epoch's record is computed from; a mid-epoch checkpoint keeps it (all processes
    summed), so the resumed epoch's loss and images/s cover the whole epoch."""

    images: float = 0.0
    loss: float = 0.0
    seconds: float = 0.0


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpointer:
    """Saves and restores everything a run needs to continue exactly: weights, optimiser,
    schedule, scaler, position (epoch, step), each process's generators and the epoch's sums."""

    def __init__(self, path, meta, model, optimizer, scheduler, scaler, rank, world, args):
        self.path, self.meta, self.rank, self.world, self.args = path, meta, rank, world, args
        self.model, self.optimizer, self.scheduler, self.scaler = model, optimizer, scheduler, scaler

    def save(self, epoch: int, step: int, sums: EpochSums) -> None:
        rngs = [None] * self.world
        if self.world > 1:
            dist.all_gather_object(rngs, _rng_state())
        else:
            rngs = [_rng_state()]
        images, loss = _all_sum([sums.images, sums.loss], next(self.model.parameters()).device)
        if self.rank == 0:
            checkpoint.save(
                self.path,
                {
                    "meta": self.meta,
                    "model": self.model.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "scaler": self.scaler.state_dict(),
                    "epoch": epoch,
                    "step": step,
                    "epoch_sums": asdict(EpochSums(images, loss, sums.seconds)),
                    "rng": rngs,
                    "args": vars(self.args),
                },
            )

    def restore(self) -> tuple[int, int, EpochSums]:
        """(epoch, step, sums so far) of the checkpoint, its state loaded into the run."""
        state = checkpoint.read_training_state(self.path, self.meta)
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise checkpoint.CheckpointError(
                f"--resume: {self.path} does not fit this run: {type(exc).__name__}"
            ) from None
        rngs = state["rng"]
        _set_rng_state(rngs[self.rank] if self.rank < len(rngs) else rngs[0])
        sums = EpochSums(**state.get("epoch_sums", {}))
        if self.rank != 0:  # the saved sums are every process's together
            sums = EpochSums(seconds=sums.seconds)
        return state["epoch"], state["step"], sums


# ---------------------------------------------------------------- train / evaluate


@dataclass
class Trainer:
    """One optimisation step: forward under autocast, loss, scaled backward, SGD step."""

    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    autocast: object
    device: torch.device
    channels_last: bool

    def step(self, images, target) -> float:
        images = images.to(self.device, non_blocking=True)
        target = target.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with self.autocast():
            loss = F.cross_entropy(self.net(images).float(), target)
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"the training loss is {value}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return value


def _progress_bar(args, rank, epoch, steps, first):
    if rank != 0 or args.no_progress:
        return None
    from tqdm import tqdm

    return tqdm(
        total=steps,
        initial=first,
        desc=f"epoch {epoch + 1}/{args.epochs}",
        file=sys.stderr,
        dynamic_ncols=True,
    )


def train_one_epoch(trainer, loader, sampler, epoch, first, steps, sums, ckpt, args, rank) -> dict:
    """Steps ``first`` .. ``steps`` of ``epoch``, with a checkpoint every --save-every steps;
    the record's loss and images/s count ``sums`` (the steps before a resume) too."""
    trainer.net.train()
    sampler.set_epoch(epoch, start=first)
    bar = _progress_bar(args, rank, epoch, steps, first)
    start = time.perf_counter() - sums.seconds
    for step, (images, target) in enumerate(loader, start=first):
        if step >= steps:
            break
        loss = trainer.step(images, target)
        sums.images += len(target)
        sums.loss += loss * len(target)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")
        if args.save_every and (step + 1) % args.save_every == 0 and step + 1 < steps:
            sums.seconds = time.perf_counter() - start
            ckpt.save(epoch, step + 1, sums)
    if bar is not None:
        bar.close()
    elapsed = time.perf_counter() - start
    images, loss = _all_sum([sums.images, sums.loss], trainer.device)
    return {
        "epoch": epoch + 1,
        "train_loss": loss / max(images, 1),
        "images": int(images),
        "images_per_s": images / max(elapsed, 1e-9),
        "lr": trainer.optimizer.param_groups[0]["lr"],
        "epoch_time_s": elapsed,
    }


def accuracy_counts(logits: torch.Tensor, target: torch.Tensor) -> tuple[int, int]:
    """(number correct in the top 1, in the top 5)."""
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    hit = top == target[:, None]
    return int(hit[:, 0].sum()), int(hit.any(dim=1).sum())


@torch.no_grad()
def evaluate(model, dataset, rank, world, batch_size, device, autocast, channels_last) -> dict:
    """Top-1/top-5 and loss over the whole validation set, each rank taking every world-th image."""
    model.eval()
    shard = Subset(dataset, range(rank, len(dataset), world))
    loader = DataLoader(shard, batch_size=batch_size, shuffle=False)
    loss = top1 = top5 = count = 0.0
    for images, target in loader:
        images, target = images.to(device), target.to(device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast():
            logits = model(images)
        loss += float(F.cross_entropy(logits.float(), target, reduction="sum"))
        c1, c5 = accuracy_counts(logits, target)
        top1, top5, count = top1 + c1, top5 + c5, count + len(target)
    loss, top1, top5, count = _all_sum([loss, top1, top5, count], device)
    model.train()
    return {"val_loss": loss / max(count, 1), "top1": top1 / max(count, 1), "top5": top5 / max(count, 1)}


def log_record(record: dict, out: str, rank: int) -> None:
    if rank == 0:
        with open(os.path.join(out, METRICS), "a") as f:
            f.write(json.dumps(record) + "\n")
        print(json.dumps(record), flush=True)


# ---------------------------------------------------------------- the recipe


def check_run(args, device) -> None:
    """What can be checked before any work: the output folder, --resume, --backend."""
    has_run = os.path.isfile(os.path.join(args.out, checkpoint.FILENAME))
    if args.resume and args.init_from:
        raise ValueError("--resume continues OUT's run; --init-from starts a new one: give one of them")
    if args.resume and not has_run:
        path = os.path.join(args.out, checkpoint.FILENAME)
        raise checkpoint.CheckpointError(f"--resume: no checkpoint at {path}")
    if not args.resume and has_run:
        raise ValueError(
            f"--out {args.out} already holds a run: add --resume to continue it, or choose another --out"
        )
    if args.shc and args.backend != "auto":
        reason = backends.unavailable_reason(args.backend)
        if reason is not None:
            raise ValueError(f"--backend {args.backend} is not available: {reason}")
        if backends.backend_device(args.backend) not in (None, device.type):
            raise ValueError(f"--backend {args.backend} does not run on {device.type} (the training device)")


# What --resume does with each option of the run (the rest are this process's own: --device,
# --workers, --out, --save-every, --no-progress, --compile, --backend, --channels-last).
# The run's data, model and optimisation: taken from the run; a different value is refused.
RUN_DEFINES = ("arch", "shc", "small_input", "width", "data", "image_size", "digits_size", "paper_eval",
               "seed", "grad_route", "amp", "lr", "momentum", "weight_decay", "milestones",
               "max_steps_per_epoch")  # fmt: skip


def given_options(parser: argparse.ArgumentParser, argv) -> set[str]:
    """The dests of the options given on the command line ``argv`` (not left at their defaults)."""
    quiet = copy.deepcopy(parser)
    for action in quiet._actions:
        action.default = argparse.SUPPRESS
    return set(vars(quiet.parse_args(argv)))


def resume_arguments(args, state: dict, given: set[str] | None) -> list[str]:
    """Make ``args`` the run's own for --resume: every option of RUN_DEFINES and --epochs and
    --batch-size not given (``given``: the options on the command line; None: all) comes from
    the run's checkpoint; a given one that differs from the run's is refused, except --epochs (a
    new length) and --batch-size at an epoch's end (mid-epoch the sampler's position in the epoch
    would not mean the same images). Returns what this command changes, in words."""
    recorded = state.get("args") if isinstance(state.get("args"), dict) else {}
    changes = []
    for name in (*RUN_DEFINES, "epochs", "batch_size"):
        if name not in recorded:
            continue  # a checkpoint older than the option
        theirs, ours = recorded[name], getattr(args, name)
        flag, epoch, step = "--" + name.replace("_", "-"), state["epoch"] + 1, state["step"]
        if given is not None and name not in given:
            setattr(args, name, theirs)
        elif ours != theirs and name == "epochs":
            changes.append(f"{flag} {ours} (the run had {theirs})")
        elif ours != theirs and name == "batch_size":
            if step:
                raise ValueError(
                    f"--resume: {flag} {ours} differs from the run's {theirs}, and the run stopped inside "
                    f"epoch {epoch} (step {step}): drop {flag}, or change it once an epoch ends"
                )
            changes.append(f"{flag} {ours} from epoch {epoch} (the run had {theirs}; its lr stays)")
        elif ours != theirs:
            was = "default" if theirs is None else theirs
            raise ValueError(
                f"--resume: {flag} {ours} differs from the run's {was}: a resume continues the run as it "
                f"was (drop {flag} to take the run's), or start a new run in another --out"
            )
    return changes


def run(args, given: set[str] | None = None) -> list[dict]:
    """``shc train`` after parsing. ``given``: the options on the command line (main passes them;
    None: every option counts as given), which --resume may not change (resume_arguments)."""
    rank, world, device = _setup_distributed(args.device)
    check_run(args, device)
    if args.resume:
        state = checkpoint.read(os.path.join(args.out, checkpoint.FILENAME), "--resume")
        if not isinstance(state, dict) or not {"meta", "model", "epoch", "step"} <= set(state):
            raise checkpoint.CheckpointError(f"--resume: {args.out} holds no checkpoint of `shc train`")
        changes = resume_arguments(args, state, given)
        # The model (all of its meta but the classes, which need the data) before anything is
        # said about the run: a finished run of another model is a refusal, not "finished".
        path = os.path.join(args.out, checkpoint.FILENAME)
        theirs = state["meta"] if isinstance(state["meta"], dict) else {}
        ours = _model_meta(args, theirs.get("num_classes"))
        if theirs != ours:
            raise checkpoint.CheckpointError(
                f"--resume: checkpoint {path} is of another model: {state['meta']} (this run: {ours})"
            )
        epoch, step = state["epoch"], state["step"]
        if epoch >= args.epochs:  # a finished run: said, exit status 0
            if rank == 0:
                print(f"shc train: the run in {args.out} is finished ({epoch} of {args.epochs} epochs): "
                      f"nothing to train; give --epochs N (N > {epoch}) with --resume to train it further",
                      file=sys.stderr)  # fmt: skip
            _teardown_distributed(world)
            return []
        if rank == 0:
            where = f"epoch {epoch + 1} of {args.epochs}" + (f", step {step}" if step else "")
            print(f"shc train: resuming {args.out} at {where} with the run's options"
                  + (f"; changed: {', '.join(changes)}" if changes else ""), file=sys.stderr)  # fmt: skip
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    train_set, val_set, num_classes = load_data(args, rank)
    sampler, loader, steps = make_loader(train_set, args, rank, world, device)
    model = build_model(args, num_classes, device)
    optimizer, scheduler, scaler = build_optimizer(args, model, world)
    ckpt = Checkpointer(
        os.path.join(args.out, checkpoint.FILENAME),
        _model_meta(args, num_classes),
        model,
        optimizer,
        scheduler,
        scaler,
        rank,
        world,
        args,
    )
    start_epoch, first, sums = ckpt.restore() if args.resume else (0, 0, EpochSums())
    net = wrap_model(model, args, world, device)
    autocast = autocast_for(args.amp, device)
    trainer = Trainer(net, optimizer, scaler, autocast, device, args.channels_last)

    history = []
    for epoch in range(start_epoch, args.epochs):
        record = train_one_epoch(trainer, loader, sampler, epoch, first, steps, sums, ckpt, args, rank)
        record.update(
            evaluate(net, val_set, rank, world, args.batch_size, device, autocast, args.channels_last)
        )
        scheduler.step()
        ckpt.save(epoch + 1, 0, EpochSums())
        log_record(record, args.out, rank)
        history.append(record)
        first, sums = 0, EpochSums()
    _teardown_distributed(world)
    return history


def _one_line(exc: BaseException) -> str:
    """The message of ``exc``; for one re-raised from a DataLoader worker, the original's."""
    text = str(exc).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        run(args, given_options(parser, sys.argv[1:] if argv is None else argv))
    except (FileNotFoundError, ValueError) as exc:
        ca.fail(parser, _one_line(exc))
    except KeyboardInterrupt:
        print(
            f"shc train: interrupted; continue from the last checkpoint with --resume --out {args.out}",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
