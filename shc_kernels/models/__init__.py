"""The paper's networks: Plain-10 and ResNet-18/50, each with or without SHC layers.

Every model takes images in [0, 1] and normalises them itself (ImageNet mean/std, its first
step), so attacks work in pixel space. ``shc=True`` turns exactly the 3×3 convolutions into
``SHCConv2d`` (with ``convert``, so a fresh SHC model starts with every map at 0.5).
"""

from __future__ import annotations

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from ..modules import convert

__all__ = ["ARCHS", "Normalize", "build", "plain10", "resnet18", "resnet50"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalize(nn.Module):
    """(x - mean) / std per channel; the constants are not part of the state_dict."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        import torch

        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x):
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


def _small_stem(model, width=64):
    """3×3 stride-1 stem without max-pool, for images of 64 px or less."""
    model.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()


class SHCResNet(ResNet):
    """torchvision's ResNet (same modules, same state_dict keys) that normalises its input."""

    def __init__(self, block, layers, num_classes=1000, shc=True, small_input=False, **shc_kwargs):
        super().__init__(block, layers, num_classes=num_classes)
        self.normalize = Normalize()
        if small_input:
            _small_stem(self)
        if shc:
            convert(self, kernel_sizes=((3, 3),), **shc_kwargs)

    def forward(self, x):
        return super().forward(self.normalize(x))


def _conv_bn_relu(cin, cout, stride):
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class Plain10(nn.Module):
    """Plain-10 (paper §3): ResNet's stem and channel widths, one block of two 3×3 convs per
    resolution and no shortcuts: 1 + 8 convs + 1 linear layer."""

    def __init__(
        self, num_classes=1000, shc=True, small_input=False, widths=(64, 128, 256, 512), **shc_kwargs
    ):
        super().__init__()
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


def plain10(num_classes=1000, shc=True, small_input=False, **shc_kwargs):
    return Plain10(num_classes, shc, small_input, **shc_kwargs)


def resnet18(num_classes=1000, shc=True, small_input=False, **shc_kwargs):
    return SHCResNet(BasicBlock, [2, 2, 2, 2], num_classes, shc, small_input, **shc_kwargs)


def resnet50(num_classes=1000, shc=True, small_input=False, **shc_kwargs):
    return SHCResNet(Bottleneck, [3, 4, 6, 3], num_classes, shc, small_input, **shc_kwargs)


ARCHS = {"plain10": plain10, "resnet18": resnet18, "resnet50": resnet50}


def build(arch: str, num_classes=1000, shc=True, small_input=False, **shc_kwargs) -> nn.Module:
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {sorted(ARCHS)}")
    return ARCHS[arch](num_classes=num_classes, shc=shc, small_input=small_input, **shc_kwargs)
