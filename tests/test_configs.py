"""Every shipped config loads into its command's Config; the paper settings fail on missing data
in one line that names the folder (they run as soon as the data and weights are present) and
cap the noise regression's tokens (with all of them, at full resolution, the float32 regression
alone costs about a ViT-B baseline step: docs/performance.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

import denoiserep
from denoiserep.cli import load_task_config, main
from denoiserep.tasks.registry import get_task

CONFIGS = Path(denoiserep.__file__).parent / "configs"
COMMAND_OF = {
    "ablation_fashion": "ablate",
    "robust_fashion_vit": "ablate",
    "robust_fashion_resnet": "ablate",
    "bench": "bench",
    "bench_tiny": "bench",
    "digits_demo": "classify",
    "probe_digits": "probe",
    "memory": "memory",
    "adapt_fashion": "adapt",
    "adapt_fashion_reid": "adapt",
    "fashion_vit": "classify",
    "fashion_resnet": "classify",
    "fashion_vmamba": "classify",
    "imagenet_swin_t": "classify",
    "imagenet_vit_b": "classify",
    "reid_fashion": "reid",
    "reid_tiny": "reid",
    "market_vit_b": "reid",
    "market_resnet50": "reid",
    "detect_canvas": "detect",
    "detect_tiny": "detect",
    "coco_maskrcnn_r50": "detect",
    "segment_canvas": "segment",
    "segment_tiny": "segment",
    "ade20k_fcn": "segment",
    "ade20k_segformer": "segment",
    "ade20k_fcn_r101": "segment",
    "ade20k_segformer_b1": "segment",
    "cifar10_vit_p4": "classify",
    "cub_resnet50": "classify",
    "cub_swinv2_t": "classify",
    "cub_vit_b": "classify",
    "cub_vmamba_t": "classify",
    "cuhk03_transreid_ssl_vit_s": "reid",
    "dukemtmc_transreid_ssl_vit_s": "reid",
    "flowers_resnet50": "classify",
    "flowers_swinv2_t": "classify",
    "flowers_vit_b": "classify",
    "flowers_vmamba_t": "classify",
    "imagenet_resnet50": "classify",
    "imagenet_swinv2_b": "classify",
    "imagenet_swinv2_s": "classify",
    "imagenet_swinv2_t": "classify",
    "imagenet_vit_s": "classify",
    "imagenet_vmamba_b": "classify",
    "imagenet_vmamba_s": "classify",
    "imagenet_vmamba_t": "classify",
    "market_transreid_ssl_vit_s": "reid",
    "msmt17_transreid_ssl_vit_s": "reid",
    "pet_resnet50": "classify",
    "pet_swinv2_t": "classify",
    "pet_vit_b": "classify",
    "pet_vmamba_t": "classify",
    "vehicleid_transreid_ssl_vit_s": "reid",
}
PAPER = {
    "market_vit_b": "data/market1501",
    "market_resnet50": "data/market1501",
    "imagenet_swin_t": "data/imagenet",
    "imagenet_vit_b": "data/imagenet",
    "coco_maskrcnn_r50": "data/coco",
    "ade20k_fcn": "data/ADEChallengeData2016",
    "ade20k_segformer": "data/ADEChallengeData2016",
    "ade20k_fcn_r101": "data/ADEChallengeData2016",
    "ade20k_segformer_b1": "data/ADEChallengeData2016",
    "cifar10_vit_p4": "data/cifar10",
    "cub_resnet50": "data/CUB_200_2011",
    "cub_swinv2_t": "data/CUB_200_2011",
    "cub_vit_b": "data/CUB_200_2011",
    "cub_vmamba_t": "data/CUB_200_2011",
    "cuhk03_transreid_ssl_vit_s": "data/cuhk03-np",
    "dukemtmc_transreid_ssl_vit_s": "data/DukeMTMC-reID",
    "flowers_resnet50": "data/flowers-102",
    "flowers_swinv2_t": "data/flowers-102",
    "flowers_vit_b": "data/flowers-102",
    "flowers_vmamba_t": "data/flowers-102",
    "imagenet_resnet50": "data/imagenet",
    "imagenet_swinv2_b": "data/imagenet",
    "imagenet_swinv2_s": "data/imagenet",
    "imagenet_swinv2_t": "data/imagenet",
    "imagenet_vit_s": "data/imagenet",
    "imagenet_vmamba_b": "data/imagenet",
    "imagenet_vmamba_s": "data/imagenet",
    "imagenet_vmamba_t": "data/imagenet",
    "market_transreid_ssl_vit_s": "data/market1501",
    "msmt17_transreid_ssl_vit_s": "data/MSMT17",
    "pet_resnet50": "data/oxford-iiit-pet",
    "pet_swinv2_t": "data/oxford-iiit-pet",
    "pet_vit_b": "data/oxford-iiit-pet",
    "pet_vmamba_t": "data/oxford-iiit-pet",
    "vehicleid_transreid_ssl_vit_s": "data/VehicleID_V1.0",
}


def test_every_shipped_config_is_known():
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == sorted(COMMAND_OF)


@pytest.mark.parametrize("name", sorted(COMMAND_OF))
def test_config_loads(name):
    task = get_task(COMMAND_OF[name])
    cfg = load_task_config(task.Config, CONFIGS / f"{name}.yaml", [], None)
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
    task = get_task(COMMAND_OF[name])
    cfg = load_task_config(task.Config, CONFIGS / f"{name}.yaml", [], None)
    assert cfg.denoise.loss_tokens == 256
    assert cfg.finetune.fused_optimizer and cfg.baseline.fused_optimizer == (
        cfg.baseline.epochs > 0  # a pretrained baseline is not trained
    )
