"""`shc train --resume` after a mid-epoch checkpoint is exact on augmented ImageFolder data."""

from __future__ import annotations

import json
import random

import pytest
import torch
from PIL import Image

from shc_kernels import train


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
    save = train.save_checkpoint

    def save_then_stop(path, state):
        save(path, state)
        if (state["epoch"], state["step"]) == (epoch, step):
            raise KeyboardInterrupt

    monkeypatch.setattr(train, "save_checkpoint", save_then_stop)


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
        assert torch.load(out / train.CHECKPOINT, weights_only=True)["step"] == 2
        torch.manual_seed(1234)  # what the resumed run draws must come from the checkpoint
        random.seed(1234)
        assert train.main([*_argv(data, out, workers), "--resume"]) == 0

        a = torch.load(ref / train.CHECKPOINT, weights_only=True)["model"]
        b = torch.load(out / train.CHECKPOINT, weights_only=True)["model"]
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
