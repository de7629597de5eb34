"""Prediction overlays for dense tasks: one row per source (ground truth, each arm), one column
per image, drawn with torchvision's ``draw_bounding_boxes`` / ``draw_segmentation_masks``."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

_DISPLAY_SIZE = 240  # small images are upscaled (nearest) so labels stay legible


def palette(n: int) -> list[tuple[int, int, int]]:
    """``n`` distinct RGB colours (matplotlib's tab20, cycled)."""
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return [tuple(int(255 * c) for c in cmap(i % 20)[:3]) for i in range(n)]


def _font() -> str:
    """A TrueType font that always exists (matplotlib's DejaVu Sans), so labels can be sized."""
    import matplotlib

    return str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf")


def _upscale(image: torch.Tensor) -> tuple[torch.Tensor, int]:
    """uint8 CxHxW image enlarged by an integer factor to about ``_DISPLAY_SIZE`` pixels."""
    scale = max(1, _DISPLAY_SIZE // max(image.shape[-2:]))
    image = (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    if scale > 1:
        image = image.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
    return image, scale


def _enlarge_masks(masks: torch.Tensor, scale: int) -> torch.Tensor:
    masks = masks.detach().cpu()
    return masks.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)


def draw_detections(
    image: torch.Tensor,
    result: dict[str, Any],
    class_names: Sequence[str],
    score_threshold: float = 0.5,
) -> torch.Tensor:
    """``image`` (float CxHxW in [0, 1]) with the boxes, labels and masks of ``result``.

    ``result`` is a torchvision detection output (``boxes``, ``labels`` 1..K, ``scores``,
    optional ``masks`` Nx1xHxW probabilities) or a target (no ``scores``: all drawn). Only
    detections scoring at least ``score_threshold`` are drawn. Returns uint8 CxH'xW'.
    """
    canvas, scale = _upscale(image)
    keep = torch.ones(len(result["labels"]), dtype=torch.bool)
    if "scores" in result:
        keep = result["scores"].detach().cpu() >= score_threshold
    labels = result["labels"].detach().cpu()[keep].tolist()
    colors = palette(len(class_names) + 1)
    if "masks" in result and keep.any():
        masks = result["masks"].detach().cpu()[keep]
        masks = (masks[:, 0] > 0.5) if masks.dim() == 4 else masks.bool()
        canvas = draw_segmentation_masks(
            canvas, _enlarge_masks(masks, scale), alpha=0.45, colors=[colors[k] for k in labels]
        )
    if keep.any():
        boxes = result["boxes"].detach().cpu().float()[keep] * scale
        text = [class_names[k - 1] for k in labels]
        if "scores" in result:
            scores = result["scores"].detach().cpu()[keep].tolist()
            text = [f"{t} {s:.2f}" for t, s in zip(text, scores, strict=True)]
        box_colors = [colors[k] for k in labels]
        canvas = draw_bounding_boxes(
            canvas,
            boxes,
            labels=text,
            colors=box_colors,
            width=2,
            font=_font(),
            font_size=13,
            fill_labels=True,
            label_colors="white",
            **_label_backgrounds(box_colors),
        )
    return canvas


def _label_backgrounds(box_colors: list) -> dict:
    """The labels' background colours where torchvision takes them (0.26 does, 0.23 does not:
    there ``fill_labels`` fills them with the box colours, the same picture)."""
    if "label_background_colors" in inspect.signature(draw_bounding_boxes).parameters:
        return {"label_background_colors": box_colors}
    return {}


def draw_label_map(
    image: torch.Tensor, label_map: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """``image`` with each class of ``label_map`` (HxW, 0..K-1) tinted; ignored pixels bare."""
    canvas, scale = _upscale(image)
    label_map = _enlarge_masks(label_map, scale)
    classes = torch.arange(num_classes)
    masks = (label_map[None] == classes[:, None, None]) & (label_map != ignore_index)
    return draw_segmentation_masks(canvas, masks, alpha=0.55, colors=palette(num_classes))


def save_grid(rows: dict[str, list[torch.Tensor]], path: str | Path, title: str = "") -> None:
    """Save uint8 CxHxW images as a grid: one titled row per entry of ``rows``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows or not all(rows.values()):
        raise ValueError("save_grid needs at least one row with at least one image")
    n_rows, n_cols = len(rows), max(len(images) for images in rows.values())
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.6 * n_cols, 2.8 * n_rows), squeeze=False)
    for r, (name, images) in enumerate(rows.items()):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(images):
                ax.imshow(images[c].permute(1, 2, 0).numpy())
        axes[r][0].set_title(name, loc="left", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
