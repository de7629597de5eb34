"""``denoiserep adapt`` through the task contract: a tiny run writes every arm, a ViT gets no
BatchNorm arm, weights from another class set get a fresh head, bad input is one line."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_model

from denoiserep.adaptation.report import ARMS
from denoiserep.cli import main
from denoiserep.models.factory import create_model

TINY = [
    "model.name=test_resnet",
    "source={epochs: 0, batch_size: 64, lr: 2.0e-3}",  # trained in one test only
    "corruptions=[gaussian_noise]",
    "severities=[5]",
    "target_images=32",
    "data.options={}",
    "data.name=digits",
    "data.pad=0",
    "data.flip=false",
    "seeds=[0]",
    "latency_repeats=1",
]
VIT = "model={name: vit_tiny_patch16_224, kwargs: {img_size: 8, patch_size: 4, embed_dim: 32, depth: 1, num_heads: 2}}"  # noqa: E501


def run(tmp_path, *extra: str) -> dict:
    out = tmp_path / "adapt"
    args = ["adapt", "--no-progress", "--overwrite", "--output", str(out), *TINY, *extra]
    assert main(args) == 0
    return json.loads((out / "results.json").read_text())


def test_a_tiny_run_writes_every_arm(tmp_path, capsys):
    report = run(tmp_path, "source.epochs=1")
    cond = report["per_seed"]["0"]["gaussian_noise@5"]
    assert list(cond) == list(ARMS)
    for arm, row in cond.items():
        assert 0.0 <= row["acc1"] <= 100.0 and row["adapt_s"] >= 0.0
        assert row["images"] == (0 if arm == "none" else 32)
    assert report["has_batchnorm"] is True and report["target_images"] == 32
    params = {c["params"] for c in report["cost"].values()}
    assert len(params) == 1  # every arm costs what the source model costs
    assert set(report["summary"]["gaussian_noise@5"]) == set(ARMS)
    out = capsys.readouterr().out
    assert "DenoiseRep fitted on target" in out and "TENT" in out
    md = (tmp_path / "adapt" / "results.md").read_text()
    (tmp_path / "adapt" / "results.md").unlink()
    assert main(["report", str(tmp_path / "adapt")]) == 0
    assert (tmp_path / "adapt" / "results.md").read_text() == md


def test_a_vit_has_no_batchnorm_arms_but_tent_and_denoiserep(tmp_path):
    report = run(tmp_path, VIT)
    cond = report["per_seed"]["0"]["gaussian_noise@5"]
    assert set(cond) == {"none", "tent", "dr_source", "dr_target"}
    assert report["has_batchnorm"] is False
    assert "n/a" in (tmp_path / "adapt" / "results.md").read_text()


def test_weights_of_another_class_set_get_a_fresh_head_and_one_note(tmp_path):
    torch.manual_seed(0)
    other = create_model("test_resnet", num_classes=4, in_chans=1)
    weights = tmp_path / "four_classes.safetensors"
    save_model(other, str(weights))
    report = run(tmp_path, f"baseline_weights={weights}")
    (note,) = report["notes"]
    assert "re-initialised for 10 classes" in note and "\n" not in note
    assert note in (tmp_path / "adapt" / "results.md").read_text()


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("corruptions=[fog]", "corruptions must be among"),
        ("severities=[7]", "severities must be in 1..5"),
        ("arms=[none, magic]", "arms must be among"),
        ("tent.optimizer=rmsprop", "tent.optimizer must be one of"),
        ("target_images=-1", "target_images must be >= 0"),
        ("baseline_weights=/nonexistent.safetensors", "not found"),
        ("model.name=test_vit", "cannot take the data's"),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, override, words):
    out = tmp_path / "adapt"
    args = ["adapt", "--no-progress", "--output", str(out), *TINY, override]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and words in err, err
    assert not (out / "results.json").exists()
