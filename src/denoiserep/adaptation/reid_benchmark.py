"""The re-ID benchmark: a BoT re-ID model trained on the clean Fashion re-ID set (or any
Market-1501-layout set), adapted to ImageNet-C corruptions of its query and gallery images,
scored by mAP and rank-1 (:mod:`denoiserep.reid`).

The target domain of one corruption and severity is the query AND the gallery under it (fixed
draws, as in the classification benchmark). The unlabelled images every arm adapts on are
``target_images`` images of the re-ID *training* identities under the same corruption (a
fixed subset, drawn once): never a scored query or gallery image. ``dr_source`` reads the same
training images clean. TENT minimises the entropy of the identity classifier's logits (the
source model's BNNeck head over the training identities): the logits the source model was
trained with; its BatchNorm (the BNNeck's included) normalises by the batch while adapting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, Subset, TensorDataset

from denoiserep.data.constants import IMAGENET_MEAN, IMAGENET_STD
from denoiserep.engine.trainer import fit
from denoiserep.reid.features import extract_features, rank_features
from denoiserep.reid.metrics import check_matches
from denoiserep.reid.model import NECK_FEATS, build_reid_model
from denoiserep.reid.sampler import RandomIdentitySampler
from denoiserep.reid.step import ReIDImageDataset, ReIDStep
from denoiserep.reid.synth import load_source
from denoiserep.reid.task import DataConfig, EvalConfig, LossConfig
from denoiserep.robustness.corruptions import CorruptedDataset

from .domains import CORRUPTION_SEED, adaptation_indices, materialize
from .runner import ModelCalls
from .source import check_model, seeded_source_model


@dataclass
class ReIDBenchmarkConfig:
    """``benchmark: reid``: the re-ID dataset (``denoiserep reid``'s ``data`` keys), the BoT
    losses and ranking (its ``loss`` / ``eval`` keys), the head; the backbone is ``model``."""

    data: DataConfig = field(default_factory=lambda: DataConfig(root="data/fashion_reid"))
    loss: LossConfig = field(default_factory=LossConfig)  # the source model's training losses
    eval: EvalConfig = field(default_factory=EvalConfig)  # feature extraction and ranking
    last_stride: int | None = None  # ResNets: the stride of layer4 (BoT: 1)
    neck_feat: str = "after"  # the evaluation feature: after or before the BNNeck

    def __post_init__(self) -> None:
        if self.neck_feat not in NECK_FEATS:
            raise ValueError(f"reid.neck_feat must be one of {NECK_FEATS}, got {self.neck_feat!r}")
        if self.data.merge_with:
            raise ValueError("reid.data.merge_with: the adapt benchmark reads one dataset")


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x, return_logits=True)[0]


class ReIDBenchmark:
    """``benchmark: reid``: the data, the source model and mAP / rank-1 of an ``adapt`` run."""

    def __init__(self, cfg: Any, device: torch.device) -> None:
        self.cfg, self.device, r = cfg, device, cfg.reid
        dataset = load_source(r.data)
        mean = list(r.data.mean) if r.data.mean is not None else list(IMAGENET_MEAN)
        std = list(r.data.std) if r.data.std is not None else list(IMAGENET_STD)
        self.stats = (mean, std)
        size = (r.data.height, r.data.width)
        self.train, self.query, self.gallery = (
            ReIDImageDataset(items, size, mean, std, r.data.preload)
            for items in (dataset.train, dataset.query, dataset.gallery)
        )
        check_matches(self.query.pids, self.gallery.pids, self.query.camids, self.gallery.camids)
        self.num_ids = dataset.num_train_pids
        self.indices = adaptation_indices(len(self.train), cfg.target_images)
        self.source_images = materialize(Subset(self.train.without_labels(), self.indices))
        self.probe = self.source_images.tensors[0][: min(64, len(self.indices))].to(device)
        self.calls = ModelCalls(
            logits=_logits,
            fit=lambda m, batch: m(batch[0].to(device), return_logits=True),
            example_input={"x": self.probe[:2], "return_logits": True},  # the classifier too
        )
        check_model(self.build_model(), self.probe[:2], cfg.model.name)

    def sizes(self) -> dict[str, int]:
        """The report's counts of images."""
        return {
            "target_images": len(self.indices),
            "train_ids": self.num_ids,
            "query_images": len(self.query),
            "gallery_images": len(self.gallery),
        }

    def build_model(self) -> nn.Module:
        m, r = self.cfg.model, self.cfg.reid
        model = build_reid_model(m.name, self.num_ids, r.last_stride, r.neck_feat, **m.kwargs)
        return model.to(self.device)

    def _corrupt(self, dataset: Dataset, name: str, severity: int) -> TensorDataset:
        return materialize(
            CorruptedDataset(dataset, name, severity, CORRUPTION_SEED, denormalize=self.stats)
        )

    def target(self, name: str, severity: int) -> tuple[Dataset, tuple[Dataset, Dataset]]:
        """(unlabelled corrupted training-identity images, (corrupted query, corrupted
        gallery)) of one target domain."""
        images = self._corrupt(self.source_images, name, severity)
        test = (
            self._corrupt(self.query, name, severity),
            self._corrupt(self.gallery, name, severity),
        )
        return images, test

    def source_model(self, seed: int, out: Path, progress: bool) -> tuple[nn.Module, list[str]]:
        """The BoT model trained on the clean training identities (or loaded), and notes."""
        cfg, r = self.cfg, self.cfg.reid
        classes = f"{self.num_ids} identities"
        model, notes = seeded_source_model(self.build_model, cfg.baseline_weights, seed, classes)
        if cfg.source.epochs > 0:
            loss = r.loss
            weights = (
                loss.label_smoothing,
                loss.triplet_margin,
                loss.id_weight,
                loss.triplet_weight,
            )
            step = ReIDStep(*weights, r.data.pad, r.data.flip, r.data.erasing)
            pids = self.train.pids.tolist()
            sampler = RandomIdentitySampler(pids, cfg.source.batch_size, r.data.num_instances, seed)
            where, tag = out / f"seed{seed}" / "source", f"seed {seed} source"
            options = {"sampler": sampler, "tag": tag, "progress": progress}
            fit(model, self.train, cfg.source, step, where, seed, **options)
        return model.eval(), notes

    def score(self, model: nn.Module, test: Any = None) -> dict[str, float]:
        """mAP and rank-1 (%) of ``test`` = (query, gallery) (None: the clean ones)."""
        e = self.cfg.reid.eval
        query, gallery = (self.query, self.gallery) if test is None else test
        qf = extract_features(model, query, e.batch_size, e.flip)
        gf = extract_features(model, gallery, e.batch_size, e.flip)
        rerank = {"k1": e.k1, "k2": e.k2, "lambda_value": e.lambda_value} if e.rerank else None
        args = (e.normalize, e.distance, rerank, e.max_rank)
        r = rank_features(qf, gf, self.query, self.gallery, *args)
        return {"mAP": r["mAP"], "rank1": r["rank1"]}

    def notes(self, model: nn.Module) -> list[str]:
        """How TENT and the BatchNorm arms apply to a re-ID model, and which images adapt."""
        lines = [
            f"TENT minimises the entropy of the identity classifier's logits ({self.num_ids} "
            "training identities) of the source model; every arm adapts on "
            f"{len(self.indices)} corrupted images of the training identities, never on a "
            "scored query or gallery image."
        ]
        backbone = getattr(model, "backbone", model)
        if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in backbone.modules()):
            lines.append("The backbone has no BatchNorm: the BN arms re-estimate the BNNeck only.")
        return lines
