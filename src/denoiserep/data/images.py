"""Image files on disk: a checked loader and a (path, label) dataset.

PIL opens files lazily, so a truncated JPEG only fails when its pixels are decoded,
often deep inside a DataLoader worker. `load_image` decodes eagerly and turns any PIL
failure into a ValueError that names the file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from PIL import Image
from torch.utils.data import Dataset


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open, fully decode and convert an image file to RGB.

    Raises FileNotFoundError if the file is missing and ValueError, naming the file, if it
    is not a readable image (unknown format, truncated or corrupt data).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"corrupt or unreadable image {path}: {e}") from e


class ListImageDataset(Dataset):
    """Dataset over a list of (image path, integer label) pairs.

    Items yield `(transform(image), label)` where `image` is the RGB PIL image from
    `load_image`; without a transform the PIL image itself is returned.
    """

    def __init__(
        self,
        items: list[tuple[str, int]],
        transform: Callable[[Image.Image], Any] | None = None,
    ) -> None:
        self.items = list(items)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.items[index]
        img = load_image(path)
        return (self.transform(img) if self.transform is not None else img), label

    @property
    def targets(self) -> list[int]:
        """The labels of all items, in order (torchvision's attribute name)."""
        return [label for _, label in self.items]


def verify_images(dataset: ListImageDataset) -> int:
    """Decode every image of `dataset` and return how many were checked.

    Raises the first failure (ValueError / FileNotFoundError naming the file and its
    index), so a corrupt file is found before training rather than in the middle of it.
    """
    if not isinstance(dataset, ListImageDataset):
        raise TypeError(f"verify_images expects a ListImageDataset, got {type(dataset).__name__}")
    for index, (path, _) in enumerate(dataset.items):
        try:
            load_image(path)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"item {index}: {e}") from e
        except ValueError as e:
            raise ValueError(f"item {index}: {e}") from e
    return len(dataset.items)
