"""``denoiserep.bench.summary``: the bench runs of gpu_check.sh in one table, read back from
their folders or from the archive the script returns; levers named; missed targets in bold."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from denoiserep.bench.summary import cost_table, levers, load_runs
from denoiserep.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench_runs(tmp_path_factory) -> Path:
    """Two real tiny bench runs: the default, and one with batch_loss and D·x_t in bf16."""
    work = tmp_path_factory.mktemp("work")
    tiny = str(ROOT / "src/denoiserep/configs/bench_tiny.yaml")
    common = ["--config", tiny, "variants=[baseline]", "batch_sizes=[1]", "export=false"]
    common += ["memory=false", "--no-progress"]
    assert main(["bench", "--output", str(work / "bench_resnet10t"), *common]) == 0
    levers_on = ["denoise.batch_loss=true", "denoise.loss_dtype=autocast", "bf16=true"]
    assert main(["bench", "--output", str(work / "bench_levers"), *common, *levers_on]) == 0
    return work


def test_summary_reads_folders_and_the_archive_alike(bench_runs, tmp_path):
    archive = tmp_path / "results_json.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:  # as gpu_check.sh packs them
        for f in bench_runs.glob("*/results.json"):
            tar.add(f, arcname=f"{f.parent.name}/results.json")
    from_folder, from_archive = load_runs(bench_runs), load_runs(archive)
    assert list(from_folder) == ["bench_levers", "bench_resnet10t"] == list(from_archive)
    assert from_folder == from_archive
    table = cost_table(from_archive)
    rows = [line for line in table.splitlines() if line.startswith("| resnet10t")]
    assert len(rows) == 2
    assert "| bench_levers | loss_tokens: 32, batch_loss, D·x_t: autocast |" in rows[0]
    assert "| bench_resnet10t | loss_tokens: 32 |" in rows[1]  # bench_tiny.yaml sets 32
    assert "Measured on: cpu, torch" in table and "bf16 True" in table and "bf16 False" in table
    joint = from_folder["bench_resnet10t"]["models"]["resnet10t"]["train"]["variants"]["joint"]
    cell = f"{joint['step_ratio']:.2f}"
    assert (f"**{cell}**" if joint["step_ratio"] > 1.3 else f"| {cell} |") in rows[1]


def test_levers_and_bad_input(tmp_path):
    assert levers({}) == "default"
    config = {
        "denoise": {"targets": "main_path", "loss_dtype": "float32"},
        "train": {"denoiser_optimizer": "adafactor", "compile": True},
    }
    assert levers(config) == "targets: main_path, D: adafactor, compiled"
    assert levers({"denoise": {"loss_tokens": 0}}) == "loss_tokens: all"
    assert levers({"train": {"fused_optimizer": False}}) == "AdamW unfused"
    assert levers({"train": {"grad_checkpointing": True}}) == "checkpointed"
    with pytest.raises(FileNotFoundError, match="no results.json in"):
        load_runs(tmp_path)
    script = [sys.executable, str(ROOT / "scripts/bench_summary.py"), str(tmp_path)]
    done = subprocess.run(script, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 1
    assert done.stderr.strip() == f"bench_summary: no results.json in {tmp_path}"
