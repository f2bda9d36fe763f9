"""Training data: Fashion-MNIST, ImageNet in the ImageFolder layout, or the embedded digits set.

Images come out as float tensors in [0, 1]; the models normalise them themselves. Fashion-MNIST
is grey: its images are (1, 28, 28) and the models repeat a grey channel to three themselves
(``models.Normalize``), so attacks perturb the grey image and nothing else. ``data.load`` takes
the literal ``fashion-mnist`` (Debian's package ``dataset-fashion-mnist``, falling back to the
digits with a message when it is not installed), a folder of MNIST-format IDX files, or an
ImageFolder folder.
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import sys
import tempfile

import torch
from torch.utils.data import Dataset, TensorDataset

from . import args

__all__ = [
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_FILES",
    "digits",
    "fashion_mnist",
    "fashion_mnist_available",
    "imagefolder",
    "imagefolder_val",
    "is_idx_folder",
    "load",
]

# Where Debian's package dataset-fashion-mnist puts the four IDX .gz files.
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
INSTALL_HINT = (
    "install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu, as root), or name a "
    "folder holding the four IDX files (train-images-idx3-ubyte[.gz], ...)"
)


def digits(image_size: int = 32, val_fraction: float = 0.2, seed: int = 0) -> tuple[Dataset, Dataset, int]:
    """scikit-learn's 8×8 handwritten digits (1797 real images shipped inside the package),
    upsampled to ``image_size`` and repeated to 3 channels, with a fixed train/val split."""
    from sklearn.datasets import load_digits

    if image_size < 1:
        raise ValueError(f"digits image size must be >= 1, got {image_size}")
    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = torch.nn.functional.interpolate(images, size=(image_size, image_size), mode="bilinear")
    images = images.clamp(0, 1).expand(-1, 3, -1, -1).contiguous()
    labels = torch.tensor(bunch.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_val = int(round(len(labels) * val_fraction))
    val, train = order[:n_val], order[n_val:]
    return TensorDataset(images[train], labels[train]), TensorDataset(images[val], labels[val]), 10


def _idx_path(root: str, stem: str) -> str | None:
    for name in (stem, stem + ".gz"):
        path = os.path.join(root, name)
        if os.path.isfile(path):
            return path
    return None


def is_idx_folder(root: str) -> bool:
    """Whether ``root`` holds the four MNIST-format IDX files (plain or .gz)."""
    return os.path.isdir(root) and all(_idx_path(root, s) for s in FASHION_MNIST_FILES.values())


def fashion_mnist_available(root: str | None = None) -> bool:
    """Whether Fashion-MNIST is in ``root`` (default: Debian's ``FASHION_MNIST_DIR``)."""
    return is_idx_folder(FASHION_MNIST_DIR if root is None else root)


def _read_idx(path: str, reader) -> torch.Tensor:
    """torchvision's MNIST-format reader on ``path``; a .gz file is decompressed to a temporary
    file first (the reader takes a plain file)."""
    if not path.endswith(".gz"):
        return reader(path)
    with tempfile.TemporaryDirectory(prefix="shc-idx-") as tmp:
        plain = os.path.join(tmp, os.path.basename(path)[: -len(".gz")])
        with gzip.open(path, "rb") as src, open(plain, "wb") as dst:
            shutil.copyfileobj(src, dst)
        return reader(plain)


def fashion_mnist(root: str | None = None) -> tuple[Dataset, Dataset, int]:
    """(train, test, 10): the 60,000 training and 10,000 test images of Fashion-MNIST (or any
    data set in the MNIST IDX format in ``root``) as (1, 28, 28) float images in [0, 1], read
    with torchvision's MNIST-format readers."""
    from torchvision.datasets.mnist import read_image_file, read_label_file

    root = FASHION_MNIST_DIR if root is None else root
    if not is_idx_folder(root):
        raise FileNotFoundError(f"no Fashion-MNIST IDX files in {root!r}: {INSTALL_HINT}")
    parts = {}
    for key, stem in FASHION_MNIST_FILES.items():
        path = _idx_path(root, stem)
        reader = read_image_file if key.endswith("images") else read_label_file
        try:
            parts[key] = _read_idx(path, reader)
        except (OSError, EOFError, AssertionError, TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(f"{path} is not a readable IDX file: {exc or type(exc).__name__}") from exc
    sets = []
    for split in ("train", "test"):
        images, labels = parts[f"{split}_images"], parts[f"{split}_labels"]
        if len(images) != len(labels):
            raise ValueError(f"{root}: {len(images)} {split} images but {len(labels)} labels")
        sets.append(TensorDataset(images.unsqueeze(1).float().div_(255.0), labels.long()))
    return sets[0], sets[1], int(max(int(parts["train_labels"].max()), int(parts["test_labels"].max())) + 1)


def _imagefolder_split(root: str, split: str, transform):
    from torchvision import datasets

    path = os.path.join(root, split)
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"data folder {root!r} has no {split}/ subfolder: expected the ImageFolder layout "
            f"{root}/{split}/<class>/<image>"
        )
    try:
        return datasets.ImageFolder(path, transform)
    except (FileNotFoundError, RuntimeError) as exc:
        raise FileNotFoundError(f"data folder {root!r} is not in the ImageFolder layout: {exc}") from exc


def _eval_transform(image_size: int, paper_eval: bool):
    """Resize then centre-crop ``image_size``: by 256/224 (torchvision's), or with ``paper_eval``
    by the paper's ratio (resize 299, crop 256, at image_size 256)."""
    from torchvision import transforms

    ratio = 299 / 256 if paper_eval else 256 / 224
    return transforms.Compose(
        [
            transforms.Resize(int(round(image_size * ratio))),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
        ]
    )


def imagefolder(root: str, image_size: int = 224, paper_eval: bool = False) -> tuple[Dataset, Dataset, int]:
    """``root/train`` and ``root/val`` in torchvision's ImageFolder layout. Training uses the
    standard augmentation (random resized crop, flip); evaluation resizes and centre-crops
    ``image_size`` (see ``_eval_transform``)."""
    from torchvision import transforms

    if not os.path.isdir(root):
        raise FileNotFoundError(f"data folder {root!r} does not exist")
    train_tf = transforms.Compose(
        [transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip(), transforms.ToTensor()]
    )
    train = _imagefolder_split(root, "train", train_tf)
    val = _imagefolder_split(root, "val", _eval_transform(image_size, paper_eval))
    if train.classes != val.classes:
        raise ValueError(f"train/ and val/ of {root!r} hold different class folders")
    return train, val, len(train.classes)


def imagefolder_val(root: str, image_size: int = 256, paper_eval: bool = True) -> tuple[Dataset, int]:
    """Only ``root/val`` (what ``shc attack`` needs): (dataset, number of classes)."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"data folder {root!r} does not exist")
    val = _imagefolder_split(root, "val", _eval_transform(image_size, paper_eval))
    return val, len(val.classes)


def load(data: str | None, image_size: int = 224, paper_eval: bool = False, digits_size: int = 32):
    """(train, val, num_classes) for ``data``:

    - None: the embedded digits;
    - ``"fashion-mnist"``: Debian's Fashion-MNIST (``FASHION_MNIST_DIR``); when it is not
      installed, the digits, said on stderr;
    - a folder holding MNIST-format IDX files (Fashion-MNIST's four files);
    - a folder in the ImageFolder layout (train/ and val/).
    """
    if data is None:
        return digits(digits_size)
    if data == "fashion-mnist":
        if fashion_mnist_available():
            return fashion_mnist()
        print(
            f"Fashion-MNIST is not installed ({FASHION_MNIST_DIR} is missing): using the embedded "
            f"digits instead; {INSTALL_HINT}",
            file=sys.stderr,
            flush=True,
        )
        return digits(digits_size)
    if is_idx_folder(data):
        return fashion_mnist(data)
    return imagefolder(data, image_size, paper_eval)


def data_argument(*, splits: tuple[str, ...] = ("train", "val"), digits: bool = False):
    """The argparse type of every command's ``--data``: ``fashion-mnist``, ``digits`` (where
    ``digits``), a folder of Fashion-MNIST's IDX files, or (when ``splits`` is not empty) a folder in
    the ImageFolder layout with the ``splits`` subfolders the command reads."""

    def parse(text: str) -> str:
        if text == "fashion-mnist" or (digits and text == "digits"):
            return text
        path = args.existing_dir(text)
        if is_idx_folder(path):
            return path
        missing = [s for s in splits if not os.path.isdir(os.path.join(path, s))]
        if splits and not missing:
            return path
        if splits and len(missing) < len(splits):  # an ImageFolder layout with a split missing
            names = ", ".join(s + "/" for s in splits)
            raise argparse.ArgumentTypeError(
                f"{text!r} has no {' or '.join(s + '/' for s in missing)} subfolder (an ImageFolder data set "
                f"needs {names})"
            )
        wanted = "the four Fashion-MNIST IDX files"
        if splits:
            wanted += f" nor the ImageFolder subfolders {', '.join(s + '/' for s in splits)}"
        raise argparse.ArgumentTypeError(f"{text!r} holds neither {wanted}")

    return parse
