"""shc_kernels: fused Statistical Hyper-Convolution (SHC) layers for PyTorch.

import shc_kernels as shc
layer = shc.SHCConv2d(64, 64, 3, padding=1)          # drop-in nn.Conv2d
y = shc.shc_conv2d(x, w, b, fc1_w, fc1_b, fc2_w, fc2_b, padding=1)
shc.available_backends()                               # e.g. ["reference", "cpu"]
"""

from . import reference
from .backends import available_backends
from .functional import modulated_conv2d, shc_conv2d, statistical_map
from .modules import HyperNetwork, SHCConv2d, convert

__version__ = "0.1.0"


def __getattr__(name):
    # shc.models and shc.attacks live in the research application (shc_kernels.research), which
    # needs the [train] extra: they are loaded on first use, never by `import shc_kernels`.
    if name in ("models", "attacks"):
        import importlib

        return importlib.import_module(f"{__name__}.research.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "HyperNetwork",
    "SHCConv2d",
    "attacks",
    "available_backends",
    "convert",
    "models",
    "modulated_conv2d",
    "reference",
    "shc_conv2d",
    "statistical_map",
]
