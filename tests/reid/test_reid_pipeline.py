"""`denoiserep reid` end to end on tiny Market-1501-layout fixtures written by the tests."""

from __future__ import annotations

import gzip
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from denoiserep.cli import main, packaged_config
from denoiserep.reid.step import ReIDStep

TINY = str(packaged_config("reid_tiny.yaml"))
METRICS = {"mAP", "rank1", "rank5", "rank10", "mINP"}


def write_market(root, train_ids=6, test_ids=4, seed=0):
    """Market-1501 folders of 16x16 JPEGs: one random colour pattern per identity, 2 cameras.

    Train: 4 images per identity (2 per camera). Query: camera 1; gallery: 2 images in
    camera 2 per test identity plus one distractor (pid 0).
    """
    rng = np.random.default_rng(seed)
    frame = 0

    def save(folder, pid, cam, pattern):
        nonlocal frame
        frame += 1
        noisy = np.clip(pattern + rng.normal(0, 8, pattern.shape), 0, 255).astype(np.uint8)
        (root / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(noisy).save(root / folder / f"{pid:04d}_c{cam}s1_{frame:06d}_00.jpg")

    for pid in range(1, train_ids + test_ids + 1):
        pattern = rng.integers(0, 256, (4, 4, 3)).repeat(4, 0).repeat(4, 1).astype(float)
        for cam in (1, 2):
            for _ in range(2):
                if pid <= train_ids:
                    save("bounding_box_train", pid, cam, pattern)
                elif cam == 2:
                    save("bounding_box_test", pid, cam, pattern)
            if pid > train_ids and cam == 1:
                save("query", pid, cam, pattern)
    save("bounding_box_test", 0, 1, rng.integers(0, 256, (16, 16, 3)).astype(float))
    return root


def run(tmp_path, capsys, *overrides):
    out = tmp_path / "run"
    code = main(["reid", "--config", TINY, "--output", str(out), "--no-progress", *overrides])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return out, json.loads((out / "results.json").read_text()), captured.out


def test_label_augmented_pipeline_all_arms(tmp_path, capsys):
    root = write_market(tmp_path / "market")
    out, report, printed = run(tmp_path, capsys, f"data.root={root}")
    assert set(report["summary"]) == {"baseline", "control", "denoiserep"}
    for arm, stats in report["summary"].items():
        assert METRICS <= set(stats), arm
        assert 0 <= stats["mAP"]["mean"] <= 100 and stats["rank10"]["mean"] == 100.0  # 4 ids
        assert len(report["cmc"][arm]) == 9  # max_rank 10 clipped to the 9 gallery images
    dr_arm = report["summary"]["denoiserep"]
    assert dr_arm["max_abs_diff_fused_unfused"]["mean"] < 1e-4
    assert dr_arm["max_abs_change_from_baseline"]["mean"] > 0  # labelled phases train it
    assert report["params_baseline"] == report["params_fused"]
    assert report["dataset"]["train_images"] == 24 and report["dataset"]["query_images"] == 4
    history = report["histories"]["0"]
    assert [h["phase"] for h in history["denoiserep"]] == ["denoiser", "backbone"]
    assert {"id_loss", "triplet_loss", "train_acc"} <= set(history["baseline"][0])
    assert len(report["strength"]) == 6  # patch embed, qkv, proj, fc1, fc2, classifier
    assert (out / "cmc.png").stat().st_size > 10_000
    assert (out / "results.md").read_text().startswith("| arm | mAP | Rank-1 |")
    assert list((out / "seed0" / "denoiserep" / "tb").glob("events.out.tfevents*"))
    assert (out / "seed0" / "baseline" / "model.safetensors").is_file()
    assert "DenoiseRep (fused)" in printed and "max abs(fused - unfused)" in printed


def write_fashion_idx(folder, train=12, test=12):
    """Fake Fashion-MNIST IDX files: random 28x28 images (distinct sources)."""
    folder.mkdir()
    rng = np.random.default_rng(1)
    for stem, n in (("train-images-idx3-ubyte", train), ("t10k-images-idx3-ubyte", test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        header = bytes([0, 0, 0x08, 3]) + struct.pack(">3i", n, 28, 28)
        (folder / f"{stem}.gz").write_bytes(gzip.compress(header + images.tobytes()))
    return folder


def test_label_free_builds_fashion_data_and_reads_no_labels(tmp_path, capsys, monkeypatch):
    """The DenoiseRep arm only ever sees pid/camid -1 and never calls the task loss; the
    backbone is bit-identical to the baseline while the denoisers moved."""
    calls = {"unlabelled_batches": 0, "labelled_batches": 0}
    to_device, loss = ReIDStep.to_device, ReIDStep.loss

    def spy_to_device(self, batch, device):
        pids, camids = batch[1], batch[2]
        if (pids == -1).all() and (camids == -1).all():
            calls["unlabelled_batches"] += 1
        else:
            assert (pids >= 0).all(), "a batch mixes labelled and unlabelled items"
            calls["labelled_batches"] += 1
        return to_device(self, batch, device)

    def strict_loss(self, output, batch):
        assert (batch[1] >= 0).all(), "task loss called on unlabelled data"
        return loss(self, output, batch)

    monkeypatch.setattr(ReIDStep, "to_device", spy_to_device)
    monkeypatch.setattr(ReIDStep, "loss", strict_loss)
    fmnist = write_fashion_idx(tmp_path / "fmnist")
    root = tmp_path / "fashion_reid"
    build = (
        f"{{fmnist_dir: {fmnist}, num_train_ids: 6, num_test_ids: 4, cameras: 2, "
        "images_per_camera: 2, query_cameras: 1, num_distractors: 1, image_size: 16}"
    )
    out, report, _ = run(
        tmp_path,
        capsys,
        f"data.root={root}",
        f"data.build_fashion={build}",
        "protocol=label_free",
        "finetune.phases=denoiser",
        "arms=[denoiserep]",
    )
    assert (root / "bounding_box_train").is_dir()
    assert not (tmp_path / "fashion_reid.partial").exists()
    assert report["dataset"]["train_images"] == 6 * 2 * 2
    assert set(report["summary"]) == {"baseline", "denoiserep"}
    history = report["histories"]["0"]["denoiserep"]
    assert [h["phase"] for h in history] == ["denoiser", "denoiser"]
    assert "task_loss" not in history[0] and history[0]["ploss"] > 0
    batches_per_epoch = 24 // 8
    assert calls["unlabelled_batches"] == 2 * batches_per_epoch  # the DenoiseRep arm, all of it
    assert calls["labelled_batches"] == 1 * batches_per_epoch  # the baseline's epoch
    dr_arm = report["summary"]["denoiserep"]
    assert dr_arm["max_abs_change_from_baseline"]["mean"] == 0.0
    assert all(row["strength"] > 0 for row in report["strength"])
    assert dr_arm["max_abs_diff_fused_unfused"]["mean"] < 1e-4
    assert "label_free" in (out / "results.md").read_text()


def test_merged_protocol_trains_denoisers_on_the_union(tmp_path, capsys):
    target = write_market(tmp_path / "a")
    other = write_market(tmp_path / "b", train_ids=3, test_ids=2, seed=1)
    _, report, _ = run(
        tmp_path,
        capsys,
        f"data.root={target}",
        f"data.merge_with=[{{name: market1501, root: {other}}}]",
        "protocol=merged",
        "finetune.phases=denoiser",
        "finetune.epochs=1",
        "arms=[denoiserep]",
    )
    assert report["dataset"]["train_images"] == 24
    assert report["dataset"]["denoiserep_train_images"] == 24 + 12
    assert report["summary"]["denoiserep"]["max_abs_change_from_baseline"]["mean"] == 0.0


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.bogus=1"], "unknown config key(s) data.bogus"),
        (["protocol=label_free"], "set finetune.phases=denoiser"),
        (["protocol=merged", "finetune.phases=denoiser"], "data.merge_with must list datasets"),
        (["eval.distance=l1"], "distance must be one of"),
        (["data.merge_with=[{name: market1501, rot: x}]"], "data.merge_with[0].rot"),
    ],
)
def test_bad_config_is_one_line_exit_2(tmp_path, capsys, overrides, message):
    args = ["reid", "--config", TINY, "--output", str(tmp_path / "run"), *overrides]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err


def test_missing_dataset_root_is_one_line_exit_2(tmp_path, capsys):
    args = ["reid", "--config", TINY, "--output", str(tmp_path / "run")]
    assert main([*args, f"data.root={tmp_path / 'nowhere'}"]) == 2
    assert "folder not found" in capsys.readouterr().err


@pytest.mark.slow
def test_two_process_evaluation_gathers_every_feature(tmp_path, capsys):
    """Under torchrun (2 CPU processes, gloo) each rank embeds a padded half of query and
    gallery; the gathered metrics equal the single-process ones for the same weights."""
    root = write_market(tmp_path / "market")  # 4 queries, 9 gallery images (odd: padding)
    common = [f"data.root={root}", "arms=[]"]
    out, one, _ = run(tmp_path, capsys, *common)
    weights = out / "seed0" / "baseline" / "model.safetensors"
    two_out = tmp_path / "two"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
        "--master_port=29541", "-m", "denoiserep", "reid", "--config", TINY,
        "--output", str(two_out), "--no-progress", *common, f"baseline_weights={weights}",
    ]  # fmt: skip
    # TMPDIR: torchrun leaves a torchelastic_* folder behind in the temporary directory
    env = dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(tmp_path))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads((two_out / "results.json").read_text())
    for arm in ("baseline",):
        for metric in METRICS:
            expected = one["summary"][arm][metric]["mean"]
            assert two["summary"][arm][metric]["mean"] == pytest.approx(expected, abs=1e-6)
        assert two["cmc"][arm] == pytest.approx(one["cmc"][arm], abs=1e-6)


def test_robustness_corrupts_queries_then_both(tmp_path, capsys):
    root = write_market(tmp_path / "market")
    _, report, printed = run(
        tmp_path,
        capsys,
        f"data.root={root}",
        "robustness.enabled=true",
        "robustness.corruptions=[impulse_noise]",
        "robustness.severities=[5]",
        "robustness.feature_sigmas=[0.5]",
        "robustness.feature_bits=[2]",
        "robustness.feature_ranges=static",  # the classification test runs per-sample ranges
        "robustness.calibration_images=8",
        "robustness.corrupt_gallery=true",  # the both/ scores (off by default)
    )
    for arm in ("baseline", "control", "denoiserep"):
        res = report["robustness"]["0"][arm]
        corrupted = res["corruptions"]["impulse_noise"]["5"]
        assert METRICS <= set(corrupted) and {f"both/{m}" for m in METRICS} <= set(corrupted)
        assert corrupted["mAP"] != res["clean"]["mAP"]  # the queries really changed
        assert set(res["feature_noise"]) == {"0.5"}
        assert METRICS <= set(res["feature_bits"]["2"])  # queries and gallery through 2 bits
        assert res["feature_bits"]["2"]["mAP"] != res["clean"]["mAP"]
        assert list(res["feature_ranges"]) == res["layers"]  # calibrated on training images
        assert all(lo < hi for lo, hi in res["feature_ranges"].values())
        assert res["clean"]["mAP"] == pytest.approx(report["per_seed"]["0"][arm]["mAP"])
    assert "mCA" in printed
    assert "static, from 8 training images" in (tmp_path / "run" / "results.md").read_text()


def test_recalibrate_bn_renews_the_bnneck_statistics_on_each_arms_training_set(tmp_path, capsys):
    from safetensors.torch import load_file

    target = write_market(tmp_path / "a")
    other = write_market(tmp_path / "b", train_ids=3, test_ids=2, seed=1)
    args = [
        f"data.root={target}",
        f"data.merge_with=[{{name: market1501, root: {other}}}]",
        "protocol=merged",
        "finetune.phases=denoiser",
        "finetune.epochs=1",
    ]
    _, _, printed = run(tmp_path / "stale", capsys, *args, "arms=[denoiserep]")
    assert "denoiserep: BatchNorm statistics are still the baseline's" in printed
    out, _, printed = run(tmp_path / "renewed", capsys, *args, "finetune.recalibrate_bn=true")
    for arm in ("control", "denoiserep"):
        assert f"seed 0 {arm}: BatchNorm statistics of 1 layers recomputed" in printed
    baseline = load_file(str(out / "seed0" / "baseline" / "model.safetensors"))
    fused = load_file(str(out / "seed0" / "denoiserep" / "fused.safetensors"))
    control = load_file(str(out / "seed0" / "control" / "model.safetensors"))
    key = "bottleneck.running_mean"
    assert not torch.allclose(fused[key], baseline[key])
    # one pass over each arm's own set, 8 a batch: the union's 36 images, the target's 24
    assert int(fused["bottleneck.num_batches_tracked"]) == 36 // 8
    assert int(control["bottleneck.num_batches_tracked"]) == 24 // 8
