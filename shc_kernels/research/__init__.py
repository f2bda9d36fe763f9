"""The research application beside the layer library: the paper's models (``models``), attacks and
RCD score (``attacks``), data, training, the robustness protocol, its reports and the study.

It imports the library (``shc_kernels``); the library never imports it. Its dependencies are the
package's extras, not the base install: ``pip install 'shc_kernels[train]'`` (torchvision, tqdm,
numpy, scikit-learn: models, data, training) and ``'shc_kernels[robustness]'`` (the train extra plus
torchattacks and matplotlib: the attack suite, reports and the study).
"""

from __future__ import annotations

import importlib.util

# extra -> the modules it provides (import names), in the order a message lists them.
EXTRAS = {
    "train": ("torchvision", "tqdm", "numpy", "sklearn"),
    "robustness": ("torchvision", "tqdm", "numpy", "sklearn", "torchattacks", "matplotlib"),
}
_PIP_NAMES = {"sklearn": "scikit-learn"}


class MissingExtra(ImportError):
    """A part of the application needs an extra that is not installed; the message is one line
    that names the extra to install."""


def missing(extra: str, modules: tuple[str, ...] | None = None) -> list[str]:
    """The pip names of the ``extra``'s packages (or of its ``modules`` only) not installed here."""
    wanted = EXTRAS[extra] if modules is None else modules
    return [_PIP_NAMES.get(m, m) for m in wanted if not _installed(m)]


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a finder that refuses the name, or a broken module
        return False


def require(extra: str, what: str, modules: tuple[str, ...] | None = None) -> None:
    """Raise MissingExtra naming the extra when one of its packages (or of ``modules``, the ones
    ``what`` imports) is not installed."""
    absent = missing(extra, modules)
    if absent:
        raise MissingExtra(
            f"{what} needs {', '.join(absent)} (not installed): pip install 'shc_kernels[{extra}]'"
        )
