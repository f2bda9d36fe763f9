"""Training data: ImageNet in the ImageFolder layout, or the embedded digits set.

Images come out as float tensors in [0, 1]; the models normalise them themselves.
"""

from __future__ import annotations

import os

import torch
from torch.utils.data import Dataset, TensorDataset

__all__ = ["digits", "imagefolder", "load"]


def digits(image_size: int = 32, val_fraction: float = 0.2, seed: int = 0) -> tuple[Dataset, Dataset, int]:
    """scikit-learn's 8×8 handwritten digits (1797 real images shipped inside the package),
    upsampled to ``image_size`` and repeated to 3 channels, with a fixed train/val split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = torch.nn.functional.interpolate(images, size=(image_size, image_size), mode="bilinear")
    images = images.clamp(0, 1).expand(-1, 3, -1, -1).contiguous()
    labels = torch.tensor(bunch.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_val = int(round(len(labels) * val_fraction))
    val, train = order[:n_val], order[n_val:]
    return TensorDataset(images[train], labels[train]), TensorDataset(images[val], labels[val]), 10


def imagefolder(root: str, image_size: int = 224, paper_eval: bool = False) -> tuple[Dataset, Dataset, int]:
    """``root/train`` and ``root/val`` in torchvision's ImageFolder layout. Training uses the
    standard augmentation (random resized crop, flip); evaluation resizes to 256 and crops 224,
    or with ``paper_eval`` the paper's transform (resize to 299, centre crop 256)."""
    from torchvision import datasets, transforms

    if not os.path.isdir(root):
        raise FileNotFoundError(f"data folder {root!r} does not exist")
    for split in ("train", "val"):
        path = os.path.join(root, split)
        if not os.path.isdir(path):
            raise FileNotFoundError(
                f"data folder {root!r} has no {split}/ subfolder: expected the ImageFolder layout "
                f"{root}/train/<class>/<image> and {root}/val/<class>/<image>"
            )
    train_tf = transforms.Compose(
        [transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip(), transforms.ToTensor()]
    )
    resize, crop = (299, 256) if paper_eval else (int(image_size * 256 / 224), image_size)
    val_tf = transforms.Compose(
        [transforms.Resize(resize), transforms.CenterCrop(crop), transforms.ToTensor()]
    )
    try:
        train = datasets.ImageFolder(os.path.join(root, "train"), train_tf)
        val = datasets.ImageFolder(os.path.join(root, "val"), val_tf)
    except (FileNotFoundError, RuntimeError) as exc:
        raise FileNotFoundError(f"data folder {root!r} is not in the ImageFolder layout: {exc}") from exc
    if train.classes != val.classes:
        raise ValueError(f"train/ and val/ of {root!r} hold different class folders")
    return train, val, len(train.classes)


def load(data: str | None, image_size: int = 224, paper_eval: bool = False, digits_size: int = 32):
    """(train, val, num_classes): ImageFolder data at ``data``, or the digits set when None."""
    if data is None:
        return digits(digits_size)
    return imagefolder(data, image_size, paper_eval)
