"""shc demo: the package's main job, end to end, in a few minutes on a laptop CPU.

1. ``shc info`` and every backend's SHC layer checked against the reference;
2. Plain-10 and Plain-10-SHC trained (``shc train``) on real images: Fashion-MNIST when it is
   installed (narrow models, a subset of its 60,000 training images), the embedded digits
   otherwise;
3. every attack of the paper on both (``shc attack``: Tables 1-4, Figures 2-3), with the LSA and
   the image count scaled down to fit;
4. a microbenchmark of the fused layer against the naive per-sample loop (``shc bench``).

Everything lands in ``--out`` (default runs/demo): checkpoints, metrics, tables, plots and
report.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from .. import backends
from ..research import args as ca
from ..research import checkpoint, protocol, report, train
from ..research import data as data_mod
from . import bench, check, info_lines

# Fashion-MNIST in the demo: Plain-10 at 1/8 width, --train-steps batches of 128 per epoch.
FASHION = dict(width=0.125, batch_size=128, gaussian_images=1000)


def _train(name: str, shc: bool, args) -> torch.nn.Module:
    out = os.path.join(args.out, name)
    argv = [
        "--arch",
        "plain10",
        "--small-input",
        "--epochs",
        str(args.epochs),
        "--lr",
        "0.05",
        "--milestones",
    ]
    argv += ["--out", out, "--seed", str(args.seed)]
    if args.data == "fashion-mnist":
        argv += ["--data", "fashion-mnist", "--width", str(FASHION["width"])]
        argv += ["--batch-size", str(FASHION["batch_size"]), "--max-steps-per-epoch", str(args.train_steps)]
    else:
        argv += ["--digits-size", str(args.digits_size), "--batch-size", "64"]
    if shc:
        argv.append("--shc")
    if args.no_progress:
        argv.append("--no-progress")
    if os.path.isfile(os.path.join(out, checkpoint.FILENAME)):
        argv.append("--resume")  # a rerun picks up where the last one stopped
    print(f"\n== training {name}: shc train {' '.join(argv)}", flush=True)
    start = time.perf_counter()
    if train.main(argv) != 0:
        raise RuntimeError(f"shc train {' '.join(argv)} failed")
    print(f"   {name} trained in {time.perf_counter() - start:.0f} s", flush=True)
    return checkpoint.load_model(os.path.join(out, checkpoint.FILENAME))[0]


def _microbench(args) -> str:
    fused = [f"shc:{b}" for b in backends.available_backends() if backends.backend_device(b) == "cpu"]
    bargs = bench.build_parser().parse_args(
        [
            "--shapes",
            "core",
            "--methods",
            "plain",
            "naive",
            *fused,
            "--reps",
            "3",
            "--warmup",
            "1",
            "--no-memory",
        ]
    )
    bargs.threads, bargs.batch = torch.get_num_threads(), 32
    print("\n== microbenchmark (batch 32, fp32, CPU): the fused layer against the naive per-sample loop")
    rows = bench.run_layers(bargs)
    return bench.markdown(
        rows, bench.machine_info(bargs), "shc bench --shapes core --methods plain naive shc"
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shc demo", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data", choices=["fashion-mnist", "digits"], default="fashion-mnist",
        help="fashion-mnist (the digits when it is not installed) or digits",
    )  # fmt: skip
    p.add_argument("--out", type=ca.writable_dir, default="runs/demo")
    p.add_argument(
        "--epochs", type=ca.positive_int, default=None, help="default: 1 (Fashion-MNIST), 3 (digits)"
    )
    p.add_argument(
        "--train-steps", type=ca.positive_int, default=100, help="Fashion-MNIST batches of 128 per epoch"
    )
    p.add_argument("--digits-size", type=ca.positive_int, default=16)
    p.add_argument("--seed", type=ca.nonnegative_int, default=0)
    p.add_argument("--quick-check-only", action="store_true", help="only step 1 (info + shc check --quick)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.data == "fashion-mnist" and not data_mod.fashion_mnist_available():
        print(f"Fashion-MNIST is not installed: the demo uses the embedded digits ({data_mod.INSTALL_HINT})")
        args.data = "digits"
    if args.epochs is None:
        args.epochs = 1 if args.data == "fashion-mnist" else 3
    start = time.perf_counter()
    print("\n".join(info_lines()))
    print("\n== shc check --device cpu --quick: every backend and form against the reference")
    if check.main(["--device", "cpu", "--quick"]) != 0:
        print("demo: a backend disagrees with the reference (see the FAIL rows above)", file=sys.stderr)
        return 1
    if args.quick_check_only:
        return 0
    os.makedirs(args.out, exist_ok=True)
    nets = {"Plain-10": _train("plain10", False, args), "Plain-10-SHC": _train("plain10_shc", True, args)}
    if args.data == "fashion-mnist":
        _, val, _ = data_mod.fashion_mnist()
        quick = {**protocol.QUICK, "gaussian_images": FASHION["gaussian_images"]}
        about = (
            f"Fashion-MNIST (Plain-10 at width {FASHION['width']}, {args.epochs} epoch(s) of "
            f"{args.train_steps} batches of {FASHION['batch_size']})"
        )
    else:
        _, val, _ = data_mod.digits(args.digits_size)
        quick = dict(protocol.QUICK)
        about = f"the embedded digits data ({args.digits_size} px, {args.epochs} epochs)"
    print("\n== attacks (paper settings; LSA and image count scaled down: protocol.QUICK)", flush=True)
    results = protocol.run_attacks(
        nets,
        val,
        os.path.join(args.out, "attack"),
        seed=args.seed,
        progress=not args.no_progress,
        **quick,
    )
    tables = report.format_tables(results)
    print(tables)
    bench_md = _microbench(args)
    report_path = os.path.join(args.out, "report.md")
    with open(report_path, "w") as f:
        f.write(
            f"# shc demo report\n\nPlain-10 and Plain-10-SHC trained on {about}, attacked with the "
            "paper's attacks.\n\n"
        )
        f.write(tables)
        f.write("\n\n![Figure 2](attack/fig2_gaussian_example.png)\n\n![Figure 3](attack/fig3_lsa.png)\n\n")
        f.write("## Microbenchmark\n\n" + bench_md)
    print(f"\nreport: {report_path} (demo took {time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
