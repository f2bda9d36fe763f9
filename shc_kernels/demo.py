"""``shc demo``: the package's main job, end to end, in a few minutes on a laptop CPU.

1. ``shc info`` and every backend's SHC layer checked against the reference;
2. Plain-10 and Plain-10-SHC trained on the embedded digits data (``shc train``);
3. every attack of the paper on both (``shc attack``: Tables 1–4, Figures 2–3), with the LSA and
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

from . import backends, bench, cli, evaluate, train
from . import data as data_mod


def _train(name: str, shc: bool, args) -> torch.nn.Module:
    out = os.path.join(args.out, name)
    argv = [
        "--arch",
        "plain10",
        "--small-input",
        "--digits-size",
        str(args.digits_size),
        "--epochs",
        str(args.epochs),
        "--batch-size",
        "64",
        "--lr",
        "0.05",
        "--milestones",
        "--out",
        out,
        "--seed",
        str(args.seed),
    ]
    if shc:
        argv.append("--shc")
    if args.no_progress:
        argv.append("--no-progress")
    if os.path.isfile(os.path.join(out, train.CHECKPOINT)):
        argv.append("--resume")  # a rerun picks up where the last one stopped
    print(f"\n== training {name}: shc train {' '.join(argv)}", flush=True)
    start = time.perf_counter()
    train.run(train.build_parser().parse_args(argv))
    print(f"   {name} trained in {time.perf_counter() - start:.0f} s", flush=True)
    return evaluate.load_model(os.path.join(out, train.CHECKPOINT))


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
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--digits-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick-check-only", action="store_true", help="only step 1 (info + backend check)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    print("\n".join(cli.info_lines()))
    print("\n== SHC layer 16->24, 3x3, N=4, 12x12, fp32: every backend against the reference")
    if not cli.demo_check("cpu"):
        print("demo: a backend disagrees with the reference", file=sys.stderr)
        return 1
    if args.quick_check_only:
        return 0
    os.makedirs(args.out, exist_ok=True)
    nets = {"Plain-10": _train("plain10", False, args), "Plain-10-SHC": _train("plain10_shc", True, args)}
    _, val, _ = data_mod.digits(args.digits_size)
    print("\n== attacks (paper settings; LSA and image count scaled down: evaluate.QUICK)", flush=True)
    results = evaluate.run_attacks(
        nets,
        val,
        os.path.join(args.out, "attack"),
        seed=args.seed,
        progress=not args.no_progress,
        **evaluate.QUICK,
    )
    tables = evaluate.format_tables(results)
    print(tables)
    bench_md = _microbench(args)
    report = os.path.join(args.out, "report.md")
    with open(report, "w") as f:
        f.write(
            "# shc demo report\n\nPlain-10 and Plain-10-SHC trained on the embedded digits data "
            f"({args.digits_size} px, {args.epochs} epochs), attacked with the paper's attacks.\n\n"
        )
        f.write(tables)
        f.write("\n\n![Figure 2](attack/fig2_gaussian_example.png)\n\n![Figure 3](attack/fig3_lsa.png)\n\n")
        f.write("## Microbenchmark\n\n" + bench_md)
    print(f"\nreport: {report} (demo took {time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
