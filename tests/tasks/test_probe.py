"""``denoiserep probe``: a linear probe of a frozen backbone, through the task contract."""

from __future__ import annotations

import json

import pytest
import torch

from denoiserep.cli import main
from denoiserep.probe.linear import RidgeProbe
from denoiserep.probe.task import ModelConfig, build_frozen_model, fingerprint

SMALL = ["model.kwargs={img_size: 8, patch_size: 4, embed_dim: 32, depth: 1, num_heads: 2}"]


def test_probe_on_digits_is_well_above_chance(tmp_path, capsys):
    out = tmp_path / "probe"
    assert main(["probe", "--no-progress", "--output", str(out), *SMALL]) == 0
    report = json.loads((out / "results.json").read_text())
    assert report["task"] == "probe" and report["summary"]["chance_acc1"] == pytest.approx(10.0)
    assert report["summary"]["test_acc1"] > 60.0  # chance: 10%
    assert report["backbone_unchanged"] is True
    assert "| test |" in capsys.readouterr().out
    (out / "results.md").unlink()
    assert main(["report", str(out)]) == 0
    assert "| test |" in (out / "results.md").read_text()


def test_a_randomly_initialised_model_probes_the_same_every_run(tmp_path):
    """The model's random init comes from ``seed``: two runs agree, another seed differs."""
    results = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        out = tmp_path / name
        assert main(["probe", "--no-progress", "--output", str(out), f"seed={seed}", *SMALL]) == 0
        report = json.loads((out / "results.json").read_text())
        results.append((report["summary"]["train_acc1"], report["summary"]["test_acc1"]))
    assert results[0] == results[1] and results[0] != results[2]


def test_probing_leaves_the_frozen_backbone_unchanged(tmp_path):
    kwargs = {"img_size": 8, "patch_size": 4, "embed_dim": 32, "depth": 1, "num_heads": 2}
    cfg = ModelConfig(kwargs=kwargs)
    model = build_frozen_model(cfg, num_classes=10, in_chans=1)
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    digest = fingerprint(model)
    weights = tmp_path / "model.safetensors"
    from safetensors.torch import save_model

    save_model(model, str(weights))
    out = tmp_path / "probe"
    args = ["probe", "--no-progress", "--output", str(out), f"model.weights={weights}"]
    assert main([*args, *SMALL]) == 0
    after = build_frozen_model(ModelConfig(**{**cfg.__dict__, "weights": str(weights)}), 10, 1)
    assert fingerprint(after) == digest
    assert all(torch.equal(before[k], v) for k, v in after.state_dict().items())
    assert json.loads((out / "results.json").read_text())["backbone_unchanged"] is True


def test_ridge_probe_separates_separable_features():
    torch.manual_seed(0)
    y = torch.arange(200) % 4
    x = torch.randn(200, 8, dtype=torch.float64) + 5 * torch.nn.functional.one_hot(y, 8)
    probe = RidgeProbe(1e-3).fit(x, y, 4)
    assert probe.accuracy(x, y) == 100.0
    with pytest.raises(ValueError, match="l2 must be > 0"):
        RidgeProbe(0.0)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.weights=/no/such/file.safetensors", "not found"),
        ("model.kwargs={}", "cannot take the data's images"),
        ("l2=0", "l2 must be > 0"),
        ("data.name=nope", "nope"),
    ],
)
def test_bad_input_is_one_line_and_creates_no_folder(tmp_path, capsys, override, expected):
    out = tmp_path / "probe"
    assert main(["probe", "--no-progress", "--output", str(out), override]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and expected in err, err
    assert not out.exists()
