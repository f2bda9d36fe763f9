"""The CPU layer's hypernetwork forward (csrc/cpu/hyper.{h,cpp}) takes one of two paths per block of
samples: fewer than HyperParams::kInPlaceRows (8) samples multiply fc1 transposed (made once per
call), 8 and more multiply fc1 in place (h^T = fc1 z^T, only z's rows and h^T transposed). Each
method hands it its own blocks (im2col: the whole batch; taps and direct: their blocks of
samples; depthwise: sample_block, at least 8 samples where fc1 is past 512 KiB, blocks of equal
size). y and every gradient of the whole layer against the reference in fp64, on each method, at
batch sizes on both sides of 8, fp32 and fp64, with and without the hypernetwork's biases."""

from __future__ import annotations

import pytest
import torch
from helpers import layer_matches_reference

import shc_kernels as shc
from shc_kernels import ops

pytestmark = pytest.mark.skipif(not ops.compiled_available(), reason="needs the compiled CPU kernel")


def _check(layer, x, dtype):
    with torch.no_grad():  # a map that depends on the input, and a hypernetwork gradient to match
        for p in layer.hyper.parameters():
            p.normal_(0, 0.1)
    layer_matches_reference(layer, x, dtype, seed=3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [7, 9])
@pytest.mark.parametrize("method", ["im2col", "shift", "taps", "direct"])
def test_dense_layer_on_each_hypernetwork_path(monkeypatch, method, batch, dtype):
    """A dense 3x3 layer (20 channels: fc1 10 x 40, tiles with edges) on 6x7 planes."""
    monkeypatch.setenv("SHC_CPU_METHOD", method)
    torch.manual_seed(batch)
    layer = shc.SHCConv2d(20, 24, 3, 1, 1, backend="cpu").to(dtype)
    x = torch.randn(batch, 20, 6, 7, dtype=dtype) * 1.5 + 0.25
    _check(layer, x, dtype)


@pytest.mark.parametrize(
    "batch,dtype,isa",
    [
        (8, torch.float32, "auto"),
        (8, torch.float32, "avx2"),
        (8, torch.float64, "auto"),
        (11, torch.float32, "auto"),
    ],
)
def test_wide_depthwise_layer_multiplies_fc1_in_place(monkeypatch, batch, dtype, isa):
    """520 channels (fc1 260 x 1040, 1 MiB in fp32: blocks of at least 8 samples, fc1 in place; one
    block of 8 and one of 11) on 5x6 planes at stride 2. One thread: the blocks are also at most
    an equal share of the batch per thread (test_cpu_depthwise.py's batch of 3 takes the transposed
    path)."""
    monkeypatch.setenv("SHC_CPU_METHOD", "auto")
    monkeypatch.setenv("SHC_CPU_DIRECT_ISA", isa)
    torch.manual_seed(batch)
    layer = shc.SHCConv2d(520, 520, 3, 2, 1, groups=520, backend="cpu").to(dtype)
    x = torch.randn(batch, 520, 5, 6, dtype=dtype) * 1.5 + 0.25
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _check(layer, x, dtype)
    finally:
        torch.set_num_threads(threads)


def test_hypernetwork_without_biases(monkeypatch):
    """fc1 and fc2 without biases (a null bias is zero on both paths): batch 9, the im2col method."""
    monkeypatch.setenv("SHC_CPU_METHOD", "im2col")
    torch.manual_seed(0)
    layer = shc.SHCConv2d(12, 12, 3, 1, 1, backend="cpu")
    layer.hyper.fc1.bias = None
    layer.hyper.fc2.bias = None
    for batch in (3, 9):
        layer.backend = "cpu"
        _check(layer.float(), torch.randn(batch, 12, 5, 5), torch.float32)
