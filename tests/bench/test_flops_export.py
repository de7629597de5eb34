"""Fused models cost what the baseline costs, and deploy like it (ONNX, torch.export, reload)."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torchvision

import denoiserep as dr
from denoiserep.bench.export import (
    check_onnx,
    check_strict_reload,
    check_torch_export,
    export_onnx,
)
from denoiserep.bench.final_feature import FinalFeatureDenoiser
from denoiserep.bench.flops import count_flops, count_parameters, flops_by_dtype, flops_of
from tests.conftest import randomize_denoisers, rel_err

VIT = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=10)


def tiny_vit():
    return timm.create_model("vit_tiny_patch16_224", **VIT)


def tiny_resnet():
    return timm.create_model("resnet10t", channels=(8, 16, 32, 64), stem_width=8, num_classes=10)


def tiny_mobilenet():
    return torchvision.models.mobilenet_v3_small(weights=None, width_mult=0.25, num_classes=10)


def converted_and_fused(model):
    model.eval()
    x = torch.randn(1, 3, 32, 32)
    converted = dr.convert(copy.deepcopy(model), dr.DenoiseConfig(), example_input=x)
    randomize_denoisers(converted)
    return converted.eval(), dr.fuse(converted).eval()


@pytest.mark.parametrize("build", [tiny_vit, tiny_resnet, tiny_mobilenet])
def test_fused_model_has_the_baseline_flops_and_parameters(build):
    baseline = build().eval()
    converted, fused = converted_and_fused(baseline)
    x = torch.randn(2, 3, 32, 32)
    assert count_flops(fused, x) == count_flops(baseline, x) > 0
    assert count_parameters(fused) == count_parameters(baseline)
    with torch.no_grad():
        assert rel_err(fused(x), baseline(x)) > 1e-3  # the denoisers do something
    d_params = sum(layer.D.numel() for layer in dr.denoise_layers(converted).values())
    assert count_parameters(converted) == count_parameters(baseline) + d_params


def test_explicit_denoising_and_final_feature_flops_by_hand():
    baseline = tiny_vit().eval()
    converted, _ = converted_and_fused(baseline)
    for layer in dr.denoise_layers(converted).values():
        layer.explicit = True
    x = torch.randn(1, 3, 32, 32)
    # explicit x -> A_t x costs 2 * positions * C_in^2 per layer: the patch-embedding conv sees
    # 32 x 32 pixels of 3 channels; each block's qkv, proj, fc1 (64 ch) and fc2 (256 ch) see
    # 16 patches + 1 class token; the head sees the pooled class token (64 ch).
    extra = 2 * (32 * 32 * 3 * 3 + 2 * 17 * (3 * 64 * 64 + 256 * 256) + 64 * 64)
    assert count_flops(converted, x) - count_flops(baseline, x) == extra
    schedule = dr.DenoiseConfig().build_schedule()
    final = FinalFeatureDenoiser.from_timm(baseline, schedule, steps=20)
    assert count_flops(final, x) - count_flops(baseline, x) == 20 * 2 * 64 * 64


def test_flops_by_dtype_splits_a_bf16_training_step_by_hand():
    # one Linear 16 -> 8 on 32 tokens (more than its 8 outputs: it trains through W A_t);
    # the noise regression samples 5 tokens
    model = dr.convert(
        torch.nn.Sequential(torch.nn.Linear(16, 8)),
        dr.DenoiseConfig(loss_tokens=5),
        torch.ones(2, 16),
    )
    x = torch.randn(32, 16)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(x).float().sum() + dr.denoise_loss(model)
        loss.backward()

    by_dtype = flops_by_dtype(step)
    assert sum(by_dtype.values()) == flops_of(step)
    # bf16: W A_t and its two backward products (8 x 16 x 16 each), the layer's forward and its
    # weight gradient (32 x 16 x 8 each; x needs no gradient)
    assert by_dtype["bfloat16"] == 2 * (3 * 8 * 16 * 16 + 2 * 32 * 16 * 8)
    # float32: the regression D x_t on 5 tokens and its D-gradient
    assert by_dtype["float32"] == 2 * (2 * 5 * 16 * 16)


def test_onnx_round_trip_matches_pytorch(tmp_path):
    _, fused = converted_and_fused(tiny_vit())
    example = torch.randn(1, 3, 32, 32)
    path = export_onnx(fused, example, tmp_path / "sub" / "fused.onnx")
    assert path.is_file() and not list(tmp_path.glob("sub/*.data"))  # one self-contained file
    assert check_onnx(fused, example, path) < 1e-4
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        check_onnx(fused, example, tmp_path / "missing.onnx")


def test_torch_export_of_a_fused_model():
    _, fused = converted_and_fused(tiny_resnet())
    assert check_torch_export(fused, torch.randn(1, 3, 32, 32)) < 1e-6


def test_strict_reload_into_a_fresh_timm_model():
    _, fused = converted_and_fused(tiny_vit())
    torch.manual_seed(123)  # the fresh model starts from other random weights
    reloaded = check_strict_reload(fused, tiny_vit()).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), fused(x), rtol=0, atol=1e-6)
    wider = timm.create_model("vit_tiny_patch16_224", **dict(VIT, embed_dim=96))
    with pytest.raises(RuntimeError, match="size mismatch"):
        check_strict_reload(fused, wider)
