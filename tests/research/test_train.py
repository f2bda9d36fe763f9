"""Models, conversion of torchvision networks, and `shc train` (DDP on CPU, kill and resume,
exact mid-epoch resume on augmented ImageFolder data)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
import torchvision
from PIL import Image

import shc_kernels as shc
from shc_kernels.research import checkpoint, models, train

TRAIN = [sys.executable, "-m", "shc_kernels.research.train"]
SMALL = [
    *("--arch", "plain10", "--small-input", "--width", "0.25", "--digits-size", "16"),
    *("--batch-size", "32", "--lr", "0.05"),
]
ONE_THREAD = dict(os.environ, OMP_NUM_THREADS="1")  # tiny models: more threads only contend


def _metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_resnets_keep_torchvision_keys_and_only_3x3_become_shc():
    tv = torchvision.models.resnet18(num_classes=10)
    plain = models.resnet18(num_classes=10, shc=False)
    assert list(plain.state_dict()) == list(tv.state_dict())
    net = models.resnet50(num_classes=10)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert {tuple(m.kernel_size) for m in convs if isinstance(m, shc.SHCConv2d)} == {(3, 3)}
    assert all(isinstance(m, shc.SHCConv2d) for m in convs if tuple(m.kernel_size) == (3, 3))
    assert sum(isinstance(m, shc.SHCConv2d) for m in convs) == 16


def test_plain10_has_one_block_of_two_3x3_convs_per_resolution():
    net = models.plain10(num_classes=10, small_input=True)
    assert sum(isinstance(m, shc.SHCConv2d) for m in net.modules()) == 9  # 8 + the 3x3 stem
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_torchvision_weights_load_and_converted_resnet18_keeps_outputs(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.rand(2, 3, 64, 64)
    expected = tv(models.Normalize()(x))
    path = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), path)
    args = train.build_parser().parse_args(["--arch", "resnet18", "--shc"])
    net = train.init_weights(str(path), args, 10).eval()
    assert sum(isinstance(m, shc.SHCConv2d) for m in net.modules()) == 16
    torch.testing.assert_close(net(x), expected, rtol=1e-4, atol=1e-4)
    converted = shc.convert(tv)
    torch.testing.assert_close(converted(models.Normalize()(x)), expected, rtol=1e-4, atol=1e-4)


def test_two_process_ddp_gloo_trains_and_checkpoints(tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29541",
        "-m",
        "shc_kernels.research.train",
        *SMALL,
        "--shc",
        "--epochs",
        "2",
        "--max-steps-per-epoch",
        "8",
        "--out",
        str(out),
        "--no-progress",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[1]["train_loss"] < rows[0]["train_loss"] < 2.5
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 2 and state["meta"]["shc"] is True and len(state["rng"]) == 2


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    common = [*SMALL, "--shc", "--epochs", "2", "--max-steps-per-epoch", "6", "--no-progress"]
    ref = tmp_path / "ref"
    subprocess.run(
        [*TRAIN, *common, "--out", str(ref)], check=True, capture_output=True, timeout=600, env=ONE_THREAD
    )

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [*TRAIN, *common, "--save-every", "2", "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ONE_THREAD,
    )
    ckpt = out / "checkpoint.pt"
    deadline = time.time() + 300
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(ckpt, weights_only=True)
    assert (killed_at["epoch"], killed_at["step"]) < (2, 0), "the run finished before it was killed"

    subprocess.run(
        [*TRAIN, *common, "--save-every", "2", "--out", str(out), "--resume"],
        check=True,
        capture_output=True,
        timeout=600,
        env=ONE_THREAD,
    )
    a = torch.load(ref / "checkpoint.pt", weights_only=True)
    b = torch.load(ckpt, weights_only=True)
    assert b["epoch"] == a["epoch"] == 2
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    checkpoint.save(
        str(tmp_path / "checkpoint.pt"), {"meta": {"arch": "resnet50"}, "model": {}, "epoch": 1, "step": 0}
    )
    with pytest.raises(ValueError, match="of another model"):
        checkpoint.read_training_state(str(tmp_path / "checkpoint.pt"), {"arch": "plain10"})


def random_imagefolder(root, classes=3, train_per_class=4, val_per_class=1, size=12, seed=0):
    """root/{train,val}/<class>/<n>.png of random RGB pixels."""
    g = torch.Generator().manual_seed(seed)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for n in range(count):
                pixels = torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8)
                Image.fromarray(pixels.numpy()).save(folder / f"{n}.png")
    return root


def _argv(data, out, workers):
    return [
        "--data", str(data), "--image-size", "8", "--arch", "plain10", "--small-input",
        "--width", "0.125", "--batch-size", "2", "--lr", "0.05", "--epochs", "2",
        "--save-every", "2", "--workers", str(workers), "--no-progress", "--out", str(out),
    ]  # fmt: skip


def _interrupt_after(epoch, step, monkeypatch):
    """Make the run stop (as Ctrl-C would) right after writing the checkpoint at (epoch, step)."""
    save = checkpoint.save

    def save_then_stop(path, state):
        save(path, state)
        if (state["epoch"], state["step"]) == (epoch, step):
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save", save_then_stop)


def _records(out):
    return [json.loads(line) for line in (out / train.METRICS).read_text().splitlines()]


@pytest.fixture
def one_thread():
    # These models are tiny: a second intra-op thread only adds contention on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_resume_mid_epoch_on_augmented_images_equals_the_uninterrupted_run(
    tmp_path, monkeypatch, capsys, one_thread
):
    data = random_imagefolder(tmp_path / "data")
    finals = {}
    for workers in (0, 2):
        ref, out = tmp_path / f"ref{workers}", tmp_path / f"resumed{workers}"
        assert train.main(_argv(data, ref, workers)) == 0
        with monkeypatch.context() as m:
            _interrupt_after(1, 2, m)  # epoch 2 of 2, after 2 of its 6 steps
            assert train.main(_argv(data, out, workers)) == 130
        assert torch.load(out / checkpoint.FILENAME, weights_only=True)["step"] == 2
        torch.manual_seed(1234)  # what the resumed run draws must come from the checkpoint
        random.seed(1234)
        assert train.main([*_argv(data, out, workers), "--resume"]) == 0

        a = torch.load(ref / checkpoint.FILENAME, weights_only=True)["model"]
        b = torch.load(out / checkpoint.FILENAME, weights_only=True)["model"]
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), f"workers={workers}: weights differ"
        want, got = _records(ref), _records(out)
        assert [r["epoch"] for r in got] == [1, 2]
        assert got[1]["images"] == want[1]["images"] == 12  # the resumed epoch counts all of it
        assert got[1]["train_loss"] == want[1]["train_loss"]
        finals[workers] = a
    # Augmentation is seeded per sample, so the worker count does not change the run either.
    assert all(torch.equal(finals[0][k], finals[2][k]) for k in finals[0])
    capsys.readouterr()


def test_sampler_starts_at_the_saved_batch_without_reading_the_skipped_ones():
    sampler = train.EpochSampler(10, batch_size=2, seed=3)
    sampler.set_epoch(1)
    whole = list(sampler)
    sampler.set_epoch(1, start=2)
    assert list(sampler) == whole[4:] and len(sampler) == 6


def _tiny_run(out, *extra):
    argv = [*SMALL[:-4], "--digits-size", "8", "--batch-size", "32", "--lr", "0.05", "--shc"]
    return [*argv, "--epochs", "1", "--max-steps-per-epoch", "2", "--no-progress", "--out", str(out), *extra]


def test_resume_takes_the_runs_options_and_refuses_changes_it_cannot_honour(tmp_path, capsys, one_thread):
    out = tmp_path / "run"
    assert train.main(_tiny_run(out)) == 0
    path = out / checkpoint.FILENAME
    done = torch.load(path, weights_only=True)
    # Resuming a finished run says so, exit status 0, and trains nothing.
    capsys.readouterr()
    assert train.main(["--out", str(out), "--resume"]) == 0
    assert "is finished (1 of 1 epochs): nothing to train; give --epochs N (N > 1)" in capsys.readouterr().err
    assert torch.load(path, weights_only=True)["epoch"] == 1
    # A changed optimiser setting is refused (it was silently ignored: the optimiser's state has the lr).
    for flag, value, run_value in (("--lr", "0.5", "0.05"), ("--seed", "3", "0"), ("--width", "0.5", "0.25")):
        with pytest.raises(SystemExit) as exc:
            train.main(["--out", str(out), "--resume", "--epochs", "2", flag, value])
        assert exc.value.code == 2
        assert f"--resume: {flag} {value} differs from the run's {run_value}" in capsys.readouterr().err
    # Inside an epoch the batch size cannot change; the sampler's position counts its batches.
    mid = dict(done, epoch=0, step=1)
    torch.save(mid, path)
    with pytest.raises(SystemExit):
        train.main(["--out", str(out), "--resume", "--batch-size", "16"])
    assert "stopped inside epoch 1 (step 1): drop --batch-size" in capsys.readouterr().err
    torch.save(done, path)
    # Only --out, --resume and a new length: every other option is the run's (its --small-input,
    # --width and --digits-size are not the defaults, so a run with defaults would not load).
    assert train.main(["--out", str(out), "--resume", "--epochs", "2", "--batch-size", "16"]) == 0
    err = capsys.readouterr().err
    assert "resuming" in err and "--epochs 2 (the run had 1)" in err and "--batch-size 16 from epoch 2" in err
    state = torch.load(path, weights_only=True)
    assert state["epoch"] == 2 and state["meta"] == done["meta"] and state["args"]["lr"] == 0.05
    assert state["args"]["digits_size"] == 8 and state["args"]["batch_size"] == 16
