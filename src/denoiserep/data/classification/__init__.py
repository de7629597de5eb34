"""Readers for image-classification datasets in their real on-disk formats, by name.

Every reader returns a `ClassificationData` whose `train` / `test` datasets yield
`(transform(image), int_label)`, where `image` is a PIL image (mode "F" in [0, 1] for
digits, "L" for Fashion-MNIST, "RGB" otherwise) and the transform defaults to
`default_transform` with the dataset's usual mean / std. Labels are always 0-based.

Files are checked when the data is built (missing split files, labels that disagree with
the image list, out-of-range labels); image files are decoded when an item is read, and
`denoiserep.data.images.verify_images` scans a folder-based dataset ahead of time.

    data = build_classification_data("cifar10", "/data/cifar", max_train=5000)

`download=True` (CIFAR-10/100, Fashion-MNIST, Flowers-102, Oxford-IIIT Pet) first fetches the
official files with torchvision (`download.py`); the reading stays ours (docs/development.md).

A new dataset is one module whose reader is decorated with `register_dataset(name)`, plus
its import below.
"""

from .base import ArrayImageDataset, ClassificationData, PathLike, Transform, default_transform
from .registry import (
    DatasetEntry,
    build_classification_data,
    get_dataset,
    list_datasets,
    register_dataset,
)

# isort: off
# Importing a reader module registers it; this order is the order of `list_datasets()`.
from .digits import read_digits
from .fashion_mnist import read_fashion_mnist
from .cifar import read_cifar, read_cifar10, read_cifar100
from .image_folder import read_imagefolder
from .cub import read_cub200
from .pet import OXFORD_PET_NUM_CLASSES, read_oxford_pet
from .flowers import FLOWERS102_NUM_CLASSES, read_flowers102

# isort: on

DATASET_NAMES = list_datasets()  # the built-in readers (later registrations: list_datasets())

__all__ = [
    "DATASET_NAMES",
    "FLOWERS102_NUM_CLASSES",
    "OXFORD_PET_NUM_CLASSES",
    "ArrayImageDataset",
    "ClassificationData",
    "DatasetEntry",
    "PathLike",
    "Transform",
    "build_classification_data",
    "default_transform",
    "get_dataset",
    "list_datasets",
    "read_cifar",
    "read_cifar10",
    "read_cifar100",
    "read_cub200",
    "read_digits",
    "read_fashion_mnist",
    "read_flowers102",
    "read_imagefolder",
    "read_oxford_pet",
    "register_dataset",
]
