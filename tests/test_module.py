"""SHCConv2d as a drop-in nn.Conv2d, and convert's output-preserving initialisation."""

from __future__ import annotations

import io

import pytest
import torch
from helpers import CPU_BACKENDS
from torch import nn

import shc_kernels as shc

ALL = ["reference", *CPU_BACKENDS]


def small_net():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False),
        nn.ReLU(),
        nn.Conv2d(8, 16, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


def test_layer_is_a_conv2d_with_hypernetwork():
    layer = shc.SHCConv2d(16, 32, 3, padding=1, groups=2)
    assert isinstance(layer, nn.Conv2d)
    assert layer.weight.shape == (32, 8, 3, 3) and layer.bias.shape == (32,)
    assert (layer.hyper.fc1.in_features, layer.hyper.fc1.out_features) == (32, 8)
    assert (layer.hyper.fc2.in_features, layer.hyper.fc2.out_features) == (8, 9)
    assert shc.SHCConv2d(16, 4, 3, hidden=5).hyper.fc1.out_features == 5
    assert shc.SHCConv2d(1, 4, 3).hyper.fc1.out_features == 1  # K = max(1, D // 2)
    assert "grad_route='both'" in repr(layer)


@pytest.mark.parametrize("backend", ALL)
def test_layer_equals_functional(backend):
    torch.manual_seed(0)
    layer = shc.SHCConv2d(4, 6, 3, stride=2, padding=1, backend=backend)
    x = torch.randn(3, 4, 9, 9)
    f1, f2 = layer.hyper.fc1, layer.hyper.fc2
    expected = shc.reference.shc_conv2d(
        x, layer.weight, layer.bias, f1.weight, f1.bias, f2.weight, f2.bias, stride=2, padding=1
    )
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("padding_mode", ["reflect", "replicate", "circular"])
def test_padding_modes_pad_like_conv2d(padding_mode):
    torch.manual_seed(0)
    layer = shc.SHCConv2d(3, 5, 3, padding=1, padding_mode=padding_mode)
    x = torch.randn(2, 3, 6, 6)
    xp = nn.functional.pad(x, (1, 1, 1, 1), mode=padding_mode)
    f1, f2 = layer.hyper.fc1, layer.hyper.fc2
    m = shc.reference.statistical_map(x, f1.weight, f1.bias, f2.weight, f2.bias, (3, 3))
    expected = shc.reference.modulated_conv2d(xp, layer.weight, m, layer.bias)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_same_padding_string():
    layer = shc.SHCConv2d(3, 4, (3, 4), padding="same")
    x = torch.randn(2, 3, 7, 8)
    assert layer(x).shape == (2, 4, 7, 8)


@pytest.mark.parametrize("backend", ALL)
def test_convert_preserves_outputs(backend):
    torch.manual_seed(0)
    net = small_net().eval()
    x = torch.randn(4, 3, 12, 12)
    before = net(x)
    out = shc.convert(net, backend=backend)
    assert out is net
    kinds = [type(m) for m in net if isinstance(m, nn.Conv2d)]
    assert kinds == [shc.SHCConv2d, shc.SHCConv2d, nn.Conv2d]  # only the 3x3 convs
    torch.testing.assert_close(net(x), before, rtol=1e-5, atol=1e-5)
    # ...and the converted layers now have a hypernetwork that learns.
    net.train()
    net(x).sum().backward()
    assert net[0].hyper.fc2.weight.grad.abs().sum() > 0


def test_convert_kernel_sizes_and_single_conv():
    conv = nn.Conv2d(2, 3, 1)
    assert isinstance(shc.convert(conv, kernel_sizes=[1]), shc.SHCConv2d)
    net = small_net()
    shc.convert(net, kernel_sizes=None)
    assert all(isinstance(m, shc.SHCConv2d) for m in net if isinstance(m, nn.Conv2d))
    with pytest.raises(TypeError, match="model"):
        shc.convert("not a model")


def test_state_dict_round_trip():
    torch.manual_seed(0)
    net = shc.convert(small_net())
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    buf.seek(0)
    fresh = shc.convert(small_net())
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert "0.hyper.fc1.weight" in fresh.state_dict()
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(fresh.eval()(x), net.eval()(x))
