"""Exact fusion on whole torchvision detectors and segmenters: with random non-trivial
denoisers, the converted model (eval), its explicit (unfused) form and the fused export all
equal the original model with the reverse step applied to each target layer's input, and the
export loads strict=True into a freshly built torchvision model. Small models run in float64,
where fusion must be exact to rounding (1e-9); ResNet-50 runs in float32 (1e-3, against a
change of order 1 that the denoisers make)."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

import denoiserep as dr
from denoiserep.dense.models import (
    DETECTION_BACKBONE,
    DETECTION_FPN,
    SEGMENTATION_BACKBONE,
    build_detector,
    build_segmenter,
    detection_features,
)
from tests.conftest import add_reference_hooks, randomize_denoisers, rel_err


def calibrate_bn(module: nn.Module, run) -> None:
    """Give every BatchNorm the statistics of one batch, so eval-mode BN is non-trivial."""
    norms = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:
        m.momentum = None  # cumulative average: one batch sets the statistics exactly
    module.train()
    with torch.no_grad():
        run()
    module.eval()


def convert_random(model: nn.Module, targets: list[str], x) -> tuple[nn.Module, nn.Module]:
    """(original with reference hooks, converted copy with random denoisers), both eval."""
    original = copy.deepcopy(model).eval()
    converted = dr.convert(model, dr.DenoiseConfig(targets=targets), example_input=x).eval()
    randomize_denoisers(converted, strength=0.1, seed=1)
    add_reference_hooks(original, converted)
    return original, converted


def explicit(model: nn.Module, flag: bool) -> None:
    for layer in dr.denoise_layers(model).values():
        layer.explicit = flag


def outputs(model: nn.Module, x, features) -> tuple[list[torch.Tensor], object]:
    with torch.no_grad():
        return features(model, x), model(x)


def assert_same_detections(a: list[dict], b: list[dict], tol: float) -> None:
    for da, db in zip(a, b, strict=True):
        assert torch.equal(da["labels"], db["labels"])
        assert rel_err(da["boxes"], db["boxes"]) < tol
        assert torch.allclose(da["scores"], db["scores"], rtol=0, atol=tol)
        if "masks" in da:  # pasted at rounded box positions: compare on average
            assert (da["masks"] - db["masks"]).abs().mean() < tol


def check_detector(
    model: nn.Module, targets: list[str], fresh: nn.Module, size: int, tol: float
) -> int:
    """All four forms agree on features and detections; returns the number of detections."""
    dtype = next(model.parameters()).dtype
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0), dtype=dtype)
    calibrate_bn(model, lambda: detection_features(model, x))
    original, converted = convert_random(model, targets, x)
    reference = outputs(original, x, detection_features)
    fused = dr.fuse(converted).eval()
    explicit(converted, True)
    unfused = outputs(converted, x, detection_features)
    explicit(converted, False)
    for got in (outputs(converted, x, detection_features), outputs(fused, x, detection_features)):
        for f_got, f_ref in zip(got[0], reference[0], strict=True):
            assert rel_err(f_got, f_ref) < tol
        assert_same_detections(got[1], reference[1], tol)
    for f_unf, f_ref in zip(unfused[0], reference[0], strict=True):
        assert rel_err(f_unf, f_ref) < tol
    assert_same_detections(unfused[1], reference[1], tol)
    fresh.load_state_dict(fused.state_dict(), strict=True)
    assert type(fused.backbone.body.conv1) is nn.Conv2d  # plain layers again
    return sum(len(d["boxes"]) for d in reference[1])


def test_faster_rcnn_resnet18_fpn_backbone_and_fpn():
    kwargs = dict(min_size=64, max_size=64, box_detections_per_img=10, box_score_thresh=0.0)
    torch.manual_seed(0)
    model = build_detector("fasterrcnn", 4, "resnet18", **kwargs).double()
    fresh = build_detector("fasterrcnn", 4, "resnet18", **kwargs)
    detections = check_detector(model, DETECTION_BACKBONE + DETECTION_FPN, fresh, 64, 1e-9)
    assert detections > 0  # the comparison above covered real boxes


@pytest.mark.slow
def test_mask_rcnn_resnet50_fpn_matches_torchvision_builder():
    kwargs = dict(min_size=64, max_size=64, box_detections_per_img=5, box_score_thresh=0.0)
    torch.manual_seed(0)
    model = build_detector("maskrcnn", 3, "resnet50", **kwargs)
    fresh = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=3, **kwargs
    )
    assert check_detector(model, DETECTION_BACKBONE, fresh, 64, 1e-3) > 0


def test_frozen_layers_stay_frozen():
    model = build_detector("fasterrcnn", 3, "resnet18", min_size=32, trainable_layers=2)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert "backbone.body.layer1.0.conv1.weight" in frozen
    assert "backbone.body.layer3.0.conv1.weight" not in frozen
    dr.convert(model, dr.DenoiseConfig(targets=DETECTION_BACKBONE), torch.rand(1, 3, 32, 32))
    dr.set_phase(model, "backbone")
    frozen_now = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen <= {n.replace(".base_layer", "") for n in frozen_now}
    assert all(layer.D.requires_grad is False for layer in dr.denoise_layers(model).values())
    dr.set_phase(model, "denoiser")
    assert all(layer.D.requires_grad for layer in dr.denoise_layers(model).values())


@pytest.mark.parametrize(
    ("name", "size"), [("fcn_resnet50", 32), ("deeplabv3_mobilenet_v3_large", 64)]
)
def test_segmentation_logits(name, size):
    torch.manual_seed(0)
    model = build_segmenter(name, 5).double()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0)).double()
    calibrate_bn(model, lambda: model(x))
    original, converted = convert_random(model, SEGMENTATION_BACKBONE, x)

    def logits(m, inp):
        return [m(inp)["out"]]

    reference = outputs(original, x, logits)[0][0]
    fused = dr.fuse(converted).eval()
    explicit(converted, True)
    unfused = outputs(converted, x, logits)[0][0]
    explicit(converted, False)
    assert rel_err(outputs(converted, x, logits)[0][0], reference) < 1e-9
    assert rel_err(outputs(fused, x, logits)[0][0], reference) < 1e-9
    assert rel_err(unfused, reference) < 1e-9
    # the denoisers really change the model (else the comparison proves little)
    plain = copy.deepcopy(original)
    for m in plain.modules():
        m._forward_pre_hooks.clear()
    assert rel_err(outputs(plain, x, logits)[0][0], reference) > 1e-3
    fresh = getattr(torchvision.models.segmentation, name)(
        weights=None, weights_backbone=None, num_classes=5, aux_loss=False
    )
    fresh.load_state_dict(fused.state_dict(), strict=True)
