"""Fetching a dataset's files with torchvision's downloaders (``data.options.download: true``).

torchvision downloads the official archives, checks their md5 and unpacks them into the layout
our readers read (``root/cifar-10-batches-py``, ``root/FashionMNIST/raw``, ``root/flowers-102``,
``root/oxford-iiit-pet``); it skips the download when the files are already there. The reading
stays ours: docs/development.md says why, one line per reader.
"""

from __future__ import annotations

import os

from denoiserep.util.errors import first_line

from .base import PathLike

#: Our dataset name -> the torchvision.datasets class that downloads its files.
TORCHVISION_DATASETS = {
    "cifar10": "CIFAR10",
    "cifar100": "CIFAR100",
    "fashion_mnist": "FashionMNIST",
    "flowers102": "Flowers102",
    "oxford_pet": "OxfordIIITPet",
}


def fetch(name: str, root: PathLike) -> None:
    """Download dataset ``name`` into ``root`` (the folder above the dataset's own folder, as
    torchvision lays it out) unless it is there already; a one-line RuntimeError when that
    fails (no network, a read-only folder, a wrong checksum)."""
    import torchvision.datasets

    if name not in TORCHVISION_DATASETS:
        known = ", ".join(TORCHVISION_DATASETS)
        raise ValueError(f"no torchvision downloader for {name!r}; one of {known}")
    library_class = getattr(torchvision.datasets, TORCHVISION_DATASETS[name])
    try:
        library_class(os.fspath(root), download=True)
    except Exception as e:  # noqa: BLE001 - urllib, OSError, torchvision's RuntimeError, ...
        raise RuntimeError(
            f"could not download {name} into {root} with torchvision.datasets."
            f"{library_class.__name__}: {type(e).__name__}: {first_line(e)}"
        ) from e
