"""shc_kernels.research.args: each argument type accepts what it promises and rejects the rest
with a message, and creates nothing."""

from __future__ import annotations

import argparse
import os

import pytest
import torch

from shc_kernels.research import args as A

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.mark.parametrize(
    "kind, good, bad",
    [
        (A.positive_int, [("1", 1), ("32", 32)], ["0", "-2", "2.7", "x", ""]),
        (A.nonnegative_int, [("0", 0), ("5", 5)], ["-1", "1.5", "nan"]),
        (A.positive_float, [("0.5", 0.5), ("3", 3.0)], ["0", "-1e-3", "nan", "inf", "x"]),
        (A.nonnegative_float, [("0", 0.0), ("1e-4", 1e-4)], ["-0.1", "nan", "-inf"]),
        (A.probability, [("0", 0.0), ("1", 1.0), ("0.25", 0.25)], ["-0.01", "1.01", "nan"]),
    ],
)
def test_numbers_accept_their_range_and_reject_the_rest(kind, good, bad):
    for text, value in good:
        assert kind(text) == value and type(kind(text)) is type(value)
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match=repr(text).replace(".", r"\.")):
            kind(text)


def test_existing_file_and_dir(tmp_path):
    f = tmp_path / "f.txt"
    f.write_text("x")
    assert A.existing_file(str(f)) == str(f)
    assert A.existing_dir(str(tmp_path)) == str(tmp_path)
    with pytest.raises(argparse.ArgumentTypeError, match="no file"):
        A.existing_file(str(tmp_path / "missing"))
    with pytest.raises(argparse.ArgumentTypeError, match="is a folder"):
        A.existing_file(str(tmp_path))
    with pytest.raises(argparse.ArgumentTypeError, match="no folder"):
        A.existing_dir(str(tmp_path / "missing"))
    with pytest.raises(argparse.ArgumentTypeError, match="is a file"):
        A.existing_dir(str(f))


def test_writable_dir_accepts_a_creatable_folder_and_creates_nothing(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    assert A.writable_dir(str(tmp_path)) == str(tmp_path)
    assert A.writable_dir(str(tmp_path / "new" / "deeper")) == str(tmp_path / "new" / "deeper")
    assert sorted(os.listdir(tmp_path)) == ["f"]
    with pytest.raises(argparse.ArgumentTypeError, match="is a file"):
        A.writable_dir(str(f))
    with pytest.raises(argparse.ArgumentTypeError, match="is a file"):
        A.writable_dir(str(f / "sub"))


def test_writable_file_accepts_a_creatable_file_and_rejects_a_folder(tmp_path):
    f = tmp_path / "f.json"
    f.write_text("{}")
    assert A.writable_file(str(f)) == str(f)
    assert A.writable_file(str(tmp_path / "sub" / "new.json")) == str(tmp_path / "sub" / "new.json")
    assert sorted(os.listdir(tmp_path)) == ["f.json"]
    with pytest.raises(argparse.ArgumentTypeError, match="is a folder"):
        A.writable_file(str(tmp_path))
    with pytest.raises(argparse.ArgumentTypeError, match="is a file"):
        A.writable_file(str(f / "x.json"))
    with pytest.raises(argparse.ArgumentTypeError, match="file name"):
        A.writable_file(str(tmp_path) + "/")


@pytest.mark.skipif(IS_ROOT, reason="root may write anywhere")
def test_writable_paths_reject_a_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(argparse.ArgumentTypeError, match="not writable"):
            A.writable_file(str(ro / "x.json"))
        with pytest.raises(argparse.ArgumentTypeError, match="not writable"):
            A.writable_dir(str(ro / "out"))
    finally:
        ro.chmod(0o700)


def test_device_names_only_devices_of_this_machine():
    assert A.device("cpu") == "cpu"
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(argparse.ArgumentTypeError, match=f"cuda:{count}"):
        A.device(f"cuda:{count}")
    for bad in ("gpu0", "cuda:-1", "", "tpu"):
        with pytest.raises(argparse.ArgumentTypeError):
            A.device(bad)
    if count:
        assert A.device("cuda") == "cuda" and A.device("cuda:0") == "cuda:0"
    else:
        with pytest.raises(argparse.ArgumentTypeError, match="no CUDA GPU"):
            A.device("cuda")


def test_argparse_names_the_argument_and_exits_2(capsys):
    p = argparse.ArgumentParser(prog="shc x")
    p.add_argument("--epochs", type=A.positive_int)
    with pytest.raises(SystemExit) as exc:
        p.parse_args(["--epochs", "0"])
    assert exc.value.code == 2
    assert "argument --epochs: must be a whole number > 0, got '0'" in capsys.readouterr().err


def test_fail_prints_one_line_and_exits_2(capsys):
    p = argparse.ArgumentParser(prog="shc x")
    with pytest.raises(SystemExit) as exc:
        A.fail(p, "bad thing\nwith detail")
    assert exc.value.code == 2
    assert capsys.readouterr().err == "shc x: error: bad thing with detail\n"
