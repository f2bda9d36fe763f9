"""Checkpoints of `shc train`: one file format, written atomically, read with one-line errors.

A checkpoint is a dict ``{"meta", "model", "epoch", "step", ...}`` where ``meta`` holds what
rebuilds the model (``arch, shc, small_input, num_classes`` and the width). `shc train` writes and
resumes them; `shc attack`, `shc study` and `shc demo` load the model they hold.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from . import models

FILENAME = "checkpoint.pt"
RCD_MIN_CLASSES = 3  # the robustness score RCD (paper eq. (5)) compares the top class with two others


class CheckpointError(ValueError):
    """A checkpoint file cannot be used; the message says which file and why, in one line."""


def _prefix(flag: str) -> str:
    return f"{flag}: " if flag else ""


def read(path: str, flag: str = "") -> object:
    """torch.load(path) on the CPU, or a CheckpointError naming ``flag`` (the option that gave the
    path, if any) and the file."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{_prefix(flag)}no checkpoint at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any damaged or foreign file gets the same message
        raise CheckpointError(
            f"{_prefix(flag)}{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: the "
            "file is damaged or was not written by torch.save)"
        ) from None


def save(path: str, state: dict) -> None:
    """Write to a temporary file, then os.replace: a crash never leaves a half-written file."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_weights(model: nn.Module, state, flag: str, path: str, what: str) -> None:
    """model.load_state_dict(state) or a one-line CheckpointError saying what does not fit."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{_prefix(flag)}{path} holds no weights (expected a state_dict)")
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        detail = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), "")
        raise CheckpointError(f"{_prefix(flag)}{path} is not {what}: {detail or 'shapes differ'}") from None
    if missing or unexpected:
        example = (list(missing) + list(unexpected))[0]
        raise CheckpointError(
            f"{_prefix(flag)}{path} is not {what}: {len(missing)} missing and {len(unexpected)} "
            f"unexpected weights (e.g. {example})"
        )


def read_training_state(path: str, meta: dict, flag: str = "--resume") -> dict:
    """The whole state of a run (to resume it), checked to be of the model ``meta`` describes."""
    state = read(path, flag)
    if not isinstance(state, dict) or not {"meta", "model", "epoch", "step"} <= set(state):
        raise CheckpointError(f"{_prefix(flag)}{path} is not a checkpoint of `shc train`")
    if state.get("meta") != meta:
        raise CheckpointError(
            f"{_prefix(flag)}checkpoint {path} is of another model: {state.get('meta')} (this run: {meta})"
        )
    return state


def load_model(path: str, device="cpu", min_classes: int = RCD_MIN_CLASSES) -> tuple[nn.Module, dict]:
    """(model in eval mode, meta) from a checkpoint of `shc train`; a CheckpointError otherwise.
    ``min_classes``: the attacks' RCD needs at least 3 classes."""
    state = read(path)
    if not isinstance(state, dict) or not isinstance(state.get("meta"), dict) or "model" not in state:
        raise CheckpointError(
            f'{path} has no "meta"/"model" entries: expected a checkpoint written by `shc train` '
            "(meta = {arch, shc, small_input, num_classes})"
        )
    if state["meta"].get("num_classes", min_classes) < min_classes:
        raise CheckpointError(
            f"{path} is a {state['meta']['num_classes']}-class model: the robustness score RCD "
            "(paper eq. (5)) needs at least 3 classes"
        )
    try:
        model = models.build(**state["meta"])
        model.load_state_dict(state["model"])
    except (TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: cannot rebuild the model from meta {state['meta']}: {exc}") from exc
    return model.to(device).eval(), dict(state["meta"])
