"""`denoiserep detect` end to end on a tiny canvas built from a fake Fashion-MNIST (IDX files
written here), plus the task's pieces: flips, label-free forward, COCO metrics in percent."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_model
from torch import nn

from denoiserep.cli import main, packaged_config
from denoiserep.dense.canvas import build_fashion_canvas
from denoiserep.dense.coco import CocoDetection
from denoiserep.dense.common import CanvasConfig, ensure_canvas
from denoiserep.dense.detection import (
    DataConfig,
    DetectConfig,
    DetectionStep,
    evaluate_detection,
    hflip,
)
from denoiserep.dense.models import build_detector
from tests.dense.fakes import ROBUSTNESS, check_robustness, write_fake_fmnist


@pytest.mark.filterwarnings("ignore:coco_evaluate. no")  # barely trained: maybe no detections
def test_detect_cli_end_to_end(tmp_path, capsys):
    fmnist = write_fake_fmnist(tmp_path / "fmnist")
    out = tmp_path / "run"
    argv = [
        "detect",
        "--config",
        str(packaged_config("detect_tiny.yaml")),
        "--output",
        str(out),
        "--no-progress",
        f"data.canvas.root={tmp_path / 'canvas'}",
        f"data.canvas.fmnist_dir={fmnist}",
        *ROBUSTNESS,
    ]
    assert main(argv) == 0
    assert (tmp_path / "canvas" / "canvas.yaml").is_file()  # built on demand
    report = json.loads((out / "results.json").read_text())
    assert set(report["per_seed"]["0"]) == {"baseline", "control", "denoiserep"}
    check_robustness(report, out, "bbox_AP")
    for arm, metrics in report["per_seed"]["0"].items():
        for iou in ("bbox", "segm"):
            for stat in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
                assert -1.0 <= metrics[f"{iou}_{stat}"] <= 100.0, (arm, iou, stat)
    dr_metrics = report["per_seed"]["0"]["denoiserep"]
    assert dr_metrics["max_abs_diff_fused_unfused"] < 1e-3
    # backbone and FPN convs: resnet18 has 20, the FPN 4 inner + 4 output convs
    assert report["denoised_layers"] == 28
    assert report["params_fused"] == report["params_baseline"]
    assert len(report["histories"]["0"]["denoiserep"]) == 2
    assert [r["phase"] for r in report["histories"]["0"]["denoiserep"]] == ["denoiser", "joint"]
    assert "box AP50" in (out / "results.md").read_text()
    assert (out / "predictions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "results.json" in capsys.readouterr().out
    # the fused export is a plain torchvision Mask R-CNN of the original architecture
    plain = build_detector("maskrcnn", 11, "resnet18", min_size=48, max_size=48)
    load_model(plain, str(out / "seed0" / "denoiserep" / "fused.safetensors"), strict=True)


def test_hflip_mirrors_boxes_and_masks():
    image = torch.arange(30.0).reshape(1, 3, 10).expand(3, 3, 10)
    masks = torch.zeros(1, 3, 10, dtype=torch.uint8)
    masks[0, :, 1:4] = 1
    target = {"boxes": torch.tensor([[1.0, 0.0, 4.0, 3.0]]), "masks": masks, "image_id": 7}
    flipped, t = hflip(image, target)
    assert torch.equal(flipped, image.flip(-1))
    assert t["boxes"].tolist() == [[6.0, 0.0, 9.0, 3.0]]  # x' = 10 - x
    assert t["masks"][0, 0].nonzero().flatten().tolist() == [6, 7, 8]
    assert target["boxes"].tolist() == [[1.0, 0.0, 4.0, 3.0]]  # input untouched


class _Recorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, images, targets=None):
        self.calls.append(targets)
        return {"loss_a": torch.tensor(1.5), "loss_b": torch.tensor(0.25)}


def test_task_reads_no_labels_in_eval_mode_and_sums_losses():
    task, model = DetectionStep(), _Recorder()
    batch = ([torch.zeros(3, 4, 4)], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}])
    model.eval()  # what the trainer's label-free ``denoiser`` phase does
    task.forward(model, batch)
    model.train()
    output = task.forward(model, batch)
    assert model.calls == [None, batch[1]]
    loss, logs = task.loss(output, batch)
    assert loss.item() == 1.75 and logs == {"loss_a": 1.5, "loss_b": 0.25}


class _Oracle(nn.Module):
    """Answers every image with its ground truth (looked up by the image's pixels)."""

    def __init__(self, dataset: CocoDetection):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))
        self.roi_heads = type("Heads", (), {"has_mask": staticmethod(lambda: True)})()
        self.answers = [dataset[i] for i in range(len(dataset))]

    def forward(self, images):
        outputs = []
        for image in images:
            target = next(t for im, t in self.answers if torch.equal(im, image))
            n = len(target["labels"])
            outputs.append(
                {
                    "boxes": target["boxes"],
                    "labels": target["labels"],
                    "scores": torch.ones(n),
                    "masks": target["masks"][:, None].float(),
                }
            )
        return outputs


def test_perfect_detections_score_100(tmp_path):
    fmnist = write_fake_fmnist(tmp_path / "fmnist")
    canvas = build_fashion_canvas(tmp_path / "c", fmnist, num_train=1, num_val=3, canvas_size=48)
    val = CocoDetection(canvas.coco_img_dir("val"), canvas.coco_ann_file("val"))
    metrics = evaluate_detection(_Oracle(val), val, batch_size=2)
    for iou in ("bbox", "segm"):
        assert metrics[f"{iou}_AP"] == pytest.approx(100.0)
        assert metrics[f"{iou}_AP50"] == pytest.approx(100.0)


def test_canvas_is_built_once_and_checked(tmp_path):
    fmnist = write_fake_fmnist(tmp_path / "fmnist")
    cfg = CanvasConfig(str(tmp_path / "c"), str(fmnist), num_train=1, num_val=1, canvas_size=32)
    first = ensure_canvas(cfg)
    stamp = first.coco_ann_file("train").stat().st_mtime_ns
    assert ensure_canvas(cfg).coco_ann_file("train").stat().st_mtime_ns == stamp  # reused
    cfg.num_val = 2
    with pytest.raises(ValueError, match="other parameters.*num_val"):
        ensure_canvas(cfg)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file.txt").write_text("x")
    cfg.root = str(tmp_path / "other")
    with pytest.raises(ValueError, match="holds no canvas.yaml"):
        ensure_canvas(cfg)


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="missing.*val_annotations"):
        DataConfig(train_images="a", train_annotations="b", val_images="c")
    with pytest.raises(ValueError, match="arms must be among"):
        DetectConfig(arms=["baseline"])
    with pytest.raises(ValueError, match="unknown detector 'yolo'"):
        build_detector("yolo", 3)
    with pytest.raises(ValueError, match="one size per FPN level"):
        build_detector("fasterrcnn", 3, "resnet18", anchor_sizes=[16, 32])
