"""Pretrained weights without network: timm / torchvision / transformers weights written to local
files in every supported layout load through ``create_model(..., checkpoint=...)`` exactly; a
head of another class count is re-initialised with one line; a wrong architecture is a one-line
error; ViT position embeddings are resampled by timm's filter; ``pretrained=True`` offline fails
in one line naming ``model.checkpoint``. Preprocessing follows the weights."""

from __future__ import annotations

import logging
import urllib.error

import pytest
import torch
from safetensors.torch import save_file

from denoiserep.models import (
    PretrainedWeightsUnavailable,
    create_model,
    load_checkpoint,
    preprocessing,
    read_checkpoint,
    tv_weights,
)

LOGGER = "denoiserep.models"


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def save(state: dict, path, layout: str) -> None:
    """``state`` written as ``layout``: safetensors / raw / nested / DDP-prefixed."""
    state = {k: v.clone().contiguous() for k, v in state.items()}
    if layout == "safetensors":
        save_file(state, str(path))
    elif layout == "raw":
        torch.save(state, path)
    elif layout == "state_dict":  # a training checkpoint, saved from a DDP-wrapped model
        torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    elif layout == "model":
        torch.save({"model": state, "optimizer": {"lr": torch.tensor(0.1)}}, path)
    else:
        raise AssertionError(layout)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network and empty caches: the Hugging Face hub offline, torch.hub downloads fail."""
    import huggingface_hub.constants as hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError(f"no network in this test ({url})")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)


@pytest.fixture
def transformers():
    return pytest.importorskip("transformers")


def tiny_vit_config(transformers, num_labels: int = 5):
    return transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=num_labels,
    )


# -- every file layout, every library -----------------------------------------------------------
FILES = [
    ("safetensors", "w.safetensors"),
    ("raw", "w.pth"),
    ("state_dict", "w.pt"),
    ("model", "w.pth"),
    ("raw", "pytorch_model.bin"),
]


@pytest.mark.parametrize(("layout", "filename"), FILES, ids=[f"{a}-{b}" for a, b in FILES])
@pytest.mark.parametrize("name", ["resnet18", "tv:resnet18"])
def test_checkpoint_loads_exactly(tmp_path, name, layout, filename):
    torch.manual_seed(1)
    source = create_model(name, num_classes=10)
    path = tmp_path / filename
    save(source.state_dict(), path, layout)
    torch.manual_seed(2)  # another random init, so equality means the file was loaded
    fresh = create_model(name, num_classes=10)
    assert not same_weights(fresh.state_dict(), source.state_dict())
    loaded = create_model(name, num_classes=10, checkpoint=path)
    assert same_weights(loaded.state_dict(), source.state_dict())


def test_read_checkpoint_unwraps_and_strips(tmp_path):
    state = {"a.weight": torch.ones(2), "b": torch.zeros(1)}
    save(state, tmp_path / "x.pt", "state_dict")
    assert same_weights(read_checkpoint(tmp_path / "x.pt"), state)
    torch.save({"_orig_mod.module.a.weight": torch.ones(2)}, tmp_path / "y.pt")
    assert list(read_checkpoint(tmp_path / "y.pt")) == ["a.weight"]


def test_unreadable_checkpoints_are_one_line_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights file .*missing.pth not found"):
        create_model("resnet18", checkpoint=tmp_path / "missing.pth")
    torch.save([torch.ones(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="expected a state dict") as e:
        read_checkpoint(tmp_path / "list.pth")
    assert "\n" not in str(e.value)
    (tmp_path / "junk.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="weights file .*junk.bin cannot be read"):
        read_checkpoint(tmp_path / "junk.bin")


def test_pretrained_keyword_passes_through_kwargs(tmp_path):
    # the pipelines' ``model.kwargs.pretrained`` used to be a duplicate keyword
    model = create_model("resnet18", **{"pretrained": False, "num_classes": 3})
    assert model.fc.out_features == 3


# -- classifier heads ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "head", "kwargs"),
    [
        ("resnet18", "fc", {}),
        ("vit_tiny_patch16_224", "head", {"img_size": 32}),
        ("tv:resnet18", "fc", {}),
        ("tv:mobilenet_v3_small", "classifier.3", {}),
    ],
)
def test_head_of_another_class_count_is_reinitialised(tmp_path, caplog, name, head, kwargs):
    torch.manual_seed(1)
    source = create_model(name, num_classes=10, **kwargs).state_dict()
    save(source, tmp_path / "w.safetensors", "safetensors")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        model = create_model(name, num_classes=4, checkpoint=tmp_path / "w.safetensors", **kwargs)
    state = model.state_dict()
    head_keys = {f"{head}.weight", f"{head}.bias"}
    assert state[f"{head}.weight"].shape[0] == 4
    for key in state.keys() - head_keys:
        assert torch.equal(state[key], source[key]), key
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert "re-initialised for 4 classes" in lines[0] and "has 10" in lines[0]
    assert all(k in lines[0] for k in head_keys)


def test_headless_model_drops_the_checkpoint_head(tmp_path, caplog):
    save(create_model("resnet18", num_classes=10).state_dict(), tmp_path / "w.pth", "raw")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        model = create_model("resnet18", num_classes=0, checkpoint=tmp_path / "w.pth")
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 512)
    (line,) = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert "fc.weight" in line and "not used" in line


def test_checkpoint_without_head_keeps_the_fresh_head(tmp_path, caplog):
    source = create_model("resnet18", num_classes=0).state_dict()
    save(source, tmp_path / "w.pth", "raw")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        model = create_model("resnet18", num_classes=7, checkpoint=tmp_path / "w.pth")
    assert torch.equal(model.conv1.weight, source["conv1.weight"])
    (line,) = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert "fc.weight" in line and "kept freshly initialised" in line


# -- wrong architectures ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("source", "target", "expect"),
    [
        ("resnet18", "resnet34", r"does not match resnet34: \d+ missing \(layer1\.2\."),
        ("vit_tiny_patch16_224", "resnet18", r"\d+ missing .*\d+ unexpected \(cls_token"),
        ("vit_tiny_patch16_224", "vit_small_patch16_224", r"mis-shaped \(checkpoint vs model: "),
        ("tv:resnet18", "tv:resnet50", r"does not match tv:resnet50: .*mis-shaped"),
    ],
)
def test_wrong_architecture_is_a_one_line_error(tmp_path, source, target, expect):
    kwargs = {"img_size": 32} if "vit" in source else {}
    save(create_model(source, num_classes=10, **kwargs).state_dict(), tmp_path / "w.pth", "raw")
    target_kwargs = {"img_size": 32} if "vit" in target else {}
    with pytest.raises(ValueError, match=expect) as e:
        create_model(target, num_classes=10, checkpoint=tmp_path / "w.pth", **target_kwargs)
    message = str(e.value)
    assert "\n" not in message and f"checkpoint {tmp_path / 'w.pth'}" in message
    assert message.count(", ...") <= 3  # the first few keys, not hundreds


# -- timm's checkpoint filter and input adaptation ----------------------------------------------
def test_vit_position_embedding_resampled_to_another_img_size(tmp_path):
    from timm.layers import resample_abs_pos_embed

    torch.manual_seed(1)
    source = create_model("vit_tiny_patch16_224", num_classes=10).state_dict()  # 14 x 14 grid
    save(source, tmp_path / "vit224.safetensors", "safetensors")
    model = create_model(
        "vit_tiny_patch16_224",
        img_size=32,
        num_classes=10,
        checkpoint=tmp_path / "vit224.safetensors",
    )
    expected = resample_abs_pos_embed(source["pos_embed"], new_size=(2, 2), num_prefix_tokens=1)
    assert model.pos_embed.shape == (1, 5, 192) == expected.shape
    assert torch.allclose(model.pos_embed, expected, atol=1e-6)
    assert torch.equal(model.pos_embed[:, 0], source["pos_embed"][:, 0])  # class token's
    for key, value in model.state_dict().items():
        if key != "pos_embed":
            assert torch.equal(value, source[key]), key
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_rgb_stem_adapted_to_one_channel(tmp_path):
    source = create_model("resnet18", num_classes=10).state_dict()
    save(source, tmp_path / "w.pth", "raw")
    model = create_model("resnet18", in_chans=1, num_classes=10, checkpoint=tmp_path / "w.pth")
    assert torch.allclose(model.conv1.weight, source["conv1.weight"].sum(1, keepdim=True))


# -- pretrained=True without network ------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "pretrained"),
    [
        ("resnet18", True),
        ("vit_tiny_patch16_224.augreg_in21k_ft_in1k", True),
        ("resnet18", "tv_in1k"),
        ("tv:resnet18", True),
        ("tv:resnet50", "IMAGENET1K_V2"),
    ],
)
def test_pretrained_offline_fails_in_one_line(offline, name, pretrained):
    with pytest.raises(PretrainedWeightsUnavailable) as e:
        create_model(name, pretrained=pretrained, num_classes=10)
    message = str(e.value)
    assert "\n" not in message and "model.checkpoint" in message
    assert name.split(".")[0] in message


def test_pretrained_hf_offline_fails_in_one_line(offline, transformers):
    with pytest.raises(PretrainedWeightsUnavailable) as e:
        create_model("hf:denoiserep-tests/no-such-model", pretrained=True, num_classes=3)
    assert "\n" not in str(e.value) and "model.checkpoint" in str(e.value)
    with pytest.raises(ValueError, match=r"config\.save_pretrained\(DIR\) and use hf:DIR") as e:
        create_model("hf:denoiserep-tests/no-such-model", num_classes=3)
    assert "\n" not in str(e.value)


def test_checkpoint_is_the_offline_route_for_pretrained(offline, tmp_path):
    source = create_model("tv:resnet18").state_dict()
    save(source, tmp_path / "resnet18-f37072fd.pth", "raw")
    model = create_model(
        "tv:resnet18", pretrained=True, checkpoint=tmp_path / "resnet18-f37072fd.pth"
    )
    assert same_weights(model.state_dict(), source)
    assert model._denoiserep_weights == "ResNet18_Weights.IMAGENET1K_V1"  # for preprocessing


# -- names --------------------------------------------------------------------------------------
def test_name_errors():
    with pytest.raises(ValueError, match="similar timm names: .*resnet"):
        create_model("resnet_nope")
    with pytest.raises(ValueError, match="no pretrained tag 'nope' for resnet18; tags: .*a1_in1k"):
        create_model("resnet18.nope")
    with pytest.raises(ValueError, match="takes 3 input channels"):
        create_model("tv:resnet18", in_chans=1)
    with pytest.raises(ValueError, match="unknown torchvision model"):
        create_model("tv:resnet_nope")
    with pytest.raises(ValueError, match="no weights 'NOPE'; choose one of IMAGENET1K_V1"):
        create_model("tv:resnet50", pretrained="NOPE")
    assert create_model("tv:resnet18", img_size=64, num_classes=3).fc.out_features == 3


def test_tv_weights_names():
    import torchvision

    enum = torchvision.models.ResNet50_Weights
    assert tv_weights("resnet50") is enum.DEFAULT is enum.IMAGENET1K_V2
    assert tv_weights("resnet50", "IMAGENET1K_V1") is enum.IMAGENET1K_V1
    assert tv_weights("resnet50", "ResNet50_Weights.IMAGENET1K_V1") is enum.IMAGENET1K_V1
    assert tv_weights("resnet50", False) is None


# -- preprocessing ------------------------------------------------------------------------------
def test_preprocessing_follows_torchvision_weights():
    v2 = preprocessing("tv:resnet50")  # DEFAULT = IMAGENET1K_V2: resize 232, crop 224
    assert v2["input_size"] == (3, 224, 224) and v2["interpolation"] == "bilinear"
    assert v2["crop_pct"] == pytest.approx(224 / 232)
    assert v2["mean"] == pytest.approx((0.485, 0.456, 0.406))
    assert preprocessing("tv:resnet50", "IMAGENET1K_V1")["crop_pct"] == pytest.approx(224 / 256)
    vit = preprocessing("tv:vit_b_16", "IMAGENET1K_SWAG_E2E_V1")
    assert vit["input_size"] == (3, 384, 384) and vit["interpolation"] == "bicubic"
    assert (
        preprocessing(create_model("tv:vit_b_16", pretrained=False))["interpolation"] == "bilinear"
    )


def test_preprocessing_follows_timm_pretrained_cfg():
    vit = preprocessing("vit_base_patch16_224.augreg2_in21k_ft_in1k")
    assert vit["mean"] == (0.5, 0.5, 0.5) and vit["interpolation"] == "bicubic"
    tv_tag = preprocessing("resnet50.tv_in1k")
    assert tv_tag["interpolation"] == "bilinear" and tv_tag["crop_pct"] == 0.875
    assert preprocessing("resnet50", "tv_in1k") == tv_tag
    small = preprocessing(create_model("vit_tiny_patch16_224", img_size=32, in_chans=1))
    assert small["input_size"] == (1, 32, 32)  # the model's own size, not the weights' 224
    assert small["mean"] == (0.5,) and small["std"] == (0.5,)
    assert preprocessing(torch.nn.Linear(2, 2))["mean"] == pytest.approx((0.485, 0.456, 0.406))


def test_preprocessing_follows_hf_processor(tmp_path, transformers):
    directory = tmp_path / "vit"
    transformers.ViTForImageClassification(tiny_vit_config(transformers)).save_pretrained(directory)
    transformers.ViTImageProcessor(
        size={"height": 32, "width": 32}, image_mean=[0.1, 0.2, 0.3], image_std=[0.4, 0.5, 0.6]
    ).save_pretrained(directory)
    cfg = preprocessing(create_model(f"hf:{directory}"))
    assert cfg["mean"] == pytest.approx((0.1, 0.2, 0.3)) and cfg["std"] == pytest.approx(
        (0.4, 0.5, 0.6)
    )
    assert cfg["input_size"] == (3, 32, 32) and cfg["crop_pct"] == 1.0
    assert cfg["interpolation"] == "bilinear"
    assert preprocessing(f"hf:{directory}") == cfg


# -- transformers models ------------------------------------------------------------------------
def test_hf_checkpoint_in_each_layout_loads_exactly(tmp_path, transformers):
    directory = tmp_path / "vit"
    torch.manual_seed(1)
    source = transformers.ViTForImageClassification(tiny_vit_config(transformers))
    source.save_pretrained(directory)  # config.json + model.safetensors (legacy key names)
    expected = source.state_dict()
    files = {
        "hub file": directory / "model.safetensors",
        "state_dict .bin": tmp_path / "pytorch_model.bin",
        "nested": tmp_path / "nested.pt",
    }
    torch.save(expected, files["state_dict .bin"])
    save(expected, files["nested"], "model")
    for label, path in files.items():
        torch.manual_seed(2)
        model = create_model(f"hf:{directory}", checkpoint=path)
        assert same_weights(model.model.state_dict(), expected), label
    wrapped = tmp_path / "wrapped.safetensors"  # this package's own layout (model.<key>)
    save(model.state_dict(), wrapped, "safetensors")
    again = create_model(f"hf:{directory}", checkpoint=wrapped)
    assert same_weights(again.state_dict(), model.state_dict())
    pretrained = create_model(f"hf:{directory}", pretrained=True)  # from_pretrained, offline
    assert same_weights(pretrained.model.state_dict(), expected)
    x = torch.randn(2, 3, 32, 32)
    assert pretrained(x).shape == (2, 5)


def test_hf_head_reinitialised_and_wrong_architecture(tmp_path, caplog, transformers):
    directory = tmp_path / "vit"
    source = transformers.ViTForImageClassification(tiny_vit_config(transformers))
    source.save_pretrained(directory)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        model = create_model(f"hf:{directory}", pretrained=True, num_classes=3)
    (line,) = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert "classifier.weight" in line and "re-initialised for 3 classes" in line
    assert model.num_classes == 3 and model(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    embeddings = "vit.embeddings.patch_embeddings.projection.weight"
    assert torch.equal(model.model.state_dict()[embeddings], source.state_dict()[embeddings])
    save(create_model("resnet18").state_dict(), tmp_path / "r.pth", "raw")
    with pytest.raises(ValueError, match=r"does not match hf:.*missing .*unexpected") as e:
        create_model(f"hf:{directory}", checkpoint=tmp_path / "r.pth")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="nope not in its ViTConfig"):
        create_model(f"hf:{directory}", nope=1)


def test_load_checkpoint_on_a_built_model(tmp_path):
    source = create_model("resnet18", num_classes=10)
    save(source.state_dict(), tmp_path / "w.pth", "raw")
    model = create_model("resnet18", num_classes=10)
    assert load_checkpoint(model, tmp_path / "w.pth") is model
    assert same_weights(model.state_dict(), source.state_dict())


# -- dense models -------------------------------------------------------------------------------
def test_dense_checkpoints_reinitialise_class_heads(tmp_path, caplog):
    from denoiserep.dense.models import build_detector, build_segmenter

    torch.manual_seed(1)
    seg = build_segmenter("lraspp_mobilenet_v3_large", 21).state_dict()
    save(seg, tmp_path / "seg.pth", "model")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        model = build_segmenter("lraspp_mobilenet_v3_large", 5, checkpoint=tmp_path / "seg.pth")
    (line,) = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert "classifier.low_classifier.weight" in line and "re-initialised for 5 classes" in line
    state = model.state_dict()
    assert all(torch.equal(state[k], seg[k]) for k in state if k.startswith("backbone."))

    kwargs = dict(min_size=64, max_size=64)
    det = build_detector("fasterrcnn", 91, "resnet18", **kwargs).state_dict()
    save(det, tmp_path / "det.safetensors", "safetensors")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        model = build_detector(
            "fasterrcnn", 4, "resnet18", checkpoint=tmp_path / "det.safetensors", **kwargs
        )
    (line,) = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert "roi_heads.box_predictor.cls_score.weight" in line and "for 4 classes" in line
    state = model.state_dict()
    assert all(
        torch.equal(state[k], det[k]) for k in state if not k.startswith("roi_heads.box_pred")
    )
    with pytest.raises(ValueError, match=r"does not match maskrcnn \(resnet18\): \d+ missing"):
        build_detector("maskrcnn", 4, "resnet18", checkpoint=tmp_path / "det.safetensors", **kwargs)


def test_dense_pretrained_backbones_offline_fail_in_one_line(offline):
    from denoiserep.dense.models import build_detector, build_segmenter

    for build in (
        lambda: build_segmenter("fcn_resnet50", 5, pretrained=True),
        lambda: build_detector("maskrcnn", 5, "resnet50", pretrained="IMAGENET1K_V1"),
    ):
        with pytest.raises(PretrainedWeightsUnavailable) as e:
            build()
        assert "\n" not in str(e.value) and "ResNet50_Weights.IMAGENET1K_V" in str(e.value)
        assert "model.checkpoint" in str(e.value)
