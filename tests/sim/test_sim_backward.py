"""The CUDA backward's contract beyond its numbers (tests/sim runs it on the CPU through the SIMT
layer): a channels_last grad_y reaches the kernel as it is, and the atomics of dW / dm are
reported to torch.use_deterministic_algorithms."""

from __future__ import annotations

import pytest
import torch
from helpers import make_params, rand_x
from sim_helpers import check_close
from torch.utils._python_dispatch import TorchDispatchMode

import shc_kernels as shc
from shc_kernels import reference


class _GradYLayouts(TorchDispatchMode):
    """Records the grad_y argument of every shc_sim::modulated_conv2d_backward call."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.shc_sim.modulated_conv2d_backward.default:
            self.seen.append(args[0])
        return func(*args, **(kwargs or {}))


def _conv(x, weight, m, bias):
    return shc.modulated_conv2d(x, weight, m, bias, padding=1, backend="cuda_sim")


@pytest.mark.parametrize("form", ["modulated_conv2d", "shc_conv2d"])
def test_channels_last_grad_y_reaches_the_kernel_without_an_nchw_copy(sim, form):
    weight, bias, f1w, f1b, f2w, f2b = make_params(8, 16, 3, 3, dtype=torch.float32)
    x = rand_x(2, 8, 6, 5, dtype=torch.float32, channels_last=True).requires_grad_(True)
    weight.requires_grad_(True)
    if form == "modulated_conv2d":
        m = torch.rand(2, 3, 3, generator=torch.Generator().manual_seed(1))
        y = _conv(x, weight, m, bias)
    else:
        y = shc.shc_conv2d(x, weight, bias, f1w, f1b, f2w, f2b, padding=1, backend="cuda_sim")
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(2)).contiguous(
        memory_format=torch.channels_last
    )
    with _GradYLayouts() as mode:
        y.backward(gy)
    assert mode.seen, "the backward did not call shc_sim::modulated_conv2d_backward"
    for g in mode.seen:
        assert g.is_contiguous(memory_format=torch.channels_last) and not g.is_contiguous()
    if form == "modulated_conv2d":  # and the kernels read it right
        leaves = [t.detach().double().requires_grad_(True) for t in (x, weight)]
        reference.modulated_conv2d(leaves[0], leaves[1], m.double(), bias.double(), padding=1).backward(
            gy.double()
        )
        check_close(x.grad, leaves[0].grad, torch.float32, "grad x")
        check_close(weight.grad, leaves[1].grad, torch.float32, "grad weight")


@pytest.fixture
def deterministic():
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    yield lambda warn_only: torch.use_deterministic_algorithms(True, warn_only=warn_only)
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def _backward(weight_grad):
    weight, bias, *_ = make_params(4, 6, 3, 3, dtype=torch.float32)
    x = rand_x(2, 4, 6, 5, dtype=torch.float32).requires_grad_(True)
    weight.requires_grad_(weight_grad)
    m = torch.rand(2, 3, 3, generator=torch.Generator().manual_seed(3))
    _conv(x, weight, m, bias).sum().backward()
    return x.grad, weight.grad


def test_deterministic_mode_refuses_the_atomic_weight_gradient(sim, deterministic):
    deterministic(False)
    with pytest.raises(RuntimeError, match="dW and dm are summed with atomics"):
        _backward(weight_grad=True)


def test_deterministic_mode_allows_dx_alone_and_warns_in_warn_only_mode(sim, deterministic):
    deterministic(False)
    gx, _ = _backward(weight_grad=False)
    assert gx is not None and torch.isfinite(gx).all()
    deterministic(True)
    with pytest.warns(UserWarning, match="dW and dm are summed with atomics"):
        _, gw = _backward(weight_grad=True)
    assert gw is not None and torch.isfinite(gw).all()
