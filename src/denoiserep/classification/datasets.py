"""Former home of the classification readers, kept so that old imports keep working.

The readers now live one per module in `denoiserep.data.classification` (with a registry,
`register_dataset` / `build_classification_data`), and the normalisation constants and
default roots in `denoiserep.data.constants`.
"""

from denoiserep.data.classification import (
    DATASET_NAMES,
    FLOWERS102_NUM_CLASSES,
    OXFORD_PET_NUM_CLASSES,
    ArrayImageDataset,
    ClassificationData,
    PathLike,
    Transform,
    build_classification_data,
    default_transform,
    read_cifar10,
    read_cifar100,
    read_cub200,
    read_digits,
    read_fashion_mnist,
    read_flowers102,
    read_imagefolder,
    read_oxford_pet,
)
from denoiserep.data.constants import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_ROOT,
    IMAGENET_MEAN,
    IMAGENET_STD,
)

__all__ = [
    "DATASET_NAMES",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_ROOT",
    "FLOWERS102_NUM_CLASSES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "OXFORD_PET_NUM_CLASSES",
    "ArrayImageDataset",
    "ClassificationData",
    "PathLike",
    "Transform",
    "build_classification_data",
    "default_transform",
    "read_cifar10",
    "read_cifar100",
    "read_cub200",
    "read_digits",
    "read_fashion_mnist",
    "read_flowers102",
    "read_imagefolder",
    "read_oxford_pet",
]
