"""A small real-image detection / segmentation dataset built from Fashion-MNIST items.

COCO and ADE20K cannot be downloaded here, so this composes real Fashion-MNIST items onto
larger canvases (several objects per image, random scale and position, later items occlude
earlier ones, mild noise texture as background) and writes the result in both real on-disk
formats, so ``CocoDetection`` and ``ADE20KSegmentation`` read it unchanged:

    out_root/train/*.jpg, out_root/val/*.jpg
    out_root/annotations/instances_{train,val}.json          # COCO, masks as compressed RLE
    out_root/ADEChallengeData2016/images/{training,validation}/*.jpg
    out_root/ADEChallengeData2016/annotations/{training,validation}/*.png  # 0 bg, 1..10 class

Train canvases use the Fashion-MNIST train split, val canvases the t10k split. Every written
object keeps at least ``min_visible`` of its silhouette visible and a box at least 3 pixels
wide and high, so both readers see exactly the objects in the JSON.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from scipy import ndimage

from denoiserep.data.constants import FASHION_MNIST_CLASSES, FASHION_MNIST_ROOT
from denoiserep.data.idx import read_idx

_SOURCES = {"train": "train", "val": "t10k"}
_ADE_SPLITS = {"train": "training", "val": "validation"}
_MIN_BOX_SIDE = 3
_PLACEMENT_TRIES = 10


@dataclass(frozen=True)
class FashionCanvas:
    """Where ``build_fashion_canvas`` wrote its dataset (splits are ``"train"`` / ``"val"``)."""

    root: Path
    num_classes: int = len(FASHION_MNIST_CLASSES)

    def coco_img_dir(self, split: str) -> Path:
        """COCO image folder of ``split``."""
        return self.root / _check_split(split)

    def coco_ann_file(self, split: str) -> Path:
        """COCO instances JSON of ``split``."""
        return self.root / "annotations" / f"instances_{_check_split(split)}.json"

    @property
    def ade_root(self) -> Path:
        """The ``ADEChallengeData2016`` folder."""
        return self.root / "ADEChallengeData2016"

    def ade_split(self, split: str) -> str:
        """ADE20K split name (``training`` / ``validation``) of ``split``."""
        return _ADE_SPLITS[_check_split(split)]


def _check_split(split: str) -> str:
    if split not in _SOURCES:
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    return split


def load_fashion_mnist(fmnist_dir: str | os.PathLike, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Read ``{source}-images-idx3-ubyte[.gz]`` and labels (``source`` is train or t10k)."""
    arrays = []
    for kind in ("images-idx3", "labels-idx1"):
        stem = Path(fmnist_dir) / f"{source}-{kind}-ubyte"
        path = next((p for p in (stem, stem.with_name(stem.name + ".gz")) if p.is_file()), None)
        if path is None:
            raise FileNotFoundError(f"Fashion-MNIST file not found: {stem} (or {stem.name}.gz)")
        arrays.append(read_idx(path))
    images, labels = arrays
    if images.ndim != 3 or images.dtype != np.uint8 or len(images) != len(labels):
        raise ValueError(
            f"{fmnist_dir}: expected uint8 images NxHxW and N labels for {source!r}, got "
            f"{images.dtype} {images.shape} and {labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= len(FASHION_MNIST_CLASSES)):
        raise ValueError(f"{fmnist_dir}: {source!r} labels outside 0..9")
    return images, labels.astype(np.int64)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Mild noise texture: smooth low-frequency blobs plus fine grain, dark grey."""
    coarse = rng.normal(size=(size // 8 + 2, size // 8 + 2)).astype(np.float32)
    smooth = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC))
    texture = 40.0 + 12.0 * smooth + 5.0 * rng.normal(size=(size, size))
    return np.clip(texture, 0, 255).astype(np.uint8)


def _compose(
    rng: np.random.Generator,
    images: np.ndarray,
    labels: np.ndarray,
    canvas_size: int,
    objects_per_image: tuple[int, int],
    scale_range: tuple[float, float],
    threshold: int,
    min_visible: float,
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """One canvas: grey image, instance id map (0 = none, k = k-th kept object), labels."""
    canvas = _background(rng, canvas_size)
    instances = np.zeros((canvas_size, canvas_size), dtype=np.int32)
    full_areas: list[int] = []
    kept_labels: list[int] = []
    for _ in range(rng.integers(objects_per_image[0], objects_per_image[1] + 1)):
        for _ in range(_PLACEMENT_TRIES):
            index = rng.integers(len(images))
            side = int(round(images.shape[1] * rng.uniform(*scale_range)))
            side = min(max(side, _MIN_BOX_SIDE), canvas_size)
            item = np.asarray(
                Image.fromarray(images[index]).resize((side, side), Image.Resampling.BILINEAR)
            )
            silhouette = ndimage.binary_fill_holes(item > threshold)
            if not _box_ok(silhouette):
                continue
            y, x = rng.integers(canvas_size - side + 1, size=2)
            trial = instances.copy()
            window = trial[y : y + side, x : x + side]
            window[silhouette] = len(full_areas) + 1
            visible = np.bincount(trial.ravel(), minlength=len(full_areas) + 1)[1:]
            if all(
                visible[k] >= min_visible * full_areas[k] and _box_ok(trial == k + 1)
                for k in range(len(full_areas))
            ):
                instances = trial
                canvas[y : y + side, x : x + side][silhouette] = item[silhouette]
                full_areas.append(int(silhouette.sum()))
                kept_labels.append(int(labels[index]))
                break
    return canvas, instances, kept_labels


def _box_ok(mask: np.ndarray) -> bool:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return (
        rows.size > 0
        and rows[-1] - rows[0] + 1 >= _MIN_BOX_SIDE
        and cols[-1] - cols[0] + 1 >= _MIN_BOX_SIDE
    )


def _coco_annotation(mask: np.ndarray, ann_id: int, image_id: int, label: int) -> dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    x, y, w, h = mask_utils.toBbox(rle).tolist()
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": label + 1,
        "bbox": [x, y, w, h],
        "area": float(mask_utils.area(rle)),
        "iscrowd": 0,
        "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
    }


def build_fashion_canvas(
    out_root: str | os.PathLike,
    fmnist_dir: str | os.PathLike = FASHION_MNIST_ROOT,
    num_train: int = 2000,
    num_val: int = 500,
    canvas_size: int = 96,
    objects_per_image: tuple[int, int] = (2, 5),
    scale_range: tuple[float, float] = (0.6, 1.6),
    seed: int = 0,
    threshold: int = 32,
    min_visible: float = 0.3,
) -> FashionCanvas:
    """Compose Fashion-MNIST items onto canvases and write COCO and ADE20K layouts.

    ``objects_per_image`` is an inclusive (min, max) count; ``scale_range`` scales the 28 px
    items; an item's silhouette is its pixels brighter than ``threshold`` (0..255) with holes
    filled, and a placement that would leave an earlier object less than ``min_visible`` of its
    silhouette is retried elsewhere (an object that cannot be placed is skipped). The same
    ``seed`` gives the same files.
    """
    lo, hi = objects_per_image
    if not 1 <= lo <= hi:
        raise ValueError(f"objects_per_image must satisfy 1 <= min <= max, got {objects_per_image}")
    if not 0 < scale_range[0] <= scale_range[1]:
        raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
    if canvas_size < _MIN_BOX_SIDE:
        raise ValueError(f"canvas_size must be at least {_MIN_BOX_SIDE}, got {canvas_size}")
    out = FashionCanvas(Path(out_root))
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(FASHION_MNIST_CLASSES)]
    for offset, (split, count) in enumerate((("train", num_train), ("val", num_val))):
        images, labels = load_fashion_mnist(fmnist_dir, _SOURCES[split])
        rng = np.random.default_rng([seed, offset])
        coco_dir = out.coco_img_dir(split)
        ade_img_dir = out.ade_root / "images" / out.ade_split(split)
        ade_ann_dir = out.ade_root / "annotations" / out.ade_split(split)
        for folder in (coco_dir, ade_img_dir, ade_ann_dir, out.root / "annotations"):
            folder.mkdir(parents=True, exist_ok=True)
        coco_images, coco_anns = [], []
        for image_id in range(1, count + 1):
            canvas, instances, kept = _compose(
                rng, images, labels, canvas_size, (lo, hi), scale_range, threshold, min_visible
            )
            name = f"fashion_{split}_{image_id:08d}"
            Image.fromarray(canvas).convert("RGB").save(coco_dir / f"{name}.jpg", quality=95)
            shutil.copyfile(coco_dir / f"{name}.jpg", ade_img_dir / f"{name}.jpg")
            lut = np.array([0] + [label + 1 for label in kept], dtype=np.uint8)
            Image.fromarray(lut[instances]).save(ade_ann_dir / f"{name}.png")
            coco_images.append(
                {
                    "id": image_id,
                    "file_name": f"{name}.jpg",
                    "height": canvas_size,
                    "width": canvas_size,
                }
            )
            for k, label in enumerate(kept):
                ann = _coco_annotation(instances == k + 1, len(coco_anns) + 1, image_id, label)
                coco_anns.append(ann)
        data = {
            "info": {"description": f"Fashion-MNIST canvases ({split}), seed {seed}"},
            "images": coco_images,
            "annotations": coco_anns,
            "categories": categories,
        }
        with out.coco_ann_file(split).open("w") as f:
            json.dump(data, f)
    return out
