"""Re-identification's train step and image dataset: augmentation and losses.

Training (BoT recipe): cross-entropy with label smoothing on the classifier scores plus a
batch-hard triplet loss on the pre-BNNeck feature; augmentations are applied batch-wise
from the trainer's ``generator`` (pad-and-crop, horizontal flip, random erasing), so two
arms with the same seed see identical augmentations. Evaluation (feature extraction and
ranking) is in :mod:`denoiserep.reid.features`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from torchvision import transforms

from denoiserep.data.augment import BatchRows, pad_crop_flip, random_erasing
from denoiserep.data.images import load_image

Item = tuple[str, int, int]
UNLABELLED = -1


class ReIDImageDataset(Dataset):
    """``(image tensor, pid, camid)`` items from ``(path, pid, camid)`` triples.

    Images are loaded as RGB, resized to ``size`` (height, width, bicubic) and normalised
    with ``mean`` / ``std``. With ``preload`` every image is decoded once into memory (fast
    epochs for small benchmarks; leave it off for full-size datasets).
    """

    def __init__(
        self,
        items: Sequence[Item],
        size: tuple[int, int],
        mean: Sequence[float],
        std: Sequence[float],
        preload: bool = False,
    ) -> None:
        self.paths = [path for path, _, _ in items]
        self.pids = np.array([pid for _, pid, _ in items], dtype=np.int64)
        self.camids = np.array([camid for _, _, camid in items], dtype=np.int64)
        self.transform = transforms.Compose(
            [
                transforms.Resize(tuple(size), transforms.InterpolationMode.BICUBIC),
                transforms.ToTensor(),
                transforms.Normalize(mean, std),
            ]
        )
        self._cache = None
        if preload and items:
            self._cache = torch.stack([self._load(i) for i in range(len(self.paths))])

    def _load(self, index: int) -> torch.Tensor:
        return self.transform(load_image(self.paths[index]))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        x = self._cache[index] if self._cache is not None else self._load(index)
        return x, int(self.pids[index]), int(self.camids[index])

    def without_labels(self) -> ReIDImageDataset:
        """The same images (sharing the preloaded ones) with every pid and camid set to -1,
        so label-free training cannot read a label."""
        unlabelled = copy.copy(self)
        unlabelled.pids = np.full_like(self.pids, UNLABELLED)
        unlabelled.camids = np.full_like(self.camids, UNLABELLED)
        return unlabelled


def pairwise_euclidean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between the rows of ``a`` and ``b`` (gradient-safe at 0)."""
    sq = (a * a).sum(1, keepdim=True) + (b * b).sum(1)[None] - 2 * a @ b.T
    return sq.clamp_min(1e-12).sqrt()


def batch_hard_triplet(
    feats: torch.Tensor, pids: torch.Tensor, margin: float | None = 0.3
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch-hard triplet loss (Hermans et al. 2017): hardest positive and negative per anchor.

    Loss per anchor: max(0, d_ap - d_an + margin), or softplus(d_ap - d_an) for the soft
    margin (``margin=None``); averaged over anchors. Returns (loss, d_ap, d_an).
    """
    dist_mat = pairwise_euclidean(feats, feats)
    same = pids[:, None] == pids[None, :]
    if same.all(dim=1).any():
        raise ValueError("batch-hard triplet loss needs a negative for every anchor")
    d_ap = dist_mat.masked_fill(~same, float("-inf")).amax(dim=1)
    d_an = dist_mat.masked_fill(same, float("inf")).amin(dim=1)
    if margin is None:
        loss = F.softplus(d_ap - d_an).mean()
    else:
        loss = F.relu(d_ap - d_an + margin).mean()
    return loss, d_ap, d_an


class ReIDStep:
    """The train step of re-ID: identity loss (CE, label smoothing) + triplet loss on
    ``(image, pid, camid)`` batches.

    Args:
        label_smoothing: epsilon of the cross-entropy.
        triplet_margin: margin of the triplet loss; None for the soft margin.
        id_weight, triplet_weight: weights of the two losses.
        pad: pad-and-crop reach in pixels (0: off); flip: random horizontal flips.
        erasing: probability of random erasing per image (0: off).
    """

    def __init__(
        self,
        label_smoothing: float = 0.1,
        triplet_margin: float | None = 0.3,
        id_weight: float = 1.0,
        triplet_weight: float = 1.0,
        pad: int = 0,
        flip: bool = True,
        erasing: float = 0.5,
    ) -> None:
        self.label_smoothing = label_smoothing
        self.triplet_margin = triplet_margin
        self.id_weight = id_weight
        self.triplet_weight = triplet_weight
        self.pad = pad
        self.flip = flip
        self.erasing = erasing

    def to_device(self, batch: Any, device: torch.device) -> tuple[torch.Tensor, ...]:
        return tuple(t.to(device, non_blocking=True) for t in batch)

    def augment(
        self, batch: Any, generator: torch.Generator, rows: BatchRows | None = None
    ) -> tuple[torch.Tensor, ...]:
        x, *labels = batch
        x = pad_crop_flip(x, generator, self.pad, self.flip, rows)
        if self.erasing > 0:
            x = random_erasing(x, generator, self.erasing, rows=rows)
        return (x, *labels)

    def forward(self, model: nn.Module, batch: Any) -> Any:
        # Always ask for the scores too, so a converted classifier sees its input in every phase.
        return model(batch[0], return_logits=True)

    def loss(self, output: Any, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        scores, feats = (o.float() for o in output)
        pids = batch[1]
        id_loss = F.cross_entropy(scores, pids, label_smoothing=self.label_smoothing)
        tri_loss, d_ap, d_an = batch_hard_triplet(feats, pids, self.triplet_margin)
        loss = self.id_weight * id_loss + self.triplet_weight * tri_loss
        logs = {
            "id_loss": id_loss.item(),
            "triplet_loss": tri_loss.item(),
            "train_acc": (scores.argmax(-1) == pids).float().mean().item(),
            "triplet_acc": (d_an > d_ap).float().mean().item(),
        }
        return loss, logs
