"""CUB-200-2011 (Caltech-UCSD Birds) from its native text files."""

from __future__ import annotations

import os

from .base import ClassificationData, PathLike, Transform, folder_data
from .files import id_map, listed_file, read_table, resolve_root
from .registry import register_dataset

_TABLES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")
_INT_TABLES = ("image_class_labels.txt", "train_test_split.txt")  # both columns are ints


@register_dataset("cub200")
def read_cub200(
    root: PathLike,
    *,
    img_size: int = 224,
    train_transform: Transform | None = None,
    test_transform: Transform | None = None,
) -> ClassificationData:
    """CUB-200-2011 from its native files in `root` or `root/CUB_200_2011`: `images.txt`
    (id, relative path), `image_class_labels.txt` (id, 1-based class), `train_test_split.txt`
    (id, 1 = train), `classes.txt` (id, name) and the `images/` folder."""
    root = resolve_root(root, "CUB_200_2011")
    files = {name: os.path.join(root, name) for name in _TABLES}
    tables = {
        name: id_map(read_table(path, 2, (0, 1) if name in _INT_TABLES else (0,)), path)
        for name, path in files.items()
    }
    class_names = tables["classes.txt"]
    if sorted(class_names) != list(range(1, len(class_names) + 1)):
        raise ValueError(f"{files['classes.txt']}: class ids must be 1..{len(class_names)}")
    paths, labels, split = (tables[n] for n in _TABLES[:3])
    for name in _INT_TABLES:
        if tables[name].keys() != paths.keys():
            diff = sorted(tables[name].keys() ^ paths.keys())
            raise ValueError(f"{files[name]}: image ids disagree with images.txt (e.g. {diff[0]})")
    train_items, test_items = [], []
    for image_id in sorted(paths):
        label, is_train = labels[image_id], split[image_id]
        if not 1 <= label <= len(class_names):
            raise ValueError(
                f"{files['image_class_labels.txt']}: image {image_id} has class {label}, "
                f"expected 1..{len(class_names)}"
            )
        if is_train not in (0, 1):
            raise ValueError(f"{files['train_test_split.txt']}: image {image_id} has {is_train}")
        path = listed_file(os.path.join(root, "images", paths[image_id]), files["images.txt"])
        (train_items if is_train else test_items).append((path, label - 1))
    classes = [class_names[i] for i in range(1, len(class_names) + 1)]
    return folder_data(train_items, test_items, classes, img_size, train_transform, test_transform)
