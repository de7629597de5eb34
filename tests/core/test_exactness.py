"""Fused model == explicit reference (reverse step applied before each original layer)."""

from __future__ import annotations

import copy
import warnings

import pytest
import timm
import torch
import torchvision

import denoiserep as dr
from tests.conftest import check_fused_against_reference, randomize_denoisers


def _tv_vit() -> torch.nn.Module:
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64
    )
    model.heads.head = torch.nn.Linear(32, 10)  # torchvision zero-initialises its head
    return model


MODELS = {
    "timm_vit_tiny": lambda: timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=10),
    "timm_swin_tiny": lambda: timm.create_model(
        "swin_tiny_patch4_window7_224", img_size=64, window_size=4, num_classes=10
    ),
    # SwinV2 (the paper's Swin rows): log-spaced continuous position bias MLP, scaled cosine
    # attention, post-norm; the smallest shape that keeps every layer kind
    "timm_swinv2_tiny": lambda: timm.create_model(
        "swinv2_tiny_window8_256",
        img_size=32,
        window_size=4,
        embed_dim=16,
        depths=(1, 1, 1, 1),
        num_heads=(1, 1, 2, 2),
        num_classes=10,
    ),
    "timm_resnet18": lambda: timm.create_model("resnet18", num_classes=10),
    "timm_convnext_atto": lambda: timm.create_model("convnext_atto", num_classes=10),
    "tv_resnet18": lambda: torchvision.models.resnet18(num_classes=10),
    "tv_mobilenet_v3_small": lambda: torchvision.models.mobilenet_v3_small(num_classes=10),
    # layers whose forward is never called (EVA's qkv: F.linear with its own bias; torchvision's
    # nn.MultiheadAttention out_proj) are skipped with a warning; the rest must fuse exactly
    "timm_eva02_tiny": lambda: timm.create_model(
        "eva02_tiny_patch14_224", img_size=28, depth=2, num_classes=10
    ),
    "tv_vit": lambda: _tv_vit(),
}
INPUT_SIZE = {"timm_vit_tiny": 32, "timm_swin_tiny": 64, "timm_eva02_tiny": 28}
# float64 depthwise convolutions take minutes on CPU: those models are checked in float32 only.
FLOAT64 = ["timm_vit_tiny", "timm_swin_tiny", "timm_resnet18", "tv_resnet18"]
CASES = [(n, torch.float32, 1e-5) for n in MODELS] + [(n, torch.float64, 1e-10) for n in FLOAT64]


@pytest.mark.parametrize("name,dtype,tol", CASES, ids=[f"{n}-{str(d)[6:]}" for n, d, _ in CASES])
def test_fused_equals_reference(name, dtype, tol):
    torch.manual_seed(0)
    original = MODELS[name]().to(dtype).eval()
    size = INPUT_SIZE.get(name, 32)
    x = torch.randn(2, 3, size, size, dtype=dtype)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "DenoiseRep skips")
        converted = dr.convert(copy.deepcopy(original), dr.DenoiseConfig(targets="all"), x)
    randomize_denoisers(converted, strength=0.1)
    fused = dr.fuse(converted).eval()

    out = check_fused_against_reference(original, converted, fused, x, tol)
    assert torch.equal(out["converted"], out["fused"]), "eval-mode converted model == fused model"
    fresh = MODELS[name]().to(dtype)
    fresh.load_state_dict(fused.state_dict(), strict=True)
