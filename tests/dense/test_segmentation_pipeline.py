"""`denoiserep segment` end to end on a tiny canvas built from a fake Fashion-MNIST (IDX files
written here), plus the task's pieces: reproducible augmentation, metrics in percent."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_model
from torch import nn

from denoiserep.cli import main, packaged_config
from denoiserep.dense.ade20k import ADE20KSegmentation
from denoiserep.dense.models import build_segmenter, load_weights
from denoiserep.dense.segmentation import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DataConfig,
    SegmentationStep,
    evaluate_segmentation,
)
from tests.dense.fakes import ROBUSTNESS, check_robustness, write_fake_fmnist


def test_segment_cli_end_to_end(tmp_path, capsys):
    fmnist = write_fake_fmnist(tmp_path / "fmnist")
    out = tmp_path / "run"
    argv = [
        "segment",
        "--config",
        str(packaged_config("segment_tiny.yaml")),
        "--output",
        str(out),
        "--no-progress",
        f"data.canvas.root={tmp_path / 'canvas'}",
        f"data.canvas.fmnist_dir={fmnist}",
        *ROBUSTNESS,
    ]
    assert main(argv) == 0
    report = json.loads((out / "results.json").read_text())
    assert set(report["per_seed"]["0"]) == {"baseline", "control", "denoiserep"}
    check_robustness(report, out, "mIoU")
    for arm, metrics in report["per_seed"]["0"].items():
        for key in ("mIoU", "aAcc", "mAcc", "B-IoU"):
            assert 0.0 <= metrics[key] <= 100.0, (arm, key)
        assert report["summary"][arm]["mIoU"]["values"] == [metrics["mIoU"]]
    assert report["per_seed"]["0"]["denoiserep"]["max_abs_diff_fused_unfused"] < 1e-3
    assert report["params_fused"] == report["params_baseline"]
    assert [r["phase"] for r in report["histories"]["0"]["denoiserep"]] == ["denoiser", "joint"]
    assert "B-IoU" in (out / "results.md").read_text()
    assert (out / "predictions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "results.md" in capsys.readouterr().out
    plain = build_segmenter("deeplabv3_mobilenet_v3_large", 10)
    load_model(plain, str(out / "seed0" / "denoiserep" / "fused.safetensors"), strict=True)


def test_augmentation_follows_the_generator():
    task = SegmentationStep(crop_size=8, scale_range=(0.5, 2.0), flip=True)
    images = [torch.rand(3, 8, 8) for _ in range(3)]
    masks = [torch.randint(0, 4, (8, 8)) for _ in range(3)]
    a = task.augment((images, masks), torch.Generator().manual_seed(5))
    torch.rand(10)  # the global RNG must not matter
    b = task.augment((images, masks), torch.Generator().manual_seed(5))
    assert a[0].shape == (3, 3, 8, 8) and a[1].shape == (3, 8, 8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    identity = SegmentationStep(crop_size=8, scale_range=(1.0, 1.0), flip=False)
    x, y = identity.augment((images, masks), torch.Generator().manual_seed(5))
    assert torch.allclose(x, torch.stack(images), atol=1e-6) and torch.equal(y, torch.stack(masks))


class _Oracle(nn.Module):
    """Reads the class off the red channel (class k painted as 20 * (k + 1))."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.anchor = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
        std = torch.tensor(IMAGENET_STD)[:, None, None]
        red = (x * std + mean)[:, 0] * 255
        labels = (red / 20).round().long().clamp(1, self.num_classes) - 1
        return {"out": F.one_hot(labels, self.num_classes).permute(0, 3, 1, 2).float()}


def test_perfect_predictions_score_100_on_mixed_sizes(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    for sub in ("images/validation", "annotations/validation"):
        (root / sub).mkdir(parents=True)
    for name, (h, w) in (("a", (6, 9)), ("b", (8, 5))):  # different sizes: one forward each
        raw = np.zeros((h, w), dtype=np.uint8)  # 0 = "other", ignored
        raw[1:4, 1:4], raw[4:, 2:] = 1, 3
        red = np.where(raw > 0, 20 * raw, 0).astype(np.uint8)
        Image.fromarray(np.stack([red] * 3, -1)).save(root / "images/validation" / f"{name}.png")
        Image.fromarray(raw).save(root / "annotations/validation" / f"{name}.png")
    val = ADE20KSegmentation(tmp_path, "validation", num_classes=3)
    metrics = evaluate_segmentation(_Oracle(3), val, batch_size=2)
    assert metrics == {"mIoU": 100.0, "aAcc": 100.0, "mAcc": 100.0, "B-IoU": 100.0}


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="set data.crop_size"):
        DataConfig(ade20k_root="ade")
    with pytest.raises(ValueError, match="unknown segmentation model 'segformer'"):
        build_segmenter("segformer", 3)
    with pytest.raises(ValueError, match="no auxiliary head"):
        build_segmenter("lraspp_mobilenet_v3_large", 3, aux_loss=True)


def test_weights_load_strictly(tmp_path):
    torch.manual_seed(0)
    source = build_segmenter("lraspp_mobilenet_v3_large", 3)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    loaded = build_segmenter("lraspp_mobilenet_v3_large", 3, weights=tmp_path / "w.pt")
    assert all(
        torch.equal(a, b)
        for a, b in zip(source.state_dict().values(), loaded.state_dict().values(), strict=True)
    )
    with pytest.raises(
        ValueError, match=r"w\.pt does not match the model \(LRASPP\): 4 tensors differ in shape"
    ):
        build_segmenter("lraspp_mobilenet_v3_large", 4, weights=tmp_path / "w.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_weights(source, tmp_path / "missing.pt")


def test_bn_momentum_override():
    model = build_segmenter("lraspp_mobilenet_v3_large", 3, bn_momentum=0.1)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(m.momentum == 0.1 for m in norms)
    assert build_segmenter("lraspp_mobilenet_v3_large", 3).backbone["0"][1].momentum == 0.01


def test_unaugmented_batches_run_image_by_image_at_their_own_sizes():
    """The closed-form fit and the static-range calibration read batches as the loader serves
    them (lists of images of any size); augmented batches are one tensor."""

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 1)

        def forward(self, x):
            return {"out": self.conv(x)}

    task, model = SegmentationStep(8), Head()
    images = [torch.rand(3, 5, 7), torch.rand(3, 9, 4)]
    outs = task.forward(model, (images, [torch.zeros(5, 7), torch.zeros(9, 4)]))
    assert [o["out"].shape for o in outs] == [(1, 2, 5, 7), (1, 2, 9, 4)]
    batch = task.forward(model, (torch.rand(2, 3, 8, 8), torch.zeros(2, 8, 8)))
    assert batch["out"].shape == (2, 2, 8, 8)
