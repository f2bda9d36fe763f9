"""One layer, one path: SHCConv2d, convert and the models run functional.shc_conv2d and, on the
compiled backend, the one-launch op shc::shc_conv2d; the module behaves as nn.Conv2d does;
convert carries everything over or refuses clearly."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from helpers import CPU_BACKENDS
from torch import nn
from torch.profiler import ProfilerActivity, profile

import shc_kernels as shc

needs_cpu = pytest.mark.skipif("cpu" not in CPU_BACKENDS, reason="extension not built")


def _ops_run(fn) -> set[str]:
    """The shc:: ops a call (forward + backward) ran, from the profiler."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.name for e in prof.events() if e.name.startswith("shc::")}


def _fwd_bwd(model, x):
    def run():
        model(x).square().sum().backward()

    return run


# ---------------------------------------------------------------- one path


@needs_cpu
@pytest.mark.parametrize("arch", ["plain10", "resnet18"])
def test_models_run_the_one_launch_op(arch, monkeypatch):
    monkeypatch.delenv("SHC_FORM", raising=False)
    monkeypatch.delenv("SHC_BACKEND", raising=False)
    torch.manual_seed(0)
    model = shc.models.build(arch, num_classes=10, shc=True, small_input=True)
    ran = _ops_run(_fwd_bwd(model, torch.rand(2, 3, 16, 16)))
    assert "shc::shc_conv2d" in ran
    assert "shc::shc_conv2d_backward" in ran  # its first-order backward, one call
    assert not {"shc::channel_stats", "shc::modulated_conv2d", "shc::modulated_conv2d_backward"} & ran, ran


@needs_cpu
def test_shc_form_and_backend_act_on_the_module(monkeypatch):
    monkeypatch.delenv("SHC_FORM", raising=False)
    monkeypatch.delenv("SHC_BACKEND", raising=False)
    layer = shc.SHCConv2d(4, 6, 3, padding=1)
    x = torch.randn(2, 4, 7, 7, requires_grad=True)
    # The same call remembered without the switches first: setting them still acts on the next call.
    assert "shc::shc_conv2d" in _ops_run(_fwd_bwd(layer, x))
    monkeypatch.setenv("SHC_FORM", "split")
    assert {"shc::channel_stats", "shc::modulated_conv2d"} <= _ops_run(_fwd_bwd(layer, x))
    monkeypatch.setenv("SHC_FORM", "bogus")
    with pytest.raises(ValueError, match="SHC_FORM must be one of"):
        layer(x)
    monkeypatch.delenv("SHC_FORM")
    monkeypatch.setenv("SHC_BACKEND", "reference")
    assert _ops_run(_fwd_bwd(layer, x)) == set()
    monkeypatch.delenv("SHC_BACKEND")
    assert "shc::shc_conv2d" in _ops_run(_fwd_bwd(layer, x))


def test_module_reads_the_hypernetwork_as_attribute_lookup_does():
    # SHCConv2d reads hyper.fc1/fc2's tensors from their parameter dicts where that is what
    # attribute lookup returns; a parametrized, re-registered or replaced layer is read by attribute.
    from torch.nn.utils import parametrize

    class Double(nn.Module):
        def forward(self, w):
            return 2 * w

    torch.manual_seed(0)
    layer = shc.SHCConv2d(4, 6, 3, padding=1)
    x = torch.randn(2, 4, 7, 7)

    def expected():
        f1, f2 = layer.hyper.fc1, layer.hyper.fc2
        return shc.reference.shc_conv2d(
            x, layer.weight, layer.bias, f1.weight, f1.bias, f2.weight, f2.bias, padding=1
        )

    torch.testing.assert_close(layer(x), expected())
    parametrize.register_parametrization(layer.hyper.fc2, "weight", Double())
    torch.testing.assert_close(layer(x), expected())
    parametrize.remove_parametrizations(layer.hyper.fc2, "weight")
    weight = layer.hyper.fc1.weight.detach()
    del layer.hyper.fc1.weight
    layer.hyper.fc1.weight = 0.5 * weight  # a plain tensor attribute, not a parameter
    torch.testing.assert_close(layer(x), expected())
    layer.hyper.fc1 = nn.Linear(8, 2, bias=False)
    torch.testing.assert_close(layer(x), expected())
    layer.hyper = shc.modules.HyperNetwork(4, (3, 3), hidden=3)
    torch.testing.assert_close(layer(x), expected())


@needs_cpu
@pytest.mark.parametrize("padding_mode", ["reflect", "circular"])
def test_padding_modes_take_the_split_route_with_stats_of_the_unpadded_input(padding_mode):
    torch.manual_seed(0)
    layer = shc.SHCConv2d(3, 5, 3, padding=1, padding_mode=padding_mode)
    x = torch.randn(2, 3, 6, 6)
    ran = _ops_run(lambda: layer(x))
    assert "shc::modulated_conv2d" in ran and "shc::shc_conv2d" not in ran
    f1, f2 = layer.hyper.fc1, layer.hyper.fc2
    m = shc.reference.statistical_map(x, f1.weight, f1.bias, f2.weight, f2.bias, (3, 3))
    xp = nn.functional.pad(x, (1, 1, 1, 1), mode=padding_mode)
    expected = shc.reference.modulated_conv2d(xp, layer.weight, m, layer.bias)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- nn.Conv2d parity


@pytest.mark.parametrize("backend", ["reference", *CPU_BACKENDS])
def test_unbatched_input_as_conv2d(backend):
    torch.manual_seed(0)
    layer = shc.SHCConv2d(3, 4, 3, padding=1, backend=backend)
    x = torch.randn(3, 5, 5)
    y = layer(x)
    assert y.shape == (4, 5, 5)
    torch.testing.assert_close(y, layer(x[None])[0])


def test_conv_forward_computes_the_shc_layer_with_the_given_weight():
    torch.manual_seed(0)
    layer = shc.SHCConv2d(3, 4, 3, padding=1)
    x = torch.randn(2, 3, 5, 5)
    w, b = torch.randn_like(layer.weight), torch.randn_like(layer.bias)
    f1, f2 = layer.hyper.fc1, layer.hyper.fc2
    expected = shc.reference.shc_conv2d(x, w, b, f1.weight, f1.bias, f2.weight, f2.bias, padding=1)
    torch.testing.assert_close(layer._conv_forward(x, w, b), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel, dilation", [(3, 1), (4, 1), ((2, 3), (1, 2)), (5, 2)])
@pytest.mark.parametrize("backend", ["reference", *CPU_BACKENDS])
def test_padding_same_and_valid_as_conv2d(kernel, dilation, backend):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 10, 11, dtype=torch.float64)
    for padding in ("same", "valid"):
        layer = shc.SHCConv2d(3, 4, kernel, padding=padding, dilation=dilation, backend=backend).double()
        plain = nn.Conv2d(3, 4, kernel, padding=padding, dilation=dilation).double()
        assert layer(x).shape == plain(x).shape
        f1, f2 = layer.hyper.fc1, layer.hyper.fc2
        m = shc.reference.statistical_map(x, f1.weight, f1.bias, f2.weight, f2.bias, layer.kernel_size)
        # The modulated conv is a plain conv with the weight scaled per sample: compare per sample.
        for n in range(2):
            expected = nn.functional.conv2d(
                x[n : n + 1], layer.weight * m[n], layer.bias, padding=padding, dilation=dilation
            )
            torch.testing.assert_close(layer(x)[n : n + 1], expected)
        y = shc.shc_conv2d(x, layer.weight, layer.bias, f1.weight, f1.bias, f2.weight, f2.bias,
                           padding=padding, dilation=dilation, backend=backend)  # fmt: skip
        torch.testing.assert_close(y, layer(x))


def test_same_padding_rejects_stride():
    with pytest.raises(ValueError, match="padding='same' is not supported for strided"):
        shc.shc_conv2d(torch.randn(1, 2, 5, 5), *_params(2, 3), stride=2, padding="same")


def _params(d, c):
    layer = shc.SHCConv2d(d, c, 3)
    f1, f2 = layer.hyper.fc1, layer.hyper.fc2
    return [t.detach() for t in (layer.weight, layer.bias, f1.weight, f1.bias, f2.weight, f2.bias)]


def test_numpy_integers_accepted_as_conv2d_does():
    torch.manual_seed(0)
    x, p = torch.randn(2, 2, 6, 6), _params(2, 3)
    y = shc.shc_conv2d(x, *p, stride=np.int64(2), padding=(np.int32(1), 1), dilation=np.int64(1), groups=1)
    torch.testing.assert_close(y, shc.shc_conv2d(x, *p, stride=2, padding=1))
    assert shc.SHCConv2d(2, 3, np.int64(3), padding=np.int64(1))(x).shape == (2, 3, 6, 6)


def test_model_built_on_meta_then_materialised():
    with torch.device("meta"):
        model = shc.models.build("plain10", num_classes=10, shc=True, small_input=True)
        y = model(torch.rand(2, 3, 16, 16))  # shapes only
    assert y.shape == (2, 10) and y.device.type == "meta"
    model.to_empty(device="cpu")
    for mod in model.modules():
        if hasattr(mod, "reset_parameters"):
            mod.reset_parameters()
    assert torch.isfinite(model(torch.rand(2, 3, 16, 16))).all()
    with torch.device("meta"):
        plain = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                              nn.Conv2d(8, 10, 3, stride=2), nn.AdaptiveAvgPool2d(1),
                              nn.Flatten())  # fmt: skip
        model = shc.convert(plain)
    model.to_empty(device="cpu")
    for mod in model.modules():
        if hasattr(mod, "reset_parameters"):
            mod.reset_parameters()
    out = model(torch.rand(2, 3, 16, 16))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    layer = next(m for m in model.modules() if isinstance(m, shc.SHCConv2d))
    assert layer.hyper.fc2.weight.abs().sum() > 0  # reset_parameters re-initialised the hypernetwork


def test_reset_parameters_reinitialises_the_hypernetwork():
    layer = shc.convert(nn.Conv2d(4, 4, 3))
    assert layer.hyper.fc2.weight.abs().sum() == 0  # convert: map at exactly 0.5
    before = layer.hyper.fc1.weight.clone()
    layer.reset_parameters()
    assert layer.hyper.fc2.weight.abs().sum() > 0
    assert not torch.equal(before, layer.hyper.fc1.weight)


def test_options_are_checked_when_set_after_construction():
    layer = shc.SHCConv2d(3, 4, 3)
    with pytest.raises(ValueError, match="grad_route must be one of"):
        layer.grad_route = "foo"
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        layer.eps = -1.0
    with pytest.raises(ValueError, match="unknown backend"):
        layer.backend = "gpu"
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        shc.SHCConv2d(3, 4, 3, eps=0.0)
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        shc.shc_conv2d(torch.randn(1, 3, 5, 5), *_params(3, 4), eps=-1e-5)
    layer.grad_route = "hyper"
    assert layer.grad_route == "hyper" and "grad_route='hyper'" in repr(layer)


# ---------------------------------------------------------------- convert


class StdConv2d(nn.Conv2d):
    """timm's weight-standardised conv: a forward of its own."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
        return nn.functional.conv2d(x, w, self.bias, self.stride, self.padding)


def test_convert_leaves_a_conv_with_its_own_forward_alone():
    torch.manual_seed(0)
    model = nn.Sequential(StdConv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1))
    x = torch.randn(2, 3, 6, 6)
    before = model(x)
    with pytest.warns(UserWarning, match=r"left 1 subclasses with a forward of their own \(StdConv2d: 1\)"):
        shc.convert(model)
    assert type(model[0]) is StdConv2d and isinstance(model[1], shc.SHCConv2d)
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)


def test_convert_refuses_a_lazy_conv():
    with pytest.raises(ValueError, match="lazy conv .* run one forward pass"):
        shc.convert(nn.Sequential(nn.LazyConv2d(4, 3)))


def test_convert_refuses_hooks_and_parametrizations():
    conv = nn.Conv2d(3, 4, 3)
    conv.register_forward_hook(lambda *a: None)
    with pytest.raises(ValueError, match=r"0 \(Conv2d\) has hooks \(forward_hooks\)"):
        shc.convert(nn.Sequential(conv))
    wn = nn.utils.parametrizations.weight_norm(nn.Conv2d(3, 4, 3))
    with pytest.raises(ValueError, match="parametrizations on weight"):
        shc.convert(nn.Sequential(wn))


def test_convert_carries_requires_grad_and_shares_a_reused_conv():
    conv = nn.Conv2d(3, 3, 3, padding=1)
    conv.bias.requires_grad_(False)
    model = nn.Sequential(conv, nn.ReLU(), conv)
    shc.convert(model)
    assert isinstance(model[0], shc.SHCConv2d) and model[0] is model[2]
    assert model[0].weight.requires_grad and not model[0].bias.requires_grad
    assert sum(isinstance(m, shc.SHCConv2d) for m in model.modules()) == 1


def test_convert_refuses_a_weight_that_would_overflow():
    conv = nn.Conv2d(2, 2, 3).half()
    with torch.no_grad():
        conv.weight[0, 0, 0, 0] = 60000.0
    with pytest.raises(ValueError, match="overflows"):
        shc.convert(conv)


def test_convert_rejects_unknown_keywords_even_without_convs():
    with pytest.raises(TypeError, match="unknown keyword argument"):
        shc.convert(nn.Linear(2, 2), grad_rout="conv")
    with pytest.raises(ValueError, match="grad_route must be one of"):
        shc.convert(nn.Linear(2, 2), grad_route="x")


def test_convert_keeps_outputs_on_a_converted_model_without_warnings():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3))
    x = torch.randn(2, 3, 7, 7)
    before = model(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        shc.convert(model)
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- auto checks before it trusts


@pytest.fixture
def two_candidates(monkeypatch):
    """auto with two timed candidates, "cpu" and "reference", and empty caches."""
    monkeypatch.setattr(shc.backends, "_FASTEST", {})
    monkeypatch.setattr(shc.backends, "_EXCLUDED", {})
    monkeypatch.setattr(shc.backends, "auto_candidates", lambda x: ["cpu", "reference"])
    monkeypatch.delenv("SHC_BACKEND", raising=False)


@needs_cpu
def test_auto_excludes_a_candidate_that_computes_wrong_numbers(two_candidates, monkeypatch):
    real = shc.functional._layer

    def wrong_cpu(*args):
        y = real(*args)
        return y * 1.01 if args[-2] == "cpu" else y  # 1% off: beyond fp32's tolerance

    monkeypatch.setattr(shc.functional, "_layer", wrong_cpu)
    x, p = torch.randn(3, 2, 6, 6, requires_grad=True), _params(2, 3)
    with pytest.warns(UserWarning, match=r"excluded 'cpu' for the backend of x \(3, 2, 6, 6\).*max error"):
        y = shc.shc_conv2d(x, *p, padding=1)
    ((key, chosen),) = shc.backends._FASTEST.items()
    assert chosen == "reference"
    assert any("cpu for the backend of x (3, 2, 6, 6)" in line for line in shc.backends.excluded_candidates())
    torch.testing.assert_close(y, shc.reference.shc_conv2d(x, *p, padding=1))


@needs_cpu
def test_auto_keeps_the_faster_of_candidates_that_agree(two_candidates):
    x, p = torch.randn(3, 2, 6, 6), _params(2, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        shc.shc_conv2d(x, *p, padding=1)
    assert shc.backends.excluded_candidates() == []


def test_cuda_sim_backend_says_how_to_build_it():
    if shc.ops.load_sim() is None:
        pytest.skip("the CUDA-on-CPU build is here")
    with pytest.raises(ValueError, match="make cuda-sim"):
        shc.shc_conv2d(torch.randn(1, 2, 5, 5), *_params(2, 3), backend="cuda_sim")
    assert "cuda_sim" not in shc.available_backends()


def test_a_call_like_one_that_passed_is_not_checked_again_but_every_difference_is():
    # shc_conv2d remembers argument metadata that passed its checks (functional._KNOWN): the
    # same call again skips them, and any argument that differs is checked anew.
    from shc_kernels import functional

    torch.manual_seed(0)
    x, p = torch.randn(2, 2, 6, 6), _params(2, 3)
    functional._KNOWN.clear()
    y = shc.shc_conv2d(x, *p, padding=1)
    assert len(functional._KNOWN) == 1
    torch.testing.assert_close(shc.shc_conv2d(x, *p, padding=1), y)
    assert len(functional._KNOWN) == 1
    bad = [
        (dict(groups=True), ValueError, "groups must be a positive int"),
        (dict(eps=0.0), ValueError, "eps must be a finite number > 0"),
        (dict(eps=float("nan")), ValueError, "eps must be a finite number > 0"),
        (dict(padding=-1), ValueError, "padding >= 0"),
        (dict(stride=(1, True)), TypeError, "stride must be an int or a pair"),
    ]
    for kwargs, exc, match in bad:
        with pytest.raises(exc, match=match):
            shc.shc_conv2d(x, *p, **({"padding": 1} | kwargs))
    with pytest.raises(TypeError, match="weight dtype"):
        shc.shc_conv2d(x, p[0].double(), *p[1:], padding=1)
    with pytest.raises(ValueError, match="fc1_weight must have shape"):
        shc.shc_conv2d(x, p[0], p[1], p[2][:, :3], *p[3:], padding=1)
    with pytest.raises(ValueError, match="channels"):
        shc.shc_conv2d(torch.randn(2, 3, 6, 6), *p, padding=1)
    # A torch.func transform after a remembered call still takes the reference.
    per_sample = torch.func.vmap(lambda xi: shc.shc_conv2d(xi[None], *p, padding=1)[0])(x)
    torch.testing.assert_close(per_sample, shc.reference.shc_conv2d(x, *p, padding=1))
