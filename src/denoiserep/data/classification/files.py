"""Checks and parsers for the files of on-disk datasets; every error names the file."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .base import PathLike


def resolve_root(root: PathLike, subdir: str) -> str:
    """Accept either the dataset folder itself or its parent (torchvision's convention)."""
    nested = os.path.join(root, subdir)
    return nested if os.path.isdir(nested) else os.fspath(root)


def require_file(path: str, what: str) -> str:
    """`path`, or FileNotFoundError saying what was expected there."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def listed_file(path: str, listed_in: str) -> str:
    """`path` of an image named in the list file `listed_in`, which must exist."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image listed in {listed_in} is missing on disk: {path}")
    return path


def read_table(path: str, ncols: int, int_cols: Sequence[int]) -> list[tuple[int, list]]:
    """Whitespace-separated text table -> [(line number, fields)], skipping blank and '#'
    lines; columns in `int_cols` are parsed as ints. Errors name the file and line."""
    require_file(path, "split/annotation file")
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


def id_map(rows: list[tuple[int, list]], path: str) -> dict[int, Any]:
    """[(line, [id, value])] -> {id: value}, rejecting duplicate ids."""
    out: dict[int, Any] = {}
    for lineno, (key, value) in rows:
        if key in out:
            raise ValueError(f"{path}:{lineno}: duplicate id {key}")
        out[key] = value
    return out


def check_labels(labels: np.ndarray, num_classes: int, source: str) -> None:
    """Raise if any label lies outside 0..num_classes-1, naming the first one and `source`."""
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{source}: label {int(labels[i])} at index {i} out of range 0..{num_classes - 1}"
        )
