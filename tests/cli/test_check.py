"""``shc check``: every backend against the reference, a table with PASS/FAIL, exit status 1 on
any failure; bad command lines are rejected (exit 2, nothing written)."""

from __future__ import annotations

import json

import pytest
import torch
from cli_cases import assert_rejected, run_cli

import shc_kernels
from shc_kernels.cli import check


@pytest.fixture(autouse=True)
def no_triton_interpreter(monkeypatch):
    # Under TRITON_INTERPRET=1 the check would add Triton rows (a minute on CPU): tested apart.
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("SHC_FORM", raising=False)


needs_cpu_backend = pytest.mark.skipif(
    "cpu" not in shc_kernels.available_backends(), reason="the compiled cpu backend is not built"
)


@needs_cpu_backend
def test_check_passes_on_cpu_quick(tmp_path):
    out = tmp_path / "check.json"
    code, stdout, stderr = run_cli(["check", "--device", "cpu", "--quick", "--json", str(out)])
    assert code == 0, stdout + stderr
    report = json.loads(out.read_text())
    assert report["passed"] and report["rows"]
    rows = report["rows"]
    assert all(r["passed"] for r in rows)
    # Every form x dtype x layout x route of the cpu backend, on each quick shape.
    seen = {(r["backend"], r["form"], r["dtype"], r["layout"], r["route"], r["shape"]) for r in rows}
    assert len(seen) == len(rows) == 2 * 4 * 2 * 3 * len(check.QUICK)
    # Forward and all seven gradients compared (this shape has a bias).
    assert set(rows[0]["errors"]) == set(check.COLUMNS)
    assert "shc check: all" in stdout and "PASS" in stdout and "FAIL" not in stdout


def wrap_public_api(monkeypatch, wrong):
    """shc.shc_conv2d as check calls it, with ``wrong(x, leaves, y, kwargs)`` applied to the call."""
    real = shc_kernels.shc_conv2d

    def shc_conv2d(x, *leaves, **kwargs):
        return wrong(x, leaves, real(x, *leaves, **kwargs), kwargs)

    monkeypatch.setattr(shc_kernels, "shc_conv2d", shc_conv2d)


@needs_cpu_backend
def test_a_wrong_forward_fails_its_rows_and_the_exit_status(monkeypatch, tmp_path):
    import os

    def wrong(x, leaves, y, kwargs):  # the cpu backend's split form is off by 0.1 %
        if kwargs["backend"] == "cpu" and os.environ.get("SHC_FORM") == "split":
            return y * 1.001
        return y

    wrap_public_api(monkeypatch, wrong)
    out = tmp_path / "check.json"
    code, stdout, _ = run_cli(["check", "--device", "cpu", "--quick", "--dtypes", "float32", "float16",
                               "--json", str(out)])  # fmt: skip
    assert code == 1
    rows = json.loads(out.read_text())["rows"]
    failed = {(r["form"], r["dtype"]) for r in rows if not r["passed"]}
    # 1e-3 is beyond fp32's tolerance (1e-4) and within fp16's (1e-2): only those rows fail.
    assert failed == {("split", "float32")}
    assert all(r["errors"]["y"] > 9e-4 for r in rows if not r["passed"])
    fail_lines = [line for line in stdout.splitlines() if "FAIL" in line]
    assert fail_lines and all(line.startswith("cpu     split float32") for line in fail_lines[:-1])
    assert "e-03 > tol 1e-04)" in fail_lines[0]
    assert "FAIL" in stdout.splitlines()[-1]


@needs_cpu_backend
def test_a_wrong_weight_gradient_fails_with_the_gradient_named(monkeypatch, tmp_path):
    def wrong(x, leaves, y, kwargs):  # right forward, dweight 1 % too large
        if kwargs["backend"] == "cpu" and leaves[0].requires_grad:
            leaves[0].register_hook(lambda g: g * 1.01)
        return y

    wrap_public_api(monkeypatch, wrong)
    code, stdout, _ = run_cli(["check", "--device", "cpu", "--quick", "--dtypes", "float32"])
    assert code == 1
    rows = [line for line in stdout.splitlines() if line.startswith("cpu ")]
    assert rows and all("FAIL (dweight 1.0e-02 > tol 1e-04)" in line for line in rows)


@needs_cpu_backend
def test_a_backend_that_raises_is_a_failed_row_not_a_crash(monkeypatch):
    def wrong(x, leaves, y, kwargs):
        if kwargs["backend"] == "cpu" and kwargs["grad_route"] == "hyper":
            raise RuntimeError("kernel launch failed")
        return y

    wrap_public_api(monkeypatch, wrong)
    code, stdout, stderr = run_cli(["check", "--device", "cpu", "--quick", "--dtypes", "float64"])
    assert code == 1 and "Traceback" not in stderr
    failed = [line for line in stdout.splitlines() if "FAIL (RuntimeError: kernel launch failed)" in line]
    assert len(failed) == 2 * 2 * len(check.QUICK)  # forms x layouts x shapes of the hyper route


@needs_cpu_backend
def test_an_output_in_the_wrong_memory_format_or_nan_fails(monkeypatch):
    def wrong(x, leaves, y, kwargs):
        if kwargs["backend"] != "cpu":
            return y
        if kwargs["grad_route"] == "conv":
            return y * float("nan")
        return y.contiguous()  # NCHW even for a channels_last x

    wrap_public_api(monkeypatch, wrong)
    code, stdout, _ = run_cli(["check", "--device", "cpu", "--quick", "--dtypes", "float64"])
    assert code == 1
    rows = [line for line in stdout.splitlines() if line.startswith("cpu ")]
    for line in rows:
        if " conv " in line:
            assert "FAIL (y nan > tol 1e-09)" in line, line
        elif "channels_last" in line:
            assert "FAIL (y is not channels_last for a channels_last x" in line, line
        else:
            assert line.endswith("PASS"), line


@needs_cpu_backend
def test_an_x_that_is_both_nchw_and_channels_last_may_give_nchw_as_f_conv2d_does():
    s = next(s for s in check.SMALL if s.h * s.w == 1)  # F.conv2d gives NCHW for it too
    x, params = check.make_inputs(s, seed=0)
    gy = torch.randn(s.n, s.c, 1, 3, dtype=torch.float64)  # y is (n, c, 1, 3)
    expected = check.run_layer(x, params, gy, s, "both", "reference", "nchw", "cpu")
    inputs = (x, params, gy)
    row = check.check_row("cpu", "fused", torch.float64, "channels_last", "both", s, inputs, expected, "cpu")
    assert row.passed, check.format_row(row)


def test_a_backend_named_but_unavailable_is_a_failed_row(monkeypatch):
    monkeypatch.setattr(check.backends, "unavailable_reason", lambda name: "not built here")
    code, stdout, _ = run_cli(["check", "--device", "cpu", "--quick", "--backends", "cpu"])
    assert code == 1
    assert "FAIL (unavailable: not built here)" in stdout


def test_the_full_check_covers_small_odd_shapes_and_resnet50s_3x3_shapes():
    shapes = check.SMALL + check.resnet50_shapes()
    assert {(s.d, s.h, s.stride) for s in check.resnet50_shapes()} == {
        (64, 56, 1), (128, 56, 2), (128, 28, 1), (256, 28, 2), (256, 14, 1), (512, 14, 2), (512, 7, 1),
    }  # fmt: skip
    assert all(s.n == 2 for s in check.resnet50_shapes())
    assert any(s.groups > 1 for s in shapes) and any(s.dilation > 1 for s in shapes)
    assert any(s.h * s.w == 1 for s in shapes) and any(not s.bias for s in shapes)
    assert any(s.h % 2 and s.w % 2 for s in check.SMALL)


def test_triton_under_the_interpreter_is_checked_in_fp32_and_fp16_on_one_small_shape(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(check.backends, "unavailable_reason", lambda name: None)
    plan = check.make_plan("cpu", quick=True)
    assert plan.runnable == ["cpu", "triton"]
    assert check.backend_dtypes("triton", "cpu") == (torch.float32, torch.float16)
    assert plan.shapes_for("triton") == check.QUICK[:1]
    assert check.make_plan("cpu", quick=False).shapes_for("triton") == check.SMALL


def test_only_tritons_fp32_on_a_gpu_with_tf32_allowed_gets_fp16s_tolerance(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert check.tolerance(torch.float32, "cuda", "triton") == check.TOLERANCE[torch.float16]
    assert check.tolerance(torch.float32, "cuda", "cuda") == check.TOLERANCE[torch.float32]
    assert check.tolerance(torch.float32, "cpu", "triton") == check.TOLERANCE[torch.float32]
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert check.tolerance(torch.float32, "cuda", "triton") == check.TOLERANCE[torch.float32]


def test_only_an_explicit_gpu_index_changes_the_current_gpu(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "set_device", calls.append)
    for device in ("cpu", "cuda", "cuda:1"):
        check.select_device(device)
    assert calls == [1]


BAD = [
    (["--device", "tpu"], "argument --device: 'tpu' is not a device name"),
    (["--seed", "-1"], "argument --seed: must be a whole number >= 0"),
    (["--seed", "x"], "argument --seed: expected a whole number"),
    (["--backends", "reference"], "argument --backends: invalid choice: 'reference'"),
    (["--backends", "cuda", "--device", "cpu"], "--backends: cuda cannot run on cpu tensors"),
    (["--dtypes", "float8"], "argument --dtypes: invalid choice: 'float8'"),
    (["--backends", "triton", "--dtypes", "float64", "--device", "cpu"], "nothing to check"),
    (["--quick", "extra"], "unrecognized arguments: extra"),
    (["--json", "{tmp}"], "argument --json: '{tmp}' is a folder, expected a file"),
    (["--json", "{tmp}/a_file/out.json"], "argument --json: cannot create file"),
]


@pytest.mark.parametrize("args, expect", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_command_lines_are_rejected(args, expect, tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # triton "runs" on CPU tensors, but not in fp64
    monkeypatch.setattr(check.backends, "unavailable_reason", lambda name: None)
    (tmp_path / "a_file").write_text("x")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert_rejected(["check", *args], expect.replace("{tmp}", str(tmp_path)), tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here")
def test_device_cuda_without_a_gpu_is_rejected(tmp_path):
    assert_rejected(["check", "--device", "cuda"], "this machine has no CUDA GPU", tmp_path)


@pytest.mark.parametrize(
    "name, value",
    [("SHC_BACKEND", "bogus"), ("SHC_FORM", "bogus")],
)
def test_a_bad_environment_value_is_an_error_naming_the_variable_not_a_pass(name, value, monkeypatch):
    # Every model's forward would raise; the rows name their backend and form, so they alone
    # would all pass (SHC_BACKEND) or end in a traceback (SHC_FORM).
    monkeypatch.setenv(name, value)
    code, stdout, stderr = run_cli(["check", "--device", "cpu", "--quick", "--dtypes", "float32"])
    assert code == 2 and "PASS" not in stdout and "Traceback" not in stderr
    assert f"the environment variable {name} must be one of" in stderr and repr(value) in stderr


def test_shc_backend_naming_a_backend_that_cannot_run_here_is_a_failed_row(monkeypatch):
    monkeypatch.setenv("SHC_BACKEND", "cuda")
    monkeypatch.setattr(check.backends, "unavailable_reason", lambda b: "no GPU" if b == "cuda" else None)
    argv = ["check", "--device", "cpu", "--quick", "--dtypes", "float32", "--backends", "cpu"]
    code, stdout, _ = run_cli(argv)
    plan_rows = [line for line in stdout.splitlines() if line.startswith("SHC_BACKEND=cuda")]
    assert code == 1 and len(plan_rows) == 1 and "FAIL (unavailable: no GPU)" in plan_rows[0]
