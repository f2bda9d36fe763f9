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
