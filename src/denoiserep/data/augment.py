"""Batch augmentations shared by the tasks, drawn from an explicit generator (reproducible).

Under ``torchrun`` each rank holds some rows of the global batch. Passing ``rows`` (their
positions in it and its size) makes every rank draw the random numbers of the whole global
batch from the shared generator and keep its own rows, so a 2-process run augments each image
exactly as the 1-process run does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torchvision import transforms as T


class BatchRows(NamedTuple):
    """Where a rank's batch sits in the global batch: row positions and the global size."""

    index: torch.Tensor
    total: int


def _draw_rows(n: int, rows: BatchRows | None) -> tuple[int, torch.Tensor | None]:
    if rows is None:
        return n, None
    if len(rows.index) != n:
        raise ValueError(f"{len(rows.index)} row positions for a batch of {n}")
    return rows.total, rows.index


def pad_crop_flip(
    x: torch.Tensor,
    generator: torch.Generator,
    pad: int = 0,
    flip: bool = False,
    rows: BatchRows | None = None,
) -> torch.Tensor:
    """Random translation (zero-pad by ``pad``, crop back) and horizontal flip, per image."""
    n, _, h, w = x.shape
    draw, keep = _draw_rows(n, rows)
    if pad:
        padded = F.pad(x, (pad, pad, pad, pad))
        offsets = torch.randint(0, 2 * pad + 1, (draw, 2), generator=generator)
        offsets = (offsets if keep is None else offsets[keep]).tolist()
        x = torch.stack([padded[i, :, a : a + h, b : b + w] for i, (a, b) in enumerate(offsets)])
    if flip:
        mask = torch.rand(draw, generator=generator) < 0.5
        mask = (mask if keep is None else mask[keep]).to(x.device)
        x = torch.where(mask[:, None, None, None], x.flip(-1), x)
    return x


def random_erasing(
    x: torch.Tensor,
    generator: torch.Generator,
    prob: float = 0.5,
    area: tuple[float, float] = (0.02, 0.4),
    min_aspect: float = 0.3,
    rows: BatchRows | None = None,
) -> torch.Tensor:
    """Random erasing (Zhong et al. 2020), one rectangle per image with probability ``prob``.

    The rectangle covers a fraction of the image uniform in ``area`` with a log-uniform
    aspect ratio in [min_aspect, 1 / min_aspect] (torchvision's sampling); sides are clipped
    to the image instead of resampled. It is filled with 0, the mean of normalised pixels.
    """
    n, _, h, w = x.shape
    n, keep = _draw_rows(n, rows)
    erase = torch.rand(n, generator=generator) < prob
    target = h * w * torch.empty(n).uniform_(area[0], area[1], generator=generator)
    log_ratio = math.log(min_aspect)
    aspect = torch.empty(n).uniform_(log_ratio, -log_ratio, generator=generator).exp()
    eh = (target * aspect).sqrt().round().clamp(1, h)
    ew = (target / aspect).sqrt().round().clamp(1, w)
    top = (torch.rand(n, generator=generator) * (h - eh + 1)).floor()
    left = (torch.rand(n, generator=generator) * (w - ew + 1)).floor()
    rows = torch.arange(h)[None, :, None]
    cols = torch.arange(w)[None, None, :]
    inside = (
        (rows >= top[:, None, None])
        & (rows < (top + eh)[:, None, None])
        & (cols >= left[:, None, None])
        & (cols < (left + ew)[:, None, None])
    )
    mask = (inside & erase[:, None, None])[:, None]
    mask = (mask if keep is None else mask[keep]).to(x.device)
    return x.masked_fill(mask, 0.0)


def resize_size(input_size: int, crop_pct: float) -> int:
    """The evaluation resize before the centre crop: ``floor(input_size / crop_pct)`` as timm's
    ``create_transform`` computes it (224 / 0.9 -> 248), with a margin for ratios derived from
    integer sizes (torchvision's 224 / 232 gives back 232, not 231)."""
    return math.floor(input_size / crop_pct + 1e-6)


def image_transforms(
    input_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: str = "bilinear",
    crop_pct: float = 0.875,
    scale: tuple[float, float] = (0.08, 1.0),
) -> tuple[Callable, Callable]:
    """(train, eval) PIL -> tensor transforms at a model's input size and statistics.

    Train: RandomResizedCrop + horizontal flip; eval: resize the short side to
    ``input_size / crop_pct`` and centre-crop (the ImageNet protocol timm and torchvision use).
    """
    mode = T.InterpolationMode(interpolation)
    tail = [T.ToTensor(), T.Normalize(list(mean), list(std))]
    train = T.Compose(
        [T.RandomResizedCrop(input_size, scale=scale, interpolation=mode), T.RandomHorizontalFlip()]
        + tail
    )
    evaluate = T.Compose(
        [T.Resize(resize_size(input_size, crop_pct), interpolation=mode), T.CenterCrop(input_size)]
        + tail
    )
    return train, evaluate
