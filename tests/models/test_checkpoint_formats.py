"""Checkpoints people hold, written by the test and loaded without network.

Through ``denoiserep classify`` (with the documented keys, and without any key where a wrapper
prefix is detected): a PyTorch Lightning ``.ckpt``, a TransReID-style ``base.`` file, timm /
DeiT training checkpoints holding a model and its EMA (``model.checkpoint_key`` chooses),
``model.checkpoint_remap``; a whole pickled module and other pickled objects are explained in
one line (never torch's advice); ``data.mean`` / ``data.std`` / ``data.interpolation`` /
``data.crop_pct`` reach the transforms and are recorded with the run. Bad keys are one-line
errors naming the choices.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file
from torchvision import transforms as T

from denoiserep.classification.task import ClassificationExperiment, ClassifyConfig
from denoiserep.cli import main
from denoiserep.engine.config import from_dict
from denoiserep.models import create_model, preprocessing, read_checkpoint
from denoiserep.reid.task import ReIDConfig

NAME = "vit_tiny_patch16_224"
KW = {"img_size": 8, "patch_size": 4, "embed_dim": 32, "depth": 1, "num_heads": 2}
CLI_KW = "model.kwargs={img_size: 8, patch_size: 4, embed_dim: 32, depth: 1, num_heads: 2}"


def digits_model(seed: int) -> torch.nn.Module:
    """The model ``denoiserep classify`` builds below (digits: 1 channel, 10 classes)."""
    torch.manual_seed(seed)
    return create_model(NAME, num_classes=10, in_chans=1, **KW)


def weights(seed: int) -> dict[str, torch.Tensor]:
    return {k: v.clone().contiguous() for k, v in digits_model(seed).state_dict().items()}


def prefixed(state: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in state.items()}


def classify(out: Path, *extra: str) -> list[str]:
    """Evaluate the loaded weights only (no training): the baseline is the checkpoint."""
    return [
        "classify",
        "--config",
        "digits_demo.yaml",
        "--no-progress",
        "--output",
        str(out),
        "robustness.enabled=false",
        CLI_KW,
        "baseline.epochs=0",
        "arms=[]",
        "seeds=[0]",
        *extra,
    ]


def loaded_baseline(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "seed0" / "baseline" / "model.safetensors"))


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def error_of(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


# -- layouts loaded through the command line ------------------------------------------------
def lightning(state: dict, path: Path) -> None:
    """A PyTorch Lightning checkpoint: the LightningModule holds the network as ``self.model``."""
    torch.save(
        {
            "epoch": 3,
            "global_step": 120,
            "pytorch-lightning_version": "2.4.0",
            "state_dict": prefixed(state, "model."),
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]}],
            "lr_schedulers": [],
            "hyper_parameters": {"lr": 0.1, "arch": NAME},
        },
        path,
    )


def transreid(state: dict, path: Path) -> None:
    """TransReID's trained models keep the backbone as ``self.base``."""
    torch.save(prefixed(state, "base."), path)


def mmengine(state: dict, path: Path) -> None:
    """An mmengine / mmpretrain checkpoint: ``meta`` and ``state_dict`` under ``backbone.``."""
    torch.save({"meta": {"epoch": 12}, "state_dict": prefixed(state, "backbone.")}, path)


def encoder(state: dict, path: Path) -> None:
    save_file(prefixed(state, "encoder."), str(path))


@pytest.mark.parametrize(
    ("write", "filename", "prefix"),
    [
        (lightning, "last.ckpt", "model."),
        (transreid, "transreid.pth", "base."),
        (mmengine, "epoch_12.pth", "backbone."),
        (encoder, "encoder.safetensors", "encoder."),
    ],
    ids=["lightning", "transreid", "mmengine", "encoder"],
)
def test_wrapper_prefix_is_detected_without_any_key(tmp_path, caplog, write, filename, prefix):
    state = weights(1)
    write(state, tmp_path / filename)
    with caplog.at_level(logging.WARNING):
        assert main(classify(tmp_path / "run", f"model.checkpoint={tmp_path / filename}")) == 0
    assert_same(loaded_baseline(tmp_path / "run"), state)
    said = [m for m in warnings_of(caplog) if "starts with" in m]
    assert len(said) == 1 and repr(prefix) in said[0] and filename in said[0], said


def test_model_and_ema_default_and_checkpoint_key(tmp_path, caplog):
    """A timm training checkpoint (its ``args`` Namespace included): the trained weights by
    default, with one line naming the choice; ``model.checkpoint_key`` picks the EMA."""
    trained, ema = weights(1), weights(2)
    path = tmp_path / "checkpoint-12.pth.tar"
    torch.save(
        {
            "epoch": 12,
            "arch": NAME,
            "state_dict": trained,
            "state_dict_ema": ema,
            "args": argparse.Namespace(lr=0.1, model=NAME),
            "metric": 81.2,
        },
        path,
    )
    with caplog.at_level(logging.WARNING):
        assert main(classify(tmp_path / "a", f"model.checkpoint={path}")) == 0
    assert_same(loaded_baseline(tmp_path / "a"), trained)
    (line,) = [m for m in warnings_of(caplog) if "several state dicts" in m]
    assert "using 'state_dict'" in line and "'state_dict_ema'" in line and "checkpoint_key" in line
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        argv = classify(
            tmp_path / "b", f"model.checkpoint={path}", "model.checkpoint_key=state_dict_ema"
        )
        assert main(argv) == 0
    assert_same(loaded_baseline(tmp_path / "b"), ema)
    assert not [m for m in warnings_of(caplog) if "several state dicts" in m]
    saved = yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())
    assert saved["model"]["checkpoint_key"] == "state_dict_ema"


def test_checkpoint_remap_through_cli(tmp_path):
    """Keys of another code base: ``net.`` before the backbone, the head called ``classifier``
    (no prefix common to every key): an ordered remap maps them, applied to the keys as in
    the file (before the DDP ``module.`` is stripped)."""
    state = weights(1)
    renamed = {
        "module." + ("classifier." + k[5:] if k.startswith("head.") else "net." + k): v
        for k, v in state.items()
    }
    path = tmp_path / "other.pth"
    torch.save({"model": renamed, "model_ema": renamed}, path)
    remap = r"model.checkpoint_remap=[['^module\.net\.', ''], ['^module\.classifier\.', 'head.']]"
    argv = classify(
        tmp_path / "run", f"model.checkpoint={path}", "model.checkpoint_key=model", remap
    )
    assert main(argv) == 0
    assert_same(loaded_baseline(tmp_path / "run"), state)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["model"]["checkpoint_remap"] == [
        ["^module\\.net\\.", ""],
        ["^module\\.classifier\\.", "head."],
    ]


def test_ddp_prefix_per_key_still_stripped(tmp_path):
    state = weights(1)
    torch.save({"state_dict": prefixed(state, "_orig_mod.module.")}, tmp_path / "w.pt")
    assert_same(read_checkpoint(tmp_path / "w.pt"), state)
    model = create_model(NAME, num_classes=10, in_chans=1, checkpoint=tmp_path / "w.pt", **KW)
    assert_same(model.state_dict(), state)


def test_prefix_that_does_not_fit_is_kept(tmp_path):
    """Every key under ``model.`` but the model's own keys are ``model.*`` too (this package's
    Hugging Face wrapper is one such model): nothing is stripped."""
    from torch import nn

    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = nn.Linear(3, 2)

    from denoiserep.models.weights import strip_common_prefix

    state = Wrapper().state_dict()
    assert strip_common_prefix(state, state.keys(), "ckpt", "Wrapper").keys() == state.keys()


# -- pickles that are not state dicts -------------------------------------------------------
class TrainingRecipe:
    """A class of the user's code base, pickled into a checkpoint beside the weights."""

    def __init__(self) -> None:
        self.lr = 0.1


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_pickled_module_is_explained(tmp_path, capsys, zip_format):
    path = tmp_path / "whole.pth"
    torch.save(digits_model(1), path, _use_new_zipfile_serialization=zip_format)
    err = error_of(capsys, classify(tmp_path / "run", f"model.checkpoint={path}"))
    assert "whole pickled model" in err and "VisionTransformer" in err, err
    assert ".state_dict(), out)" in err and "trust" in err and "runs code" in err, err
    for theirs in ("truncated", "corrupt", "Re-running", "arbitrary code", "add_safe_globals"):
        assert theirs not in err, err
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_other_pickled_objects_are_explained_in_our_words(tmp_path):
    path = tmp_path / "recipe.pth"
    torch.save({"state_dict": weights(1), "recipe": TrainingRecipe()}, path)
    with pytest.raises(ValueError, match="holds Python objects besides tensors") as e:
        read_checkpoint(path)
    message = str(e.value)
    assert "TrainingRecipe" in message and "\n" not in message
    for theirs in ("weights_only", "Re-running", "corrupt"):
        assert theirs not in message, message


def test_truncated_or_junk_file_is_still_corrupt(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(weights(1), path)
    path.write_bytes(path.read_bytes()[:2000])
    (tmp_path / "junk.bin").write_bytes(b"not a checkpoint")  # torch reads it as a bad pickle
    for bad in (path, tmp_path / "junk.bin"):
        with pytest.raises(ValueError, match="truncated or corrupt") as e:
            read_checkpoint(bad)
        message = str(e.value)
        assert "\n" not in message and "weights_only" not in message, message


# -- bad input: one line naming the choices ------------------------------------------------
def test_bad_remap_and_key_are_one_line_errors(tmp_path, capsys):
    path = tmp_path / "w.pth"
    torch.save({"state_dict": weights(1), "model_ema": weights(2), "epoch": 3}, path)
    ckpt = f"model.checkpoint={path}"
    err = error_of(
        capsys, classify(tmp_path / "a", ckpt, r"model.checkpoint_remap=['^base\.', '']")
    )
    assert "model.checkpoint_remap[0]" in err and "[regex, replacement] pair" in err, err
    err = error_of(capsys, classify(tmp_path / "b", ckpt, "model.checkpoint_remap=[['(', '']]"))
    assert "model.checkpoint_remap[0]" in err and "not a valid regex" in err, err
    err = error_of(capsys, classify(tmp_path / "c", ckpt, "model.checkpoint_remap=3"))
    assert "model.checkpoint_remap" in err, err
    err = error_of(capsys, classify(tmp_path / "d", ckpt, "model.checkpoint_key=ema"))
    assert "model.checkpoint_key 'ema'" in err and "'state_dict', 'model_ema'" in err, err
    err = error_of(capsys, classify(tmp_path / "e", ckpt, "model.checkpoint_remap=[['^.*$', 'x']]"))
    assert "maps both" in err, err
    for letter in "abcde":
        assert not (tmp_path / letter).exists()


def test_key_on_a_plain_state_dict_and_keys_without_checkpoint(tmp_path):
    torch.save(weights(1), tmp_path / "plain.pth")
    with pytest.raises(ValueError, match="plain state dict; unset model.checkpoint_key"):
        read_checkpoint(tmp_path / "plain.pth", key="model")
    with pytest.raises(ValueError, match="set model.checkpoint"):
        create_model(NAME, checkpoint_key="model", **KW)
    torch.save({"student": weights(1), "teacher": weights(2)}, tmp_path / "dino.pth")
    with pytest.raises(ValueError, match="'student', 'teacher': set model.checkpoint_key"):
        read_checkpoint(tmp_path / "dino.pth")
    assert_same(read_checkpoint(tmp_path / "dino.pth", key="teacher"), weights(2))


def test_reid_config_takes_the_keys():
    cfg = from_dict(
        ReIDConfig, {"model": {"checkpoint_key": "model", "checkpoint_remap": [["^base\\.", ""]]}}
    )
    assert cfg.model.checkpoint_remap == [["^base\\.", ""]]
    with pytest.raises(ValueError, match="not a valid regex"):
        from_dict(ReIDConfig, {"model": {"checkpoint_remap": [["[", ""]]}})


# -- normalisation overrides -------------------------------------------------------------------
def test_preprocessing_overrides_the_weights_tag():
    tagged = preprocessing("vit_base_patch16_224.augreg2_in21k_ft_in1k")
    assert tagged["mean"] == (0.5, 0.5, 0.5)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    pre = preprocessing(
        "vit_base_patch16_224.augreg2_in21k_ft_in1k",
        mean=mean,
        std=std,
        interpolation="bilinear",
        crop_pct=1.0,
    )
    assert pre["mean"] == tuple(mean) and pre["std"] == tuple(std)
    assert pre["interpolation"] == "bilinear" and pre["crop_pct"] == 1.0
    with pytest.raises(ValueError, match="data.mean has 2 values but the model takes 3"):
        preprocessing("resnet10t", mean=[0.1, 0.2], std=[0.3, 0.4])
    with pytest.raises(ValueError, match="data.interpolation must be one of"):
        preprocessing("resnet10t", interpolation="cubic")


def write_folder(root: Path) -> None:
    for split in ("train", "val"):
        for c, colour in (("a", (200, 10, 10)), ("b", (10, 10, 200))):
            (root / split / c).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (20, 24), colour).save(root / split / c / f"{i}.png")


FOLDER = {
    "data": {"name": "imagefolder", "input_size": 16},
    "model": {"name": "resnet10t", "kwargs": {}},
    "robustness": {"enabled": False},
}
OVERRIDE = {
    "mean": [0.1, 0.2, 0.3],
    "std": [0.4, 0.5, 0.6],
    "interpolation": "bicubic",
    "crop_pct": 0.5,
}


def test_normalisation_override_reaches_the_transforms(tmp_path):
    write_folder(tmp_path / "data")
    data = dict(FOLDER["data"], root=str(tmp_path / "data"), **OVERRIDE)
    task = ClassificationExperiment(from_dict(ClassifyConfig, dict(FOLDER, data=data)))
    for transform in (task.train_set.transform, task.test_set.transform):
        (norm,) = [t for t in transform.transforms if isinstance(t, T.Normalize)]
        assert list(norm.mean) == OVERRIDE["mean"] and list(norm.std) == OVERRIDE["std"]
    resize = task.test_set.transform.transforms[0]
    assert isinstance(resize, T.Resize)
    assert resize.size == 32 and resize.interpolation == T.InterpolationMode.BICUBIC  # 16 / 0.5
    crop = task.train_set.transform.transforms[0]
    assert crop.interpolation == T.InterpolationMode.BICUBIC
    # without the overrides: the weights' own (timm's resnet10t: ImageNet statistics)
    plain = ClassificationExperiment(
        from_dict(
            ClassifyConfig, dict(FOLDER, data=dict(FOLDER["data"], root=str(tmp_path / "data")))
        )
    )
    assert plain.preprocessing["mean"] != tuple(OVERRIDE["mean"])
    assert plain.preprocessing["crop_pct"] != 0.5
    assert plain.test_set.transform.transforms[0].size == round(
        16 / plain.preprocessing["crop_pct"]
    )


def test_normalisation_override_is_recorded_with_the_run(tmp_path):
    write_folder(tmp_path / "data")
    out = tmp_path / "run"
    argv = [
        "classify",
        "--no-progress",
        "--output",
        str(out),
        "data.name=imagefolder",
        f"data.root={tmp_path / 'data'}",
        "data.input_size=16",
        "model.name=resnet10t",
        "model.kwargs={}",
        "robustness.enabled=false",
        "baseline.epochs=1",
        "baseline.batch_size=2",
        "arms=[]",
        "seeds=[0]",
        f"data.mean={OVERRIDE['mean']}",
        f"data.std={OVERRIDE['std']}",
        "data.interpolation=bicubic",
        "data.crop_pct=0.5",
    ]
    assert main(argv) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())["data"]
    assert {k: saved[k] for k in OVERRIDE} == OVERRIDE
    used = json.loads((out / "results.json").read_text())["preprocessing"]
    assert used["mean"] == OVERRIDE["mean"] and used["std"] == OVERRIDE["std"]
    assert used["interpolation"] == "bicubic" and used["crop_pct"] == 0.5


def test_in_memory_data_takes_mean_std_and_refuses_resizing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(classify(out, "baseline.epochs=1", "data.mean=[0.25]", "data.std=[0.5]")) == 0
    used = json.loads((out / "results.json").read_text())["preprocessing"]
    assert used == {"mean": [0.25], "std": [0.5]}
    cfg = from_dict(
        ClassifyConfig, {"data": {"mean": [0.25], "std": [0.5]}, "model": {"kwargs": KW}}
    )
    task = ClassificationExperiment(cfg)
    image = task.train_set.tensors[0][0]
    assert image.min().item() == pytest.approx(-0.5)  # black pixels: (0 - 0.25) / 0.5
    err = error_of(capsys, classify(tmp_path / "b", "data.crop_pct=0.9"))
    assert "data.crop_pct" in err and "digits" in err, err
    err = error_of(
        capsys, classify(tmp_path / "c", "data.mean=[0.1, 0.2, 0.3]", "data.std=[1, 1, 1]")
    )
    assert "data.mean has 3 values" in err, err
    err = error_of(capsys, classify(tmp_path / "d", "data.mean=[0.1]"))
    assert "data.std" in err, err


def test_hf_model_takes_checkpoint_key_and_remap(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=5,
    )
    directory = tmp_path / "vit"
    torch.manual_seed(1)
    source = transformers.ViTForImageClassification(config)
    source.save_pretrained(directory)
    expected = source.state_dict()
    path = tmp_path / "ema.pt"
    ema = {f"ema_net.{k}": v for k, v in expected.items()}
    torch.save(
        {"state_dict": {k: torch.zeros_like(v) for k, v in expected.items()}, "ema": ema}, path
    )
    torch.manual_seed(2)
    model = create_model(
        f"hf:{directory}",
        checkpoint=path,
        checkpoint_key="ema",
        checkpoint_remap=[[r"^ema_net\.", ""]],
    )
    assert_same(model.model.state_dict(), expected)
