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

import copy
import dataclasses
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model
from torch import nn

import denoiserep as dr
from denoiserep.bench.latency import measure_latency
from denoiserep.classification.protocol import (
    denoising_strength,
    fused_vs_unfused,
    resolve_device,
)
from denoiserep.engine import dist
from denoiserep.engine.config import from_dict, to_dict
from denoiserep.engine.report import ARMS, aggregate_seeds
from denoiserep.engine.runs import prepare_run_folder
from denoiserep.engine.trainer import TrainConfig, fit
from denoiserep.models.factory import num_parameters

from .datasets import ReIDDataset, build_reid_dataset, merge_datasets
from .model import NECK_FEATS, build_reid_model
from .sampler import RandomIdentitySampler
from .synth import build_fashion_reid
from .task import DISTANCES, ReIDImageDataset, ReIDTask, evaluate_reid

PROTOCOLS = ("label_free", "label_augmented", "merged")
LABELLED_SCHEDULES = ("backbone", "joint", "alternating")
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


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
    """The target dataset, the image pipeline and the P x K batch layout."""

    merge_with: list[dict[str, Any]] = field(default_factory=list)
    height: int = 256
    width: int = 128
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
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
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean and std need equal lengths, got {self.mean}, {self.std}")

    def sources(self) -> list[SourceConfig]:
        """The merge_with entries as configs."""
        return [
            from_dict(SourceConfig, e, f"data.merge_with[{i}]")
            for i, e in enumerate(self.merge_with)
        ]


@dataclass
class ModelConfig:
    """Backbone (timm name or ``tv:<name>``) with keyword overrides, BNNeck options."""

    name: str = "vit_small_patch16_224"
    kwargs: dict[str, Any] = field(default_factory=dict)
    last_stride: int | None = None
    neck_feat: str = "after"

    def __post_init__(self) -> None:
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
class ReIDConfig:
    """Everything one ``denoiserep reid`` run does."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    baseline: TrainConfig = field(default_factory=TrainConfig)
    finetune: TrainConfig = field(
        default_factory=lambda: TrainConfig(phases="alternating", denoiser_epochs=1)
    )
    denoise: dr.DenoiseConfig = field(default_factory=lambda: dr.DenoiseConfig(loss_weight=0.1))
    protocol: str = "label_augmented"
    seeds: list[int] = field(default_factory=lambda: [0])
    arms: list[str] = field(default_factory=lambda: ["control", "denoiserep"])
    baseline_weights: str | None = None
    output: str = "runs/reid"
    device: str = "auto"

    def __post_init__(self) -> None:
        bad = [a for a in self.arms if a not in ARMS[1:]]
        if bad:
            raise ValueError(f"arms must be among {ARMS[1:]}, got {bad}")
        if not self.seeds:
            raise ValueError("seeds must list at least one seed")
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


def load_source(src: SourceConfig) -> ReIDDataset:
    """Read a dataset, first writing the Fashion-MNIST benchmark to its root if configured.

    The benchmark is written by rank 0 into a temporary sibling folder that is renamed to
    ``root`` when complete, so an interrupted build never leaves a partial dataset.
    """
    root = Path(src.root)
    if src.build_fashion is not None and not root.exists():
        if dist.is_main():
            tmp = root.with_name(root.name + ".partial")
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                build_fashion_reid(tmp, **src.build_fashion)
            except TypeError as e:
                raise ValueError(f"build_fashion for {root}: {e}") from None
            tmp.rename(root)
        dist.barrier()
    return build_reid_dataset(src.name, root, **src.options)


def max_change_from_baseline(converted: nn.Module, baseline: nn.Module) -> float:
    """max |converted - baseline| over the baseline's float weights and buffers (not D).

    Zero after label-free training: the backbone, BNNeck statistics and classifier are frozen.
    """
    reference = baseline.state_dict()
    denoisers = {f"{name}.D" for name in dr.denoise_layers(converted)}
    change = 0.0
    for name, value in dr.unwrap(converted).state_dict().items():
        if name in denoisers or not value.is_floating_point():
            continue
        key = name.replace(".base_layer.", ".")
        diff = (value.double() - reference[key].double()).abs().max().item()
        change = max(change, diff)
    return change


class ReIDExperiment:
    """What every arm of a run shares (data, task, evaluation) and the three arms."""

    def __init__(
        self, cfg: ReIDConfig, out: Path, device: torch.device, progress: bool = True
    ) -> None:
        self.cfg, self.out, self.device, self.progress = cfg, out, device, progress
        self.target = load_source(cfg.data)
        self.train_set = self._images(self.target.train)
        self.query_set = self._images(self.target.query)
        self.gallery_set = self._images(self.target.gallery)
        self.denoiser_set = self.train_set  # label_augmented: labelled, P x K batches
        if cfg.protocol == "label_free":
            self.denoiser_set = self.train_set.without_labels()
        elif cfg.protocol == "merged":
            sources = [self.target, *(load_source(s) for s in cfg.data.sources())]
            self.denoiser_set = self._images(merge_datasets(sources).train).without_labels()
        loss, data = cfg.loss, cfg.data
        self.task = ReIDTask(
            loss.label_smoothing,
            loss.triplet_margin,
            loss.id_weight,
            loss.triplet_weight,
            data.pad,
            data.flip,
            data.erasing,
        )
        n = min(64, len(self.query_set))
        self.example = torch.stack([self.query_set[i][0] for i in range(n)]).to(device)

    def _images(self, items: list) -> ReIDImageDataset:
        d = self.cfg.data
        return ReIDImageDataset(items, (d.height, d.width), d.mean, d.std, d.preload)

    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        """mAP, Rank-1/5/10, mINP and the CMC curve (%) on the target's query and gallery."""
        e = self.cfg.eval
        rerank = {"k1": e.k1, "k2": e.k2, "lambda_value": e.lambda_value} if e.rerank else None
        return evaluate_reid(
            model,
            self.query_set,
            self.gallery_set,
            e.batch_size,
            e.flip,
            e.normalize,
            e.distance,
            rerank,
            e.max_rank,
        )

    def _eval_fn(self, model: nn.Module) -> dict[str, float]:
        metrics = self.evaluate(model)
        return {"test_mAP": metrics["mAP"], "test_rank1": metrics["rank1"]}

    def _fit(
        self, model: nn.Module, train: TrainConfig, seed: int, arm: str, dataset: ReIDImageDataset
    ) -> list[dict[str, Any]]:
        """The labelled set trains on P x K batches; an unlabelled one on the trainer's shuffle."""
        sampler = None
        if dataset is self.train_set:
            sampler = RandomIdentitySampler(
                self.train_set.pids.tolist(),
                train.batch_size,
                self.cfg.data.num_instances,
                seed,
                num_replicas=dist.world_size(),
                rank=dist.rank(),
            )
        return fit(
            model,
            dataset,
            train,
            self.task,
            self.out / f"seed{seed}" / arm,
            seed,
            sampler=sampler,
            eval_fn=self._eval_fn if self.cfg.eval.per_epoch else None,
            tag=f"seed {seed} {arm}",
            progress=self.progress,
        )

    def baseline(self, seed: int) -> tuple[nn.Module, list]:
        """A freshly initialised model trained for ``baseline.epochs`` (or loaded)."""
        cfg = self.cfg
        torch.manual_seed(seed)
        model = build_reid_model(
            cfg.model.name,
            self.target.num_train_pids,
            cfg.model.last_stride,
            cfg.model.neck_feat,
            **cfg.model.kwargs,
        ).to(self.device)
        if cfg.baseline_weights:
            missing, unexpected = load_model(model, cfg.baseline_weights, strict=False)
            if missing or unexpected:
                raise ValueError(
                    f"baseline_weights {cfg.baseline_weights} does not match {cfg.model.name} "
                    f"with {self.target.num_train_pids} identities: missing "
                    f"{sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}"
                )
            return model, []
        history = self._fit(model, cfg.baseline, seed, "baseline", self.train_set)
        if dist.is_main():
            save_model(model, str(self.out / f"seed{seed}" / "baseline" / "model.safetensors"))
        return model, history

    def control(self, baseline: nn.Module, seed: int) -> tuple[nn.Module, list]:
        """The baseline fine-tuned with labels like the DenoiseRep arm, without DenoiseRep."""
        model = copy.deepcopy(baseline)
        plain = dataclasses.replace(self.cfg.finetune, phases="none", denoiser_epochs=0)
        return model, self._fit(model, plain, seed, "control", self.train_set)

    def denoiserep(self, baseline: nn.Module, seed: int) -> tuple[nn.Module, nn.Module, list]:
        """Convert a copy of the baseline, train it under the protocol, fuse it."""
        example = {"x": self.example[:2], "return_logits": True}
        model = dr.convert(copy.deepcopy(baseline), self.cfg.denoise, example_input=example)
        history = self._fit(model, self.cfg.finetune, seed, "denoiserep", self.denoiser_set)
        fused = dr.fuse(model).to(self.device)
        if dist.is_main():
            save_model(fused, str(self.out / f"seed{seed}" / "denoiserep" / "fused.safetensors"))
        return model, fused, history

    def denoiserep_results(
        self, model: nn.Module, fused: nn.Module, baseline: nn.Module
    ) -> dict[str, Any]:
        """Metrics of the fused model and the two exactness checks."""
        results = self.evaluate(fused)
        results["max_abs_diff_fused_unfused"] = fused_vs_unfused(model, fused, self.example)
        results["max_abs_change_from_baseline"] = max_change_from_baseline(model, baseline)
        return results

    def cost(self, baseline: nn.Module, model: nn.Module, fused: nn.Module) -> dict[str, Any]:
        """Parameters and latency of baseline vs fused, per-layer denoising strength."""
        latency = measure_latency({"baseline": baseline, "fused": fused}, self.example)
        return {
            "params_baseline": num_parameters(baseline),
            "params_fused": num_parameters(fused),
            "latency_ms_baseline": 1e3 * latency["baseline"],
            "latency_ms_fused": 1e3 * latency["fused"],
            "latency_ratio_fused_over_baseline": latency["fused"] / latency["baseline"],
            "latency_batch": int(self.example.shape[0]),
            "strength": denoising_strength(model),
        }

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
    device = resolve_device(cfg.device)
    out = prepare_run_folder(cfg.output, to_dict(cfg), overwrite)
    exp = ReIDExperiment(cfg, Path(out), device, progress)
    per_seed: dict[int, dict[str, dict[str, float]]] = {}
    curves: dict[int, dict[str, list[float]]] = {}
    histories: dict[int, dict[str, list]] = {}
    extras: dict[str, Any] = {}
    for seed in cfg.seeds:
        baseline, hist_base = exp.baseline(seed)
        hist = {"baseline": hist_base} if hist_base else {}
        results = {"baseline": exp.evaluate(baseline)}
        if "control" in cfg.arms:
            control, hist["control"] = exp.control(baseline, seed)
            results["control"] = exp.evaluate(control)
        if "denoiserep" in cfg.arms:
            model, fused, hist["denoiserep"] = exp.denoiserep(baseline, seed)
            results["denoiserep"] = exp.denoiserep_results(model, fused, baseline)
            if seed == cfg.seeds[0]:
                extras = exp.cost(baseline, model, fused)
        curves[seed] = {arm: r.pop("cmc") for arm, r in results.items()}
        per_seed[seed] = results
        histories[seed] = hist
    report = {
        "config": to_dict(cfg),
        "device": str(device),
        "protocol": cfg.protocol,
        "dataset": exp.dataset_summary(),
        "per_seed": {str(s): r for s, r in per_seed.items()},
        "summary": aggregate_seeds(per_seed),
        "cmc": {
            arm: np.mean([curves[s][arm] for s in cfg.seeds], axis=0).tolist()
            for arm in curves[cfg.seeds[0]]
        },
        "histories": {str(s): h for s, h in histories.items()},
        **extras,
    }
    if dist.is_main():
        from .report import write_reports

        write_reports(report, Path(out))
    return report


# -- the command-line contract (see denoiserep.cli) ------------------------------------------
Config = ReIDConfig
run = run_reid
DEFAULT_CONFIG = "reid_fashion.yaml"


def summarize(report: dict[str, Any]) -> str:
    """The Markdown table printed at the end of a run, and where the files are."""
    from .report import markdown_table

    out = Path(report["config"]["output"])
    files = ", ".join(str(out / f) for f in ("results.json", "results.md", "cmc.png"))
    return markdown_table(report) + f"\nresults: {files}"
