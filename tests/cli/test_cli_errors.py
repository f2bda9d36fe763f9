"""Bad `shc train` and `shc info` command lines, one row each: exit status 2, a one-line message
that names the argument or the file, no traceback, and nothing written or overwritten.

Rows use {tmp} for the test's folder, which `files` fills with inputs good and bad."""

from __future__ import annotations

import pytest
import torch
from cli_cases import assert_rejected, run_cli
from PIL import Image

from shc_kernels import backends, cli

# A tiny, fast model for the rows that get past parsing.
FAST = ["--arch", "plain10", "--small-input", "--width", "0.125", "--image-size", "8", "--epochs", "1"]
TRAIN = ["train", *FAST, "--no-progress"]
OUT = ["--out", "{tmp}/out"]


def _pngs(folder, n, seed):
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        pixels = torch.randint(0, 256, (10, 10, 3), generator=g, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"{i}.png")


def _imagefolder(root, classes=3):
    for c in range(classes):
        _pngs(root / "train" / f"c{c}", 2, c)
        _pngs(root / "val" / f"c{c}", 1, 10 + c)
    return root


@pytest.fixture(autouse=True)
def one_thread():
    # The models here are tiny: a second intra-op thread only adds contention on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def files(tmp_path):
    (tmp_path / "notes.txt").write_text("hello, not a checkpoint\n")
    (tmp_path / "random.bin").write_bytes(bytes(range(256)) * 3)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "foreign.pt")
    _imagefolder(tmp_path / "data")
    (tmp_path / "corrupt" / "val").mkdir(parents=True)
    _imagefolder(tmp_path / "corrupt")
    (tmp_path / "corrupt" / "train" / "c1" / "bad.png").write_text("not an image")
    _pngs(tmp_path / "noval" / "train" / "c0", 1, 0)
    (tmp_path / "has_run").mkdir()
    torch.save({"meta": {}}, tmp_path / "has_run" / "checkpoint.pt")
    (tmp_path / "text_run").mkdir()
    (tmp_path / "text_run" / "checkpoint.pt").write_text("hello")
    (tmp_path / "other_run").mkdir()
    other = {"meta": {"arch": "resnet50"}, "model": {}, "epoch": 1, "step": 0}
    torch.save(other, tmp_path / "other_run" / "checkpoint.pt")
    return tmp_path


NO_CUDA = not torch.cuda.is_available()
CUDA_COUNT = torch.cuda.device_count() if torch.cuda.is_available() else 0

TRAIN_ROWS = [
    # numbers <= 0, not whole, not finite
    (["--epochs", "0"], "argument --epochs: must be a whole number > 0"),
    (["--epochs", "-3"], "argument --epochs"),
    (["--epochs", "2.5"], "argument --epochs: expected a whole number"),
    (["--epochs", ""], "argument --epochs: expected a whole number, got ''"),
    (["--batch-size", "-2"], "argument --batch-size: must be a whole number > 0"),
    (["--batch-size", "0"], "argument --batch-size"),
    (["--lr", "0"], "argument --lr: must be a number > 0"),
    (["--lr", "-0.1"], "argument --lr"),
    (["--lr", "nan"], "argument --lr: expected a finite number"),
    (["--lr", "inf"], "argument --lr"),
    (["--momentum", "-0.9"], "argument --momentum"),
    (["--weight-decay", "-1e-4"], "argument --weight-decay"),
    (["--milestones", "30", "0"], "argument --milestones"),
    (["--save-every", "-1"], "argument --save-every: must be a whole number >= 0"),
    (["--max-steps-per-epoch", "-1"], "argument --max-steps-per-epoch"),
    (["--digits-size", "0"], "argument --digits-size: must be a whole number > 0"),
    (["--image-size", "0"], "argument --image-size"),
    (["--workers", "-1"], "argument --workers"),
    (["--seed", "-1"], "argument --seed"),
    (["--seed", "x"], "argument --seed"),
    (["--width", "0"], "argument --width: must be a number > 0"),
    (["--width", "-1"], "argument --width"),
    (["--width", "nan"], "argument --width: expected a finite number"),
    (["--lr", "1e400"], "argument --lr: expected a finite number"),
    # out of range: a batch larger than the data
    (["--batch-size", "100000"], "--batch-size 100000 x 1 processes is larger than the training set"),
    # unknown names
    (["--arch", "resnet9"], "argument --arch: invalid choice"),
    (["--backend", "bogus"], "argument --backend: invalid choice"),
    (["--amp", "fp8"], "argument --amp: invalid choice"),
    (["--grad-route", "foo"], "argument --grad-route: invalid choice"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--epochs"], "argument --epochs: expected one argument"),
    # devices
    (["--device", "gpu0"], "argument --device: 'gpu0' is not a device name"),
    ([f"--device=cuda:{CUDA_COUNT}"], "argument --device"),
    # input paths
    (["--data", "{tmp}/missing"], "argument --data: no folder at"),
    (["--data", ""], "argument --data: no folder at ''"),
    (["--data", "{tmp}/notes.txt"], "argument --data: '{tmp}/notes.txt' is a file"),
    (["--data", "{tmp}/noval"], "has no val/ subfolder"),
    (["--data", "{tmp}/corrupt", "--batch-size", "2"], "cannot read image {tmp}/corrupt/train/c1/bad.png"),
    (["--data", "{tmp}/corrupt", "--batch-size", "2", "--workers", "2"], "{tmp}/corrupt/train/c1/bad.png"),
    (["--init-from", "{tmp}/missing.pt"], "argument --init-from: no file at"),
    (["--init-from", "{tmp}"], "argument --init-from: '{tmp}' is a folder"),
    (["--init-from", "{tmp}/notes.txt"], "--init-from: {tmp}/notes.txt is not a readable PyTorch checkpoint"),
    (["--init-from", "{tmp}/random.bin"], "--init-from: {tmp}/random.bin is not a readable PyTorch"),
    (["--init-from", "{tmp}/list.pt"], "--init-from: {tmp}/list.pt holds no weights"),
    (
        ["--init-from", "{tmp}/foreign.pt"],
        "is not a plain plain10 with 10 classes: ",
    ),
    # output paths
    (["--out", "{tmp}/notes.txt"], "argument --out: '{tmp}/notes.txt' is a file, expected a folder"),
    (["--out", "{tmp}/notes.txt/run"], "argument --out: cannot create folder"),
    (["--out", "{tmp}/has_run"], "already holds a run: add --resume"),
    (["--out", ""], "argument --out: expected a folder, got an empty path"),
    # resume
    (["--resume"], "--resume: no checkpoint at {tmp}/out/checkpoint.pt"),
    (["--resume", "--out", "{tmp}/text_run"], "--resume: {tmp}/text_run/checkpoint.pt is not a readable"),
    (
        ["--resume", "--out", "{tmp}/other_run"],
        "--resume: checkpoint {tmp}/other_run/checkpoint.pt is of another",
    ),
    (
        ["--resume", "--init-from", "{tmp}/foreign.pt"],
        "--resume continues OUT's run; --init-from starts a new",
    ),
]
if NO_CUDA:
    TRAIN_ROWS += [
        (["--device", "cuda"], "argument --device: device 'cuda': this machine has no CUDA GPU"),
        (["--shc", "--backend", "cuda"], "--backend cuda is not available"),
    ]
else:
    TRAIN_ROWS += [(["--shc", "--backend", "cpu", "--device", "cuda"], "--backend cpu does not run on cuda")]


def _fill(items, tmp):
    return [str(x).replace("{tmp}", str(tmp)) for x in items]


@pytest.mark.parametrize("row, expect", TRAIN_ROWS, ids=[" ".join(r) for r, _ in TRAIN_ROWS])
def test_bad_train_input_is_rejected_in_one_line(row, expect, files):
    argv = _fill([*TRAIN, *(OUT if "--out" not in row and "--resume" not in row else []), *row], files)
    if "--resume" in row and "--out" not in row:
        argv += _fill(OUT, files)
    err = assert_rejected(argv, expect.replace("{tmp}", str(files)), files)
    assert len(err.strip().splitlines()) <= 2 or "usage:" in err, err  # the error, at most after usage
    assert not err.strip().endswith(": 101")


INFO_ROWS = [
    (["info", "--bogus"], "unrecognized arguments: --bogus"),
    (["info", "extra"], "unrecognized arguments: extra"),
    (["bogus"], "argument command: invalid choice: 'bogus'"),
    ([], "the following arguments are required: command"),
]


@pytest.mark.parametrize("argv, expect", INFO_ROWS, ids=[" ".join(a) or "(none)" for a, _ in INFO_ROWS])
def test_bad_info_input_is_rejected(argv, expect, tmp_path):
    assert_rejected(argv, expect, tmp_path)


def test_train_warns_when_the_data_has_fewer_than_3_classes(tmp_path):
    data = _imagefolder(tmp_path / "two", classes=2)
    code, _, err = run_cli([*TRAIN, "--data", str(data), "--batch-size", "2", "--out", str(tmp_path / "o")])
    assert code == 0, err
    assert "warning: the data has 2 classes; `shc attack` needs a model of >= 3 classes" in err


def test_info_lists_the_candidates_auto_excluded(monkeypatch, capsys):
    monkeypatch.setattr(
        backends, "excluded_candidates", lambda: ["triton for x (2, 3): max error 1e+10"], raising=False
    )
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "excluded:\n  triton for x (2, 3): max error 1e+10" in out


def test_help_shows_no_rst_markup(capsys):
    for argv in (["--help"], ["train", "--help"]):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        assert exc.value.code == 0
        assert "``" not in capsys.readouterr().out, argv


def test_train_accepts_every_backend_that_runs_on_the_training_device(tmp_path):
    names = [b for b in backends.available_backends() if backends.backend_device(b) in (None, "cpu")]
    assert "reference" in names
    data = _imagefolder(tmp_path / "data")  # 6 training and 3 validation images: fast
    for name in names:
        argv = [*TRAIN, "--data", str(data), "--batch-size", "2", "--shc", "--backend", name]
        code, _, err = run_cli([*argv, "--device", "cpu", "--out", str(tmp_path / name)])
        assert code == 0, f"--backend {name}: {err[-2000:]}"
