"""Oxford-IIIT Pet (37 breeds) from its annotation lists."""

from __future__ import annotations

import os

from .base import ClassificationData, PathLike, Transform, folder_data
from .download import fetch
from .files import listed_file, read_table, resolve_root
from .registry import register_dataset

OXFORD_PET_NUM_CLASSES = 37


def _split_items(root: str, path: str, names: dict[int, str]) -> list[tuple[str, int]]:
    """(image path, 0-based class) of one split list; records each class's breed in `names`."""
    items = []
    for lineno, (image, class_id, _, _) in read_table(path, 4, (1, 2, 3)):
        if not 1 <= class_id <= OXFORD_PET_NUM_CLASSES:
            raise ValueError(
                f"{path}:{lineno}: class id {class_id} out of range 1..{OXFORD_PET_NUM_CLASSES}"
            )
        breed = image.rsplit("_", 1)[0]
        if names.setdefault(class_id, breed) != breed:
            raise ValueError(
                f"{path}:{lineno}: class id {class_id} is {names[class_id]!r}, "
                f"but image {image!r} names {breed!r}"
            )
        image_path = listed_file(os.path.join(root, "images", f"{image}.jpg"), path)
        items.append((image_path, class_id - 1))
    return items


@register_dataset("oxford_pet")
def read_oxford_pet(
    root: PathLike,
    *,
    img_size: int = 224,
    train_transform: Transform | None = None,
    test_transform: Transform | None = None,
    download: bool = False,
) -> ClassificationData:
    """Oxford-IIIT Pet (37 breeds) in `root` or `root/oxford-iiit-pet`: split lists
    `annotations/trainval.txt` (train) and `annotations/test.txt` (test) with lines
    `<name> <class 1..37> <species> <breed id>`, images `images/<name>.jpg`. Class names
    are the image-name prefixes (e.g. `Abyssinian`, `american_bulldog`). `download` first
    fetches the files into `root/oxford-iiit-pet` with torchvision."""
    if download:
        fetch("oxford_pet", root)
    root = resolve_root(root, "oxford-iiit-pet")
    names: dict[int, str] = {}
    train, test = (
        _split_items(root, os.path.join(root, "annotations", split), names)
        for split in ("trainval.txt", "test.txt")
    )
    missing = sorted(set(range(1, max(names) + 1)) - names.keys())
    if missing:
        raise ValueError(f"{root}/annotations: class ids {missing} never appear")
    classes = [names[i] for i in range(1, len(names) + 1)]
    return folder_data(train, test, classes, img_size, train_transform, test_transform)
