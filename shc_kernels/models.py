"""``shc_kernels.models`` is ``shc_kernels.research.models`` (the paper's networks; the [train] extra).

The models live in the research application; this name is kept so that ``from shc_kernels.models
import plain10`` works as ``shc.models`` does. ``import shc_kernels`` does not load it.
"""

import sys

from .research import models as _models

sys.modules[__name__] = _models
