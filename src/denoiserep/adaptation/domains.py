"""Source and target domains from one classification dataset and an ImageNet-C corruption.

The source domain is the clean dataset (its train split trains the source model). The target
domain is the same dataset under one corruption at one severity
(:mod:`denoiserep.robustness.corruptions`): its unlabelled adaptation images are a fixed subset
of N target-train images (the same indices for every corruption, severity, seed and arm), its
evaluation set is the whole corrupted test split. The clean images at the same indices are the
"source data" the source-fitted DenoiseRep arm reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from denoiserep.robustness.corruptions import CorruptedDataset

#: the seed of the corruptions' random draws: the target domain is one fixed set of images
CORRUPTION_SEED = 0


def materialize(dataset: Dataset, batch_size: int = 512) -> TensorDataset:
    """A dataset of (image, label) items as one tensor pair (fast repeated passes)."""
    xs, ys = [], []
    for x, y, *_ in DataLoader(dataset, batch_size=batch_size):
        xs.append(x)
        ys.append(torch.as_tensor(y))
    return TensorDataset(torch.cat(xs), torch.cat(ys))


def adaptation_indices(n_train: int, images: int, seed: int = 0) -> list[int]:
    """``images`` indices of the train split drawn once by a seeded permutation (0: all)."""
    if images < 0:
        raise ValueError(f"target_images must be >= 0 (0: all), got {images}")
    if images == 0 or images >= n_train:
        return list(range(n_train))
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n_train, generator=g)[:images].tolist())


class Domains:
    """The clean source splits and, per (corruption, severity), the target splits."""

    def __init__(
        self,
        train: TensorDataset,
        test: TensorDataset,
        stats: tuple[Sequence[float], Sequence[float]],
        indices: list[int],
    ) -> None:
        self.train, self.test, self.stats, self.indices = train, test, stats, indices
        images = train.tensors[0][indices]
        self.source_images = TensorDataset(images, torch.zeros(len(indices), dtype=torch.long))

    def corrupted(self, dataset: Dataset, name: str, severity: int) -> TensorDataset:
        return materialize(
            CorruptedDataset(dataset, name, severity, CORRUPTION_SEED, denormalize=self.stats)
        )

    def target(self, name: str, severity: int) -> tuple[TensorDataset, TensorDataset]:
        """(unlabelled adaptation images, labelled evaluation set) of one target domain; the
        adaptation set's labels are zeros (no arm reads them)."""
        images = self.corrupted(self.source_images, name, severity)
        return images, self.corrupted(self.test, name, severity)


def loader(dataset: Dataset, batch_size: int) -> DataLoader:
    """Unshuffled batches of ``dataset`` (every arm reads the same batches in one order)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False)


@torch.no_grad()
def accuracy(model: torch.nn.Module, dataset: Dataset, batch_size: int = 500) -> float:
    """Top-1 accuracy (%) of ``model`` in eval mode (mode restored)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    hits = total = 0
    for x, y, *_ in DataLoader(dataset, batch_size=batch_size):
        hits += int((model(x.to(device)).argmax(-1).cpu() == y).sum())
        total += len(y)
    model.train(was_training)
    return 100.0 * hits / max(1, total)


def describe(condition: dict[str, Any]) -> str:
    """``gaussian_noise@3``: the key of one target domain in the report."""
    return f"{condition['corruption']}@{condition['severity']}"
