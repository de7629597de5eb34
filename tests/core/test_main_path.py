"""targets="main_path": the layers on the least-layer route from input to output."""

from __future__ import annotations

import copy
import warnings

import pytest
import timm
import torch
import torchvision
from torch import nn

import denoiserep as dr
from denoiserep.core.convert import select_targets
from denoiserep.dense.models import build_detector
from denoiserep.models.vmamba import vmamba_micro
from tests.conftest import randomize_denoisers

MAIN = dr.DenoiseConfig(targets="main_path")


def names(model: nn.Module, x, config: dr.DenoiseConfig = MAIN) -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # timm's Linear heads are skipped, as under "all"
        return list(select_targets(model, config, x))


class Branches(nn.Module):
    """x -> stem -> (a + b, two one-layer branches) + gate(x) * x -> head, and a dead end."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(4, 8)
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)
        self.deep = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
        self.gate = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)
        self.unused_by_input = nn.Linear(8, 2)
        self.bias = nn.Parameter(torch.zeros(1, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = self.a(h) + self.b(h) + self.deep(h)  # a tie of two one-layer routes
        h = h * torch.sigmoid(self.gate(h))  # a gate: the route through h crosses nothing
        return self.head(h) + self.unused_by_input(self.bias)


def test_least_layer_route_on_a_toy_graph():
    model = Branches()
    assert names(model, torch.randn(3, 4)) == ["stem", "a", "b", "head"]


def test_resnets_give_stem_shortcuts_and_head_as_the_studies_named_them():
    x = torch.randn(2, 3, 64, 64)
    tv = torchvision.models.resnet18(num_classes=10)
    assert names(tv, x) == [
        "conv1",
        "layer2.0.downsample.0",
        "layer3.0.downsample.0",
        "layer4.0.downsample.0",
        "fc",
    ]
    # the patterns robustness.md's main-path runs used, on the two CNNs they ran
    study = dr.DenoiseConfig(targets=["conv1*", "*downsample*", "fc"])
    for model in (timm.create_model("resnet18"), timm.create_model("resnet10t")):
        assert names(model, x) == list(select_targets(model, study))
    r50 = names(timm.create_model("resnet50", num_classes=10), x)
    assert r50 == ["conv1"] + [f"layer{i}.0.downsample.0" for i in range(1, 5)] + ["fc"]


@pytest.mark.parametrize(
    ("build", "size", "expected"),
    [
        (
            lambda: timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=10),
            32,
            ["patch_embed.proj", "head"],
        ),
        (
            lambda: timm.create_model(
                "swin_tiny_patch4_window7_224", img_size=64, window_size=4, num_classes=10
            ),
            64,
            ["patch_embed.proj"]
            + [f"layers.{i}.downsample.reduction" for i in (1, 2, 3)]
            + ["head.fc"],
        ),
        (
            lambda: timm.create_model("convnext_atto", num_classes=10),
            64,
            ["stem.0"] + [f"stages.{i}.downsample.1" for i in (1, 2, 3)] + ["head.fc"],
        ),
        (
            lambda: vmamba_micro(num_classes=10),
            64,
            ["patch_embed.proj"]
            + [f"layers.{i}.downsample.reduction" for i in (0, 1, 2)]
            + ["head"],
        ),
    ],
    ids=["vit", "swin", "convnext", "vmamba"],
)
def test_transformers_convnext_and_vmamba(build, size, expected):
    assert names(build(), torch.randn(2, 3, size, size)) == expected


def test_blocks_without_a_shortcut_are_on_the_path_and_squeeze_excite_is_not():
    model = torchvision.models.mobilenet_v3_small(num_classes=10)
    found = names(model, torch.randn(2, 3, 64, 64))
    assert "features.0.0" in found and "classifier.3" in found
    assert "features.2.block.1.0" in found  # depthwise conv of a stride-2 block: no shortcut
    assert "features.3.block.1.0" not in found  # the same conv in a residual block
    assert not any(".fc1" in n or ".fc2" in n for n in found)  # squeeze-excite gates


def test_a_detector_s_route_runs_through_its_heads():
    """Mask R-CNN in eval mode returns a list of dicts of detections; the route from the boxes
    back to the image crosses the stem, the finest FPN level and the box head."""
    torch.manual_seed(0)
    model = build_detector("maskrcnn", 11, "resnet18", min_size=48, max_size=48)
    found = names(model, [torch.rand(3, 48, 48)])
    assert found[:3] == [
        "backbone.body.conv1",
        "backbone.fpn.inner_blocks.0.0",
        "backbone.fpn.layer_blocks.0.0",
    ]
    assert {"roi_heads.box_head.fc6", "roi_heads.box_predictor.bbox_pred"} <= set(found)
    assert not any("body.layer" in n for n in found)  # no residual stage: the FPN taps layer1


def test_convert_orders_restores_and_fuses_the_main_path():
    torch.manual_seed(0)
    base = timm.create_model("resnet10t", num_classes=10).train()
    x = torch.randn(2, 3, 32, 32)
    model = dr.convert(copy.deepcopy(base), dr.DenoiseConfig(targets="main_path"), x)
    layers = dr.denoise_layers(model)
    assert [layer.t for layer in layers.values()] == list(range(len(layers), 0, -1))
    assert len(layers) == 7 and list(layers)[:3] == ["conv1.0", "conv1.3", "conv1.6"]
    assert all(m.training for m in model.modules())  # the path search left modes alone
    assert all(p.grad is None for p in model.parameters())
    randomize_denoisers(model, 0.2)
    fused = dr.fuse(model).eval()
    assert dr.fused_vs_unfused(model, fused, x) < 1e-5


def test_save_and_load_a_main_path_conversion(tmp_path):
    torch.manual_seed(0)
    model = dr.convert(torchvision.models.resnet18(num_classes=4), MAIN, torch.randn(2, 3, 32, 32))
    randomize_denoisers(model, 0.2)
    dr.save_converted(model, tmp_path)
    restored = dr.load_converted(torchvision.models.resnet18(num_classes=4), tmp_path)
    assert list(dr.denoise_layers(restored)) == list(dr.denoise_layers(model))
    fused, again = dr.fuse(model).state_dict(), dr.fuse(restored).state_dict()
    assert list(fused) == list(again)
    assert all(torch.equal(fused[k], again[k]) for k in fused)


def test_exclude_applies_after_the_path_search():
    x = torch.randn(2, 3, 32, 32)
    config = dr.DenoiseConfig(targets="main_path", exclude=["fc"])
    assert names(torchvision.models.resnet18(), x, config)[-1] == "layer4.0.downsample.0"


class IntegerInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.fc = nn.Linear(4, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embed(ids))


class IgnoresInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.w = nn.Parameter(torch.ones(1, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.w) + 0 * x.detach().sum()


def test_bad_input_is_one_clear_error():
    with pytest.raises(ValueError, match="main_path' needs example_input"):
        dr.convert(nn.Sequential(nn.Linear(4, 2)), MAIN)
    with pytest.raises(ValueError, match="floating-point tensor"):
        names(IntegerInput(), torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match="no output of the model depends on example_input"):
        names(IgnoresInput(), torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"example_input of shape \(2, 5\): the model rejected"):
        names(nn.Sequential(nn.Linear(4, 2)), torch.randn(2, 5))


def test_config_accepts_main_path_and_round_trips(tmp_path):
    cfg = dr.DenoiseConfig(targets="main_path", timestep_stride=2)
    path = tmp_path / "c.yaml"
    cfg.to_yaml(path)
    assert dr.DenoiseConfig.from_yaml(path) == cfg
