"""Fashion-MNIST from its IDX files."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from denoiserep.data.constants import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_ROOT,
    FASHION_MNIST_STD,
)
from denoiserep.data.idx import read_idx

from .base import ClassificationData, PathLike, Split, Transform, array_data
from .download import fetch
from .files import check_labels
from .registry import register_dataset


def _find_idx(root: str, stem: str) -> str:
    folders = [root, os.path.join(root, "FashionMNIST", "raw")]
    for folder in folders:
        for name in (stem, stem + ".gz"):
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                return path
    raise FileNotFoundError(f"{stem}[.gz] not found in {' or '.join(folders)}")


def _read_idx_split(root: str, prefix: str) -> Split:
    images_path = _find_idx(root, f"{prefix}-images-idx3-ubyte")
    labels_path = _find_idx(root, f"{prefix}-labels-idx1-ubyte")
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{images_path}: expected (N, H, W) uint8 images, got {images.shape}")
    if labels.shape != (len(images),):
        raise ValueError(
            f"{labels_path}: expected {len(images)} labels to match {images_path}, "
            f"got shape {labels.shape}"
        )
    labels = labels.astype(np.int64)
    check_labels(labels, len(FASHION_MNIST_CLASSES), labels_path)
    return images, labels


@register_dataset("fashion_mnist", default_root=FASHION_MNIST_ROOT)
def read_fashion_mnist(
    root: PathLike = FASHION_MNIST_ROOT,
    *,
    subset: Sequence[int] | None = None,
    max_train: int | None = None,
    max_test: int | None = None,
    train_transform: Transform | None = None,
    test_transform: Transform | None = None,
    download: bool = False,
) -> ClassificationData:
    """Fashion-MNIST from its IDX files (`train-images-idx3-ubyte[.gz]`, ...) in `root` or
    in torchvision's `root/FashionMNIST/raw`. `subset` keeps only those class ids (relabelled
    0..len-1 in that order); `max_train` / `max_test` keep the first N images of each split;
    `download` first fetches the files into `root/FashionMNIST/raw` with torchvision."""
    root = os.fspath(root)
    if download:
        fetch("fashion_mnist", root)
    return array_data(
        _read_idx_split(root, "train"),
        _read_idx_split(root, "t10k"),
        list(FASHION_MNIST_CLASSES),
        mean=FASHION_MNIST_MEAN,
        std=FASHION_MNIST_STD,
        subset=subset,
        max_train=max_train,
        max_test=max_test,
        train_transform=train_transform,
        test_transform=test_transform,
    )
