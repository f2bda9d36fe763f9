"""Which backend computes a call: "reference", "cpu", "triton", "cuda" or "auto".

"auto" picks the fastest backend available for the tensor's device: "cpu" (compiled C++) for
CPU tensors, "triton" then "cuda" for CUDA tensors (float64 goes to "cuda", as Triton has no
fp64 path), "reference" when nothing compiled is there.
The environment variable SHC_BACKEND, when set, replaces "auto" (never an explicit choice).
Where "auto" has two compiled candidates (CUDA tensors with both "triton" and "cuda" built), the
layer times both once per shape and keeps the faster (``fastest``; functional.choose_backend).
The "cuda" backend's one-launch and two-launch forms are chosen the same way (choose_form).
"""

from __future__ import annotations

import os

import torch

from . import ops

BACKENDS = ("reference", "cpu", "triton", "cuda")


def backend_device(name: str) -> str | None:
    """The device type whose tensors backend ``name`` takes (None: any)."""
    if name == "triton":
        from .triton import interpreting

        return "cpu" if interpreting() else "cuda"  # the interpreter runs on CPU tensors
    return {"cpu": "cpu", "cuda": "cuda"}.get(name)


def unavailable_reason(name: str) -> str | None:
    """Why backend ``name`` cannot run on this machine, or None when it can."""
    if name == "reference":
        return None
    if name == "cpu":
        return ops.LOAD_ERROR
    if name == "cuda":
        if ops.LOAD_ERROR:
            return ops.LOAD_ERROR
        if not ops.cuda_compiled():
            return "shc_kernels was not compiled with CUDA support (no CUDA kernels in csrc/cuda yet)"
        if not torch.cuda.is_available():
            return "no CUDA device is available"
        return None
    if name == "triton":
        from .triton import unavailable_reason as triton_reason

        return triton_reason()
    raise ValueError(f"unknown backend {name!r}; expected one of {BACKENDS + ('auto',)}")


def available_backends() -> list[str]:
    """The backends that can run here, e.g. ["reference", "cpu"]."""
    return [b for b in BACKENDS if unavailable_reason(b) is None]


def auto_candidates(x: torch.Tensor) -> list[str]:
    """The compiled backends "auto" may pick for ``x``, in order of preference."""
    if x.device.type == "cpu":
        wanted = ("cpu",)
    elif x.dtype == torch.float64:
        wanted = ("cuda",)  # Triton has no fp64 path
    else:
        wanted = ("triton", "cuda")
    return [b for b in wanted if unavailable_reason(b) is None]


_FASTEST: dict = {}


def cached_choice(key) -> str | None:
    """What ``fastest`` chose for ``key``, or None if it has not timed it."""
    return _FASTEST.get(key)


def fastest(key, candidates, run, device_type: str) -> str:
    """The candidate for which ``run(candidate)`` is fastest, timed once per ``key`` (a warm-up
    call, then the best of three) and cached; ``device_type`` is where ``run`` computes, so CUDA
    work is synchronised before the clock is read. A candidate that raises is left out with a
    warning, so one broken backend (or form) cannot take "auto" down with it."""
    if key in _FASTEST:
        return _FASTEST[key]
    import time
    import warnings

    cuda = device_type == "cuda"

    def timed(c) -> float:
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        run(c)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    best, best_time = None, float("inf")
    for c in candidates:
        try:
            timed(c)  # warm-up: autotuning, lazy initialisation
            t = min(timed(c) for _ in range(3))
        except Exception as exc:  # noqa: BLE001 - any failure disqualifies the candidate
            warnings.warn(f"shc_kernels: {c!r} failed while timing {key}: {exc}", stacklevel=3)
            continue
        if t < best_time:
            best, best_time = c, t
    if best is None:
        raise RuntimeError(f"nothing among {candidates} could run {key}")
    _FASTEST[key] = best
    return best


def resolve(backend: str, x: torch.Tensor) -> str:
    """The concrete backend for a call on tensor ``x``; a clear ValueError when it can't run."""
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a string, got {type(backend).__name__}")
    if backend == "auto":
        backend = os.environ.get("SHC_BACKEND", "auto") or "auto"
    if backend == "auto":
        candidates = auto_candidates(x)
        return candidates[0] if candidates else "reference"
    reason = unavailable_reason(backend)
    if reason is not None:
        raise ValueError(f"backend {backend!r} is not available: {reason}")
    device = backend_device(backend)
    if device is not None and x.device.type != device:
        raise ValueError(f"backend {backend!r} runs on {device} tensors, but x is on {x.device}")
    return backend
