"""``denoiserep segment``: FCN / DeepLabV3 / LR-ASPP with DenoiseRep on ADE20K-layout data.

Data: an ``ADEChallengeData2016`` folder if given, else the Fashion-MNIST canvas (built on
first use). Arms: baseline, control, DenoiseRep (fused) over seeds; metrics: mIoU, aAcc,
mAcc and Boundary IoU (percent). Models take ImageNet-normalised images (:func:`normalize`).
Random scale / crop / flip run in the task's ``augment`` with the trainer's generator, so
a resumed run replays the same augmentation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import denoiserep as dr
from denoiserep.data.augment import BatchRows
from denoiserep.data.constants import IMAGENET_MEAN, IMAGENET_STD
from denoiserep.engine import dist
from denoiserep.engine.arms import ArmsConfig
from denoiserep.engine.config import to_dict
from denoiserep.engine.dist import resolve_device
from denoiserep.engine.trainer import TrainConfig
from denoiserep.tasks.contract import Task

from .ade20k import IGNORE_INDEX, ADE20KSegmentation, JointRandomTransform
from .coco import detection_collate
from .common import (
    CanvasConfig,
    DenseExperiment,
    ensure_canvas,
    markdown_table,
    probe_batch,
    run_dense,
    write_results,
)
from .metrics import SegmentationMetric
from .models import SEGMENTATION_BACKBONE, SEGMENTERS, build_segmenter
from .visualize import draw_label_map, save_grid

COLUMNS = {"mIoU": "mIoU", "aAcc": "aAcc", "mAcc": "mAcc", "B-IoU": "B-IoU"}
TASK_NAME = "segment"


@dataclass
class DataConfig:
    """The canvas, or an ADE20K folder (``ade20k_root``, ``num_classes``); augmentation."""

    canvas: CanvasConfig = field(default_factory=CanvasConfig)
    ade20k_root: str | None = None
    num_classes: int = 150
    crop_size: int | None = None
    scale_range: list[float] = field(default_factory=lambda: [0.75, 1.5])
    flip: bool = True
    eval_batch_size: int = 16
    boundary_dilation_ratio: float = 0.02
    figure_images: int = 4

    def __post_init__(self) -> None:
        if self.ade20k_root and self.crop_size is None:
            raise ValueError("ADE20K images differ in size: set data.crop_size (e.g. 512)")


@dataclass
class ModelConfig:
    """Arguments of :func:`denoiserep.dense.models.build_segmenter`; ``aux_weight`` weighs the
    auxiliary head's loss when ``aux_loss`` is on."""

    name: str = "fcn_resnet50"
    aux_loss: bool = False
    bn_momentum: float | None = None
    aux_weight: float = 0.5
    pretrained: bool | str = False
    checkpoint: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:  # fail before the data is built, not after
        if self.name not in SEGMENTERS:
            choices = ", ".join(SEGMENTERS)
            raise ValueError(f"unknown segmentation model {self.name!r}; choose one of {choices}")


@dataclass
class SegmentConfig(ArmsConfig):
    """Everything one ``denoiserep segment`` run does."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    baseline: TrainConfig = field(
        default_factory=lambda: TrainConfig(optimizer="sgd", lr=0.01, weight_decay=1e-4)
    )
    finetune: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            optimizer="sgd", lr=0.001, weight_decay=1e-4, phases="alternating", denoiser_epochs=1
        )
    )
    denoise: dr.DenoiseConfig = field(
        default_factory=lambda: dr.DenoiseConfig(targets=list(SEGMENTATION_BACKBONE))
    )
    output: str = "runs/segment"


def normalize(images: torch.Tensor) -> torch.Tensor:
    """ImageNet mean / std normalisation of a float image batch in [0, 1] (N x 3 x H x W)."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device, dtype=images.dtype)
    std = torch.tensor(IMAGENET_STD, device=images.device, dtype=images.dtype)
    return (images - mean[:, None, None]) / std[:, None, None]


class SegmentationStep:
    """Trainer task on (list of images, list of label maps) batches: random scale, crop to
    ``crop_size`` and flip per image, then cross-entropy (+ the auxiliary head's)."""

    def __init__(
        self,
        crop_size: int,
        scale_range: tuple[float, float] = (0.75, 1.5),
        flip: bool = True,
        aux_weight: float = 0.5,
    ) -> None:
        self.transform = JointRandomTransform(crop_size, tuple(scale_range), 0.5 if flip else 0.0)
        self.aux_weight = aux_weight

    def to_device(self, batch: Any, device: torch.device) -> tuple[list, list]:
        images, masks = batch
        return [im.to(device) for im in images], [m.to(device) for m in masks]

    def augment(
        self, batch: Any, generator: torch.Generator, rows: BatchRows | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(batch[0])
        seeds = torch.randint(2**62, (n if rows is None else rows.total,), generator=generator)
        seeds = seeds if rows is None else seeds[rows.index]
        pairs = []
        for image, mask, seed in zip(*batch, seeds.tolist(), strict=True):
            with torch.random.fork_rng(devices=[]):  # JointRandomTransform draws from torch's RNG
                torch.manual_seed(seed)
                pairs.append(self.transform(image, mask))
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])

    def forward(self, model: nn.Module, batch: Any) -> Any:
        """The model's outputs on an augmented batch (one tensor); on an unaugmented one (a
        list of images of any size: the closed-form fit, calibration), one output per image."""
        images = batch[0]
        if isinstance(images, (list, tuple)):
            return [model(normalize(image.unsqueeze(0))) for image in images]
        return model(normalize(images))

    def loss(self, output: Any, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        target = batch[1]
        main = F.cross_entropy(output["out"].float(), target, ignore_index=IGNORE_INDEX)
        logs = {"ce": main.item()}
        total = main
        if output.get("aux") is not None:
            aux = F.cross_entropy(output["aux"].float(), target, ignore_index=IGNORE_INDEX)
            logs["aux_ce"] = aux.item()
            total = total + self.aux_weight * aux
        return total, logs


@torch.no_grad()
def predict(model: nn.Module, images: list[torch.Tensor]) -> list[torch.Tensor]:
    """Label maps (on the CPU) of ``model`` in eval mode; equal-sized images run as one batch."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    if len({tuple(im.shape) for im in images}) == 1:
        logits = model(normalize(torch.stack(images).to(device)))["out"]
        labels = list(logits.argmax(1).cpu())
    else:
        labels = [model(normalize(im[None].to(device)))["out"][0].argmax(0).cpu() for im in images]
    model.train(was_training)
    return labels


def evaluate_segmentation(
    model: nn.Module,
    dataset: ADE20KSegmentation,
    batch_size: int = 16,
    boundary_dilation_ratio: float = 0.02,
    max_images: int | None = None,
) -> dict[str, float]:
    """mIoU, aAcc, mAcc and B-IoU in percent over ``dataset`` at its native resolution (its
    first ``max_images`` images; None: all)."""
    metric = SegmentationMetric(dataset.num_classes, IGNORE_INDEX, boundary_dilation_ratio)
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    for start in range(0, n, batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, n))]
        for label_map, (_, target) in zip(
            predict(model, [im for im, _ in items]), items, strict=True
        ):
            metric.update(label_map, target)
    scores = metric.compute()
    return {k: 100.0 * float(scores[k]) for k in COLUMNS}


def build_datasets(cfg: DataConfig) -> tuple[ADE20KSegmentation, ADE20KSegmentation, int]:
    """(train, val, crop size): the ADE20K folder, or the canvas (built if missing)."""
    if cfg.ade20k_root:
        root, num_classes, crop = cfg.ade20k_root, cfg.num_classes, cfg.crop_size
    else:
        canvas = ensure_canvas(cfg.canvas)
        root, num_classes = canvas.ade_root, canvas.num_classes
        crop = cfg.crop_size or cfg.canvas.canvas_size
    train = ADE20KSegmentation(root, "training", num_classes=num_classes)
    val = ADE20KSegmentation(root, "validation", num_classes=num_classes)
    return train, val, crop


def run_segmentation(
    cfg: SegmentConfig, overwrite: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Run the protocol of ``cfg``; write results.json / results.md / predictions.png."""
    device = resolve_device(cfg.device)
    train_set, val_set, crop = build_datasets(cfg.data)
    m = cfg.model
    experiment = DenseExperiment(
        build_model=lambda: build_segmenter(
            m.name,
            train_set.num_classes,
            aux_loss=m.aux_loss,
            bn_momentum=m.bn_momentum,
            pretrained=m.pretrained,
            checkpoint=m.checkpoint,
            **m.kwargs,
        ),
        train_set=train_set,
        train_step=SegmentationStep(crop, cfg.data.scale_range, cfg.data.flip, m.aux_weight),
        test_set=val_set,
        evaluate_on=lambda model, dataset, n: evaluate_segmentation(
            model, dataset, cfg.data.eval_batch_size, cfg.data.boundary_dilation_ratio, n
        ),
        robustness_metric="mIoU",
        probe=normalize(probe_batch(val_set).to(device)),
        features=lambda model, x: [model(x)["out"]],
        device=device,
        collate_fn=detection_collate,
    )
    header = {"task": TASK_NAME, "config": to_dict(cfg)}
    report = run_dense(cfg, experiment, header, write_reports, overwrite, progress)
    if dist.is_main():
        out = Path(cfg.output)
        shown = [val_set[i] for i in range(min(cfg.data.figure_images, len(val_set)))]
        images, targets = [im for im, _ in shown], [t for _, t in shown]
        rows = {"ground truth": targets}
        # only labelled pixels are trained and scored
        for arm, model in experiment.first_models.items():
            labels = zip(predict(model, images), targets, strict=True)
            rows[arm] = [torch.where(t == IGNORE_INDEX, t, p) for p, t in labels]
        k = val_set.num_classes
        save_grid(
            {
                arm: [draw_label_map(im, lab, k) for im, lab in zip(images, labels, strict=True)]
                for arm, labels in rows.items()
            },
            out / "predictions.png",
            title=f"{m.name}: predicted classes on labelled pixels",
        )
    return report


def write_reports(report: dict[str, Any], out: Path) -> None:
    """results.json and results.md (predictions.png is drawn at the end of a run)."""
    write_results(report, out, COLUMNS)


def segmentation_table(report: dict[str, Any]) -> str:
    """The Markdown table of a segmentation report."""
    return markdown_table(report, COLUMNS)


TASK = Task(
    name=TASK_NAME,
    help="segmentation (FCN, DeepLabV3, LR-ASPP, SegFormer) with DenoiseRep",
    Config=SegmentConfig,
    run=run_segmentation,
    table=segmentation_table,
    default_config="segment_canvas.yaml",
    report_files=("results.json", "results.md", "predictions.png"),
    writer=write_reports,
)
