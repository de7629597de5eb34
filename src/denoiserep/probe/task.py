"""``denoiserep probe``: linear-probe evaluation of a frozen backbone.

The model (``model.name`` with its weights: ``pretrained`` / ``checkpoint``, or ``weights``: a
model a ``denoiserep classify`` run saved, e.g. ``runs/demo/seed0/denoiserep/fused.safetensors``)
is frozen; its penultimate features of the train split fit a closed-form ridge classifier,
scored on the test split. Added through the task contract alone: this package, a packaged
config and one registry line.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from denoiserep.data.augment import image_transforms
from denoiserep.data.classification import build_classification_data
from denoiserep.data.images import ListImageDataset
from denoiserep.engine.config import check_seeds, to_dict
from denoiserep.engine.dist import resolve_device
from denoiserep.engine.report import write_json
from denoiserep.engine.runs import prepare_run_folder
from denoiserep.models import preprocessing
from denoiserep.models.factory import create_model
from denoiserep.tasks.contract import Task
from denoiserep.util.errors import first_line
from denoiserep.util.state_dict import load_state_checked

from .linear import RidgeProbe, penultimate_features


@dataclass
class DataConfig:
    """A classification dataset (folder datasets take the model's evaluation transform)."""

    name: str = "digits"  # dataset name, as `denoiserep classify` reads it (data.name)
    root: str | None = None  # dataset folder (None: the dataset's default)
    options: dict[str, Any] = field(default_factory=dict)  # keyword options of the reader
    batch_size: int = 256  # images per forward pass of the frozen model


@dataclass
class ModelConfig:
    """The frozen model: a timm name, its keyword overrides and its weights."""

    name: str = "vit_tiny_patch16_224"  # a timm model name (with forward_head(pre_logits=True))
    kwargs: dict[str, Any] = field(default_factory=dict)  # keyword overrides of the model
    pretrained: bool | str = False  # the library's default weights (or a weights name)
    checkpoint: str | None = None  # a local weights file, loaded as `classify` loads one
    weights: str | None = None  # a model a classify run saved (e.g. its fused.safetensors)


@dataclass
class ProbeConfig:
    """Everything one ``denoiserep probe`` run does."""

    data: DataConfig = field(default_factory=DataConfig)  # the dataset (train: fit, test: score)
    model: ModelConfig = field(default_factory=ModelConfig)  # the frozen model and its weights
    l2: float = 1e-3  # ridge penalty per sample, on standardised features (> 0)
    seed: int = 0  # seeds a model built without weights (and a head a checkpoint lacks)
    output: str = "runs/probe"  # output folder (results.json, results.md; --output overrides)
    device: str = "auto"  # `auto` (CUDA if available, else CPU), `cpu`, `cuda`, `cuda:N`

    def __post_init__(self) -> None:
        if self.l2 <= 0:
            raise ValueError(f"l2 must be > 0, got {self.l2}")
        check_seeds([self.seed])
        if self.data.batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {self.data.batch_size}")


def build_frozen_model(cfg: ModelConfig, num_classes: int, in_chans: int) -> nn.Module:
    """The model with its weights, in eval mode, every parameter frozen."""
    kwargs = dict(cfg.kwargs, num_classes=num_classes, in_chans=in_chans)
    if cfg.pretrained:
        kwargs["pretrained"] = cfg.pretrained
    if cfg.checkpoint:
        kwargs["checkpoint"] = cfg.checkpoint
    model = create_model(cfg.name, **kwargs)
    if cfg.weights:
        load_state_checked(model, cfg.weights)
    return model.eval().requires_grad_(False)


def fingerprint(model: nn.Module) -> str:
    """A digest of every parameter and buffer: equal digests, unchanged weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def load_data(cfg: ProbeConfig, model: nn.Module, data: Any) -> None:
    """Give folder datasets the model's evaluation transform (train and test alike)."""
    if isinstance(data.train, ListImageDataset):
        pre = preprocessing(model)
        size = pre["input_size"]
        size = size[-1] if isinstance(size, list | tuple) else size
        _, test = image_transforms(
            size, pre["mean"], pre["std"], pre.get("interpolation", "bilinear")
        )
        data.train.transform = data.test.transform = test


def run_probe(cfg: ProbeConfig, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Fit the linear probe of ``cfg``; write results.json / results.md; return the report."""
    start = time.perf_counter()
    device = resolve_device(cfg.device)
    data = build_classification_data(cfg.data.name, cfg.data.root, **cfg.data.options)
    torch.manual_seed(cfg.seed)  # the same random init (or fresh head) every run
    model = build_frozen_model(cfg.model, data.num_classes, data.in_chans)
    load_data(cfg, model, data)
    before = fingerprint(model)
    model = model.to(device)
    try:
        x_train, y_train = penultimate_features(model, data.train, cfg.data.batch_size, device)
        x_test, y_test = penultimate_features(model, data.test, cfg.data.batch_size, device)
    except Exception as e:  # noqa: BLE001 - whatever the model raises becomes one line
        name = cfg.model.name
        raise ValueError(f"model {name} cannot take the data's images ({first_line(e)})") from None
    out = prepare_run_folder(cfg.output, to_dict(cfg), overwrite, type(cfg))  # input was good
    probe = RidgeProbe(cfg.l2).fit(x_train, y_train, data.num_classes)
    summary = {
        "train_acc1": probe.accuracy(x_train, y_train),
        "test_acc1": probe.accuracy(x_test, y_test),
        "chance_acc1": 100.0 / data.num_classes,
    }
    report = {
        "task": "probe",
        "config": to_dict(cfg),
        "device": str(device),
        "summary": summary,
        "features": int(x_train.shape[1]),
        "train_images": len(y_train),
        "test_images": len(y_test),
        "backbone_unchanged": fingerprint(model) == before,
        "wall_s": time.perf_counter() - start,
    }
    write_reports(report, out)
    return report


def markdown_table(report: dict[str, Any]) -> str:
    """The probe's accuracy (train, test, chance) as a Markdown table."""
    s, m = report["summary"], report["config"]["model"]
    weights = m.get("weights") or m.get("checkpoint")
    weights = weights or ("pretrained" if m.get("pretrained") else "random init")
    lines = [
        f"linear probe of {m['name']} ({weights}), frozen: {report['features']} features, "
        f"{report['train_images']} train / {report['test_images']} test images",
        "",
        "| split | top-1 (%) |",
        "| --- | --- |",
        f"| train | {s['train_acc1']:.2f} |",
        f"| test | {s['test_acc1']:.2f} |",
        f"| chance | {s['chance_acc1']:.2f} |",
    ]
    return "\n".join(lines) + "\n"


def write_reports(report: dict[str, Any], out: Path) -> None:
    """results.json and results.md."""
    write_json(report, out)
    (Path(out) / "results.md").write_text(markdown_table(report))


TASK = Task(
    name="probe",
    help="linear-probe accuracy of a frozen (fused) backbone",
    Config=ProbeConfig,
    run=run_probe,
    table=markdown_table,
    default_config="probe_digits.yaml",
    writer=write_reports,
)
