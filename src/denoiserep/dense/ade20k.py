"""ADE20K (SceneParsing / ``ADEChallengeData2016``) semantic segmentation reader.

Layout (as distributed by MIT and read by mmsegmentation)::

    ADEChallengeData2016/images/{training,validation}/<name>.jpg
    ADEChallengeData2016/annotations/{training,validation}/<name>.png   # uint8 class maps

Class 0 means "other" and is ignored; classes 1..K become 0..K-1 (mmseg's
``reduce_zero_label``). A value of 255 in an annotation stays ignored.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms.functional import pil_to_tensor
from torchvision.transforms.v2 import functional as TF

IGNORE_INDEX = 255
SPLITS = ("training", "validation")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

SegmentationTransform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def reduce_zero_label_lut(num_classes: int) -> np.ndarray:
    """Lookup table for raw labels: 0 -> 255, k -> k-1 for 1 <= k <= num_classes, 255 -> 255.

    Any other raw value maps to -1 so the reader can reject it.
    """
    if not 1 <= num_classes <= 254:
        raise ValueError(f"num_classes must be in 1..254, got {num_classes}")
    lut = np.full(256, -1, dtype=np.int64)
    lut[0] = IGNORE_INDEX
    lut[IGNORE_INDEX] = IGNORE_INDEX
    lut[1 : num_classes + 1] = np.arange(num_classes)
    return lut


class ADE20KSegmentation(Dataset):
    """ADE20K-layout dataset yielding ``(image float CxHxW in [0, 1], mask int64 HxW)``.

    ``root`` is the ``ADEChallengeData2016`` folder or its parent. ``num_classes`` (default
    150) allows smaller datasets in the same layout. ``transforms(image, mask)`` is applied
    last, e.g. ``JointRandomTransform``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "training",
        transforms: SegmentationTransform | None = None,
        num_classes: int = 150,
    ):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        root = Path(root)
        if (root / "ADEChallengeData2016").is_dir():
            root = root / "ADEChallengeData2016"
        self.root = root
        self.split = split
        self.num_classes = num_classes
        self.transforms = transforms
        self._lut = reduce_zero_label_lut(num_classes)
        image_dir = root / "images" / split
        ann_dir = root / "annotations" / split
        for folder in (image_dir, ann_dir):
            if not folder.is_dir():
                raise FileNotFoundError(f"ADE20K folder not found: {folder}")
        images = {p.stem: p for p in image_dir.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES}
        annotations = {p.stem: p for p in ann_dir.iterdir() if p.suffix.lower() == ".png"}
        no_ann = sorted(set(images) - set(annotations))
        if no_ann:
            raise ValueError(
                f"{len(no_ann)} image(s) in {image_dir} have no annotation in {ann_dir}, "
                f"e.g. {images[no_ann[0]].name}"
            )
        no_img = sorted(set(annotations) - set(images))
        if no_img:
            raise ValueError(
                f"{len(no_img)} annotation(s) in {ann_dir} have no image in {image_dir}, "
                f"e.g. {annotations[no_img[0]].name}"
            )
        if not images:
            raise ValueError(f"no images found in {image_dir}")
        self.samples = [(images[s], annotations[s]) for s in sorted(images)]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, ann_path = self.samples[index]
        with Image.open(image_path) as pil:
            image = pil_to_tensor(pil.convert("RGB")).float().div_(255)
        with Image.open(ann_path) as pil:
            if pil.mode not in ("L", "P"):
                raise ValueError(
                    f"{ann_path}: expected a uint8 class map (mode L or P), got {pil.mode}"
                )
            raw = np.asarray(pil, dtype=np.uint8)
        if raw.shape != tuple(image.shape[-2:]):
            raise ValueError(
                f"{ann_path}: annotation is {raw.shape[1]}x{raw.shape[0]} but image "
                f"{image_path.name} is {image.shape[2]}x{image.shape[1]}"
            )
        mask = self._lut[raw]
        if (mask < 0).any():
            bad = sorted(set(np.unique(raw[mask < 0]).tolist()))
            raise ValueError(
                f"{ann_path}: label value(s) {bad} outside 0..{self.num_classes} (and 255)"
            )
        mask = torch.from_numpy(mask)
        if self.transforms is not None:
            image, mask = self.transforms(image, mask)
        return image, mask


class JointRandomTransform:
    """Random resize, crop and horizontal flip applied identically to an image and its mask.

    The image is resized by a factor drawn uniformly from ``scale_range`` (bilinear), the mask
    with nearest interpolation; both are padded to ``crop_size`` if needed (image with 0, mask
    with ``ignore_index``) and cropped at the same random offset, then flipped together with
    probability ``flip_prob``. Randomness comes from ``torch``'s global generator, so
    ``torch.manual_seed`` (or DataLoader worker seeding) makes it reproducible.
    """

    def __init__(
        self,
        crop_size: int | tuple[int, int],
        scale_range: tuple[float, float] = (0.5, 2.0),
        flip_prob: float = 0.5,
        ignore_index: int = IGNORE_INDEX,
    ):
        self.crop_size = (crop_size, crop_size) if isinstance(crop_size, int) else crop_size
        if min(self.crop_size) < 1:
            raise ValueError(f"crop_size must be positive, got {crop_size}")
        if not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
        self.scale_range = scale_range
        self.flip_prob = flip_prob
        self.ignore_index = ignore_index

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if image.shape[-2:] != mask.shape[-2:]:
            raise ValueError(
                f"image {tuple(image.shape)} and mask {tuple(mask.shape)} differ in size"
            )
        low, high = self.scale_range
        scale = low + (high - low) * torch.rand(()).item()
        h, w = image.shape[-2:]
        size = [max(1, round(h * scale)), max(1, round(w * scale))]
        image = TF.resize(image, size, interpolation=InterpolationMode.BILINEAR, antialias=True)
        mask = TF.resize(mask[None], size, interpolation=InterpolationMode.NEAREST)[0]
        ch, cw = self.crop_size
        pad_h, pad_w = max(ch - size[0], 0), max(cw - size[1], 0)
        if pad_h or pad_w:
            image = F.pad(image, (0, pad_w, 0, pad_h), value=0.0)
            mask = F.pad(mask, (0, pad_w, 0, pad_h), value=self.ignore_index)
        top = torch.randint(image.shape[-2] - ch + 1, ()).item()
        left = torch.randint(image.shape[-1] - cw + 1, ()).item()
        image = image[..., top : top + ch, left : left + cw]
        mask = mask[..., top : top + ch, left : left + cw]
        if torch.rand(()).item() < self.flip_prob:
            image, mask = image.flip(-1), mask.flip(-1)
        return image, mask
