"""`shc attack` (shc_kernels.research.evaluate): the paper's Tables 1–4 and Figures 2–3 from checkpoints."""

from __future__ import annotations

import copy
import csv
import json
import os
import subprocess
import sys

import pytest
import torch

import shc_kernels as shc
from shc_kernels.research import data, evaluate, models

FAST = ["--digits-size", "8", "--confidence", "0", "--max-images", "4", "--lsa-images", "2"]
FAST += ["--gaussian-images", "32"]
FAST += ["--lsa-steps", "3", "--lsa-pixels", "2", "--lsa-candidates", "8", "--batch-size", "128"]
FAST += ["--no-progress"]


def _save(path, model, shc_flag):
    meta = {"arch": "plain10", "shc": shc_flag, "small_input": True, "num_classes": 10, "width": 0.125}
    args = {"data": None, "digits_size": 32}  # what shc train records of its data (the digits)
    torch.save({"meta": meta, "model": model.state_dict(), "epoch": 0, "args": args}, path)  # train.py's
    return str(path)


def _tiny_checkpoints(tmp):
    """A random Plain-10 at width 1/8 (the meta's "width" rebuilds it) and its output-preserving
    SHC conversion: the two agree on every image, so the images both classify correctly are the
    plain one's correct ones (--confidence 0)."""
    torch.manual_seed(0)
    plain = models.plain10(num_classes=10, shc=False, small_input=True, width=0.125)
    plain.eval()
    a = _save(tmp / "plain.pt", plain, False)
    b = _save(tmp / "shc.pt", shc.convert(plain), True)
    return a, b


def test_shc_attack_end_to_end_writes_tables_and_figures(tmp_path):
    a, b = _tiny_checkpoints(tmp_path)
    out = tmp_path / "out"
    rc = evaluate.main(["--checkpoint", a, b, "--label", "P", "P-SHC", "--out", str(out), *FAST])
    assert rc == 0
    names = set(os.listdir(out))
    tables = {"table1_gaussian", "table2_gradient", "table3_lsa", "table4_routes"}
    assert {f"{t}.csv" for t in tables} | {"tables.md", "results.json"} <= names
    assert {"fig2_gaussian_example.png", "fig3_lsa.png"} <= names
    assert all((out / n).stat().st_size > 1000 for n in names if n.endswith(".png"))

    res = json.loads((out / "results.json").read_text())
    assert res["models"] == ["P", "P-SHC"]
    assert res["gaussian"]["P"]["images"] == 32
    assert 0 < res["gradient_images"] <= 4 and 0 < res["lsa_images"] <= 2
    assert set(res["gradient"]["P"]) == {"fgsm", "fgsm_heavy", "ifgsm", "rand_fgsm"}
    assert len(res["lsa"]["P-SHC"]["acc"]) == 4  # steps 0..3
    assert set(res["routes"]["P-SHC"]) == {"both", "hyper", "conv"} and set(res["routes"]["P"]) == {"both"}
    # Selected images are classified correctly by both: the clean LSA row is 100 %.
    assert res["lsa"]["P"]["acc"][0] == 100.0

    md = (out / "tables.md").read_text()
    for title in ("Table 1", "Table 2", "Table 3", "Table 4", "FGSM-Heavy", "P-SHC-T", "P-SHC-W"):
        assert title in md
    with open(out / "table4_routes.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["Network", "RAND+FGSM Acc.(%)", "RAND+FGSM RCD"]
    assert [r[0] for r in rows[1:]] == ["P", "P-SHC", "P-SHC-T", "P-SHC-W"]


def test_missing_checkpoint_exits_2_with_a_message(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        evaluate.main(["--checkpoint", str(tmp_path / "nope.pt"), "--out", str(tmp_path), "--no-progress"])
    assert exc.value.code == 2
    assert "argument --checkpoint: no file at" in capsys.readouterr().err


def test_checkpoint_without_meta_exits_2_with_a_message(tmp_path, capsys):
    path = tmp_path / "bare.pt"
    torch.save(models.plain10(num_classes=10, shc=False, small_input=True).state_dict(), path)
    with pytest.raises(SystemExit) as exc:
        evaluate.main(["--checkpoint", str(path), "--out", str(tmp_path), "--no-progress"])
    assert exc.value.code == 2
    assert '"meta"' in capsys.readouterr().err


def test_runs_as_a_module_and_shows_help():
    out = subprocess.run(
        [sys.executable, "-m", "shc_kernels.research.evaluate", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--checkpoint" in out.stdout and "--lsa-steps" in out.stdout


def test_run_attacks_and_format_tables_without_files(tmp_path):
    torch.manual_seed(0)
    plain = models.plain10(num_classes=10, shc=False, small_input=True, widths=(8, 8, 8, 8)).train()
    twin = shc.convert(copy.deepcopy(plain)).eval()
    plain.bn1.eval()
    modes = [m.training for m in plain.modules()]
    _, val, _ = data.digits(8)
    res = evaluate.run_attacks(
        {"A": plain, "B": twin},
        val,
        None,
        attacks_to_run=["fgsm", "routes"],
        confidence=0.0,
        max_images=4,
        progress=False,
    )
    assert [m.training for m in plain.modules()] == modes and not twin.training  # modes given back
    assert set(res) >= {"gradient", "routes"} and "gaussian" not in res and "lsa" not in res
    md = evaluate.format_tables(res)
    assert "Table 2" in md and "Table 4" in md and "Table 1" not in md
    assert "| A |" in md and "| B-SHC-T |" in md
    with pytest.raises(TypeError, match="unknown settings"):
        evaluate.run_attacks({"A": plain}, val, None, lsa_step=3)


# ---------------------------------------------------------------- bad command lines (issue 14)


def _tiny_model_file(path, num_classes=10, data=None, record=True, **meta_extra):
    torch.manual_seed(0)
    net = models.plain10(num_classes=num_classes, shc=False, small_input=True, width=0.0625)
    meta = {"arch": "plain10", "shc": False, "small_input": True, "num_classes": num_classes, "width": 0.0625}
    state = {"meta": meta | meta_extra, "model": net.state_dict()}
    if record:  # shc train records its arguments, the data among them
        state["args"] = {"data": data, "digits_size": 8}
    torch.save(state, path)
    return str(path)


def _attack_cases(tmp):
    good = _tiny_model_file(tmp / "good.pt")
    two = _tiny_model_file(tmp / "two.pt", num_classes=2)
    five = _tiny_model_file(tmp / "five.pt", num_classes=5)
    (tmp / "text.pt").write_text("hello, I am not a checkpoint\n")
    torch.save({"weights": 1}, tmp / "nometa.pt")
    (tmp / "afile").write_text("x")
    (tmp / "noval").mkdir()
    out = ["--out", str(tmp / "out")]
    ok = ["--checkpoint", good, *out]
    return [
        (["--checkpoint", str(tmp / "missing.pt"), *out], ("--checkpoint", "no file")),
        (["--checkpoint", str(tmp), *out], ("--checkpoint", "is a folder")),
        (["--checkpoint", str(tmp / "text.pt"), *out], ("--checkpoint", "not a readable PyTorch checkpoint")),
        (["--checkpoint", str(tmp / "nometa.pt"), *out], ("--checkpoint", '"meta"')),
        (["--checkpoint", two, *out], ("--checkpoint", "at least 3 classes")),
        (["--checkpoint", five, *out, "--digits-size", "8"], ("--checkpoint", "5 classes")),
        ([*ok, "--label", "a", "b"], "--label"),
        ([*ok, "--device", "cuda:7"], "--device"),
        ([*ok, "--device", "bogus"], "--device"),
        ([*ok, "--gaussian-images", "0"], "--gaussian-images"),
        ([*ok, "--max-images", "0"], "--max-images"),
        ([*ok, "--max-images", "-3"], "--max-images"),
        ([*ok, "--lsa-images", "0"], "--lsa-images"),
        ([*ok, "--lsa-steps", "-1"], "--lsa-steps"),
        ([*ok, "--lsa-pixels", "0"], "--lsa-pixels"),
        ([*ok, "--lsa-candidates", "0"], "--lsa-candidates"),
        ([*ok, "--batch-size", "0"], "--batch-size"),
        ([*ok, "--confidence", "1.5"], "--confidence"),
        ([*ok, "--image-size", "0"], "--image-size"),
        ([*ok, "--digits-size", "0"], "--digits-size"),
        ([*ok, "--seed", "-1"], "--seed"),
        ([*ok, "--attacks", "bogus"], "--attacks"),
        (["--checkpoint", good, "--out", str(tmp / "afile")], ("--out", "is a file")),
        ([*ok, "--data", str(tmp / "nowhere")], "--data"),
        ([*ok, "--data", str(tmp / "noval")], ("--data", "val/")),
    ]


def test_bad_shc_attack_input_is_one_line_exit_2_and_writes_nothing(tmp_path):
    from cli_cases import assert_rejected

    for argv, expect in _attack_cases(tmp_path):
        assert_rejected(["attack", *argv], expect, tmp_path)


def test_shc_attack_on_an_imagefolder_with_only_val(tmp_path):
    from PIL import Image

    for i, cls in enumerate(("a", "b", "c")):
        (tmp_path / "d" / "val" / cls).mkdir(parents=True)
        Image.new("RGB", (30, 20), (80 * i, 10, 200)).save(tmp_path / "d" / "val" / cls / "x.png")
    ckpt = _tiny_model_file(tmp_path / "three.pt", num_classes=3)
    out = tmp_path / "out"
    argv = ["--checkpoint", ckpt, "--data", str(tmp_path / "d"), "--image-size", "12", "--out", str(out)]
    rc = evaluate.main([*argv, "--attacks", "gaussian", "fgsm", "--confidence", "0", "--no-progress"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["val_images"] == 3 and res["gaussian"]["Plain-10"]["images"] == 3


def test_attack_help_has_no_rst_markup():
    help_text = evaluate.build_parser().format_help()
    assert "``" not in help_text and ":func:" not in help_text


def _three_class_folder(root):
    from PIL import Image

    for i, cls in enumerate(("a", "b", "c")):
        (root / "val" / cls).mkdir(parents=True)
        Image.new("RGB", (30, 20), (80 * i, 10, 200)).save(root / "val" / cls / "x.png")
    return str(root)


def test_shc_attack_without_data_attacks_on_the_data_the_checkpoint_records(tmp_path, capsys):
    folder = _three_class_folder(tmp_path / "d")
    ckpt = _tiny_model_file(tmp_path / "three.pt", num_classes=3, data=folder)
    out = tmp_path / "out"
    argv = ["--checkpoint", ckpt, "--image-size", "12", "--out", str(out), "--attacks", "gaussian"]
    assert evaluate.main([*argv, "--confidence", "0", "--no-progress"]) == 0
    assert json.loads((out / "results.json").read_text())["val_images"] == 3  # not the 10-class digits
    assert f"data: {folder}, as the checkpoints record" in capsys.readouterr().err


def test_shc_attack_without_data_refuses_checkpoints_that_disagree_or_record_nothing(tmp_path):
    from cli_cases import assert_rejected

    digits = _tiny_model_file(tmp_path / "digits.pt")
    fashion = _tiny_model_file(tmp_path / "fashion.pt", data="fashion-mnist")
    silent = _tiny_model_file(tmp_path / "silent.pt", record=False)
    out = ["--out", str(tmp_path / "out")]
    both = ["attack", "--checkpoint", digits, fashion, *out]
    assert_rejected(both, ("--data", "trained on different data"), tmp_path)
    assert_rejected(["attack", "--checkpoint", silent, *out], ("--data", "does not record the"), tmp_path)


def test_shc_attack_says_when_data_is_not_what_the_checkpoint_was_trained_on(tmp_path, capsys):
    fashion = _tiny_model_file(tmp_path / "fashion.pt", data="fashion-mnist")
    argv = ["--checkpoint", fashion, "--data", "digits", "--out", str(tmp_path / "out"), *FAST]
    assert evaluate.main([*argv, "--attacks", "gaussian"]) == 0
    assert "was trained on fashion-mnist, attacked on the embedded digits (--data)" in capsys.readouterr().err


def test_shc_attack_with_data_digits_takes_the_digits_size_the_checkpoint_records(tmp_path, capsys):
    """--data digits without --digits-size attacked a model trained on 8 px digits at 32 px (the
    default) without a word; the help promises the checkpoints' training size."""
    digits = _tiny_model_file(tmp_path / "digits.pt")  # records digits_size 8
    parser = evaluate.build_parser()
    args = parser.parse_args(["--checkpoint", digits, "--data", "digits"])
    evaluate.choose_data(parser, args)
    assert args.digits_size == 8 and "note" not in capsys.readouterr().err
    args = parser.parse_args(["--checkpoint", digits, "--data", "digits", "--digits-size", "12"])
    evaluate.choose_data(parser, args)
    assert args.digits_size == 12
    assert "was trained on 8 px digits, attacked on 12 px (--digits-size)" in capsys.readouterr().err
    state = torch.load(digits, weights_only=True)
    state["args"]["digits_size"] = 12
    torch.save(state, tmp_path / "twelve.pt")
    args = parser.parse_args(["--checkpoint", digits, str(tmp_path / "twelve.pt"), "--data", "digits"])
    with pytest.raises(SystemExit) as exc:
        evaluate.choose_data(parser, args)
    assert exc.value.code == 2 and "trained on digits of different sizes" in capsys.readouterr().err
