"""The registry of classification readers: a name -> builder table filled by a decorator.

A new dataset is one module with a reader function decorated by `register_dataset`, plus its
import in this package's `__init__` (torchreid / timm style).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .base import ClassificationData, PathLike

Builder = Callable[..., ClassificationData]


@dataclass(frozen=True)
class DatasetEntry:
    """A registered reader and how it takes its `root`.

    `needs_root` False: the data ships with a library and the builder takes no root;
    `default_root`: the folder used when none is given (None: the caller must give one).
    """

    builder: Builder
    needs_root: bool = True
    default_root: str | None = None


_DATASETS: dict[str, DatasetEntry] = {}


def _key(name: str) -> str:
    return name.lower().replace("-", "_")


def register_dataset(
    name: str, *, needs_root: bool = True, default_root: str | None = None
) -> Callable[[Builder], Builder]:
    """Decorator: register a reader under `name` ('-' read as '_'); returns it unchanged.

    The builder is called as `builder(root, **options)`, or `builder(**options)` when
    `needs_root` is False."""
    key = _key(name)

    def decorator(builder: Builder) -> Builder:
        if key in _DATASETS:
            raise ValueError(f"dataset {key!r} is already registered")
        _DATASETS[key] = DatasetEntry(builder, needs_root, default_root)
        return builder

    return decorator


def list_datasets() -> tuple[str, ...]:
    """The registered dataset names, in registration order."""
    return tuple(_DATASETS)


def get_dataset(name: str) -> DatasetEntry:
    """The registry entry of `name`; ValueError listing the valid names if there is none."""
    entry = _DATASETS.get(_key(name))
    if entry is None:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(_DATASETS)}")
    return entry


def build_classification_data(
    name: str, root: PathLike | None = None, **options: Any
) -> ClassificationData:
    """Build a dataset by name (one of `list_datasets()`; '-' is read as '_').

    `root` is the dataset folder (not used by datasets bundled with a library, such as
    `digits`; defaults to the registered folder, e.g. the Debian package's for
    `fashion_mnist`); `options` go to the reader (`read_<name>`)."""
    entry = get_dataset(name)
    if not entry.needs_root:
        if root is not None:
            raise ValueError(f"dataset {name!r} is bundled with its library and takes no root")
        return entry.builder(**options)
    if root is None:
        if entry.default_root is None:
            raise ValueError(f"dataset {name!r} needs root=<folder holding its files>")
        root = entry.default_root
    return entry.builder(root, **options)
