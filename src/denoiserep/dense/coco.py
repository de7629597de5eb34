"""COCO-format instance data: a validated loader, a torchvision-style dataset and evaluation.

Annotations are read with pycocotools (``COCO``), masks are decoded with ``pycocotools.mask``
and evaluation runs pycocotools' ``COCOeval``; this module only validates, converts between
COCO's conventions (xywh boxes, sparse category ids, RLE) and torchvision's (xyxy boxes,
contiguous labels 1..K with 0 for background, dense masks), and reports the standard numbers.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch.utils.data import Dataset
from torchvision.transforms.functional import pil_to_tensor

_IMAGE_KEYS = ("id", "file_name", "height", "width")
_ANN_KEYS = ("id", "image_id", "category_id", "bbox", "area", "iscrowd")
_CATEGORY_KEYS = ("id", "name")
# Names of COCOeval.stats[0:6], in order.
_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")

DetectionTransform = Callable[[torch.Tensor, dict[str, Any]], tuple[torch.Tensor, dict[str, Any]]]


def validate_coco_dict(data: Any, source: str = "COCO json") -> None:
    """Check the parts of a COCO instances dict this module relies on.

    Raises ValueError naming the first offending entry: a missing top-level or per-entry key,
    a duplicate id, or an annotation pointing to an unknown image or category.
    """
    if not isinstance(data, dict):
        raise ValueError(
            f"{source}: expected a JSON object at top level, got {type(data).__name__}"
        )
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise ValueError(f"{source}: missing top-level key {key!r}")
        if not isinstance(data[key], list):
            raise ValueError(f"{source}: {key!r} must be a list, got {type(data[key]).__name__}")
    ids: dict[str, set[int]] = {}
    for section, required in (
        ("images", _IMAGE_KEYS),
        ("categories", _CATEGORY_KEYS),
        ("annotations", _ANN_KEYS),
    ):
        seen: set[int] = set()
        for i, entry in enumerate(data[section]):
            missing = [k for k in required if k not in entry]
            if missing:
                raise ValueError(f"{source}: {section}[{i}] is missing key(s) {missing}")
            if entry["id"] in seen:
                raise ValueError(f"{source}: {section}[{i}] repeats id {entry['id']}")
            seen.add(entry["id"])
        ids[section] = seen
    for i, ann in enumerate(data["annotations"]):
        if ann["image_id"] not in ids["images"]:
            raise ValueError(
                f"{source}: annotation id {ann['id']} (annotations[{i}]) points to unknown "
                f"image_id {ann['image_id']}"
            )
        if ann["category_id"] not in ids["categories"]:
            raise ValueError(
                f"{source}: annotation id {ann['id']} (annotations[{i}]) points to unknown "
                f"category_id {ann['category_id']}"
            )
        if len(ann["bbox"]) != 4:
            raise ValueError(
                f"{source}: annotation id {ann['id']} has bbox {ann['bbox']}, expected [x, y, w, h]"
            )


def load_coco(ann_file: str | os.PathLike) -> COCO:
    """Read and validate a COCO instances JSON file, returning a pycocotools ``COCO`` index."""
    ann_file = Path(ann_file)
    if not ann_file.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {ann_file}")
    with ann_file.open() as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{ann_file}: not valid JSON ({e})") from e
    validate_coco_dict(data, source=str(ann_file))
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress
        coco.createIndex()
    return coco


class CategoryMap:
    """Bijection between COCO category ids and contiguous labels 1..K (0 is background).

    Labels follow the order of sorted category ids, as torchvision's detection references do.
    """

    def __init__(self, category_ids: Iterable[int], names: Sequence[str] | None = None):
        self.category_ids = sorted(int(c) for c in category_ids)
        if len(set(self.category_ids)) != len(self.category_ids):
            raise ValueError(f"category ids must be unique, got {self.category_ids}")
        self._to_label = {c: i + 1 for i, c in enumerate(self.category_ids)}
        self.names = list(names) if names is not None else [str(c) for c in self.category_ids]
        if len(self.names) != len(self.category_ids):
            raise ValueError(
                f"got {len(self.names)} names for {len(self.category_ids)} category ids"
            )

    @classmethod
    def from_coco(cls, coco: COCO) -> CategoryMap:
        """Build the map from the categories of a ``COCO`` index."""
        cats = sorted(coco.loadCats(coco.getCatIds()), key=lambda c: c["id"])
        return cls([c["id"] for c in cats], [c["name"] for c in cats])

    @property
    def num_classes(self) -> int:
        """Number of object categories K (without background)."""
        return len(self.category_ids)

    def to_label(self, category_id: int) -> int:
        """COCO category id -> contiguous label in 1..K."""
        try:
            return self._to_label[int(category_id)]
        except KeyError:
            raise ValueError(
                f"unknown category id {category_id}; known ids: {self.category_ids}"
            ) from None

    def to_category_id(self, label: int) -> int:
        """Contiguous label in 1..K -> COCO category id."""
        label = int(label)
        if not 1 <= label <= self.num_classes:
            raise ValueError(f"label {label} outside 1..{self.num_classes}")
        return self.category_ids[label - 1]


class CocoDetection(Dataset):
    """COCO-format instance dataset yielding ``(image, target)`` as torchvision's detectors expect.

    ``image`` is float CxHxW in [0, 1]. ``target`` holds ``boxes`` (float32 Nx4, xyxy pixels),
    ``labels`` (int64, contiguous 1..K via ``category_map``), ``masks`` (uint8 NxHxW, decoded
    from polygons, uncompressed or compressed RLE), ``image_id`` (int), ``area`` (float32) and
    ``iscrowd`` (int64). Crowd annotations and boxes with width or height <= 1 pixel are
    dropped. ``transforms(image, target)`` is applied last. Every image file is checked to
    exist at construction so a broken dataset fails early.
    """

    def __init__(
        self,
        img_dir: str | os.PathLike,
        ann_file: str | os.PathLike,
        transforms: DetectionTransform | None = None,
    ):
        self.img_dir = Path(img_dir)
        if not self.img_dir.is_dir():
            raise FileNotFoundError(f"COCO image folder not found: {self.img_dir}")
        self.coco = load_coco(ann_file)
        self.category_map = CategoryMap.from_coco(self.coco)
        self.transforms = transforms
        self.ids = sorted(self.coco.getImgIds())
        for img_id in self.ids:
            path = self.img_dir / self.coco.imgs[img_id]["file_name"]
            if not path.is_file():
                raise FileNotFoundError(f"image id {img_id} of {ann_file}: file not found: {path}")

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        img_id = self.ids[index]
        info = self.coco.imgs[img_id]
        with Image.open(self.img_dir / info["file_name"]) as pil:
            image = pil_to_tensor(pil.convert("RGB")).float().div_(255)
        height, width = image.shape[-2:]
        if (height, width) != (info["height"], info["width"]):
            raise ValueError(
                f"image id {img_id} ({info['file_name']}): file is {width}x{height}, "
                f"annotation says {info['width']}x{info['height']}"
            )
        target = self._target(img_id, height, width)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def _target(self, img_id: int, height: int, width: int) -> dict[str, Any]:
        boxes, labels, rles, areas = [], [], [], []
        for ann in self.coco.imgToAnns[img_id]:
            if ann["iscrowd"]:
                continue
            x, y, w, h = ann["bbox"]
            x1, y1 = min(max(x, 0.0), width), min(max(y, 0.0), height)
            x2, y2 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
            if x2 - x1 <= 1 or y2 - y1 <= 1:
                continue
            if "segmentation" not in ann:
                raise ValueError(f"annotation id {ann['id']} has no 'segmentation' for its mask")
            boxes.append([x1, y1, x2, y2])
            labels.append(self.category_map.to_label(ann["category_id"]))
            rles.append(self.coco.annToRLE(ann))
            areas.append(ann["area"])
        masks = (
            mask_utils.decode(rles).transpose(2, 0, 1)
            if rles
            else np.zeros((0, height, width), dtype=np.uint8)
        )
        return {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "masks": torch.from_numpy(np.ascontiguousarray(masks)),
            "image_id": img_id,
            "area": torch.tensor(areas, dtype=torch.float32),
            "iscrowd": torch.zeros(len(labels), dtype=torch.int64),
        }


def detection_collate(batch: Sequence[tuple[Any, Any]]) -> tuple[list[Any], list[Any]]:
    """Collate detection samples into (list of images, list of targets); sizes may differ."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


def _to_numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def predictions_to_coco_results(
    predictions: Sequence[dict[str, Any]],
    category_map: CategoryMap,
    iou_type: str,
    mask_threshold: float = 0.5,
) -> list[dict[str, Any]]:
    """Convert torchvision-style per-image predictions into COCO result entries.

    Each prediction holds ``image_id``, ``boxes`` (Nx4 xyxy), ``scores`` (N), ``labels`` (N,
    contiguous 1..K) and, for ``iou_type="segm"``, ``masks`` (N[x1]xHxW probabilities, or
    booleans) that are thresholded at ``mask_threshold`` and RLE-encoded.
    """
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    results = []
    for i, pred in enumerate(predictions):
        for key in ("image_id", "boxes", "scores", "labels"):
            if key not in pred:
                raise ValueError(f"prediction {i} is missing key {key!r}")
        image_id = int(pred["image_id"])
        scores = _to_numpy(pred["scores"]).astype(float).reshape(-1)
        cat_ids = [category_map.to_category_id(lab) for lab in _to_numpy(pred["labels"])]
        if iou_type == "bbox":
            boxes = _to_numpy(pred["boxes"]).astype(float).reshape(-1, 4)
            boxes[:, 2:] -= boxes[:, :2]
            results.extend(
                {"image_id": image_id, "category_id": c, "bbox": b.tolist(), "score": s}
                for c, b, s in zip(cat_ids, boxes, scores, strict=True)
            )
            continue
        if "masks" not in pred:
            raise ValueError(f"prediction {i} (image_id {image_id}) has no 'masks' for segm")
        masks = _to_numpy(pred["masks"])
        if masks.ndim == 4:
            masks = masks[:, 0]
        if masks.ndim != 3:
            raise ValueError(
                f"prediction {i} (image_id {image_id}): masks must be NxHxW or Nx1xHxW, "
                f"got shape {masks.shape}"
            )
        binary = np.asfortranarray((masks > mask_threshold).transpose(1, 2, 0).astype(np.uint8))
        rles = mask_utils.encode(binary) if len(scores) else []
        for c, rle, s in zip(cat_ids, rles, scores, strict=True):
            rle["counts"] = rle["counts"].decode("ascii")
            results.append(
                {"image_id": image_id, "category_id": c, "segmentation": rle, "score": s}
            )
    return results


def coco_evaluate(
    coco_gt: COCO,
    predictions: Sequence[dict[str, Any]],
    iou_types: Sequence[str] = ("bbox", "segm"),
    category_map: CategoryMap | None = None,
    mask_threshold: float = 0.5,
) -> dict[str, dict[str, float]]:
    """Run pycocotools' COCOeval on torchvision-style predictions.

    ``predictions`` has one dict per evaluated image (see ``predictions_to_coco_results``);
    only those images are evaluated, so an image with no detections should still appear with
    empty tensors. Returns ``{iou_type: {"AP", "AP50", "AP75", "APs", "APm", "APl"}}`` as
    fractions in [0, 1]; as in pycocotools, an area range without ground truth gives -1. When
    there is no detection at all, every value is 0 and a warning is issued.
    """
    category_map = category_map or CategoryMap.from_coco(coco_gt)
    img_ids = sorted({int(p["image_id"]) for p in predictions if "image_id" in p})
    unknown = sorted(set(img_ids) - set(coco_gt.getImgIds()))
    if unknown:
        raise ValueError(f"predictions refer to image ids not in the ground truth: {unknown[:10]}")
    metrics = {}
    for iou_type in iou_types:
        results = predictions_to_coco_results(predictions, category_map, iou_type, mask_threshold)
        if not results:
            warnings.warn(
                f"coco_evaluate: no {iou_type} detections in {len(predictions)} prediction(s); "
                "reporting 0 for every metric",
                stacklevel=2,
            )
            metrics[iou_type] = dict.fromkeys(_STAT_NAMES, 0.0)
            continue
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            coco_dt = coco_gt.loadRes(results)
            evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
            evaluator.params.imgIds = img_ids
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        metrics[iou_type] = {
            n: float(v) for n, v in zip(_STAT_NAMES, evaluator.stats[:6], strict=True)
        }
    return metrics
