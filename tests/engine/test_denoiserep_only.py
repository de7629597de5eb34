"""The DenoiseRep arm alone on an already fine-tuned model, through the CLI (classify, reid).

The recipe: ``model.checkpoint=FILE baseline.epochs=0 arms=[denoiserep]``. The checkpoint is the
baseline, evaluated as loaded (no training); no control arm runs; the DenoiseRep arm converts a
copy of it, trains it and fuses it back into the original architecture.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file

from denoiserep.classification.task import ClassificationExperiment, ClassifyConfig
from denoiserep.cli import main
from denoiserep.engine.config import from_dict
from denoiserep.models import create_model
from denoiserep.reid.task import ReIDConfig, ReIDExperiment
from tests.reid.test_reid_pipeline import TINY as REID_TINY
from tests.reid.test_reid_pipeline import write_market

VIT = "vit_tiny_patch16_224"
RECIPE = ["baseline.epochs=0", "arms=[denoiserep]", "robustness.enabled=false", "seeds=[0]"]


def save_weights(model: torch.nn.Module, path: Path) -> dict[str, torch.Tensor]:
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path))
    return state


def run(argv: list[str], capsys) -> tuple[Path, dict]:
    out = Path(argv[argv.index("--output") + 1])
    code = main(argv)
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    return out, json.loads((out / "results.json").read_text())


def saved_config(out: Path, cls: type):
    return from_dict(cls, yaml.safe_load((out / "config.yaml").read_text()))


def assert_denoiserep_only(out: Path, report: dict) -> None:
    """No control arm anywhere; the DenoiseRep arm trained (both phases) and was fused."""
    assert report["arms"] == ["baseline", "denoiserep"]
    assert set(report["summary"]) == set(report["per_seed"]["0"]) == {"baseline", "denoiserep"}
    assert set(report["histories"]["0"]) == {"denoiserep"}  # the baseline did not train
    assert not (out / "seed0" / "control").exists()
    phases = [h["phase"] for h in report["histories"]["0"]["denoiserep"]]
    assert phases == ["denoiser", "backbone"]
    dr_arm = report["per_seed"]["0"]["denoiserep"]
    assert dr_arm["max_abs_diff_fused_unfused"] < 1e-4
    assert dr_arm["max_abs_change_from_baseline"] > 0  # the backbone phase trained it
    fused = load_file(str(out / "seed0" / "denoiserep" / "fused.safetensors"))
    baseline = load_file(str(out / "seed0" / "baseline" / "model.safetensors"))
    assert fused.keys() == baseline.keys()  # the original architecture, no denoiser left
    assert report["params_fused"] == report["params_baseline"]


def test_classify_denoiserep_only_from_a_checkpoint(tmp_path, capsys):
    kwargs = {"img_size": 8, "patch_size": 4, "embed_dim": 32, "depth": 1, "num_heads": 2}
    torch.manual_seed(3)
    model = create_model(VIT, num_classes=10, in_chans=1, **kwargs)
    state = save_weights(model, tmp_path / "finetuned.safetensors")
    out, report = run(
        [
            "classify",
            "--config",
            "digits_demo.yaml",
            "--no-progress",
            "--output",
            str(tmp_path / "run"),
            "model.kwargs={img_size: 8, patch_size: 4, embed_dim: 32, depth: 1, num_heads: 2}",
            f"model.checkpoint={tmp_path / 'finetuned.safetensors'}",
            "finetune.epochs=2",
            "finetune.denoiser_epochs=0",
            *RECIPE,
        ],
        capsys,
    )
    assert_denoiserep_only(out, report)
    # the baseline is the checkpoint as loaded, and its row is that model's evaluation
    baseline = load_file(str(out / "seed0" / "baseline" / "model.safetensors"))
    assert all(torch.equal(baseline[k], state[k]) for k in state)
    task = ClassificationExperiment(saved_config(out, ClassifyConfig))
    loaded = task.build_model().to(task.device)
    expected = task.evaluate(loaded)
    for metric in ("acc1", "acc5"):
        assert report["per_seed"]["0"]["baseline"][metric] == pytest.approx(expected[metric])
    assert 0 < expected["acc1"] < 100  # a real number, not a saturated one


def hard_market(root: Path) -> Path:
    """write_market's folders with every query replaced by noise: metrics below 100."""
    write_market(root, test_ids=12)
    rng = np.random.default_rng(0)
    for path in (root / "query").glob("*.jpg"):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path)
    return root


def test_reid_denoiserep_only_from_a_backbone_checkpoint(tmp_path, capsys):
    root = hard_market(tmp_path / "market")
    kwargs = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 1, "num_heads": 2}
    torch.manual_seed(5)
    state = save_weights(
        create_model(VIT, num_classes=0, **kwargs), tmp_path / "backbone.safetensors"
    )
    out, report = run(
        [
            "reid",
            "--config",
            REID_TINY,
            "--no-progress",
            "--output",
            str(tmp_path / "run"),
            f"data.root={root}",
            f"model.checkpoint={tmp_path / 'backbone.safetensors'}",
            *RECIPE,
        ],
        capsys,
    )
    assert_denoiserep_only(out, report)
    baseline = load_file(str(out / "seed0" / "baseline" / "model.safetensors"))
    assert all(torch.equal(baseline["backbone." + k], v) for k, v in state.items())
    task = ReIDExperiment(saved_config(out, ReIDConfig))
    expected = task.evaluate(task.build_model().to(task.device))
    for metric in ("mAP", "rank1", "rank5", "mINP"):
        assert report["per_seed"]["0"]["baseline"][metric] == pytest.approx(expected[metric])
    assert report["curves"]["0"]["baseline"]["cmc"] == pytest.approx(expected["cmc"])
    assert 0 < expected["mAP"] < 100  # a real number, not a saturated one


def test_reid_denoiserep_only_from_an_earlier_runs_baseline(tmp_path, capsys):
    """A whole re-ID model of an earlier run (backbone, BNNeck, classifier) loads with
    ``baseline_weights``; ``model.checkpoint`` takes the backbone's weights only."""
    root = write_market(tmp_path / "market")
    common = ["reid", "--config", REID_TINY, "--no-progress", f"data.root={root}"]
    first, earlier = run([*common, "--output", str(tmp_path / "first"), "arms=[]"], capsys)
    weights = first / "seed0" / "baseline" / "model.safetensors"
    out, report = run(
        [*common, "--output", str(tmp_path / "run"), f"baseline_weights={weights}", *RECIPE],
        capsys,
    )
    assert_denoiserep_only(out, report)
    assert report["per_seed"]["0"]["baseline"] == earlier["per_seed"]["0"]["baseline"]
    state = load_file(str(weights))
    baseline = load_file(str(out / "seed0" / "baseline" / "model.safetensors"))
    assert all(torch.equal(baseline[k], v) for k, v in state.items())
