"""`denoiserep bench --config bench_tiny.yaml` end to end, through the CLI."""

from __future__ import annotations

import json

import pytest
import yaml

from denoiserep.bench.run import VARIANTS
from denoiserep.cli import main, packaged_config

INFERENCE_FIELDS = {
    "median_ms",
    "iqr_ms",
    "times_ms",
    "latency_ratio",
    "peak_mb",
    "peak_ratio",
}
TRAIN_FIELDS = {
    "median_ms",
    "iqr_ms",
    "times_ms",
    "step_ratio",
    "peak_mb",
    "peak_ratio",
    "gflops_per_step",
    "gflops_float32",
    "gflops_ratio",
    "top_ops",
}
EXPORT_FIELDS = {
    "onnx_ok",
    "onnx_max_abs_diff",
    "torch_export_ok",
    "torch_export_max_abs_diff",
    "strict_reload_ok",
    "reload_max_abs_diff",
}


def test_bench_tiny_writes_every_result(tmp_path, capsys):
    out = tmp_path / "bench"
    config = str(packaged_config("bench_tiny.yaml"))
    assert main(["bench", "--config", config, "--no-progress", "--output", str(out)]) == 0
    report = json.loads((out / "results.json").read_text())
    assert report["environment"]["threads"] == 1
    assert "profile_memory" in report["environment"]["memory_method"]
    assert set(report["models"]) == {"vit_tiny_patch16_224", "resnet10t"}
    for rep in report["models"].values():
        assert set(rep["params"]) == set(rep["gflops_per_image"]) == set(VARIANTS)
        assert rep["params"]["fused"] == rep["params"]["baseline"]
        assert rep["gflops_per_image"]["fused"] == rep["gflops_per_image"]["baseline"]
        assert rep["gflops_per_image"]["explicit"] > rep["gflops_per_image"]["baseline"]
        assert rep["gflops_per_image"]["final_feature"] > rep["gflops_per_image"]["baseline"]
        assert rep["fusion_check"]["max_abs_diff_fused_vs_explicit"] < 1e-4
        assert rep["fusion_check"]["max_abs_diff_fused_vs_baseline"] > 1e-3
        assert rep["fusion_check"]["weights_with_other_strides"] >= 0
        assert set(rep["inference"]) == {"1", "4"}
        for rows in rep["inference"].values():
            assert set(rows) == set(VARIANTS)
            for row in rows.values():
                assert INFERENCE_FIELDS <= set(row) and len(row["times_ms"]) == 2
                assert row["median_ms"] > 0 and row["peak_mb"] > 0
            assert rows["baseline"]["latency_ratio"] == 1.0
        train = rep["train"]
        assert train["batch_size"] == 4
        assert list(train["variants"]) == ["baseline", "denoiser", "backbone", "joint"]
        for row in train["variants"].values():
            assert TRAIN_FIELDS <= set(row) and len(row["top_ops"]) == 3
            assert "kernel_ms" not in row  # a CPU bench: no GPU kernels to sum
            assert row["median_ms"] > 0 and row["peak_mb"] > 0 and row["gflops_per_step"] > 0
            assert row["gflops_float32"] == row["gflops_per_step"]  # a float32 bench
        assert EXPORT_FIELDS <= set(rep["export"])
        assert rep["export"]["onnx_ok"] and rep["export"]["onnx_max_abs_diff"] < 1e-4
        assert rep["export"]["torch_export_ok"] and rep["export"]["strict_reload_ok"]
    # per model: 2 batch sizes (latency) + 3 phases x 2 (step time, memory)
    assert len(report["targets"]) == 2 * (2 + 3 * 2)
    assert all({"target", "model", "case", "value", "met"} <= set(t) for t in report["targets"])
    assert sorted(p.name for p in (out / "onnx").iterdir()) == [
        "resnet10t.onnx",
        "vit_tiny_patch16_224.onnx",
    ]
    markdown = (out / "results.md").read_text()
    for heading in ("### Inference", "### Training", "### Fusion and deployment", "### Targets"):
        assert heading in markdown
    # train.profile_top: 3 operators per model and training variant, in the report too
    profile = markdown.split("### Training profile")[1].split("###")[0]
    assert profile.count("| resnet10t | joint | `") == 3
    assert profile.count("| vit_tiny_patch16_224 | baseline | `") == 3
    assert markdown.count("| final_feature |") == 4
    assert markdown.count("| 100.0 % |") == 2 * 4  # FLOPs in float32, per training row
    assert "resnet10t, joint: of the " in markdown and "GFLOPs it adds" in markdown
    assert (out / "bench.png").stat().st_size > 10_000
    assert "### Inference" in capsys.readouterr().out


def test_bench_config_errors_are_one_line(tmp_path, capsys):
    out = str(tmp_path / "b")
    config = str(packaged_config("bench_tiny.yaml"))
    assert main(["bench", "--config", config, "--output", out, "variants=[fused]"]) == 2
    assert "variants must include 'baseline'" in capsys.readouterr().err
    assert main(["bench", "--config", config, "--output", out, "train.phases=[warm]"]) == 2
    assert "train.phases must be among" in capsys.readouterr().err
    assert main(["bench", "--config", config, "--output", out, "model_kwargs={vgg: {}}"]) == 2
    assert "model_kwargs names model(s) not in models: vgg" in capsys.readouterr().err
    assert main(["bench", "--config", config, "--output", out, "train.denoiser_optimizer=sgd"]) == 2
    assert "train.denoiser_optimizer must be one of" in capsys.readouterr().err


def test_bench_denoiser_optimizer_state_and_joint_memory(tmp_path):
    """``train.denoiser_optimizer=adafactor``: the denoisers' held bytes drop by AdamW's two
    moments of D, and the joint step's peak by about as much."""
    tiny = yaml.safe_load(packaged_config("bench_tiny.yaml").read_text())
    tiny["models"] = ["vit_tiny_patch16_224"]
    del tiny["model_kwargs"]["resnet10t"]
    config = tmp_path / "vit.yaml"
    config.write_text(yaml.safe_dump(tiny))
    train = {}
    for name in ("same", "adafactor"):
        out = tmp_path / name
        args = ["bench", "--config", str(config), "--no-progress", "--output", str(out)]
        args += ["variants=[baseline]", "batch_sizes=[1]"]
        args += ["train.phases=[joint]", "train.profile_top=0", "export=false"]
        assert main([*args, f"train.denoiser_optimizer={name}"]) == 0
        report = json.loads((out / "results.json").read_text())
        train[name] = report["models"]["vit_tiny_patch16_224"]["train"]
        assert train[name]["denoiser_optimizer"] == name
        how = {"same": "AdamW's two moments", "adafactor": "Adafactor's factored moment"}[name]
        markdown = (out / "results.md").read_text()
        assert f"with their gradients and {how} they hold" in markdown
        assert ("D's with Adafactor)" in markdown) == (name == "adafactor")
    d_mb = 4 * train["same"]["denoiser_params"] / 2**20
    assert train["same"]["denoiser_state_mb"] == pytest.approx(4 * d_mb, rel=0.01)
    assert train["adafactor"]["denoiser_state_mb"] == pytest.approx(2 * d_mb, rel=0.05)
    same, ada = (train[n]["variants"]["joint"]["peak_mb"] for n in ("same", "adafactor"))
    assert same - ada > d_mb
