"""The classification benchmark: a classifier trained on a clean dataset, adapted to the same
dataset under ImageNet-C corruptions (:mod:`denoiserep.adaptation.domains`), scored by top-1."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from denoiserep.data.augment import BatchRows, pad_crop_flip
from denoiserep.data.classification import build_classification_data
from denoiserep.engine.trainer import fit
from denoiserep.models.factory import create_model

from .domains import Domains, accuracy, adaptation_indices, materialize
from .runner import ModelCalls
from .source import check_model, seeded_source_model


class SourceStep:
    """Cross-entropy training of the source model on (image, label) batches."""

    def __init__(self, pad: int = 0, flip: bool = False) -> None:
        self.pad, self.flip = pad, flip

    def to_device(self, batch: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return batch[0].to(device), batch[1].to(device)

    def augment(
        self, batch: Any, generator: torch.Generator, rows: BatchRows | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return pad_crop_flip(batch[0], generator, self.pad, self.flip, rows), batch[1]

    def forward(self, model: nn.Module, batch: Any) -> torch.Tensor:
        return model(batch[0])

    def loss(self, output: torch.Tensor, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        return F.cross_entropy(output.float(), batch[1]), {}


class ClassifyBenchmark:
    """``benchmark: classify``: the data, the source model and top-1 of an ``adapt`` run."""

    calls = ModelCalls()  # a plain classifier: model(x) gives the logits

    def __init__(self, cfg: Any, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        d = cfg.data
        self.data = build_classification_data(d.name, d.root, **d.options)
        train, test = materialize(self.data.train), materialize(self.data.test)
        indices = adaptation_indices(len(train), cfg.target_images)
        self.domains = Domains(train, test, (self.data.mean, self.data.std), indices)
        self.source_images = self.domains.source_images
        self.probe = test.tensors[0][: min(64, len(test))].to(device)
        check_model(self.build_model(), self.probe[:2], cfg.model.name)

    def sizes(self) -> dict[str, int]:
        """The report's counts of images."""
        return {"target_images": len(self.domains.indices), "test_images": len(self.domains.test)}

    def build_model(self) -> nn.Module:
        n, c = self.data.num_classes, self.data.in_chans
        kwargs = dict(self.cfg.model.kwargs, num_classes=n, in_chans=c)
        return create_model(self.cfg.model.name, **kwargs).to(self.device)

    def target(self, name: str, severity: int) -> tuple[Dataset, Dataset]:
        """(unlabelled adaptation images, corrupted test split) of one target domain."""
        return self.domains.target(name, severity)

    def source_model(self, seed: int, out: Path, progress: bool) -> tuple[nn.Module, list[str]]:
        """The trained (or loaded, and optionally trained further) source model, and notes."""
        cfg = self.cfg
        classes = f"{self.data.num_classes} classes"
        model, notes = seeded_source_model(self.build_model, cfg.baseline_weights, seed, classes)
        if cfg.source.epochs > 0:
            step = SourceStep(cfg.data.pad, cfg.data.flip)
            where = out / f"seed{seed}" / "source"
            tag = f"seed {seed} source"
            fit(
                model, self.domains.train, cfg.source, step, where, seed, tag=tag, progress=progress
            )
        return model.eval(), notes

    def score(self, model: nn.Module, test: Dataset | None = None) -> dict[str, float]:
        """Top-1 (%) on ``test`` (None: the clean test split)."""
        test = self.domains.test if test is None else test
        return {"acc1": accuracy(model, test, self.cfg.data.batch_size)}

    def notes(self, model: nn.Module) -> list[str]:
        """Nothing to add for a classifier."""
        return []
