"""The CPU kernel's four methods of the modulated conv (csrc/cpu/, docs/cpu_methods.md): im2col (any conv),
"shift" (stride-1 3x3: the padded plane read at a fixed offset per tap, the map scaling the
weights), "taps" (one group: a block of samples with the sample innermost, one GEMM per tap over
the positions where it reads the image) and "direct" (shift's domain and stride-2 forwards, fp32
on AVX-512 or AVX2+FMA CPUs: a register tile summed over all nine taps and input planes, with
32+ rows on AVX-512 one that skips the taps reading padding). Each
gives the reference's forward and
every gradient, on every shape; SHC_CPU_METHOD picks the method (auto, the faster per shape;
im2col; shift, taps or direct wherever they apply, im2col elsewhere) and a bad value is an
error."""

from __future__ import annotations

import pytest
import torch

import shc_kernels as shc
from shc_kernels import ops, reference

pytestmark = pytest.mark.skipif(not ops.compiled_available(), reason="needs the compiled CPU kernel")

# (N, D, C, H, W): 1x1 and 2x3 planes, odd sizes, one shape each side of the default's threshold,
# and one where auto takes different methods each way (fp32 with AVX-512: the direct method's rows
# tile forward, taps backward; 16 samples, so blocks of 8 on two threads)
SHAPES = [
    (3, 4, 6, 8, 8),
    (2, 5, 3, 7, 9),
    (2, 8, 8, 14, 14),
    (2, 16, 4, 16, 15),
    (1, 3, 8, 1, 1),
    (2, 2, 2, 2, 3),
    (16, 32, 32, 8, 8),
]


def _inputs(shape, dtype):
    n, d, c, h, w = shape
    g = torch.Generator().manual_seed(sum(shape))
    return (
        torch.randn(n, d, h, w, generator=g, dtype=dtype),
        torch.randn(c, d, 3, 3, generator=g, dtype=dtype),
        torch.rand(n, 3, 3, generator=g, dtype=dtype),
        torch.randn(c, generator=g, dtype=dtype),
    )


def _run(fn, tensors, grad_seed=1, grad_dtype=None):
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    y = fn(*leaves)
    # drawn in fp32 whatever y's dtype, so runs in different dtypes get the same upstream gradient;
    # rounded to grad_dtype first where a reference in fp64 is to see the same rounded values
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(grad_seed))
    if grad_dtype is not None:
        dy = dy.to(grad_dtype)
    y.backward(dy.to(y.dtype))
    return [y.detach()] + [t.grad for t in leaves]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", ["auto", "im2col", "shift", "taps", "direct"])
@pytest.mark.parametrize("shape", SHAPES)
def test_every_method_gives_the_reference(monkeypatch, shape, method, dtype):
    monkeypatch.setenv("SHC_CPU_METHOD", method)
    tensors = _inputs(shape, dtype)
    got = _run(
        lambda x, w, m, b: torch.ops.shc.modulated_conv2d(x, w, m, b, [1, 1], [1, 1], [1, 1], 1), tensors
    )
    want = _run(lambda x, w, m, b: reference.modulated_conv2d(x, w, m, b, 1, 1, 1, 1), tensors)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    for name, a, b in zip(("y", "dx", "dweight", "dm", "dbias"), got, want, strict=True):
        torch.testing.assert_close(a, b, **tol, msg=lambda s, name=name: f"{name}: {s}")


# (N, D, C, H, W) for the direct method's edges: row blocks (4 rows with AVX2, 8 with AVX-512)
# with a tail (C or D not a multiple), position tiles (24; or 48, the last one 1, 2 or 3 vectors
# of 16: H * W = 60, 24, 81 leave 12, 24, 33; or, AVX-512, the 1-4 positions' tail kernel: 1, 50,
# 51 and 196 leave 1, 2, 3 and 4, and stride 2 of 28x28 is 14x14 again), planes wider than a tile,
# 1-2 row planes, one channel and one column (both edge masks on one position), and a band split (a
# 64-channel 40x40 plane is more than the band's 48 Ki floats)
DIRECT_SHAPES = [
    (2, 3, 5, 9, 9),
    (2, 5, 7, 3, 8),
    (3, 7, 9, 4, 23),
    (2, 1, 1, 1, 1),
    (2, 6, 2, 2, 30),
    (1, 5, 13, 11, 3),
    (2, 64, 6, 40, 40),
    (2, 9, 64, 12, 12),
    (2, 3, 9, 5, 10),
    (1, 4, 6, 3, 17),
    (2, 5, 11, 14, 14),
    (2, 3, 5, 28, 28),
]
# and for the AVX-512 rows tile (32+ output channels forward, 32+ input channels for dx): blocks
# of 32 rows with a tail of 1, 6 and 16 (33, 70, 48 rows), output rows in one tile of 1, 13 or 14
# positions (both edges' taps skipped in one tile), two of 7 and 8 or 8 and 8, three of 9, 10 and
# 10; one and two row planes (the top and bottom taps skipped together)
ROWS_SHAPES = [
    (2, 3, 33, 5, 14),
    (2, 32, 40, 1, 1),
    (1, 35, 32, 2, 29),
    (2, 40, 70, 7, 15),
    (2, 33, 48, 16, 16),
    (1, 32, 32, 3, 13),
]


@pytest.mark.parametrize("isa", ["auto", "avx2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("shape", DIRECT_SHAPES + ROWS_SHAPES + [(2, 4, 3, 8, 11), (3, 9, 17, 15, 14)])
def test_direct_method_gives_the_reference(monkeypatch, shape, stride, dtype, isa):
    """fp16 inputs are computed in fp32, so they go through the direct kernel too. Stride 2 (the
    four phase planes, or with AVX-512 and 32+ output channels the rows tile read at stride 2; odd
    and even H and W) is the forward only: its backward is im2col's.
    SHC_CPU_DIRECT_ISA=avx2 runs the AVX2 kernel where the CPU also has the AVX-512 one (on an
    AVX2-only CPU both runs take the AVX2 kernel)."""
    monkeypatch.setenv("SHC_CPU_METHOD", "direct")
    monkeypatch.setenv("SHC_CPU_DIRECT_ISA", isa)
    tensors = _inputs(shape, dtype)
    args = ([stride] * 2, [1, 1], [1, 1], 1)
    got = _run(lambda x, w, m, b: torch.ops.shc.modulated_conv2d(x, w, m, b, *args), tensors)
    # the reference in fp64 on the same (rounded) inputs and upstream gradient
    exact = [t.double() for t in tensors]
    ref = lambda x, w, m, b: reference.modulated_conv2d(x, w, m, b, stride, 1, 1, 1)  # noqa: E731
    want = _run(ref, exact, grad_dtype=dtype)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    for name, a, b in zip(("y", "dx", "dweight", "dm", "dbias"), got, want, strict=True):
        assert a.dtype == dtype, name
        torch.testing.assert_close(a.double(), b, **tol, msg=lambda s, name=name: f"{name}: {s}")


# (stride, padding, dilation, kernel size): the taps method takes any conv of one group
CONVS = [(2, 1, 1, 3), (1, 2, 2, 3), (1, 0, 1, 3), (2, 0, 1, 3), (1, 0, 1, 1), (2, 2, 1, 5), (3, 1, 2, 3)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("conv", CONVS)
@pytest.mark.parametrize("n", [1, 19, 40])  # 19, 40: blocks of 8-32 samples (the AVX2 copies) and a tail
def test_taps_method_gives_the_reference_for_any_conv(monkeypatch, conv, n, dtype):
    monkeypatch.setenv("SHC_CPU_METHOD", "taps")
    stride, padding, dilation, k = conv
    g = torch.Generator().manual_seed(k + n)
    tensors = (
        torch.randn(n, 6, 9, 8, generator=g, dtype=dtype),
        torch.randn(5, 6, k, k, generator=g, dtype=dtype),
        torch.rand(n, k, k, generator=g, dtype=dtype),
        torch.randn(5, generator=g, dtype=dtype),
    )
    args = ([stride] * 2, [padding] * 2, [dilation] * 2, 1)
    got = _run(lambda x, w, m, b: torch.ops.shc.modulated_conv2d(x, w, m, b, *args), tensors)
    want = _run(lambda x, w, m, b: reference.modulated_conv2d(x, w, m, b, *args), tensors)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    for name, a, b in zip(("y", "dx", "dweight", "dm", "dbias"), got, want, strict=True):
        torch.testing.assert_close(a, b, **tol, msg=lambda s, name=name: f"{name}: {s}")


@pytest.mark.parametrize("fit", [1, 3, 4, 7])
def test_taps_blocks_grown_past_a_small_workspace_give_the_reference(monkeypatch, fit):
    """A workspace that fits `fit` samples (SHC_CPU_WS_BYTES) grows up to fourfold toward blocks of
    16 (taps_block): 40 samples in blocks of 4, 8, 12 or 16 and a tail, fp64 against the reference."""
    monkeypatch.setenv("SHC_CPU_METHOD", "taps")
    n, d, c, h, w = 40, 6, 5, 9, 8
    per_sample = 8 * (2 * d * h * w + 2 * d * h * w + 3 * c * h * w)  # taps_block's bytes, fp64, stride 1
    monkeypatch.setenv("SHC_CPU_WS_BYTES", str(fit * per_sample))
    g = torch.Generator().manual_seed(fit)
    tensors = (
        torch.randn(n, d, h, w, generator=g, dtype=torch.float64),
        torch.randn(c, d, 3, 3, generator=g, dtype=torch.float64),
        torch.rand(n, 3, 3, generator=g, dtype=torch.float64),
        torch.randn(c, generator=g, dtype=torch.float64),
    )
    args = ([1, 1], [1, 1], [1, 1], 1)
    got = _run(lambda x, w, m, b: torch.ops.shc.modulated_conv2d(x, w, m, b, *args), tensors)
    want = _run(lambda x, w, m, b: reference.modulated_conv2d(x, w, m, b, *args), tensors)
    for name, a, b in zip(("y", "dx", "dweight", "dm", "dbias"), got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=lambda s, name=name: f"{name}: {s}")


@pytest.mark.parametrize("method", ["shift", "taps", "direct"])
@pytest.mark.parametrize("route", ["both", "conv", "hyper"])
def test_layer_gradients_match_the_reference_on_each_method(monkeypatch, route, method):
    """The whole layer's one-call backward (shc::shc_conv2d_backward) on the shift, taps and direct
    methods (direct is fp32 only: that layer runs in fp32, the others in fp64)."""
    monkeypatch.setenv("SHC_CPU_METHOD", method)
    dtype = torch.float32 if method == "direct" else torch.float64
    layer = shc.SHCConv2d(4, 3, 3, padding=1, grad_route=route, backend="cpu").to(dtype)
    x = torch.randn(5, 4, 5, 6, dtype=dtype, requires_grad=True)
    params = [x, layer.weight, layer.bias, *layer.hyper.parameters()]
    got = torch.autograd.grad(layer(x).square().sum(), params)
    layer.backend = "reference"
    want = torch.autograd.grad(layer(x).square().sum(), params)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("method", ["shift", "taps", "direct"])
def test_two_threads_give_the_reference_with_the_work_split(monkeypatch, method):
    """With two threads and weights large enough (64 x 64 channels), the weight's tap-major
    re-layouts and the grad_weight sum over workers run split across the threads, each worker
    zeroes its own accumulator, and 11 samples go to blocks of 5 and 6: still the reference's
    numbers (fp64; direct, fp32 only, in fp32)."""
    monkeypatch.setenv("SHC_CPU_METHOD", method)
    dtype = torch.float32 if method == "direct" else torch.float64
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(0)
        layer = shc.SHCConv2d(64, 64, 3, padding=1, backend="cpu").to(dtype)
        x = torch.randn(11, 64, 4, 4, dtype=dtype, requires_grad=True)
        params = [x, layer.weight, layer.bias, *layer.hyper.parameters()]
        y = layer(x)
        got = [y, *torch.autograd.grad(y.square().sum(), params)]
    finally:
        torch.set_num_threads(threads)
    layer.backend = "reference"
    y = layer(x)
    want = [y, *torch.autograd.grad(y.square().sum(), params)]
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("method", ["shift", "taps", "direct"])
def test_a_method_is_forced_only_where_it_applies(monkeypatch, method):
    """SHC_CPU_METHOD=shift|taps|direct forces the method only where it applies: the convs it does
    not take (shift, direct: stride 2, dilation, groups, other padding; direct: fp64 too, which
    this test runs in; taps: groups) go through im2col."""
    monkeypatch.setenv("SHC_CPU_METHOD", method)
    x, w, m, b = _inputs((2, 4, 4, 9, 9), torch.float64)
    for stride, padding, dilation, groups in ((2, 1, 1, 1), (1, 2, 2, 1), (1, 1, 1, 2), (1, 0, 1, 1)):
        wg = w[:, : 4 // groups].contiguous()
        args = ([stride] * 2, [padding] * 2, [dilation] * 2, groups)
        got = torch.ops.shc.modulated_conv2d(x, wg, m, b, *args)
        torch.testing.assert_close(
            got, reference.modulated_conv2d(x, wg, m, b, *args), rtol=1e-10, atol=1e-10
        )


@pytest.mark.parametrize(
    "knob, value",
    [("SHC_CPU_METHOD", "3"), ("SHC_CPU_METHOD", "Shift"), ("SHC_CPU_METHOD", "shift "),
     ("SHC_CPU_DIRECT_ISA", "avx512"), ("SHC_CPU_DIRECT_ISA", "AVX2")],
)
def test_bad_method_knob_is_an_error_naming_it(monkeypatch, knob, value):
    monkeypatch.setenv(knob, value)
    x, w, m, b = _inputs((2, 8, 8, 14, 14), torch.float32)
    with pytest.raises(RuntimeError, match=f"{knob} must be .*got '{value}'"):
        torch.ops.shc.modulated_conv2d(x, w, m, b, [1, 1], [1, 1], [1, 1], 1)


# plane sizes around the statistics' paths: four planes at a time below 512 elements (blocks of
# 128 in vectors of 8, a masked tail), one plane at a time from 512 (blocks of 512 in 32 lanes, a
# tail of vectors and a masked one); plane counts that leave 1-3 planes after the fours
PLANES = [(1, 1), (1, 3), (2, 4), (3, 3), (4, 4), (7, 7), (1, 127), (8, 16), (9, 15), (14, 14), (13, 23)]
PLANES += [(1, 511), (16, 32), (28, 28), (224, 224)]


@pytest.mark.parametrize("hw", PLANES)
@pytest.mark.parametrize("planes", [(1, 1), (2, 3), (3, 5)])
def test_channel_stats_match_fp64_on_every_plane_size(hw, planes):
    g = torch.Generator().manual_seed(hw[0] * 31 + hw[1])
    # an offset far above the spread (a one-pass sum of squares in float loses the variance), and
    # planes whose first element is far from the rest (a one-pass shift by x[0] loses it)
    x = torch.randn(*planes, *hw, generator=g) * 0.5 + 300.0
    y = torch.randn(*planes, *hw, generator=g) * 0.01 + 1.0
    y.view(*planes, -1)[..., 0] = 1000.0
    for t in (x, y):
        mu, sigma = torch.ops.shc.channel_stats(t, 1e-5)
        td = t.double()
        want_mu = td.mean((2, 3))
        want_sigma = (td.var((2, 3), unbiased=False) + 1e-5).sqrt()
        torch.testing.assert_close(mu.double(), want_mu, rtol=1e-6, atol=0)
        # a one pass shifted by x[0] is 3e-5 off on y's 28x28 planes, 3e-4 on 224x224 (emulated)
        torch.testing.assert_close(sigma.double(), want_sigma, rtol=2e-5, atol=1e-6)


def _layer_fp64(x, w, b, f1w, f1b, f2w, f2b, stride):
    """z = cat(mu, sigma), h, m and y of shc::shc_conv2d, computed in fp64."""
    xd = x.double()
    z = torch.cat([xd.mean((2, 3)), (xd.var((2, 3), unbiased=False) + 1e-5).sqrt()], 1)
    h = torch.relu(z @ f1w.double().t() + (0 if f1b is None else f1b.double()))
    m = torch.sigmoid(h @ f2w.double().t() + (0 if f2b is None else f2b.double())).view(-1, 3, 3)
    bd = None if b is None else b.double()
    return z, h, m, reference.modulated_conv2d(xd, w.double(), m, bd, stride, 1, 1, 1)


@pytest.mark.parametrize("method", ["taps", "direct", "im2col"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("n", [1, 26, 37])
def test_layer_forward_statistics_and_map_match_fp64_on_each_method(monkeypatch, n, stride, dtype, method):
    """Where the conv takes the taps method, shc::shc_conv2d computes each block's statistics (the
    samples in the lanes, groups of 16, 8 and 1) and map inside the conv's loop; the direct method
    does so per block of up to 16 samples (26 and 37: blocks of 16 and a tail), fp32 and fp16 (fp64
    runs im2col); im2col computes them before the conv. On every path z, h, m
    and y match fp64 on planes offset far above their spread and on planes whose first element is
    far from the rest (the one-pass shift by x[0] is summed again by the mean there), with and
    without the hypernetwork's biases."""
    monkeypatch.setenv("SHC_CPU_METHOD", method)
    g = torch.Generator().manual_seed(n * 10 + stride)
    d, c, hw = 9, 12, 8 if stride == 1 else 13
    x = torch.randn(n, d, hw, hw, generator=g) * 0.5 + 300.0
    x[: n // 2] = x[: n // 2] * 0.02 + 1.0 - 300.0 * 0.02
    x.view(n, d, -1)[: n // 2, :, 0] = 1000.0
    w = torch.randn(c, d, 3, 3, generator=g) * 0.1
    f1w, f1b = torch.randn(16, 2 * d, generator=g) * 0.01, torch.randn(16, generator=g)
    f2w, f2b = torch.randn(9, 16, generator=g) * 0.1, torch.randn(9, generator=g)
    biases = [(torch.randn(c, generator=g), f1b, f2b), (None, None, None)]
    for b, b1, b2 in biases:
        args = [t if t is None else t.to(dtype) for t in (x, w, b, f1w, b1, f2w, b2)]
        got = torch.ops.shc.shc_conv2d(*args, [stride] * 2, [1, 1], [1, 1], 1, 1e-5, "both")
        want = _layer_fp64(*args, stride)
        y, m, z, h = got
        compute = torch.float64 if dtype == torch.float64 else torch.float32
        assert y.dtype == dtype and z.dtype == h.dtype == m.dtype == compute
        zt = 1e-12 if dtype == torch.float64 else 2e-5
        torch.testing.assert_close(z.double()[:, :d], want[0][:, :d], rtol=zt / 20, atol=0)
        torch.testing.assert_close(z.double()[:, d:], want[0][:, d:], rtol=zt, atol=1e-6)
        tol = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 1e-4}[dtype]
        for name, a, r in (("h", h, want[1]), ("m", m, want[2])):
            torch.testing.assert_close(
                a.double(), r, rtol=tol, atol=tol, msg=lambda s, name=name: f"{name}: {s}"
            )
        ytol = 2e-2 if dtype == torch.float16 else tol
        torch.testing.assert_close(y.double(), want[3], rtol=ytol, atol=ytol)
