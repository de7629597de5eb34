"""Every shipped config loads into its command's Config; the paper settings fail on missing data
in one line that names the folder (they run as soon as the data and weights are present) and
cap the noise regression's tokens (with all of them, at full resolution, the float32 regression
alone costs about a ViT-B baseline step: docs/performance.md)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

import denoiserep
from denoiserep.cli import COMMANDS, load_task_config, main

CONFIGS = Path(denoiserep.__file__).parent / "configs"
COMMAND_OF = {
    "ablation_fashion": "ablate",
    "robust_fashion_vit": "ablate",
    "robust_fashion_resnet": "ablate",
    "bench": "bench",
    "bench_tiny": "bench",
    "digits_demo": "classify",
    "fashion_vit": "classify",
    "fashion_resnet": "classify",
    "fashion_vmamba": "classify",
    "imagenet_swin_t": "classify",
    "imagenet_vit_b": "classify",
    "reid_fashion": "reid",
    "reid_tiny": "reid",
    "market_vit_b": "reid",
    "market_resnet50": "reid",
    "market_transreid_ssl_vit_s": "reid",
    "detect_canvas": "detect",
    "detect_tiny": "detect",
    "coco_maskrcnn_r50": "detect",
    "segment_canvas": "segment",
    "segment_tiny": "segment",
    "ade20k_fcn": "segment",
    "ade20k_segformer": "segment",
}
PAPER = {
    "market_vit_b": "data/market1501",
    "market_resnet50": "data/market1501",
    "market_transreid_ssl_vit_s": "data/market1501",
    "imagenet_swin_t": "data/imagenet",
    "imagenet_vit_b": "data/imagenet",
    "coco_maskrcnn_r50": "data/coco",
    "ade20k_fcn": "data/ADEChallengeData2016",
    "ade20k_segformer": "data/ADEChallengeData2016",
}


def test_every_shipped_config_is_known():
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == sorted(COMMAND_OF)


@pytest.mark.parametrize("name", sorted(COMMAND_OF))
def test_config_loads(name):
    module = importlib.import_module(COMMANDS[COMMAND_OF[name]][0])
    cfg = load_task_config(module.Config, CONFIGS / f"{name}.yaml", [], None)
    assert cfg.output


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_settings_name_their_missing_data(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    command = COMMAND_OF[name]
    assert main([command, "--config", f"{name}.yaml", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and PAPER[name] in err, err
    assert not (tmp_path / "runs").exists()  # nothing created for a run that could not start


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_settings_cap_the_noise_regression_and_fuse_the_optimizer(name):
    module = importlib.import_module(COMMANDS[COMMAND_OF[name]][0])
    cfg = load_task_config(module.Config, CONFIGS / f"{name}.yaml", [], None)
    assert cfg.denoise.loss_tokens == 256
    assert cfg.finetune.fused_optimizer and cfg.baseline.fused_optimizer == (
        cfg.baseline.epochs > 0  # a pretrained baseline is not trained
    )
