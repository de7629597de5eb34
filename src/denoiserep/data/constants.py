"""Normalisation statistics and default dataset locations, defined once for every task.

Means and standard deviations are per channel, for images scaled to [0, 1].
"""

from __future__ import annotations

# ImageNet statistics: the convention of timm / torchvision pretrained weights, and the
# default for any RGB photo dataset without statistics of its own.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Resize-then-centre-crop ratio of the standard ImageNet evaluation (256 -> 224).
IMAGENET_CROP_RATIO = 0.875

# Statistics of each training set (digits: computed from scikit-learn's data / 16).
DIGITS_MEAN, DIGITS_STD = (0.3053,), (0.3760,)
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)

# Where Debian's `dataset-fashion-mnist` package installs the IDX files.
FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
