"""``shc_kernels.attacks`` is ``shc_kernels.research.attacks`` (the paper's attacks and RCD; the
[train] extra for the models they run on, [robustness] for the attack suite).

The attacks live in the research application; this name is kept so that ``from shc_kernels.attacks
import fgsm`` works as ``shc.attacks`` does. ``import shc_kernels`` does not load it.
"""

import sys

from .research import attacks as _attacks

sys.modules[__name__] = _attacks
