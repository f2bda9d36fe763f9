"""shc_kernels.research.data: Fashion-MNIST (IDX files through torchvision's readers), ImageFolder, digits."""

from __future__ import annotations

import gzip
import struct

import pytest
import torch

from shc_kernels.research import data


def _write_idx(path, tensor: torch.Tensor, compress: bool) -> None:
    """The MNIST IDX format: magic (0, 0, type 0x08 = uint8, ndim), big-endian sizes, bytes."""
    blob = struct.pack(">BBBB", 0, 0, 0x08, tensor.dim()) + struct.pack(f">{tensor.dim()}I", *tensor.shape)
    blob += tensor.to(torch.uint8).numpy().tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(blob)
    else:
        path.write_bytes(blob)


def _fake_fashion(root, n_train=6, n_test=4, compress=True):
    root.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    parts = {
        "train_images": torch.randint(0, 256, (n_train, 28, 28), generator=g),
        "train_labels": torch.arange(n_train) % 10,
        "test_images": torch.randint(0, 256, (n_test, 28, 28), generator=g),
        "test_labels": torch.arange(n_test) % 10,
    }
    for key, stem in data.FASHION_MNIST_FILES.items():
        _write_idx(root / stem, parts[key], compress)
    return parts


@pytest.mark.parametrize("compress", [True, False])
def test_idx_folder_gives_grey_images_in_unit_range_with_their_labels(tmp_path, compress):
    parts = _fake_fashion(tmp_path / "fm", compress=compress)
    train, test, num_classes = data.load(str(tmp_path / "fm"))
    assert (len(train), len(test), num_classes) == (6, 4, 6)  # the largest label + 1
    x, y = train[3]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    torch.testing.assert_close(x[0], parts["train_images"][3].float() / 255)
    assert int(y) == 3 and int(test[2][1]) == 2


def test_corrupt_idx_file_is_a_value_error_naming_it(tmp_path):
    _fake_fashion(tmp_path / "fm")
    bad = tmp_path / "fm" / "t10k-images-idx3-ubyte.gz"
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz is not a readable IDX file"):
        data.fashion_mnist(str(tmp_path / "fm"))


def test_fashion_mnist_falls_back_to_the_digits_with_a_message(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(data, "FASHION_MNIST_DIR", str(tmp_path / "absent"))
    train, val, num_classes = data.load("fashion-mnist", digits_size=8)
    assert num_classes == 10 and train[0][0].shape == (3, 8, 8)  # the digits
    err = capsys.readouterr().err
    assert "Fashion-MNIST is not installed" in err and "apt-get install dataset-fashion-mnist" in err
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        data.fashion_mnist()


@pytest.mark.skipif(not data.fashion_mnist_available(), reason="dataset-fashion-mnist is not installed")
def test_installed_fashion_mnist_is_the_real_data_set():
    train, test, num_classes = data.load("fashion-mnist")
    assert (len(train), len(test), num_classes) == (60000, 10000, 10)
    labels = torch.stack([test[i][1] for i in range(0, 10000, 7)])
    assert set(labels.tolist()) == set(range(10))


def _image_folder(root, split, size=40):
    from PIL import Image

    for cls in ("a", "b"):
        (root / split / cls).mkdir(parents=True)
        Image.new("RGB", (size, size + 10), (200, 10, 10)).save(root / split / cls / "x.png")


def test_imagefolder_val_needs_only_val_and_honours_the_image_size(tmp_path):
    _image_folder(tmp_path, "val")
    val, num_classes = data.imagefolder_val(str(tmp_path), image_size=24)
    assert num_classes == 2 and val[0][0].shape == (3, 24, 24)
    with pytest.raises(FileNotFoundError, match="no train/ subfolder"):
        data.imagefolder(str(tmp_path), image_size=24)
