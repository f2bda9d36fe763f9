"""Argument types shared by every ``shc`` command: one place that says what a count, a
probability, an input file, an output folder or a device is.

Each is an argparse ``type=`` callable: it returns the parsed value or raises
``argparse.ArgumentTypeError``, which argparse prints as ``argument --NAME: MESSAGE`` with exit
status 2. None of them creates or touches anything: an output path is only checked to be
creatable, so a rejected command line writes nothing. ``fail`` reports an error found after
parsing the same way (one line, status 2, no traceback).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import NoReturn

__all__ = [
    "device",
    "existing_dir",
    "existing_file",
    "fail",
    "nonnegative_float",
    "nonnegative_int",
    "positive_float",
    "positive_int",
    "probability",
    "writable_dir",
    "writable_file",
]

_Bad = argparse.ArgumentTypeError


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise _Bad(f"expected a whole number, got {text!r}") from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _Bad(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise _Bad(f"expected a finite number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    value = _int(text)
    if value <= 0:
        raise _Bad(f"must be a whole number > 0, got {text!r}")
    return value


def nonnegative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise _Bad(f"must be a whole number >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    value = _float(text)
    if value <= 0:
        raise _Bad(f"must be a number > 0, got {text!r}")
    return value


def nonnegative_float(text: str) -> float:
    value = _float(text)
    if value < 0:
        raise _Bad(f"must be a number >= 0, got {text!r}")
    return value


def probability(text: str) -> float:
    value = _float(text)
    if not 0.0 <= value <= 1.0:
        raise _Bad(f"must be a probability in [0, 1], got {text!r}")
    return value


def existing_file(text: str) -> str:
    if os.path.isdir(text):
        raise _Bad(f"{text!r} is a folder, expected a file")
    if not os.path.isfile(text):
        raise _Bad(f"no file at {text!r}")
    if not os.access(text, os.R_OK):
        raise _Bad(f"{text!r} is not readable")
    return text


def existing_dir(text: str) -> str:
    if os.path.isfile(text):
        raise _Bad(f"{text!r} is a file, expected a folder")
    if not os.path.isdir(text):
        raise _Bad(f"no folder at {text!r}")
    return text


def _creatable(path: str, what: str) -> None:
    """``path`` does not exist: its nearest existing ancestor must be a writable folder."""
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise _Bad(f"cannot create {what} {path!r}: {parent!r} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise _Bad(f"cannot create {what} {path!r}: {parent!r} is not writable")


def writable_dir(text: str) -> str:
    """An output folder: an existing writable folder, or one that can be created (not a file)."""
    if not text:
        raise _Bad("expected a folder, got an empty path")
    if os.path.exists(text):
        if not os.path.isdir(text):
            raise _Bad(f"{text!r} is a file, expected a folder")
        if not os.access(text, os.W_OK | os.X_OK):
            raise _Bad(f"folder {text!r} is not writable")
    else:
        _creatable(text, "folder")
    return text


def writable_file(text: str) -> str:
    """An output file: not a folder, and either writable or creatable in a writable folder."""
    if not text or text.endswith(("/", os.sep)):
        raise _Bad(f"expected a file name, got {text!r}")
    if os.path.isdir(text):
        raise _Bad(f"{text!r} is a folder, expected a file")
    if os.path.exists(text):
        if not os.access(text, os.W_OK):
            raise _Bad(f"{text!r} is not writable")
    else:
        _creatable(text, "file")
    return text


def device(text: str) -> str:
    """A torch device of this machine: ``cpu``, ``cuda`` or ``cuda:N`` with N < the GPU count."""
    import torch

    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise _Bad(f"{text!r} is not a device name (expected cpu, cuda or cuda:N)") from None
    if dev.type == "cpu":
        return str(dev)
    if dev.type != "cuda":
        raise _Bad(f"device {text!r} is not supported here (expected cpu, cuda or cuda:N)")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise _Bad(f"device {text!r}: this machine has no CUDA GPU (use cpu)")
    if dev.index is not None and dev.index >= count:
        raise _Bad(f"device {text!r}: this machine has {count} CUDA GPU(s), cuda:0..cuda:{count - 1}")
    return str(dev)


def fail(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    """Report an error found after parsing: ``PROG: error: MESSAGE`` on one line, exit status 2."""
    one_line = " ".join(str(message).split())
    print(f"{parser.prog}: error: {one_line}", file=sys.stderr, flush=True)
    raise SystemExit(2)
