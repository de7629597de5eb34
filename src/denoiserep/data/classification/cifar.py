"""CIFAR-10 and CIFAR-100 from the python pickles, through one reader and two layouts."""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from denoiserep.data.constants import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD

from .base import ClassificationData, PathLike, Split, Transform, array_data
from .download import fetch
from .files import check_labels, require_file, resolve_root
from .registry import register_dataset


@dataclass(frozen=True)
class CifarLayout:
    """Where one CIFAR variant keeps its batches, labels and class names."""

    folder: str  # the archive's folder, tried under the given root
    meta_file: str
    names_key: str
    label_key: str
    train_files: tuple[str, ...]
    test_file: str
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


CIFAR10 = CifarLayout(
    "cifar-10-batches-py",
    "batches.meta",
    "label_names",
    "labels",
    tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test_batch",
    10,
    CIFAR10_MEAN,
    CIFAR10_STD,
)
CIFAR100 = CifarLayout(
    "cifar-100-python",
    "meta",
    "fine_label_names",
    "fine_labels",
    ("train",),
    "test",
    100,
    CIFAR100_MEAN,
    CIFAR100_STD,
)


# What a CIFAR pickle may name: numpy's array reconstruction (old and new module paths) and
# the codec Python 3 uses for bytes in protocol-2 pickles. Nothing else is ever imported.
_CIFAR_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _Refused(pickle.UnpicklingError):
    """A pickle names a global outside ``_CIFAR_GLOBALS``."""


class _CifarUnpickler(pickle.Unpickler):
    """Reads the CIFAR format's dicts, lists, strings and numpy arrays, and refuses any other
    class or function a pickle names, so a crafted file cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _CIFAR_GLOBALS:
            return super().find_class(module, name)
        raise _Refused(
            f"it names {module}.{name}, which a CIFAR file never holds (refused: unpickling it "
            "could run code)"
        )


def _load_pickle(path: str) -> dict:
    """Unpickle one CIFAR file (Python 2 pickles: latin1 keeps the byte strings intact) with
    :class:`_CifarUnpickler`: only arrays, lists, dicts and strings are admitted."""
    require_file(path, "CIFAR file")
    try:
        with open(path, "rb") as f:
            obj = _CifarUnpickler(f, encoding="latin1").load()
    except _Refused as e:
        raise ValueError(f"{path}: not a CIFAR pickle: {e}") from None
    except Exception as e:  # unpickling garbage can raise almost any exception type
        raise ValueError(f"{path}: not a readable CIFAR pickle ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return obj


def _batch(path: str, label_key: str, num_classes: int) -> Split:
    """(N, 32, 32, 3) uint8 images and their labels from one pickled batch."""
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
    check_labels(labels, num_classes, path)
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _class_names(path: str, key: str, expected: int) -> list[str]:
    meta = _load_pickle(path)
    if key not in meta or len(meta[key]) != expected:
        raise ValueError(f"{path}: expected {expected} names under {key!r}")
    return [str(name) for name in meta[key]]


def read_cifar(
    layout: CifarLayout,
    root: PathLike,
    *,
    subset: Sequence[int] | None = None,
    max_train: int | None = None,
    max_test: int | None = None,
    train_transform: Transform | None = None,
    test_transform: Transform | None = None,
) -> ClassificationData:
    """A CIFAR variant described by `layout`, in `root` or `root/<layout.folder>`."""
    folder = resolve_root(root, layout.folder)
    n = layout.num_classes
    classes = _class_names(os.path.join(folder, layout.meta_file), layout.names_key, n)
    train = [_batch(os.path.join(folder, f), layout.label_key, n) for f in layout.train_files]
    test = _batch(os.path.join(folder, layout.test_file), layout.label_key, n)
    return array_data(
        (np.concatenate([b[0] for b in train]), np.concatenate([b[1] for b in train])),
        test,
        classes,
        mean=layout.mean,
        std=layout.std,
        subset=subset,
        max_train=max_train,
        max_test=max_test,
        train_transform=train_transform,
        test_transform=test_transform,
    )


@register_dataset("cifar10")
def read_cifar10(root: PathLike, *, download: bool = False, **options) -> ClassificationData:
    """CIFAR-10 from the python pickles (`data_batch_1..5`, `test_batch`, `batches.meta`)
    in `root` or `root/cifar-10-batches-py`. Options (`subset`, `max_train`, `max_test`,
    `train_transform`, `test_transform`) as `read_fashion_mnist`; `download` first fetches
    the files into `root/cifar-10-batches-py` with torchvision (where a network exists)."""
    if download:
        fetch("cifar10", root)
    return read_cifar(CIFAR10, root, **options)


@register_dataset("cifar100")
def read_cifar100(root: PathLike, *, download: bool = False, **options) -> ClassificationData:
    """CIFAR-100 (fine labels) from the python pickles (`train`, `test`, `meta`) in `root`
    or `root/cifar-100-python`. Options (`subset`, `max_train`, `max_test`, `train_transform`,
    `test_transform`) and `download` as `read_cifar10`."""
    if download:
        fetch("cifar100", root)
    return read_cifar(CIFAR100, root, **options)
