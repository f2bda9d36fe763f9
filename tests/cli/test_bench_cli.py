"""`shc bench` checks every argument before any work: a bad command line exits with status 2, a
one-line message naming the argument and nothing written (tests/cli_cases.assert_rejected)."""

from __future__ import annotations

import json

import pytest
from cli_cases import assert_rejected, run_cli

from shc_kernels.cli import bench


def _file(tmp_path, name="a_file"):
    path = tmp_path / name
    path.write_text("not a folder")
    return path


# (argv after `shc bench`, text the error must contain); "{tmp}" is the test's tmp_path.
BAD = [
    (["--batch", "0"], "--batch"),
    (["--batch", "-4"], "--batch"),
    (["--batch", "two"], "--batch"),
    (["--reps", "0"], "--reps"),
    (["--warmup", "-1"], "--warmup"),
    (["--threads", "0"], "--threads"),
    (["--dtype", "int8"], "--dtype"),
    (["--device", "tpu"], "--device"),
    (["--device", "cuda:7"], "--device"),
    (["--model", "bogus"], "--model"),
    (["--methods", "bogus"], "--methods"),
    (["--methods", "plain", "shc:nope"], "shc:nope"),
    (["--shapes", "nope"], "--shapes"),
    (["--shapes", "vgg:1:28"], "--shapes"),
    (["--shapes", "plain10:0:28"], "--shapes"),
    (["--shapes", "plain10:1:x"], "--shapes"),
    (["--shapes", "plain10:1"], "--shapes"),
    (["--width", "0.5"], "--width"),
    (["--image-size", "28"], "--image-size"),
    (["--num-classes", "10"], "--num-classes"),
    (["--model", "plain10", "--width", "0"], "--width"),
    (["--model", "plain10", "--width", "nan"], "--width"),
    (["--model", "plain10", "--image-size", "0"], "--image-size"),
    (["--model", "plain10", "--num-classes", "0"], "--num-classes"),
    (["--clock", "cpu"], "--clock"),
    (["--clock", "thread", "--threads", "2"], "--clock"),
    (["--json", "{tmp}"], "--json"),
    (["--markdown", "{tmp}/"], "--markdown"),
    (["--json", "{tmp}/a_file/out.json"], "--json"),
    (["--markdown", "{tmp}/a_file/deeper/out.md"], "--markdown"),
    (["--json", "{tmp}/same", "--markdown", "{tmp}/same"], "--json"),
]


@pytest.mark.parametrize("argv,expect", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_bench_input_is_rejected_before_any_work(tmp_path, argv, expect):
    _file(tmp_path)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert_rejected(["bench", *argv], expect, tmp_path)


def test_help_has_no_rst_markup():
    code, out, _err = run_cli(["bench", "--help"])
    assert code == 0
    assert "``" not in out and "shc bench" in out


def test_model_shapes_are_the_models_3x3_convs():
    # Plain-10 at width 1/4 on 28 px: the 3x3 stem (small input), then two convs per stage.
    names = [s[0] for s in bench.model_shapes("plain10", 0.25, 28)]
    assert names == [
        "3>16@28", "16>16@28", "16>32@28/2", "32>32@14", "32>64@14/2", "64>64@7", "64>128@7/2", "128>128@4",
    ]  # fmt: skip
    # ResNet-50's bottlenecks put the stride on the 3x3 conv, at the stage's own width.
    assert ("64>64@14/2", 64, 64, 14, 2) in bench.model_shapes("resnet50", 0.25, 28)


def test_shape_families_resolve_without_duplicates():
    shapes = bench.resolve_shapes(["small"])
    assert len({s[1:] for s in shapes}) == len(shapes) > 10
    assert bench.resolve_shapes(["core", "core"]) == bench.SHAPES["core"]


def test_model_step_time_is_written(tmp_path):
    js, md = tmp_path / "out" / "step.json", tmp_path / "step.md"
    argv = ["bench", "--model", "plain10", "--width", "0.125", "--image-size", "12", "--num-classes", "3"]
    argv += ["--batch", "2", "--reps", "1", "--warmup", "0", "--json", str(js), "--markdown", str(md)]
    code, out, err = run_cli(argv)
    assert code == 0, err
    result = json.loads(js.read_text())
    assert [r["model"] for r in result["model"][:2]] == ["plain10", "plain10-shc"]
    assert result["model"][2]["step_ratio_min"] > 0
    assert result["info"]["width"] == 0.125
    # glibc was told to keep freed memory, so no timed step pays page faults for it
    assert result["info"]["malloc"] == "steady"
    assert "plain10-shc" in md.read_text()


def test_malloc_system_keeps_the_defaults_and_says_so(tmp_path):
    js = tmp_path / "smoke.json"
    argv = ["bench", "--shapes", "smoke", "--methods", "plain", "--batch", "2", "--reps", "1"]
    argv += ["--warmup", "0", "--no-memory", "--malloc", "system", "--json", str(js)]
    code, _out, err = run_cli(argv)
    assert code == 0, err
    assert json.loads(js.read_text())["info"]["malloc"] == "system"


def test_module_methods_compute_the_layer_and_divide_by_the_plain_module(tmp_path):
    # --modules times nn.Conv2d and SHCConv2d built from the same values as the functional calls:
    # same outputs, and each :module row's ratio is to plain:module of the same run.
    torch = pytest.importorskip("torch")
    x, params = bench.make_inputs(4, 6, 7, 3, "cpu", torch.float32, False)
    fns = bench.method_fns(2, modules=True)
    for method, fn in fns.items():
        if isinstance(fn, bench.ModuleMethod):
            functional_name = method.rsplit(":", 1)[0]
            torch.testing.assert_close(fn.build(params)(x), fns[functional_name](x, params))
    js = tmp_path / "smoke.json"
    argv = ["bench", "--shapes", "smoke", "--methods", "plain", "shc", "--modules", "--batch", "2"]
    argv += ["--reps", "1", "--warmup", "0", "--no-memory", "--threads", "1", "--json", str(js)]
    code, _out, err = run_cli(argv)
    assert code == 0, err
    rows = json.loads(js.read_text())["rows"]
    by = {(r["shape"], r["method"]): r for r in rows}
    assert ("smoke", "plain:module") in by
    assert any(m.endswith(":module") and m != "plain:module" for _, m in by)
    for (shape, method), r in by.items():
        base = by[(shape, bench.baseline(method))]
        assert r["fwd_min_ratio"] == pytest.approx(r["fwd_spread"][0] / base["fwd_spread"][0])
        assert r["fwdbwd_ratio"] == pytest.approx(r["fwdbwd_ms"] / base["fwdbwd_ms"])
