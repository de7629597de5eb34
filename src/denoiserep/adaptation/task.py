"""``denoiserep adapt``: label-free adaptation to a corrupted target domain, arm against arm.

Per seed a source model is trained on the clean train split (or loaded: ``baseline_weights``,
e.g. a classify run's ``fused.safetensors``; a head of another class count is re-initialised
with one line saying so, and ``source.epochs`` then trains it). Per corruption and severity
every arm adapts that model on the same N unlabelled corrupted train images and is scored on the
corrupted test split (:mod:`denoiserep.adaptation.domains`, :mod:`denoiserep.adaptation.methods`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from denoiserep.core.config import DenoiseConfig
from denoiserep.data.augment import BatchRows, pad_crop_flip
from denoiserep.data.classification import build_classification_data
from denoiserep.engine.arms import load_baseline_weights
from denoiserep.engine.config import to_dict
from denoiserep.engine.dist import resolve_device
from denoiserep.engine.latency import measure_latency
from denoiserep.engine.runs import prepare_run_folder
from denoiserep.engine.train_config import TrainConfig
from denoiserep.engine.trainer import fit
from denoiserep.models.factory import create_model, num_parameters
from denoiserep.robustness.corruptions import CORRUPTIONS, SEVERITIES
from denoiserep.tasks.contract import Task
from denoiserep.util.state_dict import read_weights

from .domains import Domains, accuracy, adaptation_indices, describe, materialize
from .methods import TENT_OPTIMIZERS, has_batchnorm
from .report import ARMS, aggregate, markdown_table, write_reports
from .runner import adapt_arm


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

    data: DataConfig = field(default_factory=DataConfig)  # dataset of both domains
    model: ModelConfig = field(default_factory=ModelConfig)  # the source model's architecture
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


def build_domains(cfg: AdaptConfig) -> tuple[Domains, Any]:
    data = build_classification_data(cfg.data.name, cfg.data.root, **cfg.data.options)
    train, test = materialize(data.train), materialize(data.test)
    indices = adaptation_indices(len(train), cfg.target_images)
    return Domains(train, test, (data.mean, data.std), indices), data


def source_model(
    cfg: AdaptConfig, data: Any, domains: Domains, seed: int, out: Any, progress: bool
) -> tuple[nn.Module, list[str]]:
    """The trained (or loaded, and optionally trained further) source model, and notes."""
    torch.manual_seed(seed)
    kwargs = dict(cfg.model.kwargs, num_classes=data.num_classes, in_chans=data.in_chans)
    model = create_model(cfg.model.name, **kwargs).to(resolve_device(cfg.device))
    notes = []
    if cfg.baseline_weights:
        expected = model.state_dict()
        state = read_weights(cfg.baseline_weights)
        load_baseline_weights(model, cfg.baseline_weights, reinit_head=True)  # or one line
        reset = [k for k, v in state.items() if k in expected and v.shape != expected[k].shape]
        if reset:
            notes.append(
                f"seed {seed}: classifier head ({', '.join(reset)}) of {cfg.baseline_weights} "
                f"re-initialised for {data.num_classes} classes"
            )
    if cfg.source.epochs > 0:
        step = SourceStep(cfg.data.pad, cfg.data.flip)
        fit(
            model,
            domains.train,
            cfg.source,
            step,
            out / f"seed{seed}" / "source",
            seed,
            tag=f"seed {seed} source",
            progress=progress,
        )
    return model.eval(), notes


def check_model(model: nn.Module, probe: torch.Tensor, name: str) -> None:
    try:
        with torch.no_grad():
            model.eval()(probe)
    except Exception as e:  # noqa: BLE001 - whatever the model raises becomes one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        size = "x".join(str(s) for s in probe.shape[1:])
        raise ValueError(f"model {name} cannot take the data's {size} images ({first})") from None


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
    domains, data = build_domains(cfg)
    probe = domains.test.tensors[0][: min(64, len(domains.test))].to(device)
    kwargs = dict(cfg.model.kwargs, num_classes=data.num_classes, in_chans=data.in_chans)
    check_model(create_model(cfg.model.name, **kwargs).to(device), probe[:2], cfg.model.name)
    out = prepare_run_folder(cfg.output, to_dict(cfg), overwrite, type(cfg))
    report: dict[str, Any] = {
        "task": "adapt",
        "config": to_dict(cfg),
        "device": str(device),
        "target_images": len(domains.indices),
        "test_images": len(domains.test),
        "per_seed": {},
        "notes": [],
    }
    conditions = [{"corruption": c, "severity": s} for c in cfg.corruptions for s in cfg.severities]
    targets = {describe(c): domains.target(c["corruption"], c["severity"]) for c in conditions}
    cost_models: dict[str, nn.Module] = {}
    for seed in cfg.seeds:
        model, notes = source_model(cfg, data, domains, seed, out, progress)
        report["notes"] += notes
        rows: dict[str, Any] = {"clean_acc1": accuracy(model, domains.test, cfg.data.batch_size)}
        report["has_batchnorm"] = bn = has_batchnorm(model)
        for key, (images, test) in targets.items():
            rows[key] = {}
            for arm in cfg.arms:
                result = adapt_arm(arm, model, domains, images, cfg, bn)
                if result is None:  # the anchor does not exist for this model
                    continue
                adapted, seconds = result
                rows[key][arm] = {
                    "acc1": accuracy(adapted, test, cfg.data.batch_size),
                    "adapt_s": seconds,
                    "images": 0 if arm == "none" else len(domains.indices),
                }
                if "cost" not in report:
                    cost_models[arm] = adapted
            if "cost" not in report:
                report["cost"] = inference_cost(cost_models, probe, cfg.latency_repeats)
                cost_models.clear()
        report["per_seed"][str(seed)] = rows
        report["summary"] = aggregate(report["per_seed"])
        write_reports(report, out)
    report["wall_s"] = time.perf_counter() - start
    write_reports(report, out)
    return report


TASK = Task(
    name="adapt",
    help="label-free adaptation to a corrupted domain: DenoiseRep vs BN adaptation and TENT",
    Config=AdaptConfig,
    run=run_adapt,
    table=markdown_table,
    default_config="adapt_fashion.yaml",
    writer=write_reports,
)
