"""scikit-learn's bundled 8x8 digits: the dataset that needs no files."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from denoiserep.data.constants import DIGITS_MEAN, DIGITS_STD

from .base import ClassificationData, Transform, array_data
from .registry import register_dataset


@register_dataset("digits", needs_root=False)
def read_digits(
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    subset: Sequence[int] | None = None,
    train_transform: Transform | None = None,
    test_transform: Transform | None = None,
) -> ClassificationData:
    """scikit-learn's bundled 8x8 digits (1797 images, values 0..16 scaled to [0, 1]),
    split into train / test by a stratified, seeded shuffle. Needs no files. ``subset`` keeps
    only those digits (relabelled 0..len-1 in that order)."""
    # Imported here: scikit-learn is slow to import and only this reader needs it.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, stratify=labels, random_state=seed
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    return array_data(
        (images[train_idx], labels[train_idx]),
        (images[test_idx], labels[test_idx]),
        [str(c) for c in digits.target_names],
        mean=DIGITS_MEAN,
        std=DIGITS_STD,
        subset=subset,
        train_transform=train_transform,
        test_transform=test_transform,
    )
