"""``shc train``: train Plain-10 / ResNet-18 / ResNet-50, with or without SHC layers, on one
process or under ``torchrun`` (DDP: NCCL on GPUs, Gloo on CPUs).

Defaults are He et al.'s: SGD with momentum 0.9, lr 0.1 × global batch / 256, weight decay 1e-4
on every weight (the hypernetworks included: the paper's l2 term), lr ÷10 at epochs 30 and 60 of
90. Nothing is lost on a crash: a checkpoint is written atomically at the end of every epoch
(and every ``--save-every`` steps), and ``--resume`` continues exactly where it stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset
from torch.utils.data.distributed import DistributedSampler

from . import cli_args, models
from . import data as data_mod
from .modules import convert

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shc train", description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=sorted(models.ARCHS), default="plain10")
    p.add_argument("--shc", action="store_true", help="SHC layers in place of the 3x3 convs")
    p.add_argument("--small-input", action="store_true", help="3x3 stride-1 stem, no max-pool")
    p.add_argument(
        "--data",
        type=data_arg,
        default=None,
        help="fashion-mnist, or an ImageNet-style folder with train/ and val/ (default: digits)",
    )
    p.add_argument("--paper-eval", action="store_true", help="evaluate with resize 299, centre crop 256")
    p.add_argument("--image-size", type=int, default=224, help="crop size for --data")
    p.add_argument("--digits-size", type=int, default=32, help="image size of the embedded digits data")
    p.add_argument("--epochs", type=int, default=90)
    p.add_argument("--batch-size", type=int, default=256, help="per process")
    p.add_argument("--lr", type=float, default=None, help="default 0.1 x global batch / 256")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--milestones", type=int, nargs="*", default=[30, 60], help="epochs where lr /= 10")
    p.add_argument("--out", default="runs/train", help="checkpoint and metrics folder")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--init-from", default=None, help="plain checkpoint or torchvision weights to convert")
    p.add_argument("--amp", choices=["bf16", "fp16"], default=None)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--grad-route", choices=["both", "conv", "hyper"], default="both")
    p.add_argument("--backend", default="auto", help="SHC backend")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=0, help="also checkpoint every N steps (0: off)")
    p.add_argument("--max-steps-per-epoch", type=int, default=0, help="cap steps per epoch (0: all)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--width", type=cli_args.positive_float, default=1.0, help="channel width multiplier")
    return p


def data_arg(text: str) -> str:
    """--data: the literal ``fashion-mnist`` or an existing folder (data.load reads it)."""
    return text if text == "fashion-mnist" else cli_args.existing_dir(text)


def _width_kwargs(args) -> dict:
    # Only a non-default width reaches models.build and the checkpoint, so old checkpoints load.
    return {"width": args.width} if args.width != 1 else {}


# ---------------------------------------------------------------- distributed set-up


def _setup_distributed():
    """(rank, world, local_rank, device), initialising the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, local_rank, device


def _all_sum(values: list[float], device) -> list[float]:
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


# ---------------------------------------------------------------- checkpoints


def _model_meta(args, num_classes) -> dict:
    meta = {"arch": args.arch, "shc": args.shc, "small_input": args.small_input, "num_classes": num_classes}
    return meta | _width_kwargs(args)


def save_checkpoint(path: str, state: dict) -> None:
    """Write to a temporary file, then os.replace: a crash never leaves a half-written file."""
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str, meta: dict) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--resume: no checkpoint at {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("meta") != meta:
        raise ValueError(f"checkpoint {path} is of another model: {state.get('meta')} (this run: {meta})")
    return state


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


def init_weights(path: str, args, num_classes: int) -> torch.nn.Module:
    """Load a plain checkpoint (ours) or a torchvision state_dict into the plain model, then
    convert it to SHC (output-preserving) when --shc is given."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--init-from: no file at {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state:
        state = state["model"]
    plain = models.build(
        args.arch, num_classes, shc=False, small_input=args.small_input, **_width_kwargs(args)
    )
    try:
        plain.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(
            f"--init-from {path}: not a plain {args.arch} with {num_classes} classes: {exc}"
        ) from exc
    if args.shc:
        convert(plain, kernel_sizes=((3, 3),), grad_route=args.grad_route, backend=args.backend)
    return plain


# ---------------------------------------------------------------- train / evaluate


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


def run(args) -> list[dict]:
    rank, world, _local_rank, device = _setup_distributed()
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    train_set, val_set, num_classes = data_mod.load(
        args.data, args.image_size, args.paper_eval, args.digits_size
    )
    meta = _model_meta(args, num_classes)

    if args.init_from:
        model = init_weights(args.init_from, args, num_classes)
    else:
        model = models.build(
            args.arch,
            num_classes,
            shc=args.shc,
            small_input=args.small_input,
            **_width_kwargs(args),
            **({"grad_route": args.grad_route, "backend": args.backend} if args.shc else {}),
        )
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    global_batch = args.batch_size * world
    lr = args.lr if args.lr is not None else 0.1 * global_batch / 256
    optimizer = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=args.momentum, weight_decay=args.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=args.milestones, gamma=0.1)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}[args.amp]
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")

    def autocast():
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=amp_dtype)

    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=args.seed)
    loader = DataLoader(
        train_set,
        batch_size=args.batch_size,
        sampler=sampler,
        num_workers=args.workers,
        drop_last=True,
        pin_memory=device.type == "cuda",
    )
    steps_per_epoch = (
        len(loader) if args.max_steps_per_epoch <= 0 else min(len(loader), args.max_steps_per_epoch)
    )
    if steps_per_epoch == 0:
        raise ValueError(f"batch size {args.batch_size} x {world} processes is larger than the training set")

    os.makedirs(args.out, exist_ok=True)
    ckpt_path = os.path.join(args.out, CHECKPOINT)
    start_epoch, start_step = 0, 0
    if args.resume:
        state = load_checkpoint(ckpt_path, meta)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, start_step = state["epoch"], state["step"]
        _set_rng_state(state["rng"][rank] if rank < len(state["rng"]) else state["rng"][0])

    net = torch.compile(model) if args.compile else model
    if world > 1:
        net = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)

    def checkpoint(epoch, step):
        rngs = [None] * world
        if world > 1:
            dist.all_gather_object(rngs, _rng_state())
        else:
            rngs = [_rng_state()]
        if rank == 0:
            save_checkpoint(
                ckpt_path,
                {
                    "meta": meta,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "epoch": epoch,
                    "step": step,
                    "rng": rngs,
                    "args": vars(args),
                },
            )

    history = []
    metrics_path = os.path.join(args.out, METRICS)
    for epoch in range(start_epoch, args.epochs):
        sampler.set_epoch(epoch)
        net.train()
        first = start_step if epoch == start_epoch else 0
        seen = loss_sum = 0.0
        t0 = time.perf_counter()
        bar = None
        if rank == 0 and not args.no_progress:
            from tqdm import tqdm

            bar = tqdm(
                total=steps_per_epoch,
                initial=first,
                desc=f"epoch {epoch + 1}/{args.epochs}",
                file=sys.stderr,
                dynamic_ncols=True,
            )
        for step, (images, target) in enumerate(loader):
            if step >= steps_per_epoch:
                break
            if step < first:  # resumed mid-epoch: the sampler replays the same order
                continue
            images = images.to(device, non_blocking=True)
            target = target.to(device, non_blocking=True)
            if args.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast():
                loss = F.cross_entropy(net(images).float(), target)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch + 1}, step {step}")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            seen += len(target)
            loss_sum += loss.item() * len(target)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
            if args.save_every and (step + 1) % args.save_every == 0 and step + 1 < steps_per_epoch:
                checkpoint(epoch, step + 1)
        if bar is not None:
            bar.close()
        elapsed = time.perf_counter() - t0
        loss_total, seen_total = _all_sum([loss_sum, seen], device)
        record = {
            "epoch": epoch + 1,
            "train_loss": loss_total / max(seen_total, 1),
            "images_per_s": seen_total / max(elapsed, 1e-9),
            "lr": optimizer.param_groups[0]["lr"],
            "epoch_time_s": elapsed,
        }
        record.update(
            evaluate(net, val_set, rank, world, args.batch_size, device, autocast, args.channels_last)
        )
        scheduler.step()
        checkpoint(epoch + 1, 0)
        if rank == 0:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            print(json.dumps(record), flush=True)
        history.append(record)
    if world > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return history


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"shc train: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
