"""``denoiserep adapt``: label-free adaptation to a corrupted target domain, arm against arm.

``benchmark`` picks the source task: ``classify`` (a classifier of ``data``, top-1;
:mod:`denoiserep.adaptation.classify`) or ``reid`` (a BoT re-ID model of ``reid.data``, mAP and
rank-1; :mod:`denoiserep.adaptation.reid_benchmark`). Per seed a source model is trained on the
clean training split (or loaded: ``baseline_weights``, e.g. a classify run's
``fused.safetensors``; a head of another class count is re-initialised with one line saying so,
and ``source.epochs`` then trains it). Per corruption and severity every arm adapts that model
on the same N unlabelled corrupted training images and is scored on the corrupted test data
(:mod:`denoiserep.adaptation.methods`, :mod:`denoiserep.adaptation.runner`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from denoiserep.core.config import DenoiseConfig
from denoiserep.engine.config import to_dict
from denoiserep.engine.dist import resolve_device
from denoiserep.engine.latency import measure_latency
from denoiserep.engine.runs import prepare_run_folder
from denoiserep.engine.train_config import TrainConfig
from denoiserep.models.factory import num_parameters
from denoiserep.robustness.corruptions import CORRUPTIONS, SEVERITIES
from denoiserep.tasks.contract import Task

from .classify import ClassifyBenchmark
from .domains import describe
from .methods import TENT_OPTIMIZERS, has_batchnorm
from .reid_benchmark import ReIDBenchmark, ReIDBenchmarkConfig
from .report import ARMS, aggregate, markdown_table, metrics_of, write_reports
from .runner import adapt_arm

#: what ``benchmark`` selects: the source task, its data, model and metrics
BENCHMARKS = {"classify": ClassifyBenchmark, "reid": ReIDBenchmark}


@dataclass
class DataConfig:
    """The dataset the source and target domains are built from."""

    name: str = "digits"  # an in-memory classification dataset (digits, fashion_mnist, ...)
    root: str | None = None  # dataset folder (None: the dataset's default)
    options: dict[str, Any] = field(default_factory=dict)  # reader options (max_train, ...)
    batch_size: int = 128  # images per batch of every adaptation and evaluation pass
    pad: int = 0  # source training: random translation by up to this many pixels
    flip: bool = False  # source training: random horizontal flips


@dataclass
class ModelConfig:
    """The source model: a timm model name and its keyword overrides."""

    name: str = "resnet10t"  # a timm model name
    kwargs: dict[str, Any] = field(default_factory=dict)  # keyword overrides of the model


@dataclass
class TentConfig:
    """TENT's optimizer (Wang et al., ICLR 2021; default: their CIFAR-C setting)."""

    optimizer: str = "adam"  # `adam` (CIFAR-C setting) or `sgd` (ImageNet-C, lr 2.5e-4)
    lr: float = 1.0e-3  # learning rate of the normalisation layers' affine parameters
    momentum: float = 0.9  # SGD momentum (ignored by adam)

    def __post_init__(self) -> None:
        if self.optimizer not in TENT_OPTIMIZERS:
            raise ValueError(
                f"tent.optimizer must be one of {TENT_OPTIMIZERS}, got {self.optimizer!r}"
            )
        if self.lr <= 0:
            raise ValueError(f"tent.lr must be > 0, got {self.lr}")


@dataclass
class AdaptConfig:
    """Everything one ``denoiserep adapt`` run does.

    ``source`` is how the source model trains on the clean train split (``epochs: 0`` with
    ``baseline_weights`` evaluates the loaded model as it is).
    ``corruptions`` are the ImageNet-C corruptions that make the target domains (one per
    corruption and severity).
    """

    benchmark: str = "classify"  # `classify` (a classifier, top-1) or `reid` (mAP, rank-1)
    data: DataConfig = field(default_factory=DataConfig)  # classify: dataset; both: batch_size
    model: ModelConfig = field(default_factory=ModelConfig)  # the source model's (backbone's) name
    reid: ReIDBenchmarkConfig = field(default_factory=ReIDBenchmarkConfig)  # benchmark reid only
    source: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=10, batch_size=128))
    baseline_weights: str | None = None  # a source model file (a head of another size: reset)
    denoise: DenoiseConfig = field(default_factory=DenoiseConfig)  # schedule and target layers
    corruptions: list[str] = field(default_factory=lambda: ["gaussian_noise", "contrast"])
    severities: list[int] = field(default_factory=lambda: [3, 5])  # ImageNet-C severities
    target_images: int = 1000  # unlabelled target-train images every arm adapts on (0: all)
    arms: list[str] = field(default_factory=lambda: list(ARMS))  # which arms run
    tent: TentConfig = field(default_factory=TentConfig)  # TENT's optimizer
    seeds: list[int] = field(default_factory=lambda: [0])  # one source model per seed
    latency_repeats: int = 10  # interleaved timed forwards per arm (inference cost)
    output: str = "runs/adapt"  # output folder (results.json, results.md; --output overrides)
    device: str = "auto"  # `auto` (CUDA if available, else CPU), `cpu`, `cuda`, `cuda:N`

    def __post_init__(self) -> None:
        if self.benchmark not in BENCHMARKS:
            raise ValueError(
                f"benchmark must be one of {tuple(BENCHMARKS)}, got {self.benchmark!r}"
            )
        bad = [c for c in self.corruptions if c not in CORRUPTIONS]
        if bad or not self.corruptions:
            raise ValueError(f"corruptions must be among {', '.join(CORRUPTIONS)}, got {bad}")
        if not self.severities or any(s not in SEVERITIES for s in self.severities):
            raise ValueError(f"severities must be in 1..5, got {self.severities}")
        wrong = [a for a in self.arms if a not in ARMS]
        if wrong or not self.arms:
            raise ValueError(f"arms must be among {', '.join(ARMS)}, got {wrong}")
        if self.target_images < 0:
            raise ValueError(f"target_images must be >= 0 (0: all), got {self.target_images}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and non-empty, got {self.seeds}")
        if self.data.batch_size < 1 or self.latency_repeats < 1:
            raise ValueError("data.batch_size and latency_repeats must be >= 1")


def inference_cost(arms: dict[str, nn.Module], probe: torch.Tensor, repeats: int) -> dict:
    """Parameters of each adapted model and its latency relative to the source model."""
    latency = measure_latency(arms, probe, repeats=repeats)
    base = latency["none"] if "none" in latency else next(iter(latency.values()))
    return {
        arm: {"params": num_parameters(m), "latency_ratio": latency[arm] / base}
        for arm, m in arms.items()
    }


def run_adapt(cfg: AdaptConfig, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run every arm of ``cfg``; write results.json / results.md; return the report."""
    start = time.perf_counter()
    device = resolve_device(cfg.device)
    bench = BENCHMARKS[cfg.benchmark](cfg, device)  # bad data or model: one line, no folder
    out = prepare_run_folder(cfg.output, to_dict(cfg), overwrite, type(cfg))
    report: dict[str, Any] = {
        "task": "adapt",
        "benchmark": cfg.benchmark,
        "config": to_dict(cfg),
        "device": str(device),
        **bench.sizes(),
        "per_seed": {},
        "notes": [],
    }
    conditions = [{"corruption": c, "severity": s} for c in cfg.corruptions for s in cfg.severities]
    targets = {describe(c): bench.target(c["corruption"], c["severity"]) for c in conditions}
    for seed in cfg.seeds:
        model, notes = bench.source_model(seed, out, progress)
        report["notes"] += notes
        if seed == cfg.seeds[0]:
            report["notes"] += bench.notes(model)
        report["has_batchnorm"] = has_batchnorm(model)
        rows = {f"clean_{k}": v for k, v in bench.score(model).items()}
        rows |= score_arms(cfg, bench, model, targets, report)
        report["per_seed"][str(seed)] = rows
        report["summary"] = aggregate(report["per_seed"], metrics_of(report))
        write_reports(report, out)
    report["wall_s"] = time.perf_counter() - start
    write_reports(report, out)
    return report


def score_arms(
    cfg: AdaptConfig, bench: Any, model: nn.Module, targets: dict[str, Any], report: dict
) -> dict[str, Any]:
    """Per target domain, each arm's metrics, adaptation seconds and images; the first
    domain's adapted models also give the report's ``cost`` (once per run)."""
    rows: dict[str, Any] = {}
    for key, (images, test) in targets.items():
        rows[key], adapted_models = {}, {}
        for arm in cfg.arms:
            args = (bench.source_images, images, cfg, report["has_batchnorm"], bench.calls)
            result = adapt_arm(arm, model, *args)
            if result is None:  # the anchor does not exist for this model
                continue
            adapted, seconds = result
            images_used = 0 if arm == "none" else len(images)
            rows[key][arm] = {
                **bench.score(adapted, test),
                "adapt_s": seconds,
                "images": images_used,
            }
            adapted_models[arm] = adapted
        if "cost" not in report:
            report["cost"] = inference_cost(adapted_models, bench.probe, cfg.latency_repeats)
    return rows


TASK = Task(
    name="adapt",
    help="label-free adaptation to a corrupted domain: DenoiseRep vs BN adaptation and TENT",
    Config=AdaptConfig,
    run=run_adapt,
    table=markdown_table,
    default_config="adapt_fashion.yaml",
    writer=write_reports,
)
