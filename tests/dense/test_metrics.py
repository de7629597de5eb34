"""Hand-computed checks of SegmentationMetric (mIoU, aAcc, mAcc) and Boundary IoU."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from denoiserep.dense.metrics import (
    SegmentationMetric,
    boundary_intersection_union,
    boundary_iou,
)

TARGET = torch.tensor([[0, 0, 1], [1, 2, 255]])
PRED = torch.tensor([[0, 1, 1], [1, 1, 0]])
# Valid pixels (target != 255): (t, p) = (0,0) (0,1) (1,1) (1,1) (2,1).
# class 0: TP 1, GT 2, pred 1 -> IoU 1/2, Acc 1/2
# class 1: TP 2, GT 2, pred 4 -> IoU 2/4, Acc 1
# class 2: TP 0, GT 1, pred 0 -> IoU 0,   Acc 0
# class 3: absent from both -> nan, left out of the means


def test_confusion_matrix_metrics_by_hand():
    metric = SegmentationMetric(num_classes=4)
    metric.update(PRED, TARGET)
    out = metric.compute()
    assert out["IoU"][:3].tolist() == [0.5, 0.5, 0.0] and math.isnan(out["IoU"][3])
    assert out["Acc"][:3].tolist() == [0.5, 1.0, 0.0] and math.isnan(out["Acc"][3])
    assert out["mIoU"] == pytest.approx(1 / 3)
    assert out["aAcc"] == pytest.approx(3 / 5)
    assert out["mAcc"] == pytest.approx(1 / 2)
    assert metric.confusion[0].tolist() == [1, 1, 0, 0]


def test_accumulates_over_batches_and_accepts_logits():
    metric = SegmentationMetric(num_classes=4)
    logits = F.one_hot(PRED, 4).permute(2, 0, 1).float()[None]  # (1, C, H, W)
    metric.update(logits, TARGET[None])
    metric.update(torch.tensor([[3]]), torch.tensor([[3]]))
    out = metric.compute()
    # class 3 now has one correct pixel: IoU 1; mIoU = (1/2 + 1/2 + 0 + 1) / 4
    assert out["mIoU"] == pytest.approx(0.5)
    assert out["aAcc"] == pytest.approx(4 / 6)
    metric.reset()
    assert math.isnan(metric.compute()["mIoU"])


def test_rejects_bad_labels():
    metric = SegmentationMetric(num_classes=2)
    with pytest.raises(ValueError, match=r"labels must be in 0..1 or ignore_index 255"):
        metric.update(torch.tensor([0, 2]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="does not match target"):
        metric.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1]))


def _square(top, left, size=4, n=8):
    m = torch.zeros(n, n, dtype=torch.int64)
    m[top : top + size, left : left + size] = 1
    return m


def test_boundary_iou_by_hand():
    """8x8 image: radius = max(1, round(0.02 * sqrt(128))) = 1.

    Target: 4x4 square of class 1 at rows/cols 2..5; prediction: the same square one column
    to the right. Class 1 boundaries are 12-pixel rings (4x4 minus the 2x2 interior); they
    share rows 2 and 5 at columns 3..5 only: 6 pixels, union 12 + 12 - 6 = 18 -> 1/3.
    Class 0 (background, image border counts as outside): target boundary = border ring (28)
    + ring around the square (20) = 48; predicted = 28 + 20 - 6 (its ring's column 7 is on the
    border) = 42; shared = border 28 + rows 1 and 6 at columns 2..6 (10) = 38;
    union = 48 + 42 - 38 = 52 -> 38/52.
    """
    target, pred = _square(2, 2), _square(2, 3)
    inter, union = boundary_intersection_union(pred, target, num_classes=2)
    assert inter.tolist() == [38, 6] and union.tolist() == [52, 18]
    assert boundary_iou(pred, target, num_classes=2) == pytest.approx((38 / 52 + 6 / 18) / 2)


def test_boundary_iou_perfect_ignored_and_accumulated():
    target = _square(2, 2)
    assert boundary_iou(target, target, num_classes=3) == 1.0  # class 2 absent: left out
    # Ignoring the whole wrongly predicted column 6 and the target's column 2 leaves
    # identical class maps on the valid pixels, hence B-IoU 1.
    target_ign, pred = target.clone(), _square(2, 3)
    target_ign[:, 2] = 255
    pred[:, 6] = 0
    target_ign[:, 6] = 255
    assert boundary_iou(pred, target_ign, num_classes=2) == 1.0
    metric = SegmentationMetric(num_classes=2, boundary_dilation_ratio=0.02)
    metric.update(_square(2, 3), target)
    metric.update(target, target)
    # accumulated counts: class 0 (38 + 48) / (52 + 48), class 1 (6 + 12) / (18 + 12)
    assert metric.compute()["B-IoU"] == pytest.approx((86 / 100 + 18 / 30) / 2)


def test_boundary_radius_follows_the_diagonal():
    """100x100: radius round(0.02 * 141.4) = 3, so a 10x10 square's boundary is 100 - 4*4."""
    target = torch.zeros(1, 100, 100, dtype=torch.int64)
    target[0, 40:50, 40:50] = 1
    inter, union = boundary_intersection_union(target, target, num_classes=2)
    assert inter[1] == union[1] == 100 - 16
