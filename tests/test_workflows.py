"""The PyTorch workflows a user brings to a converted model (issue 32): each works and matches the
eager model, or raises an error that says what to do instead. docs/workflows.md is the table."""

from __future__ import annotations

import copy
import io
import pickle
import warnings

import pytest
import torch
from torch import nn

import shc_kernels as shc
from shc_kernels import export

needs_cpu = pytest.mark.skipif("cpu" not in shc.available_backends(), reason="compiled CPU backend not built")


def small_resnet(seed=0):
    """torchvision's ResNet-18 (its ResNet class and BasicBlocks) at width 1/4 with a 3×3 stem for
    32 px input: the package's narrow ResNet, without its input normalisation (which branches on
    the input's channels: not FX-traceable)."""
    from torchvision.models.resnet import ResNet

    torch.manual_seed(seed)
    model = shc.models.resnet18(num_classes=10, shc=False, small_input=True, width=0.25)
    del model.normalize
    model.__class__ = ResNet  # torchvision's own forward
    return model.eval()


def plain_resnet():
    return small_resnet(0)


@pytest.fixture(scope="module")
def converted():
    """(plain model, converted model, x, the converted model's output on x)."""
    plain = plain_resnet()
    model = shc.convert(copy.deepcopy(plain)).eval()
    with torch.no_grad():  # give the maps something to do: they vary with the input
        for layer in model.modules():
            if isinstance(layer, shc.SHCConv2d):
                layer.hyper.fc2.weight.normal_(0, 0.5)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x)
    return plain, model, x, y


def close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def shc_layers(model):
    return [m for m in model.modules() if isinstance(m, shc.SHCConv2d)]


# ---------------------------------------------------------------- pretrained weights and state_dict


def test_convert_then_load_a_plain_checkpoint_equals_load_then_convert():
    plain = plain_resnet()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = plain(x)
    model = shc.convert(small_resnet(5)).eval()  # another initialisation: only the checkpoint matters
    result = model.load_state_dict(plain.state_dict(), strict=False)
    assert not result.unexpected_keys and all(".hyper." in k for k in result.missing_keys)
    with torch.no_grad():
        close(model(x), expected)  # was half-scale weights (error ~ the output's scale)
        close(shc.convert(copy.deepcopy(plain))(x), expected)


def test_a_plain_checkpoint_into_a_layer_whose_map_varies_raises_saying_load_first(converted):
    plain, model, _, _ = converted
    model = copy.deepcopy(model)
    with pytest.raises(RuntimeError, match="load the checkpoint into the plain model first, then call shc.c"):
        model.load_state_dict(plain.state_dict(), strict=False)


def test_an_shc_checkpoint_without_its_hyper_keys_is_not_rescaled(converted, tmp_path):
    """A partial load of an SHC model's own state_dict (its hyper.* keys left out) keeps the SHC
    weights as they are: its metadata says an SHCConv2d wrote it. Rescaling it as a plain conv's
    doubled every weight (error ~ the output's scale); with a varying map it raised 'load into
    the plain model first', which is wrong advice for an SHC checkpoint."""
    plain, model, x, _ = converted
    for source in (shc.convert(copy.deepcopy(plain)).eval(), model):  # a constant map, a varying one
        state = source.state_dict()
        for key in [k for k in state if ".hyper." in k]:
            del state[key]  # keeps state._metadata, as a torch.save / torch.load round trip does
        torch.save(state, tmp_path / "partial.pt")
        target = copy.deepcopy(source)
        with torch.no_grad():
            for layer in shc_layers(target):
                layer.weight.zero_()
        result = target.load_state_dict(torch.load(tmp_path / "partial.pt", weights_only=True), strict=False)
        assert result.missing_keys and all(".hyper." in k for k in result.missing_keys)
        with torch.no_grad():
            close(target(x), source(x))
    # Without metadata (a dict rebuilt key by key) a weight without hyper.* keys is a plain conv's.
    rebuilt = {k: v for k, v in plain.state_dict().items()}
    target = shc.convert(small_resnet(5)).eval()
    target.load_state_dict(rebuilt, strict=False)
    with torch.no_grad():
        close(target(x), plain(x))


def test_state_dict_round_trips(converted, tmp_path):
    _, model, x, y = converted
    torch.save(model.state_dict(), tmp_path / "shc.pt")
    fresh = shc.convert(plain_resnet()).eval()
    fresh.load_state_dict(torch.load(tmp_path / "shc.pt", weights_only=True))  # strict: every key
    with torch.no_grad():
        close(fresh(x), y)
    plain = plain_resnet()
    back = shc.convert(copy.deepcopy(plain)).eval()
    back.load_state_dict(shc.convert(copy.deepcopy(plain)).state_dict())
    with torch.no_grad():
        close(back(x), plain(x))


# ---------------------------------------------------------------- convert's one line


def test_convert_says_in_one_line_when_nothing_was_converted():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 7), nn.Conv2d(4, 4, 1))
    with pytest.warns(UserWarning) as record:
        shc.convert(model)
    (message,) = [str(w.message) for w in record]
    assert message == (
        "shc.convert converted nothing in Sequential (3×3): left 3 of other kernel sizes (1×1: 2, 7×7: 1)"
    )
    with pytest.warns(UserWarning, match=r"converted nothing in Linear \(3×3\): it has no nn.Conv2d"):
        shc.convert(nn.Linear(2, 2))
    with pytest.warns(UserWarning, match="converted nothing .*: 1 SHCConv2d there already"):
        shc.convert(shc.convert(nn.Sequential(nn.Conv2d(3, 3, 3))))


class StdConv2d(nn.Conv2d):
    def forward(self, x):
        w = self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)
        return nn.functional.conv2d(x, w, self.bias, self.stride, self.padding)


def test_convert_counts_what_it_left_by_reason_in_one_short_line():
    model = nn.Sequential(*[StdConv2d(4, 4, k) for k in (1, 1, 3, 3, 7)], nn.Conv2d(4, 4, 3))
    with pytest.warns(UserWarning) as record:
        shc.convert(model)
    (message,) = [str(w.message) for w in record]
    assert message.startswith("shc.convert converted 1 nn.Conv2d (3×3) to SHCConv2d; left 3 of other kernel")
    assert "2 subclasses with a forward of their own (StdConv2d: 2)" in message
    assert "\n" not in message and len(message) < 250


# ---------------------------------------------------------------- tracing and export


def test_fx_symbolic_trace_keeps_each_layer_as_one_module_call(converted):
    _, model, x, y = converted
    traced = torch.fx.symbolic_trace(copy.deepcopy(model))
    targets = [n.target for n in traced.graph.nodes if n.op == "call_module"]
    names = [name for name, m in model.named_modules() if isinstance(m, shc.SHCConv2d)]
    assert names and all(name in targets for name in names)
    with torch.no_grad():
        close(traced(x), y)


def test_fx_symbolic_trace_of_a_layer_itself():
    """The layer as the traced root (was: AttributeError "'SHCConv2d' object has no attribute ''",
    a call_module node naming the root)."""
    layer = shc.SHCConv2d(3, 4, 3, padding=1, padding_mode="reflect").eval()
    traced = torch.fx.symbolic_trace(layer)
    assert [n.target for n in traced.graph.nodes if n.op == "call_function"] == [shc.shc_conv2d]
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        close(traced(x), layer(x))


def test_fx_traces_the_functional_api_as_one_call():
    layer = shc.SHCConv2d(3, 4, 3, padding=1)

    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = layer

        def forward(self, x):
            return shc.shc_conv2d(x, layer.weight, layer.bias, *layer._hyper_params(), padding=1).relu()

    traced = torch.fx.symbolic_trace(Functional())
    assert [n.target for n in traced.graph.nodes if n.op == "call_function"][0] is shc.shc_conv2d
    x = torch.randn(2, 3, 6, 6)
    close(traced(x), layer(x).relu())


def test_feature_extraction(converted):
    from torchvision.models.feature_extraction import create_feature_extractor

    _, model, x, _ = converted
    model = copy.deepcopy(model)  # torchvision's tracer leaves a model it failed on in train mode
    seen = {}
    handle = model.layer2.register_forward_hook(lambda m, i, o: seen.setdefault("layer2", o))
    with torch.no_grad():
        y = model(x)
    handle.remove()
    extractor = create_feature_extractor(model, {"layer2": "features", "fc": "logits"})
    with torch.no_grad():
        out = extractor(x)
    close(out["features"], seen["layer2"])
    close(out["logits"], y)


def test_torchscript_trace_works_for_other_batch_sizes_without_warnings_from_the_layer(converted):
    _, model, x, y = converted
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        traced = torch.jit.trace(model, x)
    assert not [w for w in record if "shc_kernels" in w.filename]
    x3 = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        close(traced(x), y)
        close(traced(x3), model(x3))


@needs_cpu
def test_torchscript_script_runs_the_compiled_op_and_saves(converted):
    _, model, x, y = converted
    scripted = torch.jit.script(model)
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)
    with torch.no_grad():
        close(scripted(x), y)
        close(loaded(x), y)
    for padding, mode in (("same", "reflect"), (1, "circular")):
        layer = shc.SHCConv2d(3, 4, (3, 4) if padding == "same" else 3, padding=padding, padding_mode=mode)
        xs = torch.randn(2, 3, 7, 8)
        close(torch.jit.script(layer)(xs), layer(xs))


def test_torchscript_script_of_a_backend_it_cannot_run_says_what_to_use():
    layer = shc.SHCConv2d(3, 4, 3, backend="reference")
    with pytest.raises(RuntimeError, match="use torch.jit.trace, torch.compile or torch.export instead"):
        torch.jit.script(layer)


def test_torchscript_script_under_an_unknown_shc_backend_is_the_eager_error(monkeypatch):
    monkeypatch.setenv("SHC_BACKEND", "bogus")  # was: scripted, the variable silently ignored
    with pytest.raises(ValueError, match="the environment variable SHC_BACKEND must be one of"):
        torch.jit.script(shc.SHCConv2d(3, 4, 3))


def test_torchscript_script_of_the_functional_api_says_to_script_the_module():
    layer = shc.SHCConv2d(3, 4, 3)

    class Functional(nn.Module):
        def forward(self, x):
            return shc.shc_conv2d(x, layer.weight, layer.bias, layer.hyper.fc1.weight, layer.hyper.fc1.bias,
                                  layer.hyper.fc2.weight, layer.hyper.fc2.bias)  # fmt: skip

    with pytest.raises(RuntimeError, match="script the module SHCConv2d instead"):
        torch.jit.script(Functional())
    with pytest.raises(RuntimeError, match="cannot compile shc_kernels.statistical_map"):
        torch.jit.script(shc.statistical_map)


def test_torch_export_with_a_dynamic_batch(converted):
    _, model, x, y = converted
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    x3 = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        close(program.module()(x), y)
        close(program.module()(x3), model(x3))


@needs_cpu
def test_torch_compile(converted):
    _, model, x, y = converted
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        close(compiled(x), y)


def shc_net():
    """Small, with what the ONNX path must express: stride, groups (depthwise), dilation,
    reflect padding, "same" with an even kernel, no bias."""
    torch.manual_seed(0)
    net = nn.Sequential(
        shc.SHCConv2d(3, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        shc.SHCConv2d(8, 8, 3, padding=2, dilation=2, groups=8, bias=False),
        shc.SHCConv2d(8, 6, 3, padding=1, padding_mode="reflect"),
        shc.SHCConv2d(6, 4, (2, 4), padding="same"),
    )
    return net.eval()


def test_onnx_export_to_standard_operators_with_a_dynamic_batch(tmp_path):
    onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx)")
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install onnxruntime)")
    net = shc_net()
    x = torch.randn(2, 3, 17, 16)
    path = tmp_path / "net.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's exporter warns about its own deprecation
        export.to_onnx(net, x, path)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert {"Conv", "Gemm", "Sigmoid", "ReduceMean"} <= ops and all(op.isalpha() for op in ops)
    for batch in (1, 2, 5):  # the batch is dynamic
        assert export.check_onnx(path, net, torch.randn(batch, 3, 17, 16)) < 1e-5


def test_onnx_export_by_the_dynamo_exporter_with_a_dynamic_batch(tmp_path):
    """torch.onnx.export's default exporter (dynamo=True: torch.export, then onnxscript) on the
    decomposed model; about 25 s of CPU, most of it the exporter's own start-up."""
    onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx)")
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install onnxruntime)")
    pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript (pip install onnxscript)")
    net = shc_net()
    path = tmp_path / "net.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export.to_onnx(net, torch.randn(2, 3, 17, 16), path, dynamo=True)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert {"Conv", "Gemm", "Sigmoid", "ReduceMean"} <= ops and all(op.isalpha() for op in ops)
    for batch in (1, 2, 5):
        assert export.check_onnx(path, net, torch.randn(batch, 3, 17, 16)) < 1e-5


def test_torch_onnx_export_of_the_model_itself_gives_standard_operators(tmp_path):
    onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx)")
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install onnxruntime)")
    net = shc_net()
    x = torch.randn(2, 3, 17, 16)
    with torch.no_grad():
        net(x)  # eager calls first: the export must not reuse what they planned (the custom op)
    path = tmp_path / "net.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), str(path), dynamo=False, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})  # fmt: skip
    assert "shc" not in {node.domain for node in onnx.load(str(path)).graph.node}
    for batch in (1, 3):
        assert export.check_onnx(path, net, torch.randn(batch, 3, 17, 16)) < 1e-5


def test_torch_onnx_export_of_the_functional_api_gives_standard_operators(tmp_path):
    """A model that calls shc.statistical_map and shc.modulated_conv2d itself (the custom ops
    reached the ONNX graph: 'unrecognized namespace shc')."""
    onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx)")
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install onnxruntime)")
    torch.manual_seed(0)
    layer = shc.SHCConv2d(3, 4, (3, 5), groups=1).eval()
    with torch.no_grad():
        layer.hyper.fc2.weight.normal_(0, 0.5)

    class TwoCalls(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = layer

        def forward(self, x):
            m = shc.statistical_map(x, *layer._hyper_params(), (3, 5))
            return shc.modulated_conv2d(x, layer.weight, m, layer.bias, stride=(2, 1), padding=(1, 2))

    net, x = TwoCalls().eval(), torch.randn(2, 3, 9, 10)
    path = tmp_path / "two.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), str(path), dynamo=False, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})  # fmt: skip
    assert "shc" not in {node.domain for node in onnx.load(str(path)).graph.node}
    for batch in (1, 3):
        assert export.check_onnx(path, net, torch.randn(batch, 3, 9, 10)) < 1e-5


def test_decompose_computes_what_the_layers_compute(converted):
    _, model, x, y = converted
    with torch.no_grad():
        close(export.decompose(model)(x), y)
        net = shc_net()
        xs = torch.randn(2, 3, 17, 16)
        close(export.decompose(net)(xs), net(xs))
    assert any(isinstance(m, shc.SHCConv2d) for m in model.modules())  # the model itself is untouched


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kernel_size=3, groups=2, padding=1),  # grouped with 2 channels a group
        dict(kernel_size=(3, 5), stride=(2, 1), dilation=(2, 1), padding=(2, 3), padding_mode="circular"),
        dict(kernel_size=3, padding=1, padding_mode="replicate", bias=False),
        dict(kernel_size=(2, 3), padding="same", dilation=2, padding_mode="reflect"),
        dict(kernel_size=3, padding="valid", stride=3),
    ],
)
def test_decompose_matches_the_layer_for_each_geometry(kwargs):
    torch.manual_seed(0)
    layer = shc.SHCConv2d(4, 6, **kwargs).eval()
    with torch.no_grad():
        layer.hyper.fc2.weight.normal_(0, 0.5)
        x = torch.randn(3, 4, 11, 13)
        close(export.decompose(layer)(x), layer(x))
        close(export.decompose(layer)(x[0]), layer(x[0]))  # unbatched


def test_decomposed_statistics_stay_finite_where_float32_sums_overflow(tmp_path):
    """A float32 plane of std ~1e19 (variance ~1e38, past float32's range): the ONNX graph's
    statistics accumulate in float64, as the reference does; float32 sums gave a NaN output."""
    torch.manual_seed(0)
    layer = shc.SHCConv2d(4, 4, 3, padding=1).eval()
    x = torch.randn(2, 4, 8, 8) * 1e19
    with torch.no_grad():
        expected = shc.reference.shc_conv2d(x, layer.weight, layer.bias, *layer._hyper_params(), padding=1)
        got = export.decompose(layer)(x)
    assert expected.isfinite().all()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=0)
    pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx)")
    onnxruntime = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    path = tmp_path / "layer.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export.to_onnx(layer, x, path)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_y = torch.from_numpy(session.run(None, {"x": x.numpy()})[0])
    torch.testing.assert_close(onnx_y, expected, rtol=1e-4, atol=0)


def test_shc_backend_that_cannot_run_says_to_unset_it(monkeypatch):
    layer = shc.SHCConv2d(3, 4, 3)
    monkeypatch.setenv("SHC_BACKEND", "triton")
    monkeypatch.setattr(shc.backends, "unavailable_reason", lambda b: "no GPU" if b == "triton" else None)
    with pytest.raises(ValueError, match=r"SHC_BACKEND 'triton' is not available: no GPU; unset SHC_BACKEND"):
        layer(torch.randn(1, 3, 5, 5))
    with pytest.raises(ValueError, match=r"^backend 'triton' is not available: no GPU$"):  # asked by the code
        shc.SHCConv2d(3, 4, 3, backend="triton")(torch.randn(1, 3, 5, 5))


# ---------------------------------------------------------------- copies, hooks, wrappers, torch.func


def test_deepcopy_pickle_and_saving_the_whole_module(converted, tmp_path):
    _, model, x, y = converted
    torch.save(model, tmp_path / "model.pt")
    for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model)),
                  torch.load(tmp_path / "model.pt", weights_only=False)):  # fmt: skip
        with torch.no_grad():
            close(other(x), y)


def test_forward_and_backward_hooks_on_a_layer(converted):
    _, model, x, _ = converted
    model = copy.deepcopy(model)
    layer = model.layer1[0].conv1
    seen = {}
    layer.register_forward_pre_hook(lambda m, args: (args[0] * 0,))
    layer.register_forward_hook(lambda m, args, out: seen.setdefault("out", out))
    layer.register_full_backward_hook(lambda m, gin, gout: seen.setdefault("gin", gin))
    model(x.requires_grad_(True)).sum().backward()
    assert seen["out"].abs().max() == 0  # the pre-hook's zero input, without bias
    assert seen["gin"][0].shape == (2, layer.in_channels, 32, 32)


def test_data_parallel(converted):
    _, model, x, y = converted
    with torch.no_grad():
        close(nn.DataParallel(model)(x), y)  # without GPUs it runs the module itself


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    layer = shc.SHCConv2d(4, 6, 3, padding=1)
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    layer(x).square().sum().backward()
    expected = [x.grad.clone()] + [p.grad.clone() for p in layer.parameters()]
    x.grad = None
    layer.zero_grad()
    torch.utils.checkpoint.checkpoint(layer, x, use_reentrant=False).square().sum().backward()
    for got, want in zip([x.grad] + [p.grad for p in layer.parameters()], expected, strict=True):
        close(got, want)


def test_torch_func_functional_call_vmap_and_grad(converted):
    _, model, x, y = converted
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())
    with torch.no_grad():
        close(torch.func.functional_call(model, (params, buffers), (x,)), y)
    layer = shc.SHCConv2d(3, 4, 3, padding=1)
    xs = torch.randn(3, 3, 6, 6)
    close(torch.func.vmap(layer)(xs.unsqueeze(1)).squeeze(1), layer(xs))
    dx = torch.func.grad(lambda t: layer(t).square().sum())(xs)
    xr = xs.clone().requires_grad_(True)
    layer(xr).square().sum().backward()
    close(dx, xr.grad)
