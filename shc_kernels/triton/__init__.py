"""The Triton backend: statistics as a two-stage reduction + the hypernetwork (stats.py), the
modulated conv as implicit GEMMs (conv.py), both wrapped as ``shc::triton_*`` custom ops
(ops.py). Triton is imported lazily: importing this package never needs it."""

from __future__ import annotations

import os

__all__ = ["unavailable_reason"]


def interpreting() -> bool:
    """True when Triton kernels run on CPU tensors through the interpreter."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def unavailable_reason() -> str | None:
    """None when the Triton backend can run here, else a short reason."""
    try:
        import triton  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install
        return f"triton could not be imported ({exc})"
    import torch

    if torch.cuda.is_available() or interpreting():
        return None
    return "no CUDA device is available (set TRITON_INTERPRET=1 to run the Triton kernels on CPU)"
