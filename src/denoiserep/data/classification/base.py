"""What every classification reader returns, and how it assembles it.

`ClassificationData` is the record a reader returns; `ArrayImageDataset` holds in-memory
images (digits, Fashion-MNIST, CIFAR); `array_data` / `folder_data` build the record from
arrays or from (path, label) lists, with the default transform when none is given.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T

from denoiserep.data.constants import IMAGENET_CROP_RATIO, IMAGENET_MEAN, IMAGENET_STD
from denoiserep.data.images import ListImageDataset

Transform = Callable[[Image.Image], Any]
PathLike = str | os.PathLike
Split = tuple[np.ndarray, np.ndarray]  # (images, int labels)


@dataclass
class ClassificationData:
    """Train / test datasets of one classification task and what a model needs to know.

    `mean` / `std` are the normalisation statistics of the default transform, so callers
    who pass their own (augmenting) transforms can normalise the same way.
    """

    train: Dataset
    test: Dataset
    num_classes: int
    in_chans: int
    img_size: int
    classes: list[str]
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()


def default_transform(
    mean: Sequence[float], std: Sequence[float], resize_to: int | None = None
) -> Transform:
    """PIL image -> normalised float tensor; with `resize_to`, first resize the short side
    to `resize_to / 0.875` and centre-crop `resize_to` (standard ImageNet evaluation)."""
    steps: list[Transform] = []
    if resize_to is not None:
        steps += [T.Resize(round(resize_to / IMAGENET_CROP_RATIO)), T.CenterCrop(resize_to)]
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)


class ArrayImageDataset(Dataset):
    """Dataset over in-memory images: (N, H, W) or (N, H, W, 3) arrays and N int labels."""

    def __init__(
        self, images: np.ndarray, labels: np.ndarray, transform: Transform | None = None
    ) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img = Image.fromarray(self.images[index])
        label = int(self.labels[index])
        return (self.transform(img) if self.transform is not None else img), label

    @property
    def targets(self) -> list[int]:
        """The labels of all items, in order (torchvision's attribute name)."""
        return self.labels.tolist()


def _class_remap(classes: list[str], subset: Sequence[int] | None) -> tuple[np.ndarray, list[str]]:
    """Old label -> new label (-1 = dropped) and the kept class names, for a class subset."""
    if subset is None:
        return np.arange(len(classes)), classes
    subset = [int(c) for c in subset]
    if len(set(subset)) != len(subset) or not subset:
        raise ValueError(f"subset must list distinct class ids, got {subset}")
    out = [c for c in subset if not 0 <= c < len(classes)]
    if out:
        raise ValueError(f"subset class ids {out} out of range 0..{len(classes) - 1}")
    remap = np.full(len(classes), -1)
    remap[subset] = np.arange(len(subset))
    return remap, [classes[c] for c in subset]


def array_data(
    train: Split,
    test: Split,
    classes: list[str],
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    subset: Sequence[int] | None = None,
    max_train: int | None = None,
    max_test: int | None = None,
    train_transform: Transform | None = None,
    test_transform: Transform | None = None,
) -> ClassificationData:
    """Assemble array-backed data, applying the class subset and size limits.

    `subset` keeps only those class ids (relabelled 0..len-1 in that order); `max_train` /
    `max_test` keep the first N images of each split (in file order, after the subset)."""
    remap, classes = _class_remap(classes, subset)
    for arg, value in (("max_train", max_train), ("max_test", max_test)):
        if value is not None and value < 1:
            raise ValueError(f"{arg} must be a positive integer, got {value}")
    default = default_transform(mean, std)
    sets = []
    for (images, labels), limit, transform in (
        (train, max_train, train_transform),
        (test, max_test, test_transform),
    ):
        keep = np.flatnonzero(remap[labels] >= 0)[:limit]
        chosen = transform if transform is not None else default
        sets.append(ArrayImageDataset(images[keep], remap[labels[keep]], chosen))
    first = train[0]
    return ClassificationData(
        train=sets[0],
        test=sets[1],
        num_classes=len(classes),
        in_chans=1 if first.ndim == 3 else first.shape[3],
        img_size=first.shape[1],
        classes=classes,
        mean=mean,
        std=std,
    )


def folder_data(
    train_items: list[tuple[str, int]],
    test_items: list[tuple[str, int]],
    classes: list[str],
    img_size: int,
    train_transform: Transform | None = None,
    test_transform: Transform | None = None,
) -> ClassificationData:
    """Assemble file-backed RGB data with ImageNet statistics."""
    default = default_transform(IMAGENET_MEAN, IMAGENET_STD, resize_to=img_size)
    return ClassificationData(
        train=ListImageDataset(
            train_items, default if train_transform is None else train_transform
        ),
        test=ListImageDataset(test_items, default if test_transform is None else test_transform),
        num_classes=len(classes),
        in_chans=3,
        img_size=img_size,
        classes=classes,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )
