"""The classification protocol end to end on a few steps of digits, through the CLI."""

from __future__ import annotations

import json

from denoiserep.cli import main

TINY = [
    "model.kwargs={img_size: 8, patch_size: 4, embed_dim: 32, depth: 1, num_heads: 2}",
    "baseline.epochs=1",
    "finetune.epochs=2",
    "finetune.denoiser_epochs=0",
    "seeds=[0, 1]",
    "robustness.corruptions=[gaussian_noise, contrast]",
    "robustness.severities=[1, 5]",
    "robustness.feature_sigmas=[0.5]",
    "robustness.feature_bits=[3]",
]


def test_protocol_all_arms_and_report(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["demo", "--no-progress", "--output", str(out), *TINY]) == 0
    report = json.loads((out / "results.json").read_text())
    assert set(report["summary"]) == {"baseline", "control", "denoiserep"}
    for arm in report["summary"].values():
        assert {"acc1", "acc5"} <= set(arm)
        assert len(arm["acc1"]["values"]) == 2
    dr_arm = report["summary"]["denoiserep"]
    assert dr_arm["max_abs_diff_fused_unfused"]["mean"] < 1e-4
    assert report["params_baseline"] == report["params_fused"]
    assert report["latency_ratio_fused_over_baseline"] > 0
    assert [h["phase"] for h in report["histories"]["0"]["denoiserep"]] == ["denoiser", "backbone"]
    assert len(report["strength"]) == 6  # patch embed, qkv, proj, fc1, fc2, head
    assert (out / "results.md").read_text().startswith("| arm |")
    assert (out / "curves.png").stat().st_size > 10_000
    # the demo's robustness evaluation: every arm, every condition, summarised per seed
    for arm in ("baseline", "control", "denoiserep"):
        res = report["robustness"]["0"][arm]
        assert set(res["corruptions"]) == {"gaussian_noise", "contrast"}
        assert set(res["corruptions"]["contrast"]) == {"1", "5"}
        assert res["corruptions"]["contrast"]["5"]["acc1"] < res["clean"]["acc1"]
        assert {"mCA", "mFA", "feature_noise_0.5", "feature_bits_3"} <= set(report["summary"][arm])
        assert res["feature_bits"]["3"]["acc1"] != res["clean"]["acc1"]
    assert report["summary"]["baseline"]["mCE"]["mean"] == 100.0
    assert "mCA" in (out / "results.md").read_text()
    assert "3-bit features" in (out / "results.md").read_text()
    assert (out / "robustness.png").stat().st_size > 10_000
    assert (out / "spectrum_denoiserep.png").stat().st_size > 10_000
    assert len(report["spectrum"]["denoiserep"]) == 6
    assert list((out / "seed0" / "denoiserep" / "tb").glob("events.out.tfevents*"))
    printed = capsys.readouterr().out
    assert "DenoiseRep (fused)" in printed and "max abs(fused - unfused)" in printed


def test_main_path_targets_through_the_cli(tmp_path, capsys):
    """``denoise.targets=main_path``: the ViT's patch embedding and head are denoised, and the
    robustness evaluation noises the same two layers' inputs."""
    out = tmp_path / "run"
    args = [*TINY, "seeds=[0]", "robustness.corruptions=[contrast]", "robustness.severities=[5]"]
    assert (
        main(["demo", "--no-progress", "--output", str(out), *args, "denoise.targets=main_path"])
        == 0
    )
    capsys.readouterr()
    report = json.loads((out / "results.json").read_text())
    assert report["denoised_layers"] == 2
    assert [row["layer"] for row in report["strength"]] == ["patch_embed.proj", "head"]
    for arm in ("baseline", "control", "denoiserep"):
        assert report["robustness"]["0"][arm]["layers"] == ["patch_embed.proj", "head"]


def test_cli_errors_are_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["demo", "--no-progress", "--output", str(out), "finetune.lrr=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "unknown config key(s) finetune.lrr" in err and "valid keys under finetune" in err
    assert main(["classify", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml not found" in capsys.readouterr().err
    assert main(["demo", "--no-progress", "--output", str(out), "denoise.loss=l3"]) == 2
    assert "loss must be one of" in capsys.readouterr().err
