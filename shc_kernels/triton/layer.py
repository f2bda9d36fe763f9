"""The whole SHC layer on the Triton backend: what ``shc::triton_shc_layer`` (ops.py) runs.

Forward: the statistics and the hypernetwork (stats.py), then the modulated conv (conv.py), as the
two ops ``statistical_map`` and ``modulated_conv2d`` compute them; mu, sigma and the hidden layer
are kept for the backward. onelaunch.py computes the same in one launch (the statistics a window of
samples ahead of the conv's tiles, so they overlap the conv and the conv re-reads x from L2). The
layer runs it where the conv's work per element of x is small against the statistics pass that it
saves (``use_one_launch``): at most ONE_LAUNCH_CHANNELS output channels per group per input pixel,
C/groups * OH*OW / (H*W). Of ResNet-50's 3x3 layers that is 64@56, 128@56/2 and 256@28/2, where the
static model (tools/gpu_model.py) predicts the one launch 4-35% faster on an H100 and 9-28% on an
A100; at the others the separate launches (bench/results/gpu_model.md, "One-launch forward"). These
are predictions from compiled code, not timings: bench/gpu_check.sh compares the two on the first
GPU. ``ONE_LAUNCH`` True or False, or the environment variable SHC_ONE_LAUNCH=1 or 0, forces one
of the two.

Backward (first order), when dx takes both routes and dW is asked for (and the plane is not small
against the channels: conv.dm_before_dx), in this order:
  1. dW, with dm reduced from the same per-sample partials (conv._mconv_dw_kernel, NEED_DM);
  2. the hypernetwork's backward from dm in torch (stats.mlp_backward: N x 2D, small), giving the
     parameter gradients and dmu, dsigma;
  3. the per-(n, d) coefficients of the statistics' backward (stats.hyper_coefficients);
  4. the conv route's dx (conv._mconv_dx_kernel) with the hypernetwork route added in its epilogue,
     x read at the positions it writes: dx is written once.
So neither the statistics' dx kernel (a second read of x and a second dx) nor autograd's sum of
the two routes runs. Where dm does not come before dx (the weight needs no gradient, or small
planes with many channels, where dW's dm reduction costs more than a pass over x: dm is then
reduced inside the dx kernel), the hypernetwork route is added to the conv route's dx in place
by the statistics' dx kernel (read x and dx, write dx); where dx takes one route only, that
route's kernel writes it alone.
"""

from __future__ import annotations

import os

from .._checks import conv_out_size
from . import conv, onelaunch, stats

__all__ = ["layer_forward", "separate_forward", "layer_backward", "use_one_launch", "ONE_LAUNCH"]

# Which forward the layer runs: None picks per layer (use_one_launch); True or False forces the
# one launch (onelaunch.py) or the separate launches (see above). Without code, the environment
# variable SHC_ONE_LAUNCH=1 or 0 does the same where ONE_LAUNCH is None.
ONE_LAUNCH: bool | None = None
ONE_LAUNCH_CHANNELS = 64


def _forced_by_environment() -> bool | None:
    value = os.environ.get("SHC_ONE_LAUNCH", "")
    if value in ("", "auto"):
        return None
    if value not in ("0", "1"):
        raise ValueError(
            f"the environment variable SHC_ONE_LAUNCH must be 0, 1 or auto (or unset), got {value!r}"
        )
    return value == "1"


def use_one_launch(x, weight, stride, padding, dilation, groups) -> bool:
    """Whether layer_forward runs the one-launch forward for this layer (see the module's docstring)."""
    forced = ONE_LAUNCH if ONE_LAUNCH is not None else _forced_by_environment()
    if forced is not None:
        return bool(forced)
    oh, ow = conv_out_size(x, weight, stride, padding, dilation)
    return weight.shape[0] // groups * oh * ow <= ONE_LAUNCH_CHANNELS * x.shape[2] * x.shape[3]


def layer_forward(x, weight, bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, stride, padding, dilation,
                  groups, eps):  # fmt: skip
    """(y, m fp32 (N, kh, kw), mu float64 (N, D), sigma fp32 (N, D), h fp32 (N, K))."""
    one = use_one_launch(x, weight, stride, padding, dilation, groups)
    forward = onelaunch.layer_forward if one else separate_forward
    return forward(x, weight, bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, stride, padding, dilation,
                   groups, eps)  # fmt: skip


def separate_forward(x, weight, bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, stride, padding, dilation,
                     groups, eps):  # fmt: skip
    """layer_forward's contract as separate launches: the statistics and the map, then the conv."""
    kh, kw = weight.shape[2], weight.shape[3]
    m, mu, sigma, h = stats.stats_map_forward(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, kh, kw, eps)
    y = conv.conv_forward(x, weight, m, bias, stride, padding, dilation, groups)
    return y, m, mu, sigma, h


def layer_backward(gy, x, weight, m, mu, sigma, h, fc1_weight, fc2_weight, stride, padding, dilation, groups,
                   conv_x, hyper_x, need_w, need_map):  # fmt: skip
    """(dx, dW, d fc1_weight, d fc1_bias, d fc2_weight, d fc2_bias); what is not asked for is an empty
    tensor. ``conv_x`` / ``hyper_x``: dx through the convolution / through the statistics (both:
    their sum); ``need_map``: the hypernetwork's parameter gradients."""
    need_map = need_map or hyper_x
    mlp = None
    if conv_x and hyper_x and need_w and conv.dm_before_dx(x.shape, weight.shape, gy.shape, groups):

        def coefficients(dm):
            nonlocal mlp
            mlp = stats.mlp_backward(dm, fc1_weight, fc2_weight, m, mu, sigma, h)
            return stats.hyper_coefficients(mu, sigma, mlp[0], mlp[1], x.shape[2] * x.shape[3])

        dx, dw, dm = conv.conv_backward(gy, x, weight, m, stride, padding, dilation, groups, True, True, True,
                                        hyper=coefficients)  # fmt: skip
        folded = mlp is not None  # not on an empty batch, where no kernel runs
    else:
        dx, dw, dm = conv.conv_backward(gy, x, weight, m, stride, padding, dilation, groups, conv_x, need_w,
                                        need_map)  # fmt: skip
        folded = False
    empty = x.new_empty(0)
    if not need_map:
        return dx, dw, empty, empty, empty, empty
    if mlp is None:
        mlp = stats.mlp_backward(dm, fc1_weight, fc2_weight, m, mu, sigma, h)
    dmu, dsigma, g_w1, g_b1, g_w2, g_b2 = mlp
    if hyper_x and not folded:
        # in place into the conv route's dx when there is one, else a new tensor
        dx = stats.hyper_dx(x, mu, sigma, dmu, dsigma, dx if conv_x else None)
    return dx, dw, g_w1, g_b1, g_w2, g_b2
