"""The paper's networks: Plain-10 and ResNet-18/50, each with or without SHC layers.

Every model takes images in [0, 1] and normalises them itself (ImageNet mean/std, its first
step), so attacks work in pixel space. Grey images (one channel, e.g. Fashion-MNIST) are
repeated to three channels inside the model, by that same first step: the stem and the
state_dict stay those of the RGB model, and an attack perturbs the grey image only.
``shc=True`` turns exactly the 3×3 convolutions into ``SHCConv2d`` (with ``convert``, so a
fresh SHC model starts with every map at 0.5). ``width`` scales every layer's channel count
(64, 128, 256, 512 at width 1, with at least 1 channel); at width 1 the modules and the
state_dict keys and shapes are torchvision's.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import require

require("train", "shc_kernels.research.models (the paper's networks)", modules=("torchvision",))

from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet  # noqa: E402

from ...modules import convert  # noqa: E402

__all__ = ["ARCHS", "Normalize", "build", "plain10", "resnet18", "resnet50", "scaled_widths"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BASE_WIDTHS = (64, 128, 256, 512)


def scaled_widths(width: float) -> tuple[int, ...]:
    """The four stage widths at multiplier ``width`` (64·width, ...), each at least 1."""
    if (
        isinstance(width, bool)
        or not isinstance(width, (int, float))
        or not math.isfinite(width)
        or width <= 0
    ):
        raise ValueError(f"width must be a number > 0, got {width!r}")
    return tuple(max(1, int(round(c * width))) for c in BASE_WIDTHS)


class Normalize(nn.Module):
    """(x - mean) / std per channel, a grey (1-channel) input first repeated to the 3 channels
    of the constants; the constants are not part of the state_dict."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self._constants = (tuple(mean), tuple(std))
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def reset_parameters(self) -> None:
        """Refill the constants (a model built on the meta device, then ``to_empty``)."""
        with torch.no_grad():
            for buf, values in zip((self.mean, self.std), self._constants, strict=True):
                buf.copy_(torch.tensor(values, device="cpu").view_as(buf))

    def forward(self, x):
        if x.dim() == 4 and x.shape[1] == 1 and self.mean.shape[1] != 1:
            x = x.expand(-1, self.mean.shape[1], -1, -1)
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


def _small_stem(model, width=64):
    """3×3 stride-1 stem without max-pool, for images of 64 px or less."""
    model.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()


def _init_like_torchvision(model):
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)


class SHCResNet(ResNet):
    """torchvision's ResNet (same modules, same state_dict keys) that normalises its input."""

    def __init__(self, block, layers, num_classes=1000, shc=True, small_input=False, width=1.0, **shc_kwargs):
        widths = scaled_widths(width)
        if widths == BASE_WIDTHS:
            super().__init__(block, layers, num_classes=num_classes)
        else:
            self._narrow_init(block, layers, num_classes, widths)
        self.normalize = Normalize()
        if small_input:
            _small_stem(self, widths[0])
        if shc:
            convert(self, kernel_sizes=((3, 3),), **shc_kwargs)

    def _narrow_init(self, block, layers, num_classes, widths):
        """What torchvision's ResNet.__init__ sets up (its defaults: groups 1, base width 64, no
        dilation), with the stage widths given: its __init__ fixes 64..512. Its own _make_layer
        builds the stages, so module names and order are torchvision's."""
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes, self.dilation, self.groups, self.base_width = widths[0], 1, 1, 64
        self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(block, widths[0], layers[0])
        self.layer2 = self._make_layer(block, widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, widths[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[3] * block.expansion, num_classes)
        _init_like_torchvision(self)

    def forward(self, x):
        return super().forward(self.normalize(x))


def _conv_bn_relu(cin, cout, stride):
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class Plain10(nn.Module):
    """Plain-10 (paper §3): ResNet's stem and channel widths, one block of two 3×3 convs per
    resolution and no shortcuts: 1 + 8 convs + 1 linear layer."""

    def __init__(self, num_classes=1000, shc=True, small_input=False, widths=None, width=1.0, **shc_kwargs):
        super().__init__()
        if widths is None:
            widths = scaled_widths(width)
        elif width != 1:
            raise ValueError("give either widths or width, not both")
        self.normalize = Normalize()
        self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        if small_input:
            _small_stem(self, widths[0])
        stages, cin = [], widths[0]
        for i, w in enumerate(widths):
            stages.append(nn.Sequential(*_conv_bn_relu(cin, w, 1 if i == 0 else 2), *_conv_bn_relu(w, w, 1)))
            cin = w
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for mod in self.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
        if shc:
            convert(self, kernel_sizes=((3, 3),), **shc_kwargs)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(self.normalize(x)))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def plain10(num_classes=1000, shc=True, small_input=False, width=1.0, **shc_kwargs):
    return Plain10(num_classes, shc, small_input, width=width, **shc_kwargs)


def resnet18(num_classes=1000, shc=True, small_input=False, width=1.0, **shc_kwargs):
    return SHCResNet(BasicBlock, [2, 2, 2, 2], num_classes, shc, small_input, width, **shc_kwargs)


def resnet50(num_classes=1000, shc=True, small_input=False, width=1.0, **shc_kwargs):
    return SHCResNet(Bottleneck, [3, 4, 6, 3], num_classes, shc, small_input, width, **shc_kwargs)


ARCHS = {"plain10": plain10, "resnet18": resnet18, "resnet50": resnet50}


def build(arch: str, num_classes=1000, shc=True, small_input=False, width=1.0, **shc_kwargs) -> nn.Module:
    """The model ``arch`` (a key of ARCHS); ``width`` scales every layer's channels."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {sorted(ARCHS)}")
    return ARCHS[arch](num_classes=num_classes, shc=shc, small_input=small_input, width=width, **shc_kwargs)
