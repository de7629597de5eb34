"""``denoiserep classify`` / ``demo``: the paper's classification protocol with a control arm.

The arms (baseline, control, DenoiseRep) and seeds run in :mod:`denoiserep.engine.arms`;
this module supplies the data, the model and the evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from denoiserep.data.augment import image_transforms
from denoiserep.data.classification import default_transform
from denoiserep.data.images import ListImageDataset
from denoiserep.engine.arms import ArmsConfig, start_run
from denoiserep.engine.config import to_dict
from denoiserep.engine.dist import resolve_device
from denoiserep.engine.experiment import Experiment, RunPlan, Variant
from denoiserep.models import preprocessing
from denoiserep.models.factory import create_model
from denoiserep.models.preprocess import check_overrides, override
from denoiserep.models.weights import check_remap
from denoiserep.tasks.contract import Task
from denoiserep.util.errors import first_line

from .datasets import ArrayImageDataset, build_classification_data
from .report import markdown_table, write_reports
from .step import ClassificationStep, evaluate, predict

TASK_NAME = "classify"


@dataclass
class DataConfig:
    """Dataset by name (see ``build_classification_data``), reader options, augmentation.

    In-memory datasets (digits, Fashion-MNIST, CIFAR) keep their native size and train with
    the batch-level ``pad`` / ``flip``. Folder datasets (ImageNet layout, CUB, Pet, Flowers)
    follow the model's pretrained preprocessing (input size, mean / std, interpolation):
    RandomResizedCrop (``random_resized_crop`` scale range) + flip for training, resize and
    centre crop for evaluation; ``input_size`` overrides the model's, and ``mean`` / ``std``
    (per channel), ``interpolation`` and ``crop_pct`` override what the weights imply (a
    checkpoint trained with other statistics than its model tag's). In-memory datasets take
    ``mean`` / ``std`` in place of their own statistics. What was used is recorded as
    ``preprocessing`` in results.json. ``workers``: evaluation loader processes (training ones:
    ``baseline.workers`` / ``finetune.workers``).
    """

    name: str = "digits"
    root: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    pad: int = 0
    flip: bool = False
    eval_batch_size: int = 256
    input_size: int | None = None
    random_resized_crop: list[float] = field(default_factory=lambda: [0.08, 1.0])
    workers: int = 0
    mean: list[float] | None = None
    std: list[float] | None = None
    interpolation: str | None = None
    crop_pct: float | None = None

    def __post_init__(self) -> None:
        lo, hi = self.random_resized_crop
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"random_resized_crop is a scale range in (0, 1], got {[lo, hi]}")
        check_overrides(self.mean, self.std, self.interpolation, self.crop_pct)


@dataclass
class ModelConfig:
    """A timm model name (or ``tv:<name>``, ``hf:<id>``), weights and keyword overrides.

    ``pretrained``: ``true`` for the library's default weights, or a torchvision weights name
    (``IMAGENET1K_V2``); ``checkpoint``: a local weights file (the offline route);
    ``checkpoint_key``: the entry of a training checkpoint to load (``state_dict``, ``model``,
    ``model_ema``, ...); ``checkpoint_remap``: ordered ``[regex, replacement]`` pairs applied to
    its keys (see ``denoiserep.models.create_model``).
    """

    name: str = "vit_tiny_patch16_224"
    pretrained: bool | str = False
    checkpoint: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    checkpoint_remap: list[Any] | None = None
    checkpoint_key: str | None = None

    def __post_init__(self) -> None:  # a bad remap fails before any data is read
        check_remap(self.checkpoint_remap)


@dataclass
class ClassifyConfig(ArmsConfig):
    """Everything one ``denoiserep classify`` run does (arms and training: ``ArmsConfig``)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    label_smoothing: float = 0.1
    output: str = "runs/classify"


def follow_model(data: Any, model: nn.Module, cfg: DataConfig) -> dict[str, Any]:
    """Give folder datasets the model's preprocessing (with the config's overrides); return
    what was used."""
    pre = preprocessing(
        model, mean=cfg.mean, std=cfg.std, interpolation=cfg.interpolation, crop_pct=cfg.crop_pct
    )
    if cfg.input_size:
        pre["input_size"] = cfg.input_size
    size = pre["input_size"]
    size = size[-1] if isinstance(size, list | tuple) else size
    data.train.transform, data.test.transform = image_transforms(
        size,
        pre["mean"],
        pre["std"],
        pre.get("interpolation", "bilinear"),
        pre.get("crop_pct", 0.875),
        tuple(cfg.random_resized_crop),
    )
    return pre


def restate(data: Any, cfg: DataConfig) -> dict[str, Any]:
    """In-memory datasets normalised with ``data.mean`` / ``data.std`` instead of their own
    statistics; return what is used. Resizing settings are refused: these keep their size."""
    if cfg.interpolation is not None or cfg.crop_pct is not None:
        raise ValueError(
            f"data.interpolation and data.crop_pct set how folder datasets are resized; "
            f"{cfg.name} is held in memory at its native size: unset them"
        )
    if cfg.mean is None:
        return {"mean": list(data.mean), "std": list(data.std)}
    sets = (data.train, data.test)
    if not all(isinstance(d, ArrayImageDataset) for d in sets):
        raise ValueError(f"data.mean / data.std: {cfg.name} has no image transform to set")
    fake = {"input_size": (data.in_chans, data.img_size, data.img_size)}
    pre = override({**fake, "mean": data.mean, "std": data.std}, cfg.mean, cfg.std)
    for dataset in sets:
        dataset.transform = default_transform(pre["mean"], pre["std"])
    return {"mean": list(pre["mean"]), "std": list(pre["std"])}


def materialize(dataset: Dataset) -> Dataset:
    """In-memory datasets become one tensor pair (fast epochs); folder datasets stay lazy."""
    if not isinstance(dataset, ArrayImageDataset):
        return dataset
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    return TensorDataset(torch.stack(xs), torch.tensor(ys))


def check_accepts(model: nn.Module, probe: torch.Tensor, name: str) -> None:
    """Refuse, before any folder or training, a model that cannot take the data's images
    (e.g. timm's ``vit_tiny_patch16_224``, built for 224 x 224, on 8 x 8 digits)."""
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(probe)
    except Exception as e:  # noqa: BLE001 - whatever the model raises becomes one line
        size = "x".join(str(s) for s in probe.shape[1:])
        first = first_line(e)
        raise ValueError(
            f"model {name} cannot take the data's {size} images ({first}); set its input size "
            "in model.kwargs (timm ViTs: {img_size: ..., patch_size: ...}, as digits_demo.yaml "
            "does) or choose another model.name"
        ) from None
    finally:
        model.train(was_training)


class ClassificationExperiment(Experiment):
    """Data, model and evaluation of a classification run."""

    def __init__(self, cfg: ClassifyConfig) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        data = build_classification_data(cfg.data.name, cfg.data.root, **cfg.data.options)
        self.num_classes, self.in_chans = data.num_classes, data.in_chans
        model = self.build_model()  # a wrong name or weights file fails here, before any folder
        if isinstance(data.train, ListImageDataset):
            self.preprocessing: dict[str, Any] = follow_model(data, model, cfg.data)
        else:
            self.preprocessing = restate(data, cfg.data)
        self.train_set, self.test_set = materialize(data.train), materialize(data.test)
        self.image_stats = (self.preprocessing["mean"], self.preprocessing["std"])
        self.train_step = ClassificationStep(cfg.label_smoothing, cfg.data.pad, cfg.data.flip)
        n = min(64, len(self.test_set))
        self.probe = next(iter(DataLoader(self.test_set, batch_size=n)))[0].to(self.device)
        check_accepts(model, self.probe[:2].cpu(), cfg.model.name)
        self._baseline_predictions: torch.Tensor | None = None

    @property
    def convert_input(self) -> torch.Tensor:
        return self.probe[:2]

    def build_model(self) -> nn.Module:
        m = self.cfg.model
        kwargs = dict(m.kwargs, num_classes=self.num_classes, in_chans=self.in_chans)
        if m.pretrained:
            kwargs["pretrained"] = m.pretrained
        if m.checkpoint:
            kwargs["checkpoint"] = m.checkpoint
        if m.checkpoint_remap is not None:
            kwargs["checkpoint_remap"] = m.checkpoint_remap
        if m.checkpoint_key is not None:
            kwargs["checkpoint_key"] = m.checkpoint_key
        return create_model(m.name, **kwargs)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return evaluate(
            model, self.test_set, self.cfg.data.eval_batch_size, workers=self.cfg.data.workers
        )

    robustness_metric = "acc1"

    def evaluate_under(self, model: nn.Module, condition: Any) -> dict[str, float]:
        """Accuracy on the test set under a corruption (or clean, for feature noise)."""
        return evaluate(
            model,
            condition(self.test_set, self.image_stats),
            self.cfg.data.eval_batch_size,
            workers=self.cfg.data.workers,
        )

    def fit_options(self, arm: str, train: Any, seed: int) -> dict[str, Any]:
        return {"eval_fn": lambda model: {f"test_{k}": v for k, v in self.evaluate(model).items()}}

    def arm_done(self, seed: int, arm: str, model: nn.Module) -> None:
        if arm == "baseline":
            self._baseline_predictions = self._predict(model)

    def _predict(self, model: nn.Module) -> torch.Tensor:
        return predict(model, self.test_set, self.cfg.data.eval_batch_size)

    def compare_to_baseline(self, model: nn.Module, baseline: nn.Module) -> dict[str, float]:
        """The share of test images whose predicted class differs from the baseline's (%)."""
        reference = self._baseline_predictions
        if reference is None:
            reference = self._predict(baseline)
        changed = self._predict(model) != reference
        return {"changed_pct": 100.0 * changed.float().mean().item()}


def run_arms_for(
    cfg: ClassifyConfig,
    overwrite: bool,
    progress: bool,
    run_config: Any,
    write: Any,
    variants: list[Variant] | None = None,
    task_name: str = TASK_NAME,
) -> tuple[dict[str, Any], ClassificationExperiment]:
    """Set up the experiment (fails before any folder exists), claim the folder, run the arms."""
    experiment = ClassificationExperiment(cfg)
    header = {
        "task": task_name,
        "config": to_dict(run_config),
        "preprocessing": experiment.preprocessing,
    }
    plan = RunPlan(
        arms=cfg,
        config=run_config,
        header=header,
        write=write,
        variants=variants,
        has_weights=bool(cfg.model.pretrained or cfg.model.checkpoint),
    )
    report = start_run(experiment, plan, overwrite=overwrite, progress=progress)
    return report, experiment


def run_classification(
    cfg: ClassifyConfig, overwrite: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Run the protocol of ``cfg``; write results.json / results.md / curves.png; return results."""
    report, _ = run_arms_for(cfg, overwrite, progress, cfg, write_reports)
    return report


TASK = Task(
    name=TASK_NAME,
    help="classification: baseline, control and DenoiseRep arms",
    Config=ClassifyConfig,
    run=run_classification,
    table=markdown_table,
    default_config="digits_demo.yaml",
    report_files=("results.json", "results.md", "curves.png"),
    writer=write_reports,
)
