"""``denoiserep detect``: Faster / Mask R-CNN with DenoiseRep on COCO-format data.

Data: COCO-format folders if all four paths are given, else the Fashion-MNIST canvas
(built on first use). Arms: baseline, control, DenoiseRep (fused) over seeds; metrics:
COCO box AP / AP50 / AP75 (and mask AP for Mask R-CNN) via pycocotools, in percent.

Training the detector needs its targets (torchvision's detectors compute their losses
inside ``forward`` in training mode). In the label-free ``denoiser`` phase the trainer puts
the model in eval mode (only the denoise layers train), and :class:`DetectionStep` then
calls the detector WITHOUT targets: it runs its inference path, no label is read, and the
denoisers learn from the noise-prediction loss of that forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import denoiserep as dr
from denoiserep.data.augment import BatchRows
from denoiserep.engine import dist
from denoiserep.engine.arms import ArmsConfig
from denoiserep.engine.config import to_dict
from denoiserep.engine.dist import resolve_device
from denoiserep.engine.trainer import TrainConfig
from denoiserep.tasks.contract import Task

from .coco import CocoDetection, coco_evaluate, detection_collate
from .common import (
    CanvasConfig,
    DenseExperiment,
    ensure_canvas,
    markdown_table,
    probe_batch,
    run_dense,
    write_results,
)
from .models import (
    DEFAULT_ANCHOR_SIZES,
    DETECTION_BACKBONE,
    DETECTION_BACKBONES,
    DETECTORS,
    build_detector,
    detection_features,
)
from .visualize import draw_detections, save_grid

TASK_NAME = "detect"
_COCO_PATHS = ("train_images", "train_annotations", "val_images", "val_annotations")
_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


@dataclass
class DataConfig:
    """The canvas, or COCO-format folders when all four paths are set; augmentation; figure."""

    canvas: CanvasConfig = field(default_factory=CanvasConfig)
    train_images: str | None = None
    train_annotations: str | None = None
    val_images: str | None = None
    val_annotations: str | None = None
    flip: bool = True
    eval_batch_size: int = 8
    figure_images: int = 4
    figure_score_threshold: float = 0.5

    def __post_init__(self) -> None:
        given = [k for k in _COCO_PATHS if getattr(self, k)]
        if given and len(given) != len(_COCO_PATHS):
            missing = [k for k in _COCO_PATHS if k not in given]
            raise ValueError(f"COCO data needs all of {', '.join(_COCO_PATHS)}; missing {missing}")


@dataclass
class ModelConfig:
    """Arguments of :func:`denoiserep.dense.models.build_detector`."""

    arch: str = "maskrcnn"
    backbone: str = "resnet50"
    min_size: int = 800
    max_size: int = 1333
    anchor_sizes: list[int] = field(default_factory=lambda: list(DEFAULT_ANCHOR_SIZES))
    trainable_layers: int = 5
    frozen_bn: bool = False
    pretrained: bool | str = False
    checkpoint: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:  # fail before the data is built, not after
        if self.arch not in DETECTORS:
            raise ValueError(
                f"unknown detector {self.arch!r}; choose one of {', '.join(DETECTORS)}"
            )
        if self.backbone not in DETECTION_BACKBONES:
            choices = ", ".join(DETECTION_BACKBONES)
            raise ValueError(
                f"unknown detection backbone {self.backbone!r}; choose one of {choices}"
            )


@dataclass
class DetectConfig(ArmsConfig):
    """Everything one ``denoiserep detect`` run does."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    baseline: TrainConfig = field(
        default_factory=lambda: TrainConfig(optimizer="sgd", lr=0.02, weight_decay=1e-4)
    )
    finetune: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            optimizer="sgd", lr=0.002, weight_decay=1e-4, phases="alternating", denoiser_epochs=1
        )
    )
    denoise: dr.DenoiseConfig = field(
        default_factory=lambda: dr.DenoiseConfig(targets=list(DETECTION_BACKBONE))
    )
    output: str = "runs/detect"


def hflip(image: torch.Tensor, target: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
    """Mirror an image and its boxes (xyxy) and masks left-right."""
    width = image.shape[-1]
    target = dict(target)
    boxes = target["boxes"].clone()
    boxes[:, 0], boxes[:, 2] = width - target["boxes"][:, 2], width - target["boxes"][:, 0]
    target["boxes"] = boxes
    if "masks" in target:
        target["masks"] = target["masks"].flip(-1)
    return image.flip(-1), target


class DetectionStep:
    """Trainer task for torchvision detectors on (list of images, list of targets) batches."""

    def __init__(self, flip: bool = True) -> None:
        self.flip = flip

    def to_device(self, batch: Any, device: torch.device) -> tuple[list, list]:
        images, targets = batch
        moved = [
            {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in t.items()}
            for t in targets
        ]
        return [im.to(device) for im in images], moved

    def augment(
        self, batch: Any, generator: torch.Generator, rows: BatchRows | None = None
    ) -> tuple[list, list]:
        if not self.flip:
            return batch
        n = len(batch[0])
        flips = torch.rand(n if rows is None else rows.total, generator=generator) < 0.5
        flips = (flips if rows is None else flips[rows.index]).tolist()
        pairs = [hflip(im, t) if f else (im, t) for im, t, f in zip(*batch, flips, strict=True)]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    def forward(self, model: nn.Module, batch: Any) -> Any:
        """Training mode: the loss dict (targets given). Eval mode (phase ``denoiser``):
        detections, computed without targets so no label is read."""
        images, targets = batch
        if dr.unwrap(model).training:
            return model(images, targets)
        return model(images)

    def loss(self, output: Any, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        if not isinstance(output, dict):
            raise RuntimeError("the detector returned detections, not losses: it is in eval mode")
        total = torch.stack([v.float() for v in output.values()]).sum()
        return total, {k: v.item() for k, v in output.items()}


@torch.no_grad()
def predict(
    model: nn.Module, dataset: CocoDetection, indices: list[int], batch_size: int = 8
) -> list[dict[str, Any]]:
    """Detections of ``model`` (eval mode) for ``dataset[indices]``, on the CPU, with
    ``image_id``; masks are thresholded at 0.5 to booleans to keep memory small."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    results = []
    for start in range(0, len(indices), batch_size):
        items = [dataset[i] for i in indices[start : start + batch_size]]
        outputs = model([image.to(device) for image, _ in items])
        for (_, target), out in zip(items, outputs, strict=True):
            out = {k: v.cpu() for k, v in out.items()}
            if "masks" in out:
                out["masks"] = out["masks"] > 0.5
            results.append({"image_id": target["image_id"], **out})
    model.train(was_training)
    return results


def evaluate_detection(
    model: nn.Module, dataset: CocoDetection, batch_size: int = 8, max_images: int | None = None
) -> dict[str, float]:
    """COCO AP, AP50, AP75, APs, APm, APl (percent; -1 where pycocotools has no ground truth)
    for boxes, and for masks when the model predicts them; keys like ``bbox_AP``. Only the
    first ``max_images`` images are predicted and scored (None: all)."""
    iou_types = ("bbox", "segm") if model.roi_heads.has_mask() else ("bbox",)
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    predictions = predict(model, dataset, list(range(n)), batch_size)
    metrics = coco_evaluate(dataset.coco, predictions, iou_types, dataset.category_map)
    return {
        f"{iou}_{name}": 100.0 * v if v >= 0 else v
        for iou, stats in metrics.items()
        for name, v in stats.items()
    }


def build_datasets(cfg: DataConfig) -> tuple[CocoDetection, CocoDetection]:
    """(train, val) COCO datasets: the given folders, or the canvas (built if missing)."""
    if cfg.train_images:
        return (
            CocoDetection(cfg.train_images, cfg.train_annotations),
            CocoDetection(cfg.val_images, cfg.val_annotations),
        )
    canvas = ensure_canvas(cfg.canvas)
    return tuple(
        CocoDetection(canvas.coco_img_dir(split), canvas.coco_ann_file(split))
        for split in ("train", "val")
    )


def metric_columns(arch: str) -> dict[str, str]:
    """results.md columns: box AP / AP50 / AP75, and mask ones for Mask R-CNN."""
    kinds = [("bbox", "box")] + ([("segm", "mask")] if arch == "maskrcnn" else [])
    return {f"{iou}_{s}": f"{label} {s}" for iou, label in kinds for s in ("AP", "AP50", "AP75")}


def run_detection(
    cfg: DetectConfig, overwrite: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Run the protocol of ``cfg``; write results.json / results.md / predictions.png."""
    device = resolve_device(cfg.device)
    train_set, val_set = build_datasets(cfg.data)
    if train_set.category_map.category_ids != val_set.category_map.category_ids:
        raise ValueError("train and val annotations list different categories")
    num_classes = train_set.category_map.num_classes + 1  # + background

    def build() -> nn.Module:
        m = cfg.model
        return build_detector(
            m.arch,
            num_classes,
            m.backbone,
            min_size=m.min_size,
            max_size=m.max_size,
            anchor_sizes=m.anchor_sizes,
            trainable_layers=m.trainable_layers,
            frozen_bn=m.frozen_bn,
            pretrained=m.pretrained,
            checkpoint=m.checkpoint,
            **m.kwargs,
        )

    experiment = DenseExperiment(
        build_model=build,
        train_set=train_set,
        train_step=DetectionStep(cfg.data.flip),
        test_set=val_set,
        evaluate_on=lambda model, dataset, n: evaluate_detection(
            model, dataset, cfg.data.eval_batch_size, max_images=n
        ),
        robustness_metric="bbox_AP",
        probe=probe_batch(val_set).to(device),
        features=detection_features,
        device=device,
        collate_fn=detection_collate,
    )
    header = {"task": TASK_NAME, "config": to_dict(cfg)}
    report = run_dense(cfg, experiment, header, write_reports, overwrite, progress)
    if dist.is_main():
        out = Path(cfg.output)
        shown = list(range(min(cfg.data.figure_images, len(val_set))))
        rows = {"ground truth": [val_set[i][1] for i in shown]}
        rows.update({arm: predict(m, val_set, shown) for arm, m in experiment.first_models.items()})
        images = [val_set[i][0] for i in shown]
        names = train_set.category_map.names
        thr = cfg.data.figure_score_threshold
        save_grid(
            {
                arm: [draw_detections(im, r, names, thr) for im, r in zip(images, res, strict=True)]
                for arm, res in rows.items()
            },
            out / "predictions.png",
            title=f"{cfg.model.arch} {cfg.model.backbone}: detections with score >= {thr}",
        )
    return report


def write_reports(report: dict[str, Any], out: Path) -> None:
    """results.json and results.md (predictions.png is drawn at the end of a run)."""
    write_results(report, out, metric_columns(report["config"]["model"]["arch"]))


def detection_table(report: dict[str, Any]) -> str:
    """The Markdown table of a detection report."""
    return markdown_table(report, metric_columns(report["config"]["model"]["arch"]))


TASK = Task(
    name=TASK_NAME,
    help="detection (Faster/Mask R-CNN) with DenoiseRep",
    Config=DetectConfig,
    run=run_detection,
    table=detection_table,
    default_config="detect_canvas.yaml",
    report_files=("results.json", "results.md", "predictions.png"),
    writer=write_reports,
)
