"""shc_kernels.research.models: torchvision's keys at width 1, a width multiplier, grey images."""

from __future__ import annotations

import pytest
import torch
import torchvision

from shc_kernels.modules import SHCConv2d
from shc_kernels.research import checkpoint, models


def _shapes(model) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_width_1_keeps_torchvision_state_dict_keys_and_shapes():
    ours = models.build("resnet18", num_classes=10, shc=False, width=1)
    assert _shapes(ours) == _shapes(torchvision.models.resnet18(num_classes=10))


def test_narrow_resnet_has_torchvision_keys_with_scaled_shapes():
    ours = models.build("resnet50", num_classes=10, shc=False, width=0.125)
    theirs = torchvision.models.resnet50(num_classes=10, width_per_group=8)  # bottleneck inner width only
    assert list(_shapes(ours)) == list(_shapes(theirs))
    assert _shapes(ours)["layer4.2.conv3.weight"] == (256, 64, 1, 1)


@pytest.mark.parametrize("arch", ["plain10", "resnet18", "resnet50"])
def test_width_scales_every_stage_and_the_model_still_runs(arch):
    model = models.build(arch, num_classes=10, shc=True, small_input=True, width=0.125)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs[0].out_channels == 8  # 64 x 0.125
    expansion = 4 if arch == "resnet50" else 1
    assert model.fc.in_features == 64 * expansion  # 512 x 0.125
    assert any(isinstance(m, SHCConv2d) for m in convs)
    assert model.eval()(torch.rand(2, 3, 16, 16)).shape == (2, 10)


def test_plain10_width_1_is_the_paper_width():
    net = models.plain10(shc=False)
    assert [net.layer1[0].out_channels, net.layer4[0].out_channels] == [64, 512]
    assert models.scaled_widths(0.01) == (1, 1, 3, 5)  # never a stage of 0 channels


@pytest.mark.parametrize("width", [0, -1, float("nan"), "2", True])
def test_bad_width_is_a_value_error(width):
    with pytest.raises(ValueError, match="width must be a number > 0"):
        models.build("plain10", width=width)


@pytest.mark.parametrize("arch", ["plain10", "resnet18"])
def test_grey_image_is_the_same_as_the_grey_repeated_to_rgb(arch):
    torch.manual_seed(0)
    model = models.build(arch, num_classes=10, shc=True, small_input=True, width=0.0625).eval()
    grey = torch.rand(3, 1, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(model(grey), model(grey.expand(-1, 3, -1, -1)))
    grey.requires_grad_(True)
    model(grey).sum().backward()
    assert grey.grad.shape == (3, 1, 12, 12)  # attacks perturb the grey image itself


def test_checkpoint_meta_width_rebuilds_the_narrow_model(tmp_path):
    net = models.build("resnet18", num_classes=10, shc=True, small_input=True, width=0.25)
    meta = {"arch": "resnet18", "shc": True, "small_input": True, "num_classes": 10, "width": 0.25}
    torch.save({"meta": meta, "model": net.state_dict()}, tmp_path / "c.pt")
    loaded, got = checkpoint.load_model(str(tmp_path / "c.pt"))
    assert got["width"] == 0.25 and _shapes(loaded) == _shapes(net)
