"""Hugging Face ``transformers`` vision models convert, train and fuse like timm ones: with random
non-trivial denoisers on every Linear / Conv, the fused model equals the original model with the
reverse step applied to each layer's input (ViT classifier and SegFormer segmenter), and a model
made by ``create_model("hf:...")`` trains through the fused weights and fuses back to a plain
transformers model."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import denoiserep as dr
from denoiserep.models import create_model
from tests.conftest import randomize_denoisers, reference_step, rel_err

transformers = pytest.importorskip("transformers")


def tiny_vit() -> nn.Module:
    config = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=5,
    )
    return transformers.ViTForImageClassification(config)


def tiny_segformer() -> nn.Module:
    config = transformers.SegformerConfig(
        depths=[1, 1, 1, 1],
        hidden_sizes=[8, 16, 24, 32],
        num_attention_heads=[1, 1, 1, 1],
        decoder_hidden_size=32,
        num_labels=4,
    )
    return transformers.SegformerForSemanticSegmentation(config)


# transformers' ViT reads ``patch_embeddings.projection.weight.dtype`` in its forward: a converted
# ViT runs once DenoiseLayer exposes its base layer's ``weight`` (the fix proposed for
# core/layer.py). Until then those cases are expected failures; with the fix the mark is inert.
NEEDS_WEIGHT = pytest.mark.xfail(
    "weight" not in vars(dr.DenoiseLayer),
    reason="DenoiseLayer has no .weight (core/layer.py)",
    raises=AttributeError,
    strict=True,
)
MODELS = {"vit": (tiny_vit, 32), "segformer": (tiny_segformer, 64)}
CASES = [
    pytest.param(name, dtype, tol, marks=[NEEDS_WEIGHT] if name == "vit" else [])
    for name in MODELS
    for dtype, tol in ((torch.float32, 1e-5), (torch.float64, 1e-10))
]
IDS = [f"{n}-{str(d)[6:]}" for n in MODELS for d in (torch.float32, torch.float64)]


def layer_names(model: nn.Module) -> set[str]:
    return {n for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)}


@pytest.mark.parametrize("name,dtype,tol", CASES, ids=IDS)
def test_fused_equals_reference(name, dtype, tol):
    build, size = MODELS[name]
    torch.manual_seed(0)
    original = build().to(dtype).eval()
    x = torch.randn(2, 3, size, size, dtype=dtype)
    converted = dr.convert(
        copy.deepcopy(original), dr.DenoiseConfig(targets="all"), {"pixel_values": x}
    )
    assert set(dr.denoise_layers(converted)) == layer_names(original)
    randomize_denoisers(converted, strength=0.1)
    fused = dr.fuse(converted).eval()

    def logits(model):
        return model(pixel_values=x).logits

    with torch.no_grad():
        baseline = logits(original)
        with reference_step(original, converted):
            reference = logits(original)
        out_fused = logits(fused)
        out_converted = logits(converted.eval())
        for layer in dr.denoise_layers(converted).values():
            layer.explicit = True
        out_explicit = logits(converted)

    assert type(fused) is type(original)
    assert rel_err(reference, baseline) > 1e-2, "denoisers must change the output clearly"
    assert rel_err(out_fused, reference) < tol
    assert rel_err(out_explicit, reference) < tol
    # eval-mode converted model == fused model, up to BLAS rounding (not bit for bit: the same
    # float64 product can round differently in another buffer, e.g. SegFormer's decoder)
    assert rel_err(out_converted, out_fused) < tol
    assert fused.state_dict().keys() == original.state_dict().keys()
    fresh = build().to(dtype)
    fresh.load_state_dict(fused.state_dict(), strict=True)
    with torch.no_grad():
        assert rel_err(logits(fresh.eval()), out_fused) < tol


@NEEDS_WEIGHT
def test_hf_classifier_converts_trains_and_fuses(tmp_path):
    tiny_vit().config.save_pretrained(tmp_path)  # a config, no weights: offline, from_config
    torch.manual_seed(0)
    model = create_model(f"hf:{tmp_path}", num_classes=3)
    assert isinstance(model.model, transformers.ViTForImageClassification)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 3, (8,))
    assert model(x).shape == (8, 3)
    cfg = dr.DenoiseConfig(targets=["model.vit.*"], loss_weight=0.1)
    model = dr.convert(model, cfg, example_input=x[:2])
    assert all(n.startswith("model.vit.") for n in dr.denoise_layers(model))
    dr.set_phase(model, "joint")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    loss = nn.functional.cross_entropy(model(x), y) + cfg.loss_weight * dr.denoise_loss(model)
    assert dr.denoise_loss(model) > 0
    loss.backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert any(n.endswith(".D") for n in changed) and any(
        n.endswith("base_layer.weight") for n in changed
    )
    fused = dr.fuse(model).eval()
    model.eval()
    with torch.no_grad():
        assert rel_err(fused(x), model(x)) < 1e-6
    fresh = create_model(f"hf:{tmp_path}", num_classes=3)
    fresh.load_state_dict(fused.state_dict(), strict=True)
    assert type(fused.model) is transformers.ViTForImageClassification


def test_main_path_of_a_transformers_vit_reads_its_model_output():
    """The path search finds the logits inside transformers' ModelOutput."""
    model = dr.convert(
        tiny_vit(), dr.DenoiseConfig(targets="main_path"), example_input=torch.randn(2, 3, 32, 32)
    )
    assert list(dr.denoise_layers(model)) == [
        "vit.embeddings.patch_embeddings.projection",
        "classifier",
    ]
