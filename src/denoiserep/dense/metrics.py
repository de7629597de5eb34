"""Semantic segmentation metrics: confusion-matrix mIoU / aAcc / mAcc and Boundary IoU.

mIoU, aAcc and mAcc follow mmsegmentation: per-class IoU = TP / (TP + FP + FN) over the whole
evaluation set, and classes absent from both prediction and ground truth (IoU 0/0) are left
out of the mean (numpy's ``nanmean``). Boundary IoU follows Cheng et al., "Boundary IoU:
Improving Object-Centric Image Segmentation Evaluation" (CVPR 2021) and its reference code:
a mask's boundary region is the mask minus its erosion by d = max(1, round(ratio * diagonal))
pixels (square structuring element, outside the image counts as background).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Accept labels or logits (one extra class dimension at dim -3) and return int64 labels."""
    if pred.dim() == target.dim() + 1:
        pred = pred.argmax(dim=-3)
    if pred.shape != target.shape:
        raise ValueError(
            f"prediction shape {tuple(pred.shape)} does not match target {tuple(target.shape)}"
        )
    if pred.is_floating_point() or target.is_floating_point():
        raise ValueError("pred and target must hold integer class labels (or pred logits)")
    return pred.long(), target.long()


def _boundary(masks: torch.Tensor, radius: int) -> torch.Tensor:
    """Boundary region of binary masks (..., H, W): the mask minus its erosion by ``radius``."""
    flat = masks.reshape(-1, 1, *masks.shape[-2:]).float()
    # Erosion = NOT dilation of NOT mask; padding with 1 makes the outside background.
    outside = F.pad(1.0 - flat, (radius,) * 4, value=1.0)
    eroded = 1.0 - F.max_pool2d(outside, kernel_size=2 * radius + 1, stride=1)
    return (flat - eroded).bool().reshape(masks.shape)


def boundary_intersection_union(
    pred: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    dilation_ratio: float = 0.02,
    ignore_index: int = 255,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class boundary intersection and union pixel counts, summed over a batch.

    ``pred`` and ``target`` are label maps (H, W) or (N, H, W) (``pred`` may be logits with a
    class dimension). Pixels labelled ``ignore_index`` in ``target`` are excluded everywhere.
    Returns two int64 tensors of length ``num_classes``.
    """
    pred, target = _check_pair(pred, target)
    if target.dim() == 2:
        pred, target = pred[None], target[None]
    inter = torch.zeros(num_classes, dtype=torch.int64)
    union = torch.zeros(num_classes, dtype=torch.int64)
    h, w = target.shape[-2:]
    radius = max(1, int(round(dilation_ratio * math.sqrt(h * h + w * w))))
    for p, t in zip(pred, target, strict=True):
        valid = t != ignore_index
        p = torch.where(valid, p, -1)
        classes = torch.unique(torch.cat([p[valid], t[valid]]))
        if classes.numel() and (classes.min() < 0 or classes.max() >= num_classes):
            raise ValueError(f"labels must be in 0..{num_classes - 1} or {ignore_index}")
        if not classes.numel():
            continue
        pb = _boundary(p[None] == classes[:, None, None], radius) & valid
        tb = _boundary(t[None] == classes[:, None, None], radius) & valid
        inter[classes.cpu()] += (pb & tb).sum(dim=(1, 2)).cpu()
        union[classes.cpu()] += (pb | tb).sum(dim=(1, 2)).cpu()
    return inter, union


def boundary_iou(
    pred: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    dilation_ratio: float = 0.02,
    ignore_index: int = 255,
) -> float:
    """Boundary IoU ("B-IoU"): mean over classes of accumulated boundary intersection / union.

    Classes whose boundary union is empty in every image are left out of the mean; returns
    nan when no class has a boundary at all.
    """
    inter, union = boundary_intersection_union(
        pred, target, num_classes, dilation_ratio, ignore_index
    )
    return _nanmean(inter.double() / union.double())


def _nanmean(x: torch.Tensor) -> float:
    return float(x.nanmean()) if (~x.isnan()).any() else math.nan


class SegmentationMetric:
    """Accumulates a confusion matrix (and optionally boundary counts) over batches.

    ``update(pred, target)`` takes label maps or logits; ``compute()`` returns fractions in
    [0, 1]: ``mIoU``, ``aAcc`` (pixel accuracy), ``mAcc`` (mean class accuracy), ``IoU``
    and ``Acc`` (per-class tensors, nan for classes with no support), and ``B-IoU`` when
    ``boundary_dilation_ratio`` is set.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        boundary_dilation_ratio: float | None = None,
    ):
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.boundary_dilation_ratio = boundary_dilation_ratio
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
        self.boundary_inter = torch.zeros(self.num_classes, dtype=torch.int64)
        self.boundary_union = torch.zeros(self.num_classes, dtype=torch.int64)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: rows of the confusion matrix are targets, columns predictions."""
        pred, target = _check_pair(pred, target)
        valid = target != self.ignore_index
        p, t = pred[valid], target[valid]
        n = self.num_classes
        if t.numel() and (min(p.min(), t.min()) < 0 or max(p.max(), t.max()) >= n):
            raise ValueError(f"labels must be in 0..{n - 1} or ignore_index {self.ignore_index}")
        self.confusion += torch.bincount(t * n + p, minlength=n * n).reshape(n, n).cpu()
        if self.boundary_dilation_ratio is not None:
            inter, union = boundary_intersection_union(
                pred, target, n, self.boundary_dilation_ratio, self.ignore_index
            )
            self.boundary_inter += inter
            self.boundary_union += union

    def compute(self) -> dict[str, float | torch.Tensor]:
        """Metrics over everything seen since the last ``reset``."""
        cm = self.confusion.double()
        tp = cm.diag()
        gt = cm.sum(dim=1)
        union = gt + cm.sum(dim=0) - tp
        iou = tp / union
        acc = tp / gt
        total = cm.sum()
        out: dict[str, float | torch.Tensor] = {
            "mIoU": _nanmean(iou),
            "aAcc": float(tp.sum() / total) if total > 0 else math.nan,
            "mAcc": _nanmean(acc),
            "IoU": iou,
            "Acc": acc,
        }
        if self.boundary_dilation_ratio is not None:
            out["B-IoU"] = _nanmean(self.boundary_inter.double() / self.boundary_union.double())
        return out
