"""The ``shc`` command: ``shc info``, ``demo``, ``train``, ``attack``, ``bench``, ``check``, ``study``."""

from __future__ import annotations

import argparse
import platform
import sys

import torch

from .. import __version__, backends, ops


def info_lines() -> list[str]:
    lines = [
        f"shc_kernels {__version__}",
        f"python      {platform.python_version()} ({platform.machine()})",
        f"torch       {torch.__version__} (CUDA build: {torch.version.cuda or 'no'})",
    ]
    try:
        import triton

        lines.append(f"triton      {triton.__version__}")
    except ImportError:
        lines.append("triton      not installed")
    if ops.compiled_available():
        built = ops._C.built_torch_version()
        lines.append(
            f"extension   shc_kernels._C built against torch {built}, "
            f"CUDA kernels: {'yes' if ops.cuda_compiled() else 'no'}"
        )
    else:
        lines.append(f"extension   not loaded: {ops.LOAD_ERROR}")
    lines.append(f"devices     cpu ({torch.get_num_threads()} threads)")
    for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        lines.append(f"            cuda:{i} {torch.cuda.get_device_name(i)}")
    lines.append("backends:")
    for name in backends.BACKENDS:
        reason = backends.unavailable_reason(name)
        lines.append(f"  {name:<10} {'available' if reason is None else 'unavailable: ' + reason}")
    # Candidates that `auto` left out because they failed or disagreed with the reference.
    excluded = getattr(backends, "excluded_candidates", lambda: [])()
    if excluded:
        lines.append("excluded:")
        lines.extend(f"  {line}" for line in excluded)
    return lines


# Subcommands with their own argument parsers, run as `shc NAME ...`: the module and the extra it
# needs beyond the base install (None: torch alone; see shc_kernels.research.EXTRAS).
SUBCOMMANDS = {
    "demo": ("shc_kernels.cli.demo", "robustness"),
    "train": ("shc_kernels.research.train", "train"),
    "attack": ("shc_kernels.research.evaluate", "robustness"),
    "bench": ("shc_kernels.cli.bench", None),
    "check": ("shc_kernels.cli.check", None),
    "study": ("shc_kernels.research.study", "robustness"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in SUBCOMMANDS:
        import importlib

        from ..research import MissingExtra, require

        module, extra = SUBCOMMANDS[argv[0]]
        try:
            if extra is not None:
                require(extra, f"shc {argv[0]}")
            return importlib.import_module(module).main(argv[1:])
        except MissingExtra as exc:  # one line that names the extra, no traceback
            print(exc, file=sys.stderr)
            return 2
    parser = argparse.ArgumentParser(prog="shc", description=__doc__.replace("``", ""))
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, devices and available backends")
    for name, (module, _) in SUBCOMMANDS.items():
        sub.add_parser(name, help=f"see `shc {name} --help` ({module})", add_help=False)
    parser.parse_args(argv)
    print("\n".join(info_lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
