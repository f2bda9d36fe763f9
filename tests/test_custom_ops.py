"""The compiled path as torch.library ops: opcheck, torch.compile(fullgraph=True), autocast."""

from __future__ import annotations

import pytest
import torch
from helpers import CPU_BACKENDS, make_params, rand_x
from torch import nn

import shc_kernels as shc

pytestmark = pytest.mark.skipif("cpu" not in CPU_BACKENDS, reason="extension not built (see test_backends)")


def _conv_args(dtype=torch.float32, channels_last=False, groups=1, bias=True):
    weight, b, *_ = make_params(4, 6, 3, 3, groups=groups, bias=bias, dtype=dtype)
    x = rand_x(2, 4, 7, 6, dtype=dtype, channels_last=channels_last)
    m = torch.rand(2, 3, 3, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    return [x, weight, m, b]


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck_modulated_conv2d(dtype, channels_last):
    x, w, m, b = _conv_args(dtype, channels_last)
    for t in (x, w, m, b):
        t.requires_grad_(True)
    torch.library.opcheck(torch.ops.shc.modulated_conv2d.default, (x, w, m, b, [1, 1], [1, 1], [1, 1], 1))
    x2, w2, m2, _ = _conv_args(dtype, channels_last, groups=2, bias=False)
    torch.library.opcheck(
        torch.ops.shc.modulated_conv2d.default, (x2, w2, m2, None, [2, 1], [0, 2], [1, 2], 2)
    )


@pytest.mark.parametrize("mask", [[True, True, True], [False, True, False], [True, False, True]])
def test_opcheck_modulated_conv2d_backward(mask):
    x, w, m, _ = _conv_args()
    gy = torch.randn(2, 6, 7, 6)
    torch.library.opcheck(
        torch.ops.shc.modulated_conv2d_backward.default, (gy, x, w, m, [1, 1], [1, 1], [1, 1], 1, mask)
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck_channel_stats(dtype):
    x = rand_x(3, 5, 4, 6, dtype=dtype).requires_grad_(True)
    torch.library.opcheck(torch.ops.shc.channel_stats.default, (x, 1e-5))
    mu, sigma = torch.ops.shc.channel_stats(x.detach(), 1e-5)
    torch.library.opcheck(
        torch.ops.shc.channel_stats_backward.default,
        (torch.randn_like(mu), torch.randn_like(sigma), x.detach(), mu, sigma),
    )


def test_torch_compile_fullgraph_matches_eager():
    torch.manual_seed(0)
    net = nn.Sequential(
        shc.SHCConv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        shc.SHCConv2d(8, 8, 3, stride=2, padding=1, grad_route="conv"),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )
    x = torch.randn(4, 3, 10, 10)
    eager = net(x)
    eager.sum().backward()
    grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    torch._dynamo.reset()
    compiled = torch.compile(net, fullgraph=True)  # fullgraph: any graph break raises
    out = compiled(x)
    out.sum().backward()
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    for a, b in zip((p.grad for p in net.parameters()), grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_autocast_runs_conv_in_autocast_dtype_and_map_in_fp32():
    torch.manual_seed(0)
    layer = shc.SHCConv2d(8, 8, 3, padding=1, backend="cpu")
    x = torch.randn(2, 8, 9, 9, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        f1, f2 = layer.hyper.fc1, layer.hyper.fc2
        m = shc.statistical_map(x, f1.weight, f1.bias, f2.weight, f2.bias, (3, 3))
        y = layer(x)
    assert m.dtype == torch.float32
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert layer.weight.grad.dtype == torch.float32 and x.grad.dtype == torch.float32
    expected = layer.eval().requires_grad_(False)
    ref = shc.reference.shc_conv2d(
        x.detach(), expected.weight, expected.bias, f1.weight, f1.bias, f2.weight, f2.bias, padding=1
    )
    torch.testing.assert_close(y.float(), ref, rtol=3e-2, atol=3e-2)


def _layer_args(dtype=torch.float64, channels_last=False, groups=1, bias=True, n=2):
    params = make_params(4, 6, 3, 3, groups=groups, bias=bias, dtype=dtype)
    x = rand_x(n, 4, 7, 6, dtype=dtype, channels_last=channels_last)
    return [x, *params]


@pytest.mark.parametrize("route", ["both", "conv", "hyper"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck_shc_conv2d(dtype, channels_last, route):
    args = [t if t is None else t.requires_grad_(True) for t in _layer_args(dtype, channels_last)]
    torch.library.opcheck(torch.ops.shc.shc_conv2d.default, (*args, [1, 1], [1, 1], [1, 1], 1, 1e-5, route))
    x, w, _, f1w, _, f2w, _ = _layer_args(dtype, channels_last, groups=2, bias=False)
    conf = ([2, 1], [0, 2], [1, 2], 2, 1e-5, route)
    torch.library.opcheck(torch.ops.shc.shc_conv2d.default, (x, w, None, f1w, None, f2w, None, *conf))


def test_shc_conv2d_op_gradcheck_through_every_output():
    # The op's backward is written by hand (on the CPU csrc/cpu/shc_autograd.cpp, which calls
    # ops._layer_grad when gradients reach m, z, h): check it against finite
    # differences for all seven inputs, through y and through the m, z, h it also returns.
    inputs = [t.requires_grad_(True) for t in _layer_args(torch.float64, groups=2)]

    def op(*a):
        return torch.ops.shc.shc_conv2d(*a, [2, 1], [1, 2], [1, 1], 2, 1e-5, "both")

    assert torch.autograd.gradcheck(op, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


GRADS = ("x", "weight", "bias", "fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias")


def _reference_grads(args, conf, route, gy, mask):
    """The gradients the reference (reference.py, every route) gives for upstream gradient gy."""
    leaves = [t.detach().requires_grad_(on) for t, on in zip(args, mask, strict=True)]
    stride, padding, dilation, groups = conf
    x_stats, x_conv = shc._checks.route_inputs(leaves[0], route)
    m = shc.reference.statistical_map(x_stats, *leaves[3:], (3, 3))
    y = shc.reference.modulated_conv2d(x_conv, leaves[1], m, leaves[2], stride, padding, dilation, groups)
    wanted = [t for t, on in zip(leaves, mask, strict=True) if on]
    grads = iter(torch.autograd.grad(y, wanted, gy, allow_unused=True))
    return [next(grads) if on else None for on in mask]


@pytest.mark.parametrize("route", ["both", "conv", "hyper"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(
    "mask",
    [
        [True] * 7,
        [True, False, False, False, False, False, False],
        [False, True, True, True, False, True, False],
    ],
    ids=["all", "x-only", "params-only"],
)
@pytest.mark.parametrize(
    "conf", [([1, 1], [1, 1], [1, 1], 1), ([2, 1], [0, 2], [1, 2], 2)], ids=["plain", "grouped"]
)
def test_one_call_backward_gives_the_reference_gradients(route, channels_last, mask, conf):
    # shc::shc_conv2d_backward (the CPU backward of the layer in one call) against autograd
    # through the reference, float64, for every route and for subsets of the gradients.
    torch.manual_seed(0)
    args = _layer_args(torch.float64, channels_last, groups=conf[3], n=3)
    y, m, z, h = torch.ops.shc.shc_conv2d(*args, *conf, 1e-5, route)
    gy = torch.randn_like(y)
    x, w, _b, f1w, _f1b, f2w, _f2b = args
    got = torch.ops.shc.shc_conv2d_backward(gy, x, w, m, z, h, f1w, f2w, *conf, route, mask)
    want = _reference_grads(args, conf, route, gy, mask)
    for name, g, ref, on in zip(GRADS, got, want, mask, strict=True):
        if not on:
            assert g.numel() == 0, name
            continue
        torch.testing.assert_close(g, ref, rtol=1e-9, atol=1e-11, msg=name)
    if mask[0]:
        assert got[0].is_contiguous(
            memory_format=torch.channels_last if channels_last else torch.contiguous_format
        )


@pytest.mark.parametrize("mask", [[True] * 7, [False, True, False, False, True, False, True]])
def test_opcheck_shc_conv2d_backward(mask):
    args = _layer_args(torch.float32, n=2)
    conf = ([1, 1], [1, 1], [1, 1], 1)
    y, m, z, h = torch.ops.shc.shc_conv2d(*args, *conf, 1e-5, "both")
    x, w, _b, f1w, _f1b, f2w, _f2b = args
    torch.library.opcheck(
        torch.ops.shc.shc_conv2d_backward.default,
        (torch.randn_like(y), x, w, m, z, h, f1w, f2w, *conf, "both", mask),
    )


def test_module_backward_is_one_call_first_order_and_composed_second_order():
    # First order: the layer's backward is shc::shc_conv2d_backward alone. With create_graph
    # (a graph of the backward wanted) it is composed of the differentiable ops instead, and
    # both give the same first-order gradients.
    torch.manual_seed(0)
    layer = shc.SHCConv2d(4, 6, 3, padding=1, backend="cpu").double()
    x = torch.randn(3, 4, 7, 6, dtype=torch.float64, requires_grad=True)
    grads = {}
    for create_graph in (False, True):
        with torch.profiler.profile() as prof:
            y = layer(x)
            g = torch.autograd.grad(y.square().sum(), [x, *layer.parameters()], create_graph=create_graph)
        ran = {e.name for e in prof.events() if e.name.startswith("shc::")}
        one_call = "shc::shc_conv2d_backward" in ran
        assert one_call != create_graph, ran
        assert ("shc::modulated_conv2d_backward" in ran) == create_graph, ran
        grads[create_graph] = [t.detach() for t in g]
    for a, b in zip(grads[False], grads[True], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_the_cpu_layer_records_the_cpp_autograd_node():
    # On the CPU the layer's autograd is csrc/cpu/shc_autograd.cpp, not torch.library's Python wrapper.
    layer = shc.SHCConv2d(4, 6, 3, padding=1, backend="cpu")
    y = layer(torch.randn(2, 4, 5, 5, requires_grad=True))
    assert "LayerFunction" in y.grad_fn.name(), y.grad_fn.name()


def test_one_call_backward_of_an_empty_batch_and_a_1x1_plane():
    conf = ([1, 1], [1, 1], [1, 1], 1)
    for n, hw in ((0, 5), (2, 1)):
        args = [t.requires_grad_(True) for t in make_params(4, 6, 3, 3, dtype=torch.float64)]
        x = torch.randn(n, 4, hw, hw, dtype=torch.float64, requires_grad=True)
        layer_args = [x, *args]
        y, *_ = torch.ops.shc.shc_conv2d(*layer_args, *conf, 1e-5, "both")
        gy = torch.randn_like(y)
        got = torch.autograd.grad(y, layer_args, gy)
        want = _reference_grads(layer_args, conf, "both", gy, [True] * 7)
        for name, g, ref in zip(GRADS, got, want, strict=True):
            torch.testing.assert_close(g, ref, rtol=1e-9, atol=1e-11, msg=f"n={n} hw={hw} {name}")


def test_shc_conv2d_op_returns_map_and_statistics():
    x, w, b, f1w, f1b, f2w, f2b = _layer_args(torch.float64)
    conf = ([1, 1], [1, 1], [1, 1], 1, 1e-5, "both")
    y, m, z, h = torch.ops.shc.shc_conv2d(x, w, b, f1w, f1b, f2w, f2b, *conf)
    mu, sigma = shc.reference.channel_stats(x)
    torch.testing.assert_close(z, torch.cat([mu, sigma], 1))
    torch.testing.assert_close(h, torch.relu(z @ f1w.T + f1b))
    torch.testing.assert_close(m, shc.reference.statistical_map(x, f1w, f1b, f2w, f2b, (3, 3)))
    torch.testing.assert_close(y, shc.reference.shc_conv2d(x, w, b, f1w, f1b, f2w, f2b, padding=1))


def test_shc_conv2d_op_rejects_bad_arguments_with_clear_errors():
    x, w, b, f1w, f1b, f2w, f2b = _layer_args(torch.float64)
    conf = ([1, 1], [1, 1], [1, 1], 1, 1e-5)
    with pytest.raises(RuntimeError, match="grad_route must be"):
        torch.ops.shc.shc_conv2d(x, w, b, f1w, f1b, f2w, f2b, *conf, "neither")
    with pytest.raises(RuntimeError, match=r"fc1_weight must have shape \(K, 2\*D\)"):
        torch.ops.shc.shc_conv2d(x, w, b, f1w[:, :3], f1b, f2w, f2b, *conf, "both")
    with pytest.raises(RuntimeError, match=r"fc2_bias must have shape \(9\)"):
        torch.ops.shc.shc_conv2d(x, w, b, f1w, f1b, f2w, f2b[:4], *conf, "both")
    with pytest.raises(RuntimeError, match="in channels"):
        torch.ops.shc.shc_conv2d(x, w, b, f1w, f1b, f2w, f2b, *conf[:3], 3, 1e-5, "both")
