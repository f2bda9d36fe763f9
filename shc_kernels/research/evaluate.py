"""shc attack: the paper's robustness tables (1-4) and figures (2-3) for trained checkpoints.

    shc attack --checkpoint runs/plain/checkpoint.pt runs/shc/checkpoint.pt --out runs/attack

Gaussian noise runs over the whole validation set (Table 1). The gradient attacks (Table 2), the
route-restricted RAND+FGSM (Table 4) and LocSearchAdv (Table 3, Figure 3) run on the images that
every compared model classifies correctly with confidence > 0.9. Defaults are the paper's (§3.2);
--max-images, --lsa-images and --lsa-steps shrink the run.

The protocol and its runs live in ``protocol``, the tables and figures in ``report``; this
module is the command line (its names are re-exported here for older imports).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from . import args as ca
from . import data as data_mod
from .checkpoint import CheckpointError, load_model
from .checkpoint import read as read_checkpoint
from .protocol import (
    ATTACKS,
    PAPER,
    QUICK,
    default_label,
    run_attacks,
)
from .report import format_tables, write_outputs

__all__ = [
    "ATTACKS",
    "PAPER",
    "QUICK",
    "build_parser",
    "format_tables",
    "load_model",
    "main",
    "run",
    "run_attacks",
    "write_outputs",
]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shc attack", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--checkpoint", nargs="+", required=True, type=ca.existing_file, metavar="PATH",
        help="checkpoints of shc train",
    )  # fmt: skip
    p.add_argument("--label", nargs="+", default=None, metavar="NAME", help="one name per checkpoint")
    p.add_argument(
        "--data", default=None, type=data_mod.data_argument(splits=("val",), digits=True),
        help="digits (the embedded digits), fashion-mnist, a folder of its IDX files, or an ImageNet-style "
        "folder with val/ (default: the data the checkpoints were trained on, which they record)",
    )  # fmt: skip
    p.add_argument(
        "--image-size", type=ca.positive_int, default=256,
        help="crop size for an ImageFolder --data (resized by the paper's 299/256 first)",
    )  # fmt: skip
    p.add_argument(
        "--digits-size", type=ca.positive_int, default=None,
        help="image size of the embedded digits (default: the checkpoints' training size, else 32)",
    )  # fmt: skip
    p.add_argument("--attacks", nargs="+", choices=ATTACKS, default=list(ATTACKS))
    p.add_argument(
        "--gaussian-images", type=ca.positive_int, default=None, help="images for Table 1 (default: all)"
    )
    p.add_argument(
        "--max-images", type=ca.positive_int, default=PAPER["max_images"], help="images for Tables 2 and 4"
    )
    p.add_argument(
        "--lsa-images", type=ca.positive_int, default=PAPER["lsa_images"], help="images for Table 3"
    )
    p.add_argument("--lsa-steps", type=ca.nonnegative_int, default=PAPER["lsa_steps"])
    p.add_argument(
        "--lsa-pixels", type=ca.positive_int, default=PAPER["lsa_pixels"], help="pixels perturbed per step"
    )
    p.add_argument(
        "--lsa-candidates",
        type=ca.positive_int,
        default=PAPER["lsa_candidates"],
        help="pixels tried per step",
    )
    p.add_argument("--rand-variant", choices=["paper", "tramer"], default="paper")
    p.add_argument("--confidence", type=ca.probability, default=PAPER["confidence"])
    p.add_argument("--batch-size", type=ca.positive_int, default=64)
    p.add_argument("--seed", type=ca.nonnegative_int, default=0)
    p.add_argument("--device", type=ca.device, default=None, help="default: cuda when available, else cpu")
    p.add_argument(
        "--out", type=ca.writable_dir, default="runs/attack", help="folder for the tables and figures"
    )
    p.add_argument("--no-progress", action="store_true")
    return p


def _load_models(parser, args, device) -> dict:
    if args.label is not None and len(args.label) != len(args.checkpoint):
        ca.fail(parser, f"argument --label: {len(args.label)} names for {len(args.checkpoint)} checkpoints")
    models, metas = {}, []
    for i, path in enumerate(args.checkpoint):
        try:
            model, meta = load_model(path, device)
        except CheckpointError as exc:
            ca.fail(parser, f"argument --checkpoint: {exc}")
        metas.append(meta)
        label = args.label[i] if args.label else default_label(meta)
        while label in models:
            label += "'"
        models[label] = model
    return models, metas


def _recorded(path: str) -> dict | None:
    """The data options a checkpoint of `shc train` records ({"data", "digits_size"}), or None
    where it records none (written by something else, or before `shc train` recorded them)."""
    state = read_checkpoint(path)
    recorded = state.get("args") if isinstance(state, dict) else None
    if not isinstance(recorded, dict) or "data" not in recorded:
        return None
    return {"data": recorded["data"], "digits_size": recorded.get("digits_size", 32)}


def _describe(data) -> str:
    return "the embedded digits" if data in (None, "digits") else str(data)


def _same_data(a, b) -> bool:
    a, b = (None if d == "digits" else d for d in (a, b))
    if a is None or b is None or a == "fashion-mnist" or b == "fashion-mnist":
        return a == b
    return os.path.realpath(a) == os.path.realpath(b)


def choose_data(parser, args) -> None:
    """--data (and --digits-size) from what the checkpoints record when not given: never the
    digits for a model trained on other data. Checkpoints that disagree, or record nothing, need
    --data; a --data other than a checkpoint's own is said on stderr."""
    records = {path: _recorded(path) for path in args.checkpoint}
    if args.data is None:
        unknown = [path for path, r in records.items() if r is None]
        if unknown:
            ca.fail(parser, f"argument --data: {unknown[0]} does not record the data it was trained on: give "
                            "--data (digits for the embedded digits)")  # fmt: skip
        kinds = {(r["data"], r["digits_size"] if r["data"] is None else None) for r in records.values()}
        if len(kinds) > 1:
            found = "; ".join(f"{path}: {_describe(r['data'])}" for path, r in records.items())
            ca.fail(parser, f"argument --data: the checkpoints were trained on different data ({found}): "
                            "give --data")  # fmt: skip
        first = next(iter(records.values()))
        args.data = first["data"] or "digits"
        if args.digits_size is None and first["data"] is None:
            args.digits_size = first["digits_size"]
        print(f"shc attack: data: {_describe(args.data)}, as the checkpoints record", file=sys.stderr)
    else:
        for path, r in records.items():
            if r is not None and not _same_data(r["data"] or "digits", args.data):
                print(f"shc attack: note: {path} was trained on {_describe(r['data'])}, attacked on "
                      f"{_describe(args.data)} (--data)", file=sys.stderr)  # fmt: skip
    if args.data == "digits":  # the digits' size: the one the digits-trained checkpoints record
        sizes = {path: r["digits_size"] for path, r in records.items() if r is not None and r["data"] is None}
        if args.digits_size is None and len(set(sizes.values())) > 1:
            found = "; ".join(f"{path}: {size} px" for path, size in sizes.items())
            ca.fail(parser, f"argument --digits-size: the checkpoints were trained on digits of different "
                            f"sizes ({found}): give --digits-size")  # fmt: skip
        if args.digits_size is None and sizes:
            args.digits_size = next(iter(sizes.values()))
        for path, size in sizes.items():
            if args.digits_size is not None and size != args.digits_size:
                print(f"shc attack: note: {path} was trained on {size} px digits, attacked on "
                      f"{args.digits_size} px (--digits-size)", file=sys.stderr)  # fmt: skip
    if args.digits_size is None:
        args.digits_size = 32


def _load_val(parser, args):
    data = None if args.data == "digits" else args.data
    try:
        if data is None or data == "fashion-mnist" or data_mod.is_idx_folder(data):
            _, val, num_classes = data_mod.load(data, digits_size=args.digits_size)
        else:
            val, num_classes = data_mod.imagefolder_val(data, args.image_size, paper_eval=True)
    except (FileNotFoundError, ValueError) as exc:
        ca.fail(parser, f"argument --data: {exc}")
    return val, num_classes


def run(args, parser=None) -> dict:
    """Everything ``shc attack`` does after parsing: checkpoints and data checked first (a
    one-line error, status 2), then the attacks, the tables on stdout and the files."""
    parser = parser or build_parser()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    models, metas = _load_models(parser, args, device)
    choose_data(parser, args)
    val, num_classes = _load_val(parser, args)
    for path, meta in zip(args.checkpoint, metas, strict=True):
        if meta["num_classes"] != num_classes:
            ca.fail(
                parser,
                f"argument --checkpoint: {path} has {meta['num_classes']} classes "
                f"but the data has {num_classes}",
            )
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
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        run(args, parser)
    except (FileNotFoundError, ValueError) as exc:
        print(f"shc attack: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
