"""``denoiserep adapt`` with ``benchmark: reid``: a tiny Fashion re-ID run writes every arm with
mAP and rank-1, the images the arms adapt on are training identities' (never a scored query),
and bad input is one line."""

from __future__ import annotations

import gzip
import json
import struct

import numpy as np
import pytest
import torch

from denoiserep.adaptation.reid_benchmark import ReIDBenchmark
from denoiserep.adaptation.report import ARMS
from denoiserep.adaptation.task import AdaptConfig
from denoiserep.cli import main
from denoiserep.engine.config import from_dict

VIT = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 1, "num_heads": 2}


@pytest.fixture
def reid_data(tmp_path):
    """A reid.data section: a Fashion re-ID set of 6 + 4 identities built from random IDX."""
    fmnist = tmp_path / "fmnist"
    fmnist.mkdir()
    rng = np.random.default_rng(0)
    for name in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        images = rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)
        header = bytes([0, 0, 0x08, 3]) + struct.pack(">3i", *images.shape)
        (fmnist / name).write_bytes(gzip.compress(header + images.tobytes()))
    build = {
        "fmnist_dir": str(fmnist),
        "num_train_ids": 6,
        "num_test_ids": 4,
        "cameras": 2,
        "images_per_camera": 2,
        "query_cameras": 1,
        "num_distractors": 2,
        "image_size": 16,
    }
    root = str(tmp_path / "fashion_reid")
    return {"root": root, "height": 16, "width": 16, "preload": True, "pad": 1,
            "num_instances": 2, "build_fashion": build}  # fmt: skip


def config(reid_data: dict, **overrides) -> dict:
    cfg = {
        "benchmark": "reid",
        "reid": {"data": reid_data, "eval": {"batch_size": 64, "max_rank": 5}},
        "data": {"batch_size": 8},
        "model": {"name": "test_resnet", "kwargs": {}},
        "source": {"epochs": 0, "batch_size": 8, "lr": 1.0e-3},
        "corruptions": ["gaussian_noise"],
        "severities": [5],
        "target_images": 8,
        "seeds": [0],
        "latency_repeats": 1,
    }
    return cfg | overrides


def cli_args(cfg: dict) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in cfg.items()]


def test_a_tiny_reid_run_writes_every_arm_with_map_and_rank1(tmp_path, capsys, reid_data):
    out = tmp_path / "adapt"
    cfg = config(reid_data, source={"epochs": 1, "batch_size": 8, "lr": 1.0e-3})
    assert main(["adapt", "--no-progress", "--output", str(out), *cli_args(cfg)]) == 0
    report = json.loads((out / "results.json").read_text())
    assert report["benchmark"] == "reid" and report["target_images"] == 8
    rows = report["per_seed"]["0"]
    assert list(rows["gaussian_noise@5"]) == list(ARMS)
    for arm, row in rows["gaussian_noise@5"].items():
        assert 0.0 <= row["mAP"] <= 100.0 and 0.0 <= row["rank1"] <= 100.0
        assert row["images"] == (0 if arm == "none" else 8)
    assert {"clean_mAP", "clean_rank1"} <= set(rows)
    summary = report["summary"]["gaussian_noise@5"]["tent"]
    assert {"mAP_mean", "rank1_mean", "p_vs_none", "p_vs_bn", "rank1_p_vs_none"} <= set(summary)
    assert len({c["params"] for c in report["cost"].values()}) == 1
    text = capsys.readouterr().out
    assert "gaussian_noise@5 mAP" in text and "gaussian_noise@5 rank-1" in text
    assert "entropy of the identity classifier's logits" in text
    md = (out / "results.md").read_text()
    (out / "results.md").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "results.md").read_text() == md


def test_the_target_images_are_training_identities_never_the_scored_queries(reid_data):
    cfg = from_dict(AdaptConfig, config(reid_data, target_images=10))
    bench = ReIDBenchmark(cfg, torch.device("cpu"))
    train_paths = {bench.train.paths[i] for i in bench.indices}
    assert len(train_paths) == 10 and all("bounding_box_train" in p for p in train_paths)
    assert not train_paths & (set(bench.query.paths) | set(bench.gallery.paths))
    clean = bench.source_images.tensors[0]
    assert torch.equal(clean, torch.stack([bench.train[i][0] for i in bench.indices]))
    images, (query, gallery) = bench.target("contrast", 3)
    scored = torch.cat([query.tensors[0], gallery.tensors[0]]).flatten(1)
    for adapt_on in (clean, images.tensors[0]):
        assert not (torch.cdist(adapt_on.flatten(1), scored) < 1e-6).any()
    assert len(query) == len(bench.query) and len(gallery) == len(bench.gallery)


def test_a_vit_runs_the_bn_arms_on_its_bnneck_and_says_so(tmp_path, reid_data):
    out = tmp_path / "adapt"
    model = {"name": "vit_tiny_patch16_224", "kwargs": VIT}
    cfg = config(reid_data, model=model, arms=["none", "bn", "tent", "dr_target"])
    assert main(["adapt", "--no-progress", "--output", str(out), *cli_args(cfg)]) == 0
    report = json.loads((out / "results.json").read_text())
    assert set(report["per_seed"]["0"]["gaussian_noise@5"]) == {"none", "bn", "tent", "dr_target"}
    assert any("re-estimate the BNNeck only" in note for note in report["notes"])


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("benchmark=detect", "benchmark must be one of"),
        ("reid.neck_feat=middle", "reid.neck_feat must be one of"),
        ("reid.data.build_fashion=null", "missing_reid"),  # root without the set
        ("model.name=not_a_model", "not_a_model"),
    ],
)
def test_bad_reid_input_is_one_line(tmp_path, capsys, reid_data, override, words):
    out = tmp_path / "adapt"
    reid_data["root"] = str(tmp_path / "missing_reid")
    args = ["adapt", "--no-progress", "--output", str(out), *cli_args(config(reid_data)), override]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and words in err, err
    assert not (out / "results.json").exists()
