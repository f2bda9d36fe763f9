"""The CPU kernel's depthwise method (csrc/cpu/depthwise.{h,cpp}): grouped convs with at most 8
input channels per group, MobileNet's and EfficientNet's depthwise convs among them, computed as
row stencils of each group's planes. It gives the reference's forward and every gradient (dx,
dweight, dm, dbias; the whole layer's hypernetwork gradients on each route) for every stride,
padding, dilation and kernel size, odd planes, channels_last, batch 1 and split over two threads,
in fp64 (its plain C++ copy) and fp32 (AVX-512 and AVX2 copies, SHC_CPU_DIRECT_ISA=avx2 picking
the second on an AVX-512 CPU); auto takes it for such convs, and SHC_CPU_METHOD=depthwise forces it
only where it applies."""

from __future__ import annotations

import pytest
import torch
from helpers import layer_grads, layer_matches_reference

import shc_kernels as shc
from shc_kernels import ops, reference

pytestmark = pytest.mark.skipif(not ops.compiled_available(), reason="needs the compiled CPU kernel")

# (N, D, C, H, W, groups, k, stride, padding, dilation): depthwise 3x3 at stride 1 and 2 on odd and
# even planes (one, two and three vectors a row with AVX-512's 16 lanes, 1x1 and 2x3 planes),
# padding 0 and 2, dilation 2, a 5x5 and a 1x3 kernel, stride 3 x 2, a channel multiplier
# (C = 2D), 2, 4 and 8 input channels per group; output planes a group computes several at a time
# (4 with AVX-512, 2 with AVX2) and the rest one by one (9 and 12 per group), 8 input channels per
# group at stride 2 (even and odd planes, batch 1); stride-2 rows of two vectors split without a loop
# (AVX-512: 30 and 20 columns, AVX2: 13, 14 and 15; padding 1 and 2 swap the phases)
CONVS = [
    (3, 6, 6, 9, 9, 6, 3, 1, 1, 1),
    (2, 5, 5, 7, 7, 5, 3, 1, 1, 1),
    (2, 4, 4, 28, 28, 4, 3, 1, 1, 1),
    (2, 4, 4, 33, 35, 4, 3, 1, 1, 1),
    (2, 6, 6, 14, 14, 6, 3, 2, 1, 1),
    (2, 3, 3, 13, 11, 3, 3, 2, 1, 1),
    (2, 3, 3, 57, 40, 3, 3, 2, 1, 1),
    (1, 3, 3, 1, 1, 3, 3, 1, 1, 1),
    (2, 2, 2, 2, 3, 2, 3, 2, 1, 1),
    (2, 4, 4, 10, 12, 4, 3, 1, 0, 1),
    (2, 4, 4, 10, 9, 4, 3, 1, 2, 2),
    (2, 3, 3, 12, 15, 3, 5, 1, 2, 1),
    (2, 4, 4, 9, 11, 4, (1, 3), 1, (0, 1), 1),
    (2, 4, 4, 15, 14, 4, 3, (3, 2), (0, 2), (1, 2)),
    (2, 4, 8, 10, 13, 4, 3, 1, 1, 1),
    (2, 8, 8, 12, 12, 4, 3, 1, 1, 1),
    (2, 8, 4, 11, 12, 2, 3, 2, 1, 1),
    (2, 16, 16, 9, 9, 2, 3, 1, 1, 1),
    (2, 6, 18, 10, 11, 2, 3, 1, 1, 1),
    (2, 16, 24, 7, 20, 2, 3, 1, 1, 1),
    (2, 16, 16, 14, 14, 2, 3, 2, 1, 1),
    (1, 16, 8, 13, 15, 2, 3, 2, 1, 1),
    (2, 4, 4, 21, 30, 4, 3, 2, 1, 1),
    (2, 4, 4, 12, 20, 4, 3, 2, 2, 1),
    (2, 4, 4, 9, 13, 4, 3, 2, 2, 1),
]


def _pair(v):
    return (v, v) if isinstance(v, int) else v


def _inputs(conv, dtype):
    n, d, c, h, w, groups, k, *_ = conv
    kh, kw = _pair(k)
    g = torch.Generator().manual_seed(n * 1000 + d * 100 + h + w)
    return (
        torch.randn(n, d, h, w, generator=g, dtype=dtype),
        torch.randn(c, d // groups, kh, kw, generator=g, dtype=dtype),
        torch.rand(n, kh, kw, generator=g, dtype=dtype),
        torch.randn(c, generator=g, dtype=dtype),
    )


def _args(conv):
    *_, groups, _, stride, padding, dilation = conv
    return (list(_pair(stride)), list(_pair(padding)), list(_pair(dilation)), groups)


def _run(fn, tensors, grad_dtype):
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    y = fn(*leaves)
    # the same upstream gradient, rounded to the dtype under test, for the kernel and the reference
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(grad_dtype)
    y.backward(dy.to(y.dtype))
    return [y.detach()] + [t.grad for t in leaves]


@pytest.mark.parametrize(
    "dtype,isa", [(torch.float64, "auto"), (torch.float32, "auto"), (torch.float32, "avx2")]
)
@pytest.mark.parametrize("method", ["depthwise", "auto"])
@pytest.mark.parametrize("conv", CONVS, ids=str)
def test_depthwise_method_gives_the_reference(monkeypatch, conv, method, dtype, isa):
    monkeypatch.setenv("SHC_CPU_METHOD", method)
    monkeypatch.setenv("SHC_CPU_DIRECT_ISA", isa)
    tensors = _inputs(conv, dtype)
    args = _args(conv)
    got = _run(lambda x, w, m, b: torch.ops.shc.modulated_conv2d(x, w, m, b, *args), tensors, dtype)
    # the reference in fp64 on the same inputs (an fp64 run compares fp64 with fp64)
    exact = [t.double() for t in tensors]
    want = _run(lambda x, w, m, b: reference.modulated_conv2d(x, w, m, b, *args), exact, dtype)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    for name, a, b in zip(("y", "dx", "dweight", "dm", "dbias"), got, want, strict=True):
        assert a.dtype == dtype, name
        torch.testing.assert_close(a.double(), b, **tol, msg=lambda s, name=name: f"{name}: {s}")


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("route", ["both", "conv", "hyper"])
@pytest.mark.parametrize("stride", [1, 2])
def test_layer_on_the_depthwise_method_gives_the_reference(monkeypatch, stride, route, dtype, channels_last):
    """The whole layer (shc::shc_conv2d: statistics and map per sample inside the conv's loop;
    shc::shc_conv2d_backward: the hypernetwork's backward per sample as its dx is done): y and the
    gradients of x, weight, bias and the hypernetwork's four parameters."""
    monkeypatch.setenv("SHC_CPU_METHOD", "auto")
    torch.manual_seed(0)
    layer = shc.SHCConv2d(12, 12, 3, stride, 1, groups=12, grad_route=route, backend="cpu").to(dtype)
    x = torch.randn(3, 12, 11, 10, dtype=dtype) * 2 + 0.5
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    got = layer_matches_reference(layer, x, dtype)
    if channels_last:
        assert got[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("n", [1, 2, 5])
def test_two_threads_give_the_reference_with_the_work_split(monkeypatch, n):
    """Two threads: one sample (its groups split over the threads, dm added per group), two (one
    sample a thread) and five (chunks of 2 and 3 samples, each with its own dW and dbias
    accumulator). fp64, the whole layer and the bare conv's gradients."""
    monkeypatch.setenv("SHC_CPU_METHOD", "depthwise")
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    layer = shc.SHCConv2d(10, 20, 3, 1, 1, groups=10, backend="cpu").double()
    x = torch.randn(n, 10, 9, 13, dtype=torch.float64)
    torch.set_num_threads(2)
    try:
        got = layer_grads(layer, x)
    finally:
        torch.set_num_threads(threads)
    layer.backend = "reference"
    want = layer_grads(layer, x)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_depthwise_is_forced_only_where_it_applies(monkeypatch):
    """SHC_CPU_METHOD=depthwise on one group, or 16 input channels per group, goes through im2col
    and still gives the reference."""
    monkeypatch.setenv("SHC_CPU_METHOD", "depthwise")
    for conv in [(2, 4, 4, 9, 9, 1, 3, 1, 1, 1), (2, 32, 8, 9, 9, 2, 3, 1, 1, 1)]:
        x, w, m, b = _inputs(conv, torch.float64)
        args = _args(conv)
        got = torch.ops.shc.modulated_conv2d(x, w, m, b, *args)
        torch.testing.assert_close(got, reference.modulated_conv2d(x, w, m, b, *args), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("isa", ["auto", "avx2"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("channels,plane,stride", [(13, 7, 1), (520, 6, 2)])
def test_wide_and_odd_hypernetworks_give_the_reference(monkeypatch, channels, plane, stride, dtype, isa):
    """The hypernetwork's GEMMs as the wide depthwise layers run them: fc1 (D/2 x 2D) transposed by
    8x8 tiles with edges (13 channels: 6 x 26; 520: 260 x 1040, past the 256-row block of the fp32
    GEMM that gives the statistics' gradient gz from fc1 in place), h and m per block of samples;
    every gradient of the whole layer against fp64."""
    monkeypatch.setenv("SHC_CPU_METHOD", "auto")
    monkeypatch.setenv("SHC_CPU_DIRECT_ISA", isa)
    torch.manual_seed(0)
    layer = shc.SHCConv2d(channels, channels, 3, stride, 1, groups=channels, backend="cpu").to(dtype)
    with torch.no_grad():  # a map that depends on the input, and a hypernetwork gradient to match
        for p in layer.hyper.parameters():
            p.normal_(0, 0.1)
    x = torch.randn(3, channels, plane, plane + 1, dtype=dtype) * 1.5 + 0.25
    layer_matches_reference(layer, x, dtype)
