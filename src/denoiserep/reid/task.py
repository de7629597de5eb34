"""The paper's re-identification protocols with a control arm.

Per seed: 1. train (or load) a BoT baseline on the target dataset (P x K batches, CE with
label smoothing + batch-hard triplet loss); 2. CONTROL: fine-tune a copy for the
fine-tuning epochs with the same optimizer, data order and augmentation, without
DenoiseRep; 3. DenoiseRep: convert a copy, train it under ``protocol``, fuse it and
evaluate the plain fused model. Protocols (DenoiseRep arm):

* ``label_free``: phase ``denoiser`` only, on the target training images with every pid
  and camid replaced by -1 (no label can be read; batches come from a plain shuffle).
* ``label_augmented``: a labelled schedule (``alternating``, ``joint`` or ``backbone``, after
  optional label-free epochs) on P x K batches of the target training set.
* ``merged``: phase ``denoiser`` only, on the unlabelled union of the training images of
  the target and ``data.merge_with`` datasets (``merge_datasets``).

Under ``label_free`` and ``merged`` the backbone is frozen, so DenoiseRep's reference is
the baseline; the control arm shows what the same number of labelled epochs give.
Metrics (mAP, Rank-1/5/10, mINP) are reported as mean and std over seeds.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

import denoiserep as dr
from denoiserep.data.constants import IMAGENET_MEAN, IMAGENET_STD
from denoiserep.engine import dist
from denoiserep.engine.arms import ArmsConfig, start_run
from denoiserep.engine.config import from_dict, to_dict
from denoiserep.engine.dist import resolve_device
from denoiserep.engine.experiment import Experiment, RunPlan
from denoiserep.engine.trainer import TrainConfig
from denoiserep.models import preprocessing
from denoiserep.models.weights import check_remap
from denoiserep.tasks.contract import Task

from .datasets import merge_datasets
from .features import DISTANCES, evaluate_reid, extract_features, rank_features
from .metrics import check_matches
from .model import NECK_FEATS, build_reid_model
from .report import markdown_table, write_reports
from .sampler import RandomIdentitySampler
from .step import ReIDImageDataset, ReIDStep
from .synth import load_source

PROTOCOLS = ("label_free", "label_augmented", "merged")
LABELLED_SCHEDULES = ("backbone", "joint", "alternating")
TASK_NAME = "reid"


@dataclass
class SourceConfig:
    """One dataset: reader name (see ``build_reid_dataset``), root folder, reader options.

    ``build_fashion`` (keyword arguments of ``build_fashion_reid``): if ``root`` does not
    exist, the Fashion-MNIST re-ID benchmark is first written there (Market-1501 layout).
    """

    name: str = "market1501"
    root: str = "data/market1501"
    options: dict[str, Any] = field(default_factory=dict)
    build_fashion: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.build_fashion is not None and self.name != "market1501":
            raise ValueError(
                f"build_fashion writes the Market-1501 layout: name must be 'market1501', "
                f"got {self.name!r}"
            )


@dataclass
class DataConfig(SourceConfig):
    """The target dataset, the image pipeline and the P x K batch layout.

    ``mean`` / ``std`` (None): the pretrained weights' statistics when the model loads weights
    (``model.pretrained`` / ``model.checkpoint``), ImageNet's otherwise. Training follows the
    BoT recipe: resize to ``height`` x ``width``, pad ``pad`` + random crop, flip, random
    erasing with probability ``erasing``.
    """

    merge_with: list[dict[str, Any]] = field(default_factory=list)
    height: int = 256
    width: int = 128
    mean: list[float] | None = None
    std: list[float] | None = None
    preload: bool = False
    pad: int = 10
    flip: bool = True
    erasing: float = 0.5
    num_instances: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        for i, entry in enumerate(self.merge_with):
            if not isinstance(entry, dict):
                raise ValueError(f"data.merge_with[{i}] must be a mapping, got {entry!r}")
            from_dict(SourceConfig, entry, f"data.merge_with[{i}]")
        if self.height < 1 or self.width < 1 or self.num_instances < 1:
            raise ValueError("height, width and num_instances must be >= 1")
        if not 0.0 <= self.erasing <= 1.0:
            raise ValueError(f"erasing is a probability in [0, 1], got {self.erasing}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("set both mean and std, or neither (then they follow the weights)")
        if self.mean is not None and len(self.mean) != len(self.std):
            raise ValueError(f"mean and std need equal lengths, got {self.mean}, {self.std}")

    def sources(self) -> list[SourceConfig]:
        """The merge_with entries as configs."""
        return [
            from_dict(SourceConfig, e, f"data.merge_with[{i}]")
            for i, e in enumerate(self.merge_with)
        ]


@dataclass
class ModelConfig:
    """Backbone (timm name or ``tv:<name>``), its weights, keyword overrides, BNNeck options.

    ``pretrained`` / ``checkpoint`` / ``checkpoint_key`` / ``checkpoint_remap`` as in
    ``denoiserep.models.create_model`` (the backbone's classifier head is dropped).
    """

    name: str = "vit_small_patch16_224"
    pretrained: bool | str = False
    checkpoint: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    last_stride: int | None = None
    neck_feat: str = "after"
    checkpoint_remap: list[Any] | None = None
    checkpoint_key: str | None = None

    def __post_init__(self) -> None:
        check_remap(self.checkpoint_remap)
        if self.neck_feat not in NECK_FEATS:
            raise ValueError(f"neck_feat must be one of {NECK_FEATS}, got {self.neck_feat!r}")


@dataclass
class LossConfig:
    """Identity loss (CE with label smoothing) + batch-hard triplet (None margin: soft)."""

    label_smoothing: float = 0.1
    triplet_margin: float | None = 0.3
    id_weight: float = 1.0
    triplet_weight: float = 1.0


@dataclass
class EvalConfig:
    """Feature extraction and ranking; ``per_epoch`` also evaluates after every epoch."""

    batch_size: int = 256
    flip: bool = False
    normalize: bool = True
    distance: str = "euclidean"
    rerank: bool = False
    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3
    max_rank: int = 50
    per_epoch: bool = False

    def __post_init__(self) -> None:
        if self.distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {self.distance!r}")


@dataclass
class ReIDConfig(ArmsConfig):
    """Everything one ``denoiserep reid`` run does (arms and training: ``ArmsConfig``)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    denoise: dr.DenoiseConfig = field(default_factory=lambda: dr.DenoiseConfig(loss_weight=0.1))
    protocol: str = "label_augmented"
    output: str = "runs/reid"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        phases = self.finetune.phases
        if "denoiserep" in self.arms:
            if self.protocol == "label_augmented" and phases not in LABELLED_SCHEDULES:
                raise ValueError(
                    f"protocol 'label_augmented' needs finetune.phases in {LABELLED_SCHEDULES}, "
                    f"got {phases!r}"
                )
            if self.protocol != "label_augmented" and phases != "denoiser":
                raise ValueError(
                    f"protocol {self.protocol!r} trains only the denoisers, without labels: "
                    f"set finetune.phases=denoiser (got {phases!r})"
                )
        if (self.protocol == "merged") != bool(self.data.merge_with):
            raise ValueError("data.merge_with must list datasets exactly when protocol is 'merged'")


def image_statistics(cfg: ReIDConfig, model: nn.Module) -> tuple[list[float], list[float]]:
    """(mean, std) of the image pipeline: the config's, else the weights', else ImageNet's."""
    if cfg.data.mean is not None:
        return list(cfg.data.mean), list(cfg.data.std)
    if cfg.model.pretrained or cfg.model.checkpoint:
        pre = preprocessing(model.backbone)
        return list(pre["mean"]), list(pre["std"])
    return list(IMAGENET_MEAN), list(IMAGENET_STD)


class ReIDExperiment(Experiment):
    """Data, model and evaluation of a re-ID run; the DenoiseRep arm's data follows the protocol."""

    def __init__(self, cfg: ReIDConfig) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.target = load_source(cfg.data)
        model = self.build_model()  # a wrong name or weights file fails here, before any folder
        self.image_stats = image_statistics(cfg, model)
        self.train_set = self._images(self.target.train)
        self.query_set = self._images(self.target.query)
        self.gallery_set = self._images(self.target.gallery)
        q, g = self.query_set, self.gallery_set  # refused now, not after the baseline trained
        check_matches(q.pids, g.pids, q.camids, g.camids)
        self.denoiser_set = self.train_set  # label_augmented: labelled, P x K batches
        if cfg.protocol == "label_free":
            self.denoiser_set = self.train_set.without_labels()
        elif cfg.protocol == "merged":
            sources = [self.target, *(load_source(s) for s in cfg.data.sources())]
            self.denoiser_set = self._images(merge_datasets(sources).train).without_labels()
        loss, data = cfg.loss, cfg.data
        weights = (loss.label_smoothing, loss.triplet_margin, loss.id_weight, loss.triplet_weight)
        self.train_step = ReIDStep(*weights, data.pad, data.flip, data.erasing)
        n = min(64, len(self.query_set))
        self.probe = torch.stack([self.query_set[i][0] for i in range(n)]).to(self.device)
        self._clean_gallery: tuple[weakref.ref, torch.Tensor] | None = None  # evaluate_under

    @property
    def convert_input(self) -> dict[str, Any]:
        return {"x": self.probe[:2], "return_logits": True}  # the classifier runs too

    def _images(self, items: list) -> ReIDImageDataset:
        d = self.cfg.data
        mean, std = self.image_stats
        return ReIDImageDataset(items, (d.height, d.width), mean, std, d.preload)

    def build_model(self) -> nn.Module:
        m = self.cfg.model
        weights = {"pretrained": m.pretrained} if m.pretrained else {}
        if m.checkpoint:
            weights["checkpoint"] = m.checkpoint
        if m.checkpoint_remap is not None:
            weights["checkpoint_remap"] = m.checkpoint_remap
        if m.checkpoint_key is not None:
            weights["checkpoint_key"] = m.checkpoint_key
        return build_reid_model(
            m.name,
            self.target.num_train_pids,
            m.last_stride,
            m.neck_feat,
            **weights,
            **m.kwargs,
        )

    def evaluate(self, model: nn.Module, query: Any = None, gallery: Any = None) -> dict[str, Any]:
        """mAP, Rank-1/5/10, mINP and the CMC curve (%) on the target's query and gallery."""
        e = self.cfg.eval
        rerank = {"k1": e.k1, "k2": e.k2, "lambda_value": e.lambda_value} if e.rerank else None
        return evaluate_reid(
            model,
            self.query_set if query is None else query,
            self.gallery_set if gallery is None else gallery,
            e.batch_size,
            e.flip,
            e.normalize,
            e.distance,
            rerank,
            e.max_rank,
        )

    robustness_metric = "mAP"

    def evaluate_under(self, model: nn.Module, condition: Any) -> dict[str, float]:
        """Queries corrupted against the clean gallery (embedded once per arm, at ``clean``;
        feature noise and bits change the model, so they embed it again); with
        ``robustness.corrupt_gallery`` also (``both/``) against the gallery corrupted alike.
        ``max_images`` keeps the first queries, always against the whole gallery."""
        e, stats = self.cfg.eval, self.image_stats

        def embed(dataset: Any) -> torch.Tensor:
            return extract_features(model, dataset, e.batch_size, e.flip)

        query = condition(self.query_set, stats)
        qf = embed(query)
        if condition.kind == "feature_noise" or condition.kind == "feature_bits":
            gf = embed(self.gallery_set)
        else:
            cached = self._clean_gallery
            if condition.kind == "clean" or cached is None or cached[0]() is not model:
                self._clean_gallery = (weakref.ref(model), embed(self.gallery_set))
            gf = self._clean_gallery[1]
        metrics = self._rank(qf, gf)
        if condition.kind == "corruption" and self.cfg.robustness.corrupt_gallery:
            gallery = condition(self.gallery_set, stats, limit=False)
            both = self._rank(qf, embed(gallery))
            metrics.update({f"both/{k}": v for k, v in both.items()})
        return metrics

    def _rank(self, qf: torch.Tensor, gf: torch.Tensor) -> dict[str, float]:
        """The scalar metrics of the first ``len(qf)`` queries' features against ``gf``."""
        e = self.cfg.eval
        rerank = {"k1": e.k1, "k2": e.k2, "lambda_value": e.lambda_value} if e.rerank else None
        args = (e.normalize, e.distance, rerank, e.max_rank)
        r = rank_features(qf, gf, self.query_set, self.gallery_set, *args)
        return {k: v for k, v in r.items() if k != "cmc"}

    def fit_options(self, arm: str, train: TrainConfig, seed: int) -> dict[str, Any]:
        """The labelled set trains on P x K batches; an unlabelled one on the trainer's shuffle."""
        denoising = arm not in ("baseline", "control")
        dataset = self.denoiser_set if denoising else self.train_set
        options: dict[str, Any] = {"dataset": dataset}
        if dataset is self.train_set:
            options["sampler"] = RandomIdentitySampler(
                self.train_set.pids.tolist(),
                train.batch_size,
                self.cfg.data.num_instances,
                seed,
                num_replicas=dist.world_size(),
                rank=dist.rank(),
            )
        if self.cfg.eval.per_epoch:

            def eval_fn(model: nn.Module) -> dict[str, float]:
                metrics = self.evaluate(model)
                return {"test_mAP": metrics["mAP"], "test_rank1": metrics["rank1"]}

            options["eval_fn"] = eval_fn
        return options

    def dataset_summary(self) -> dict[str, Any]:
        return {
            "name": self.target.name,
            "train_images": len(self.train_set),
            "train_ids": self.target.num_train_pids,
            "query_images": len(self.query_set),
            "gallery_images": len(self.gallery_set),
            "denoiserep_train_images": len(self.denoiser_set),
        }


def run_reid(cfg: ReIDConfig, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run the protocol of ``cfg``; write results.json / results.md / cmc.png; return results."""
    experiment = ReIDExperiment(cfg)
    header = {
        "task": TASK_NAME,
        "config": to_dict(cfg),
        "protocol": cfg.protocol,
        "dataset": experiment.dataset_summary(),
        "preprocessing": {"mean": experiment.image_stats[0], "std": experiment.image_stats[1]},
    }
    weights = bool(cfg.model.pretrained or cfg.model.checkpoint)
    plan = RunPlan(arms=cfg, header=header, write=write_reports, has_weights=weights)
    return start_run(experiment, plan, overwrite=overwrite, progress=progress)


TASK = Task(
    name=TASK_NAME,
    help="re-identification: baseline, control and DenoiseRep",
    Config=ReIDConfig,
    run=run_reid,
    table=markdown_table,
    default_config="reid_fashion.yaml",
    report_files=("results.json", "results.md", "cmc.png"),
    writer=write_reports,
)
