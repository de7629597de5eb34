"""The ablation command on a few steps of digits."""

from __future__ import annotations

import json

from denoiserep.classification.ablation import compare
from denoiserep.cli import main


def test_ablation_runs_and_reports(tmp_path, monkeypatch):
    cfg = tmp_path / "abl.yaml"
    cfg.write_text(
        """
experiment:
  data: {name: digits}
  model: {name: vit_tiny_patch16_224,
          kwargs: {img_size: 8, patch_size: 4, embed_dim: 32, depth: 1, num_heads: 2}}
  baseline: {epochs: 1}
  finetune: {epochs: 1, phases: denoiser, denoiser_epochs: 0}
  seeds: [0, 1]
variants:
  label_free: {}
  strong_joint:
    finetune: {phases: joint}
    denoise: {timesteps: 10, beta_start: 0.05, beta_end: 0.2}
"""
    )
    out = tmp_path / "run"
    assert main(["ablate", "--config", str(cfg), "--output", str(out), "--no-progress"]) == 0
    report = json.loads((out / "results.json").read_text())
    rows = report["acc1"]
    assert set(rows) == {"baseline", "control", "label_free", "strong_joint"}
    assert rows["label_free"]["changed_pct"] < 2.0  # near-identity steps: predictions barely move
    assert rows["strong_joint"]["strength"] > 10 * rows["label_free"]["strength"]
    assert (out / "ablation.png").is_file() and "paired t-test" in (out / "results.md").read_text()


def test_compare_paired_statistics():
    rows = compare(
        {"control": [80.0, 81.0, 82.0], "a": [81.0, 82.5, 83.0], "b": [80.0, 81.0, 82.0]}
    )
    assert rows["a"]["diff_mean"] == 1.0 + 1 / 6
    assert rows["a"]["p_value"] is not None and rows["a"]["p_value"] < 0.05
    assert rows["a"]["beats_control"]
    assert rows["b"]["diff_mean"] == 0.0 and rows["b"]["p_value"] is None
    assert not rows["b"]["beats_control"]


def test_a_variant_recalibrating_alone_is_pointed_out():
    from denoiserep.classification.ablation import (
        AblationConfig,
        unmatched_recalibration,
        variant_configs,
    )
    from denoiserep.engine.arms import Variant
    from denoiserep.engine.config import from_dict

    def check(experiment_finetune: dict, variants: dict) -> str | None:
        data = {"experiment": {"finetune": experiment_finetune}, "variants": variants}
        cfg = from_dict(AblationConfig, data)
        built = [Variant(n, *variant_configs(cfg, n)) for n in cfg.variants]
        return unmatched_recalibration(cfg, built)

    alone = {"a": {}, "b": {"finetune": {"recalibrate_bn": True}}}
    message = check({}, alone)
    assert message.startswith("variant(s) b set finetune.recalibrate_bn=True, the control False")
    assert check({"recalibrate_bn": True}, {"a": {}, "b": {}}) is None  # inherited by all
    assert "variant(s) a " in check(
        {"recalibrate_bn": True}, {"a": {"finetune": {"recalibrate_bn": False}}}
    )


def test_robustness_comparison_covers_every_robustness_number():
    from denoiserep.classification.ablation import robustness_comparison, robustness_comparison_rows

    def arm(shift: float) -> dict:
        return {
            "acc1": 80.0 + shift,
            "mCA": 60.0 + shift,
            "mFA": 70.0 + shift,
            "contrast_mean": 50.0 + shift,
            "feature_noise_0.5": 40.0 + shift,
            "feature_bits_3": 30.0 + 2 * shift,
        }

    report = {
        "arms": ["control", "variant"],
        "per_seed": {
            str(s): {"control": arm(0.1 * s), "variant": arm(0.1 * s + 1 + 0.2 * s)}
            for s in range(3)
        },
    }
    table = robustness_comparison(report)
    assert list(table) == ["mCA", "mFA", "contrast_mean", "feature_noise_0.5", "feature_bits_3"]
    assert table["feature_bits_3"]["variant"]["diff_mean"] > table["mCA"]["variant"]["diff_mean"]
    report["robust_paired"] = table
    assert any(
        line.startswith("| feature_bits_3 | +") for line in robustness_comparison_rows(report)
    )
