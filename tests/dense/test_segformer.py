"""SegFormer (transformers) in ``denoiserep segment``: it behaves like the torchvision segmenters
(``{"out": logits}`` at the input resolution), DenoiseRep on its MiT encoder fuses exactly, and
its weights load offline from a local directory or file (a backbone-only MiT leaves the decoder
fresh, a decoder of another class count is re-initialised), each with one line."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import denoiserep as dr
from denoiserep.dense.models import (
    MIT_VARIANTS,
    SEGFORMERS,
    SEGMENTATION_BACKBONE,
    SEGMENTERS,
    SegFormer,
    build_segmenter,
)
from denoiserep.models import PretrainedWeightsUnavailable
from tests.conftest import rel_err
from tests.dense.test_dense_fusion import calibrate_bn, convert_random, explicit

transformers = pytest.importorskip("transformers")

# A MiT-b0 shrunk for a CPU test: one block per stage, narrow stages and decoder.
SMALL = dict(
    depths=[1, 1, 1, 1],
    hidden_sizes=[8, 16, 24, 32],
    num_attention_heads=[1, 1, 1, 1],
    decoder_hidden_size=32,
)
LOGGER = "denoiserep.models"


def log_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def hf_state_as_wrapper(model: nn.Module) -> dict[str, torch.Tensor]:
    """A transformers SegFormer's state dict with this package's keys (backbone.*)."""
    return {
        ("backbone." + k.removeprefix("segformer.")) if k.startswith("segformer.") else k: v
        for k, v in model.state_dict().items()
    }


def test_segformer_names_and_paper_sizes():
    assert set(SEGFORMERS) == {f"segformer_b{k}" for k in range(6)} <= set(SEGMENTERS)
    paper = {"b0": 3.8e6, "b1": 13.7e6, "b2": 27.5e6, "b3": 47.3e6, "b4": 64.1e6, "b5": 84.7e6}
    assert set(MIT_VARIANTS) == set(paper)
    for variant, params in paper.items():  # ADE20K (150 classes), SegFormer paper table 1
        with torch.device("meta"):
            model = build_segmenter(f"segformer_{variant}", 150)
        assert sum(p.numel() for p in model.parameters()) == pytest.approx(params, rel=0.02)
    with pytest.raises(ValueError, match="no auxiliary head"):
        build_segmenter("segformer_b0", 5, aux_loss=True)
    with pytest.raises(ValueError, match="nope not in SegformerConfig"):
        build_segmenter("segformer_b0", 5, nope=1)


def test_segformer_logits_at_input_resolution_and_exact_fusion():
    torch.manual_seed(0)
    model = build_segmenter("segformer_b0", 5, **SMALL).double()
    assert isinstance(model, SegFormer) and model.training
    x = torch.randn(2, 3, 64, 48, generator=torch.Generator().manual_seed(0)).double()
    calibrate_bn(model, lambda: model(x))  # the decoder's BatchNorm gets real statistics
    with torch.no_grad():
        out = model(x)
        hf_logits = model.to_hf().eval()(pixel_values=x).logits  # transformers' own forward
    assert set(out) == {"out"} and out["out"].shape == (2, 5, 64, 48)
    assert hf_logits.shape == (2, 5, 16, 12)  # 1/4 resolution, upsampled by the wrapper
    expected = nn.functional.interpolate(hf_logits, (64, 48), mode="bilinear", align_corners=False)
    assert torch.equal(out["out"], expected)

    layers = [n for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    original, converted = convert_random(model, SEGMENTATION_BACKBONE, x)  # converts in place
    names = set(dr.denoise_layers(converted))
    assert names and names == {n for n in layers if n.startswith("backbone.")}

    def logits(m):
        with torch.no_grad():
            return m(x)["out"]

    reference = logits(original)
    fused = dr.fuse(converted).eval()
    explicit(converted, True)
    unfused = logits(converted)
    explicit(converted, False)
    assert rel_err(logits(converted), reference) < 1e-9
    assert rel_err(logits(fused), reference) < 1e-9
    assert rel_err(unfused, reference) < 1e-9
    plain = copy.deepcopy(original)
    for m in plain.modules():
        m._forward_pre_hooks.clear()
    assert rel_err(logits(plain), reference) > 1e-3, "the denoisers must change the model"
    assert type(fused) is SegFormer
    fresh = build_segmenter("segformer_b0", 5, **SMALL)
    fresh.load_state_dict(fused.state_dict(), strict=True)


def test_pretrained_mit_encoder_from_a_local_directory(tmp_path, caplog):
    torch.manual_seed(1)  # an ImageNet-style MiT: encoder + image classifier, no decoder
    mit = transformers.SegformerForImageClassification(
        transformers.SegformerConfig(**SMALL, num_labels=7)
    )
    mit.save_pretrained(tmp_path / "mit")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        model = build_segmenter("segformer_b0", 5, pretrained=str(tmp_path / "mit"), **SMALL)
    state = model.state_dict()
    encoder = {k: v for k, v in hf_state_as_wrapper(mit).items() if k.startswith("backbone.")}
    assert encoder and all(torch.equal(state[k], v) for k, v in encoder.items())
    (line,) = log_lines(caplog)
    assert "decode_head" in line and "initialised fresh" in line and "classifier.weight" in line
    assert model(torch.rand(1, 3, 32, 32))["out"].shape == (1, 5, 32, 32)


def test_checkpoint_files_head_reinitialised_and_wrong_variant(tmp_path, caplog):
    torch.manual_seed(2)
    full = transformers.SegformerForSemanticSegmentation(
        transformers.SegformerConfig(**SMALL, num_labels=9)
    )
    full.save_pretrained(tmp_path / "ade")  # transformers' file layout (legacy key names)
    expected = hf_state_as_wrapper(full)
    hub_file = tmp_path / "ade" / "model.safetensors"
    same = build_segmenter("segformer_b0", 9, checkpoint=hub_file, **SMALL).state_dict()
    assert same.keys() == expected.keys()
    assert all(torch.equal(same[k], expected[k]) for k in expected)
    ours = tmp_path / "fused.safetensors"  # this package's layout (backbone.*)
    save_file({k: v.contiguous() for k, v in same.items()}, str(ours))
    again = build_segmenter("segformer_b0", 9, checkpoint=ours, **SMALL).state_dict()
    assert all(torch.equal(again[k], expected[k]) for k in expected)

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        five = build_segmenter("segformer_b0", 5, checkpoint=hub_file, **SMALL).state_dict()
    (line,) = log_lines(caplog)
    assert "decode_head.classifier.weight" in line and "re-initialised for 5 classes" in line
    assert five["decode_head.classifier.weight"].shape[0] == 5
    kept = [k for k in expected if not k.startswith("decode_head.classifier.")]
    assert all(torch.equal(five[k], expected[k]) for k in kept)

    with pytest.raises(ValueError, match=r"does not match segformer_b1: .*mis-shaped") as e:
        build_segmenter("segformer_b1", 9, checkpoint=hub_file)
    assert "\n" not in str(e.value)


def test_pretrained_offline_fails_in_one_line(monkeypatch, tmp_path):
    import huggingface_hub.constants as hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    with pytest.raises(PretrainedWeightsUnavailable) as e:
        build_segmenter("segformer_b0", 150, pretrained=True)
    message = str(e.value)
    assert "\n" not in message and "nvidia/mit-b0" in message and "model.checkpoint" in message


def test_segment_cli_runs_segformer(tmp_path):
    import json

    from safetensors.torch import load_model

    from denoiserep.cli import main, packaged_config
    from tests.dense.fakes import write_fake_fmnist

    fmnist = write_fake_fmnist(tmp_path / "fmnist")
    out = tmp_path / "run"
    small = ", ".join(f"{k}: {v}" for k, v in SMALL.items())
    argv = [
        "segment",
        "--config",
        str(packaged_config("segment_tiny.yaml")),
        "--output",
        str(out),
        "--no-progress",
        f"data.canvas.root={tmp_path / 'canvas'}",
        f"data.canvas.fmnist_dir={fmnist}",
        "model.name=segformer_b0",
        f"model.kwargs={{{small}}}",
    ]
    assert main(argv) == 0
    report = json.loads((out / "results.json").read_text())
    assert set(report["per_seed"]["0"]) == {"baseline", "control", "denoiserep"}
    assert report["per_seed"]["0"]["denoiserep"]["max_abs_diff_fused_unfused"] < 1e-4
    assert report["params_fused"] == report["params_baseline"]
    plain = build_segmenter("segformer_b0", 10, **SMALL)
    load_model(plain, str(out / "seed0" / "denoiserep" / "fused.safetensors"), strict=True)
