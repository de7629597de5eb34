"""Oxford Flowers-102 from its MATLAB label and split files."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import scipy.io

from .base import ClassificationData, PathLike, Transform, folder_data
from .download import fetch
from .files import listed_file, require_file, resolve_root
from .registry import register_dataset

FLOWERS102_NUM_CLASSES = 102


def _load_mat_vector(path: str, key: str) -> np.ndarray:
    """One integer vector from a MATLAB file (stored as 1 x N)."""
    require_file(path, "MATLAB file")
    try:
        mat = scipy.io.loadmat(path)
    except Exception as e:  # scipy raises many exception types on a corrupt file
        raise ValueError(f"{path}: not a readable .mat file ({type(e).__name__}: {e})") from e
    if key not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise ValueError(f"{path}: missing variable {key!r} (has {found})")
    return np.asarray(mat[key]).reshape(-1).astype(np.int64)


def _items(
    root: str, setid_path: str, keys: Sequence[str], labels: np.ndarray, labels_path: str
) -> list[tuple[str, int]]:
    """(image path, 0-based class) of the images listed under `keys` in setid.mat."""
    out = []
    for key in keys:
        for image_id in _load_mat_vector(setid_path, key):
            if not 1 <= image_id <= labels.size:
                raise ValueError(
                    f"{setid_path}: {key} lists image {image_id}, but {labels_path} "
                    f"labels images 1..{labels.size}"
                )
            path = os.path.join(root, "jpg", f"image_{image_id:05d}.jpg")
            out.append((listed_file(path, setid_path), int(labels[image_id - 1]) - 1))
    return out


@register_dataset("flowers102")
def read_flowers102(
    root: PathLike,
    *,
    include_val: bool = False,
    img_size: int = 224,
    train_transform: Transform | None = None,
    test_transform: Transform | None = None,
    download: bool = False,
) -> ClassificationData:
    """Oxford Flowers-102 in `root` or `root/flowers-102`: `jpg/image_%05d.jpg`,
    `imagelabels.mat` (`labels`, 1-based) and `setid.mat` (`trnid`, `valid`, `tstid`, 1-based
    image ids). Train = trnid (+ valid with `include_val`), test = tstid. Class names are the
    1-based label numbers as strings, since the files carry no names. `download` first
    fetches the files into `root/flowers-102` with torchvision."""
    if download:
        fetch("flowers102", root)
    root = resolve_root(root, "flowers-102")
    labels_path, setid_path = os.path.join(root, "imagelabels.mat"), os.path.join(root, "setid.mat")
    labels = _load_mat_vector(labels_path, "labels")
    if labels.size == 0 or labels.min() < 1 or labels.max() > FLOWERS102_NUM_CLASSES:
        raise ValueError(f"{labels_path}: labels must lie in 1..{FLOWERS102_NUM_CLASSES}")
    num_classes = int(labels.max())
    train_keys = ("trnid", "valid") if include_val else ("trnid",)
    return folder_data(
        _items(root, setid_path, train_keys, labels, labels_path),
        _items(root, setid_path, ("tstid",), labels, labels_path),
        [str(i) for i in range(1, num_classes + 1)],
        img_size,
        train_transform,
        test_transform,
    )
