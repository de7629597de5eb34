"""ImageNet-style class folders: `root/<split>/<class>/<image>`."""

from __future__ import annotations

import os

from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from .base import ClassificationData, PathLike, Transform, folder_data
from .registry import register_dataset


def _folder_items(
    split_dir: str, class_to_idx: dict[str, int], allow_empty: bool
) -> list[tuple[str, int]]:
    """(path, label) pairs of one split; `allow_empty` lets class folders be absent/empty."""
    try:
        items = make_dataset(split_dir, class_to_idx, IMG_EXTENSIONS, allow_empty=allow_empty)
    except FileNotFoundError as e:  # torchvision's message names the classes, not the folder
        raise FileNotFoundError(f"{split_dir}: {e}") from e
    if not items:
        raise ValueError(f"split folder has no images ({', '.join(IMG_EXTENSIONS)}): {split_dir}")
    return items


@register_dataset("imagefolder")
def read_imagefolder(
    root: PathLike,
    *,
    train_split: str = "train",
    test_split: str = "val",
    img_size: int = 224,
    train_transform: Transform | None = None,
    test_transform: Transform | None = None,
) -> ClassificationData:
    """ImageNet-style folders `root/<train_split>/<class>/*` and `root/<test_split>/<class>/*`.

    Classes are the sorted sub-folders of the train split, each of which must hold images;
    the test split may hold a subset of them. Default transforms resize and centre-crop to
    `img_size`."""
    dirs = [os.path.join(root, split) for split in (train_split, test_split)]
    for d in dirs:
        if not os.path.isdir(d):
            raise FileNotFoundError(f"split folder not found: {d}")
    classes, class_to_idx = find_classes(dirs[0])
    unknown = sorted(set(find_classes(dirs[1])[0]) - set(classes))
    if unknown:
        raise ValueError(f"{dirs[1]}: classes {unknown[:5]} are not in {dirs[0]}")
    return folder_data(
        _folder_items(dirs[0], class_to_idx, allow_empty=False),
        _folder_items(dirs[1], class_to_idx, allow_empty=True),
        classes,
        img_size,
        train_transform,
        test_transform,
    )
