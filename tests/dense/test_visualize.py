"""Detection overlays: boxes and labels drawn, the same picture on a torchvision without
``label_background_colors`` (0.23), whose ``fill_labels`` fills them with the box colours."""

from __future__ import annotations

import torch
from torchvision.utils import draw_bounding_boxes

from denoiserep.dense import visualize


def _result() -> dict[str, torch.Tensor]:
    return {
        "boxes": torch.tensor([[2.0, 3.0, 20.0, 24.0], [10.0, 8.0, 30.0, 30.0]]),
        "labels": torch.tensor([1, 2]),
        "scores": torch.tensor([0.9, 0.3]),
    }


def test_draw_detections_draws_the_boxes_above_the_threshold():
    image = torch.full((3, 32, 32), 0.5)
    drawn = visualize.draw_detections(image, _result(), ["cat", "dog"], score_threshold=0.5)
    none = visualize.draw_detections(image, _result(), ["cat", "dog"], score_threshold=0.95)
    assert drawn.dtype == torch.uint8 and drawn.shape[0] == 3 and drawn.shape == none.shape
    assert drawn.shape[1] > 32  # small images are upscaled so labels stay legible
    assert not torch.equal(drawn, none) and len(torch.unique(none)) == 1


def test_older_torchvision_without_label_background_colors_draws_the_same(monkeypatch):
    def old_draw_bounding_boxes(image, boxes, **kwargs):  # noqa: ANN001, ANN003, ANN202
        if "label_background_colors" in kwargs:  # as torchvision 0.23 says it
            raise TypeError("unexpected keyword argument 'label_background_colors'")
        return draw_bounding_boxes(image, boxes, **kwargs)

    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    new = visualize.draw_detections(image, _result(), ["cat", "dog"], score_threshold=0.0)
    monkeypatch.setattr(visualize, "draw_bounding_boxes", old_draw_bounding_boxes)
    old = visualize.draw_detections(image, _result(), ["cat", "dog"], score_threshold=0.0)
    assert torch.equal(old, new)
