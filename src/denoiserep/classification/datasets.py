"""Readers for image-classification datasets in their real on-disk formats.

Every reader returns a `ClassificationData` whose `train` / `test` datasets yield
`(transform(image), int_label)`, where `image` is a PIL image (mode "F" in [0, 1] for
digits, "L" for Fashion-MNIST, "RGB" otherwise) and the transform defaults to
`default_transform` with the dataset's usual mean / std. Labels are always 0-based.

Files are checked when the data is built (missing split files, labels that disagree with
the image list, out-of-range labels); image files are decoded when an item is read, and
`denoiserep.data.images.verify_images` scans a folder-based dataset ahead of time.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.io
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from denoiserep.data.idx import read_idx
from denoiserep.data.images import ListImageDataset

Transform = Callable[[Image.Image], Any]
PathLike = str | os.PathLike

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Per-channel statistics of each training set (digits: computed from sklearn's data / 16).
_STATS = {
    "digits": ((0.3053,), (0.3760,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
# Resize-then-centre-crop ratio of the standard ImageNet evaluation (256 -> 224).
_CROP_RATIO = 0.875


@dataclass
class ClassificationData:
    """Train / test datasets of one classification task and what a model needs to know.

    `mean` / `std` are the normalisation statistics of the default transform, so callers
    who pass their own (augmenting) transforms can normalise the same way.
    """

    train: Dataset
    test: Dataset
    num_classes: int
    in_chans: int
    img_size: int
    classes: list[str]
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()


def default_transform(
    mean: Sequence[float], std: Sequence[float], resize_to: int | None = None
) -> Transform:
    """PIL image -> normalised float tensor; with `resize_to`, first resize the short side
    to `resize_to / 0.875` and centre-crop `resize_to` (standard ImageNet evaluation)."""
    steps: list[Transform] = []
    if resize_to is not None:
        steps += [T.Resize(round(resize_to / _CROP_RATIO)), T.CenterCrop(resize_to)]
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)


class ArrayImageDataset(Dataset):
    """Dataset over in-memory images: (N, H, W) or (N, H, W, 3) arrays and N int labels."""

    def __init__(
        self, images: np.ndarray, labels: np.ndarray, transform: Transform | None = None
    ) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img = Image.fromarray(self.images[index])
        label = int(self.labels[index])
        return (self.transform(img) if self.transform is not None else img), label

    @property
    def targets(self) -> list[int]:
        """The labels of all items, in order (torchvision's attribute name)."""
        return self.labels.tolist()


# ----------------------------------------------------------------------------- helpers


def _resolve_root(root: PathLike, subdir: str) -> str:
    """Accept either the dataset folder itself or its parent (torchvision's convention)."""
    nested = os.path.join(root, subdir)
    return nested if os.path.isdir(nested) else os.fspath(root)


def _require_file(path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def _read_table(path: str, ncols: int, int_cols: Sequence[int]) -> list[tuple[int, list]]:
    """Whitespace-separated text table -> [(line number, fields)], skipping blank and '#'
    lines; columns in `int_cols` are parsed as ints. Errors name the file and line."""
    _require_file(path, "split/annotation file")
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            fields: list = line.split()
            if len(fields) != ncols:
                raise ValueError(f"{path}:{lineno}: expected {ncols} fields, got {line.strip()!r}")
            for c in int_cols:
                try:
                    fields[c] = int(fields[c])
                except ValueError as e:
                    raise ValueError(f"{path}:{lineno}: field {c + 1} is not an integer") from e
            rows.append((lineno, fields))
    if not rows:
        raise ValueError(f"{path}: no entries")
    return rows


def _check_labels(labels: np.ndarray, num_classes: int, source: str) -> None:
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{source}: label {int(labels[i])} at index {i} out of range 0..{num_classes - 1}"
        )


def _array_data(
    name: str,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    classes: list[str],
    subset: Sequence[int] | None,
    max_train: int | None,
    max_test: int | None,
    train_transform: Transform | None,
    test_transform: Transform | None,
) -> ClassificationData:
    """Assemble array-backed data, applying the class subset and size limits."""
    remap = np.arange(len(classes))  # old label -> new label, -1 = dropped
    if subset is not None:
        subset = [int(c) for c in subset]
        if len(set(subset)) != len(subset) or not subset:
            raise ValueError(f"subset must list distinct class ids, got {subset}")
        out = [c for c in subset if not 0 <= c < len(classes)]
        if out:
            raise ValueError(f"subset class ids {out} out of range 0..{len(classes) - 1}")
        remap = np.full(len(classes), -1)
        remap[subset] = np.arange(len(subset))
        classes = [classes[c] for c in subset]
    for arg, value in (("max_train", max_train), ("max_test", max_test)):
        if value is not None and value < 1:
            raise ValueError(f"{arg} must be a positive integer, got {value}")
    mean, std = _STATS[name]
    default = default_transform(mean, std)
    sets = []
    for (images, labels), limit, transform in (
        (train, max_train, train_transform),
        (test, max_test, test_transform),
    ):
        keep = np.flatnonzero(remap[labels] >= 0)[:limit]  # first `limit` in file order
        chosen = transform if transform is not None else default
        sets.append(ArrayImageDataset(images[keep], remap[labels[keep]], chosen))
    first = train[0]
    return ClassificationData(
        train=sets[0],
        test=sets[1],
        num_classes=len(classes),
        in_chans=1 if first.ndim == 3 else first.shape[3],
        img_size=first.shape[1],
        classes=classes,
        mean=mean,
        std=std,
    )


def _folder_data(
    train_items: list[tuple[str, int]],
    test_items: list[tuple[str, int]],
    classes: list[str],
    img_size: int,
    train_transform: Transform | None,
    test_transform: Transform | None,
) -> ClassificationData:
    """Assemble file-backed RGB data with ImageNet statistics."""
    default = default_transform(IMAGENET_MEAN, IMAGENET_STD, resize_to=img_size)
    return ClassificationData(
        train=ListImageDataset(
            train_items, default if train_transform is None else train_transform
        ),
        test=ListImageDataset(test_items, default if test_transform is None else test_transform),
        num_classes=len(classes),
        in_chans=3,
        img_size=img_size,
        classes=classes,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )


def _existing(path: str, listed_in: str) -> str:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image listed in {listed_in} is missing on disk: {path}")
    return path


# ----------------------------------------------------------------------------- readers


def read_digits(
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    train_transform: Transform | None = None,
    test_transform: Transform | None = None,
) -> ClassificationData:
    """scikit-learn's bundled 8x8 digits (1797 images, values 0..16 scaled to [0, 1]),
    split into train / test by a stratified, seeded shuffle. Needs no files."""
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
    return _array_data(
        "digits",
        (images[train_idx], labels[train_idx]),
        (images[test_idx], labels[test_idx]),
        [str(c) for c in digits.target_names],
        None,
        None,
        None,
        train_transform,
        test_transform,
    )


def _find_idx(root: str, stem: str) -> str:
    folders = [root, os.path.join(root, "FashionMNIST", "raw")]
    for folder in folders:
        for name in (stem, stem + ".gz"):
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                return path
    raise FileNotFoundError(f"{stem}[.gz] not found in {' or '.join(folders)}")


def _read_idx_split(root: str, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    images_path = _find_idx(root, f"{prefix}-images-idx3-ubyte")
    labels_path = _find_idx(root, f"{prefix}-labels-idx1-ubyte")
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{images_path}: expected (N, H, W) uint8 images, got {images.shape}")
    if labels.shape != (len(images),):
        raise ValueError(
            f"{labels_path}: expected {len(images)} labels to match {images_path}, "
            f"got shape {labels.shape}"
        )
    labels = labels.astype(np.int64)
    _check_labels(labels, len(FASHION_MNIST_CLASSES), labels_path)
    return images, labels


def read_fashion_mnist(
    root: PathLike = FASHION_MNIST_ROOT,
    *,
    subset: Sequence[int] | None = None,
    max_train: int | None = None,
    max_test: int | None = None,
    train_transform: Transform | None = None,
    test_transform: Transform | None = None,
) -> ClassificationData:
    """Fashion-MNIST from its IDX files (`train-images-idx3-ubyte[.gz]`, ...) in `root` or
    in torchvision's `root/FashionMNIST/raw`. `subset` keeps only those class ids (relabelled
    0..len-1 in that order); `max_train` / `max_test` keep the first N images of each split."""
    root = os.fspath(root)
    return _array_data(
        "fashion_mnist",
        _read_idx_split(root, "train"),
        _read_idx_split(root, "t10k"),
        list(FASHION_MNIST_CLASSES),
        subset,
        max_train,
        max_test,
        train_transform,
        test_transform,
    )


def _load_pickle(path: str) -> dict:
    """Unpickle one CIFAR file (Python 2 pickles: latin1 keeps the byte strings intact).
    CIFAR's native format is pickle, so only read files from a trusted source."""
    _require_file(path, "CIFAR file")
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="latin1")
    except Exception as e:  # unpickling garbage can raise almost any exception type
        raise ValueError(f"{path}: not a readable CIFAR pickle ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return obj


def _cifar_batch(path: str, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = _load_pickle(path)
    missing = [k for k in ("data", label_key) if k not in batch]
    if missing:
        raise ValueError(f"{path}: missing keys {missing} (has {sorted(batch)})")
    data = np.asarray(batch["data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: expected (N, 3072) uint8 data, got {data.dtype} {data.shape}")
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if labels.shape != (len(data),):
        raise ValueError(f"{path}: {len(data)} images but {labels.size} {label_key!r}")
    _check_labels(labels, num_classes, path)
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _cifar_classes(path: str, key: str, expected: int) -> list[str]:
    meta = _load_pickle(path)
    if key not in meta or len(meta[key]) != expected:
        raise ValueError(f"{path}: expected {expected} names under {key!r}")
    return [str(name) for name in meta[key]]


def _concat(batches: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


def read_cifar10(
    root: PathLike,
    *,
    subset: Sequence[int] | None = None,
    max_train: int | None = None,
    max_test: int | None = None,
    train_transform: Transform | None = None,
    test_transform: Transform | None = None,
) -> ClassificationData:
    """CIFAR-10 from the python pickles (`data_batch_1..5`, `test_batch`, `batches.meta`)
    in `root` or `root/cifar-10-batches-py`. Other arguments as `read_fashion_mnist`."""
    folder = _resolve_root(root, "cifar-10-batches-py")
    classes = _cifar_classes(os.path.join(folder, "batches.meta"), "label_names", 10)
    train = [
        _cifar_batch(os.path.join(folder, f"data_batch_{i}"), "labels", 10) for i in range(1, 6)
    ]
    test = _cifar_batch(os.path.join(folder, "test_batch"), "labels", 10)
    return _array_data(
        "cifar10",
        _concat(train),
        test,
        classes,
        subset,
        max_train,
        max_test,
        train_transform,
        test_transform,
    )


def read_cifar100(
    root: PathLike,
    *,
    subset: Sequence[int] | None = None,
    max_train: int | None = None,
    max_test: int | None = None,
    train_transform: Transform | None = None,
    test_transform: Transform | None = None,
) -> ClassificationData:
    """CIFAR-100 (fine labels) from the python pickles (`train`, `test`, `meta`) in `root`
    or `root/cifar-100-python`. Other arguments as `read_fashion_mnist`."""
    folder = _resolve_root(root, "cifar-100-python")
    classes = _cifar_classes(os.path.join(folder, "meta"), "fine_label_names", 100)
    return _array_data(
        "cifar100",
        _cifar_batch(os.path.join(folder, "train"), "fine_labels", 100),
        _cifar_batch(os.path.join(folder, "test"), "fine_labels", 100),
        classes,
        subset,
        max_train,
        max_test,
        train_transform,
        test_transform,
    )


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
    return _folder_data(
        _folder_items(dirs[0], class_to_idx, allow_empty=False),
        _folder_items(dirs[1], class_to_idx, allow_empty=True),
        classes,
        img_size,
        train_transform,
        test_transform,
    )


def _id_map(rows: list[tuple[int, list]], path: str) -> dict[int, Any]:
    """[(line, [id, value])] -> {id: value}, rejecting duplicate ids."""
    out: dict[int, Any] = {}
    for lineno, (key, value) in rows:
        if key in out:
            raise ValueError(f"{path}:{lineno}: duplicate id {key}")
        out[key] = value
    return out


_CUB_INT_TABLES = ("image_class_labels.txt", "train_test_split.txt")


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
    root = _resolve_root(root, "CUB_200_2011")
    files = {
        name: os.path.join(root, name)
        for name in ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")
    }
    tables = {
        name: _id_map(_read_table(path, 2, (0, 1) if name in _CUB_INT_TABLES else (0,)), path)
        for name, path in files.items()
    }
    class_names = tables["classes.txt"]
    if sorted(class_names) != list(range(1, len(class_names) + 1)):
        raise ValueError(f"{files['classes.txt']}: class ids must be 1..{len(class_names)}")
    paths, labels, split = (
        tables[n] for n in ("images.txt", "image_class_labels.txt", "train_test_split.txt")
    )
    for name in ("image_class_labels.txt", "train_test_split.txt"):
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
        path = _existing(os.path.join(root, "images", paths[image_id]), files["images.txt"])
        (train_items if is_train else test_items).append((path, label - 1))
    classes = [class_names[i] for i in range(1, len(class_names) + 1)]
    return _folder_data(train_items, test_items, classes, img_size, train_transform, test_transform)


OXFORD_PET_NUM_CLASSES = 37


def read_oxford_pet(
    root: PathLike,
    *,
    img_size: int = 224,
    train_transform: Transform | None = None,
    test_transform: Transform | None = None,
) -> ClassificationData:
    """Oxford-IIIT Pet (37 breeds) in `root` or `root/oxford-iiit-pet`: split lists
    `annotations/trainval.txt` (train) and `annotations/test.txt` (test) with lines
    `<name> <class 1..37> <species> <breed id>`, images `images/<name>.jpg`. Class names
    are the image-name prefixes (e.g. `Abyssinian`, `american_bulldog`)."""
    root = _resolve_root(root, "oxford-iiit-pet")
    names: dict[int, str] = {}
    splits = []
    for split in ("trainval.txt", "test.txt"):
        path = os.path.join(root, "annotations", split)
        items = []
        for lineno, (image, class_id, _, _) in _read_table(path, 4, (1, 2, 3)):
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
            image_path = _existing(os.path.join(root, "images", f"{image}.jpg"), path)
            items.append((image_path, class_id - 1))
        splits.append(items)
    missing = sorted(set(range(1, max(names) + 1)) - names.keys())
    if missing:
        raise ValueError(f"{root}/annotations: class ids {missing} never appear")
    classes = [names[i] for i in range(1, len(names) + 1)]
    return _folder_data(splits[0], splits[1], classes, img_size, train_transform, test_transform)


FLOWERS102_NUM_CLASSES = 102


def _load_mat_vector(path: str, key: str) -> np.ndarray:
    """One integer vector from a MATLAB file (stored as 1 x N)."""
    _require_file(path, "MATLAB file")
    try:
        mat = scipy.io.loadmat(path)
    except Exception as e:  # scipy raises many exception types on a corrupt file
        raise ValueError(f"{path}: not a readable .mat file ({type(e).__name__}: {e})") from e
    if key not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise ValueError(f"{path}: missing variable {key!r} (has {found})")
    return np.asarray(mat[key]).reshape(-1).astype(np.int64)


def read_flowers102(
    root: PathLike,
    *,
    include_val: bool = False,
    img_size: int = 224,
    train_transform: Transform | None = None,
    test_transform: Transform | None = None,
) -> ClassificationData:
    """Oxford Flowers-102 in `root` or `root/flowers-102`: `jpg/image_%05d.jpg`,
    `imagelabels.mat` (`labels`, 1-based) and `setid.mat` (`trnid`, `valid`, `tstid`, 1-based
    image ids). Train = trnid (+ valid with `include_val`), test = tstid. Class names are the
    1-based label numbers as strings, since the files carry no names."""
    root = _resolve_root(root, "flowers-102")
    labels_path, setid_path = os.path.join(root, "imagelabels.mat"), os.path.join(root, "setid.mat")
    labels = _load_mat_vector(labels_path, "labels")
    if labels.size == 0 or labels.min() < 1 or labels.max() > FLOWERS102_NUM_CLASSES:
        raise ValueError(f"{labels_path}: labels must lie in 1..{FLOWERS102_NUM_CLASSES}")
    num_classes = int(labels.max())

    def items(keys: Sequence[str]) -> list[tuple[str, int]]:
        out = []
        for key in keys:
            for image_id in _load_mat_vector(setid_path, key):
                if not 1 <= image_id <= labels.size:
                    raise ValueError(
                        f"{setid_path}: {key} lists image {image_id}, but {labels_path} "
                        f"labels images 1..{labels.size}"
                    )
                path = os.path.join(root, "jpg", f"image_{image_id:05d}.jpg")
                out.append((_existing(path, setid_path), int(labels[image_id - 1]) - 1))
        return out

    train_keys = ("trnid", "valid") if include_val else ("trnid",)
    return _folder_data(
        items(train_keys),
        items(("tstid",)),
        [str(i) for i in range(1, num_classes + 1)],
        img_size,
        train_transform,
        test_transform,
    )


# ----------------------------------------------------------------------------- registry

_READERS: dict[str, Callable[..., ClassificationData]] = {
    "digits": read_digits,
    "fashion_mnist": read_fashion_mnist,
    "cifar10": read_cifar10,
    "cifar100": read_cifar100,
    "imagefolder": read_imagefolder,
    "cub200": read_cub200,
    "oxford_pet": read_oxford_pet,
    "flowers102": read_flowers102,
}
DATASET_NAMES = tuple(_READERS)


def build_classification_data(
    name: str, root: PathLike | None = None, **kwargs: Any
) -> ClassificationData:
    """Build a dataset by name (one of `DATASET_NAMES`; '-' is read as '_').

    `root` is the dataset folder (not used by `digits`; defaults to the Debian package's
    folder for `fashion_mnist`); `kwargs` go to the reader (`read_<name>`)."""
    key = name.lower().replace("-", "_")
    if key not in _READERS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    if key == "digits":
        if root is not None:
            raise ValueError("dataset 'digits' is bundled with scikit-learn and takes no root")
        return read_digits(**kwargs)
    if root is None:
        if key != "fashion_mnist":
            raise ValueError(f"dataset {name!r} needs root=<folder holding its files>")
        root = FASHION_MNIST_ROOT
    return _READERS[key](root, **kwargs)
