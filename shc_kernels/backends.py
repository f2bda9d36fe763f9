"""Which backend computes a call: "reference", "cpu", "triton", "cuda" or "auto".

"auto" picks the fastest backend available for the tensor's device: "cpu" (compiled C++) for
CPU tensors, "triton" then "cuda" for CUDA tensors (float64 goes to "cuda", as Triton has no
fp64 path), "reference" when nothing compiled is there.
The environment variable SHC_BACKEND, when set, replaces "auto" (never an explicit choice).
Where "auto" has two compiled candidates (CUDA tensors with both "triton" and "cuda" built), the
layer times both once per shape and keeps the faster (``fastest``, called by functional.plan).
The "cuda" backend's one-launch and two-launch forms are chosen the same way (functional.plan).
"""

from __future__ import annotations

import os

import torch

from . import ops

BACKENDS = ("reference", "cpu", "triton", "cuda")
# Test-only: the CUDA kernels of csrc/cuda compiled for and run on the CPU (``make cuda-sim``).
# Never in available_backends(), never chosen by "auto".
HIDDEN_BACKENDS = ("cuda_sim",)


def backend_device(name: str) -> str | None:
    """The device type whose tensors backend ``name`` takes (None: any)."""
    if name == "triton":
        from .triton import interpreting

        return "cpu" if interpreting() else "cuda"  # the interpreter runs on CPU tensors
    return {"cpu": "cpu", "cuda": "cuda", "cuda_sim": "cpu"}.get(name)


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
            return (
                "shc_kernels was built without its CUDA kernels (a CPU-only build: SHC_SKIP_CUDA=1, no "
                "nvcc, or a CPU-only torch at build time); the wheel `make wheel` builds where nvcc is found "
                "has them"
            )
        if not torch.cuda.is_available():
            return "no CUDA device is available"
        return None
    if name == "cuda_sim":
        return ops.LOAD_ERROR or ops.load_sim()
    if name == "triton":
        from .triton import unavailable_reason as triton_reason

        return triton_reason()
    raise ValueError(f"unknown backend {name!r}; expected one of {BACKENDS + ('auto',)}")


def check_name(backend) -> str:
    """``backend`` when it names a backend (or "auto"), else a clear error."""
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a string, got {type(backend).__name__}")
    if backend != "auto" and backend not in BACKENDS + HIDDEN_BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS + ('auto',)}")
    return backend


def available_backends() -> list[str]:
    """The backends that can run here, e.g. ["reference", "cpu"]."""
    return [b for b in BACKENDS if unavailable_reason(b) is None]


def auto_candidates(x: torch.Tensor) -> list[str]:
    """The compiled backends "auto" may pick for ``x``, in order of preference.

    Under ``torch.use_deterministic_algorithms(True)`` (not warn_only) with autograd recording, a
    GPU tensor gets none, so "auto" takes the reference: the Triton and CUDA backwards sum dW and
    dm with atomics and raise in that mode, where the reference's backward is torch's own ops."""
    if x.device.type == "cpu":
        wanted = ("cpu",)
    elif (
        torch.are_deterministic_algorithms_enabled()
        and not torch.is_deterministic_algorithms_warn_only_enabled()
        and torch.is_grad_enabled()
    ):
        return []
    elif x.dtype == torch.float64:
        wanted = ("cuda",)  # Triton has no fp64 path
    else:
        wanted = ("triton", "cuda")
    return [b for b in wanted if unavailable_reason(b) is None]


_FASTEST: dict = {}
_EXCLUDED: dict = {}  # timing key -> {candidate: why it was left out}

# Largest error, relative to the larger output's scale, at which two computations of the layer
# count as the same (fp32 accumulates in a different order; fp16/bf16 round the output).
TOLERANCE = {torch.float64: 1e-7, torch.float32: 1e-3, torch.float16: 2e-2, torch.bfloat16: 6e-2}


def cached_choice(key) -> str | None:
    """What ``fastest`` chose for ``key``, or None if it has not timed it."""
    return _FASTEST.get(key)


def excluded_candidates() -> list[str]:
    """One line per candidate that ``fastest`` left out of a shape since start-up, and why."""
    return [f"{c} for {describe(key)}: {why}" for key, found in _EXCLUDED.items() for c, why in found.items()]


def describe(key) -> str:
    """A timing key in words: what was chosen (backend, or a backend's form) and for which call."""
    if not (isinstance(key, tuple) and len(key) in (13, 14) and key[0] in ("backend", "form")):
        return str(key)
    what, rest = (("backend", key[1:]) if key[0] == "backend" else (f"{key[1]} form", key[2:]))
    shape, dtype, device, fmt, wshape, stride, padding, dilation, groups, _bias, grad, route = rest
    return (f"the {what} of x {tuple(shape)} {str(dtype).replace('torch.', '')} {fmt} on {device}, weight "
            f"{tuple(wshape)}, stride {stride}, padding {padding}, dilation {dilation}, groups {groups}, "
            f"{'forward+backward, route ' + route if grad else 'forward'}")  # fmt: skip


def max_error(outputs, expected) -> float:
    """max |a - b| / max |b| over paired tensors (inf where shapes differ or values are not finite)."""
    if len(outputs) != len(expected):
        return float("inf")
    worst = 0.0
    for a, b in zip(outputs, expected, strict=True):
        if a.shape != b.shape:
            return float("inf")
        if b.numel() == 0:
            continue
        a, b = a.double(), b.double()
        err = ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
        worst = max(worst, err if err == err else float("inf"))  # NaN counts as wrong
    return worst


def fastest(key, candidates, run, device_type: str, reference=None, fallback: str | None = None) -> str:
    """The candidate for which ``run(candidate)`` is fastest, timed once per ``key`` (a warm-up
    call, then the best of three) and cached; ``device_type`` is where ``run`` computes, so CUDA
    work is synchronised before the clock is read. A candidate that raises is left out with a
    warning, so one broken backend (or form) cannot take "auto" down with it.

    Check before trust: ``run`` returns what it computed (y and the gradients); where two
    candidates disagree beyond the dtype's tolerance, ``reference(batch)`` (the reference on the
    first samples) decides, against ``run(candidate, batch)`` on the same samples, and a wrong
    candidate is left out for this key with a warning (``excluded_candidates`` lists it). When
    nothing is left, ``fallback`` is returned if given, else RuntimeError."""
    if key in _FASTEST:
        return _FASTEST[key]
    import time
    import warnings

    cuda = device_type == "cuda"

    def timed(c):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = run(c)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0, out

    times, outputs = {}, {}
    for c in candidates:
        try:
            timed(c)  # warm-up: autotuning, lazy initialisation
            runs = [timed(c) for _ in range(3)]
        except Exception as exc:  # noqa: BLE001 - any failure disqualifies the candidate
            warnings.warn(f"shc_kernels: {c!r} failed while timing {describe(key)}: {exc}", stacklevel=3)
            continue
        times[c], outputs[c] = min(t for t, _ in runs), runs[-1][1]
    if reference is not None and len(outputs) >= 2:
        for c, why in _wrong_candidates(outputs, run, reference).items():
            warnings.warn(f"shc_kernels: excluded {c!r} for {describe(key)}: {why}", stacklevel=3)
            _EXCLUDED.setdefault(key, {})[c] = why
            del times[c]
    if not times:
        if fallback is None:
            raise RuntimeError(f"nothing among {candidates} could compute {describe(key)}")
        warnings.warn(f"shc_kernels: using {fallback!r} for {describe(key)}", stacklevel=3)
        best = fallback
    else:
        best = min(times, key=times.get)
    _FASTEST[key] = best
    return best


def _wrong_candidates(outputs: dict, run, reference) -> dict:
    """{candidate: why} for the candidates that disagree with the reference, checked only when
    they disagree among themselves (the reference is slow: it runs on the first samples)."""
    first = next(iter(outputs.values()))
    tol = TOLERANCE.get(first[0].dtype, 1e-3)
    if all(max_error(o, first) <= tol for o in outputs.values()) or first[0].shape[0] == 0:
        return {}
    batch = min(2, first[0].shape[0])
    expected = reference(batch)
    wrong = {}
    for c in outputs:
        err = max_error(run(c, batch), expected)
        if err > tol:
            wrong[c] = f"max error {err:.2e} against the reference (tolerance {tol:.0e})"
    return wrong


def env_backend() -> str | None:
    """The backend SHC_BACKEND names (None: unset or empty); an unknown value is an error that
    names the variable, on every call that reads it."""
    value = os.environ.get("SHC_BACKEND")
    if not value:
        return None
    if value != "auto" and value not in BACKENDS + HIDDEN_BACKENDS:
        expected = BACKENDS + ("auto",)
        raise ValueError(
            f"the environment variable SHC_BACKEND must be one of {expected} (or unset), got {value!r}"
        )
    return value


def resolve(backend: str, x: torch.Tensor) -> str:
    """The concrete backend for a call on tensor ``x``; a clear ValueError when it can't run."""
    check_name(backend)
    source = "backend"
    if backend == "auto":
        backend = env_backend() or "auto"
        source = "SHC_BACKEND"
    if backend == "auto":
        candidates = auto_candidates(x)
        return candidates[0] if candidates else "reference"
    reason = unavailable_reason(backend)
    if reason is not None:
        raise ValueError(f"{source} {backend!r} is not available: {reason}{_env_fix(source)}")
    device = backend_device(backend)
    if device is not None and x.device.type != device:
        raise ValueError(
            f"{source} {backend!r} runs on {device} tensors, but x is on {x.device}{_env_fix(source)}"
        )
    return backend


def _env_fix(source: str) -> str:
    """Where SHC_BACKEND asked for the backend, how to undo that (it acts on every layer alike)."""
    if source != "SHC_BACKEND":
        return ""
    return f"; unset SHC_BACKEND to let 'auto' choose (available here: {available_backends()})"
