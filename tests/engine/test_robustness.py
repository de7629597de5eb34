"""Crash safety (SIGKILL mid-epoch, then resume) and one-line errors on bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from denoiserep.cli import main

TINY = [
    "robustness.enabled=false",
    "--no-progress",
    "model.kwargs={img_size: 8, patch_size: 4, embed_dim: 32, depth: 1, num_heads: 2}",
    "baseline.epochs=8",
    "baseline.ckpt_every=5",
    "finetune.epochs=2",
    "finetune.denoiser_epochs=0",
    "seeds=[0]",
]


def cmd(out) -> list[str]:
    return [sys.executable, "-m", "denoiserep", "demo", "--output", str(out), *TINY]


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run(cmd(tmp_path / "full"), env=env, check=True, capture_output=True, timeout=600)
    latest = tmp_path / "killed" / "seed0" / "baseline" / "checkpoints" / "latest"
    proc = subprocess.Popen(
        cmd(tmp_path / "killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert latest.exists(), "no checkpoint was written before the kill"
    step = int(latest.read_text().split("-")[1])
    assert step % 22 != 0, "the kill should land mid-epoch (22 steps per epoch)"
    assert not (tmp_path / "killed" / "results.json").exists()
    subprocess.run(cmd(tmp_path / "killed"), env=env, check=True, capture_output=True, timeout=600)
    a = json.loads((tmp_path / "full" / "results.json").read_text())["per_seed"]
    b = json.loads((tmp_path / "killed" / "results.json").read_text())["per_seed"]
    for arm in ("baseline", "control", "denoiserep"):
        assert a["0"][arm]["acc1"] == pytest.approx(b["0"][arm]["acc1"], abs=0.3)
    wa = load_file(str(tmp_path / "full" / "seed0" / "denoiserep" / "fused.safetensors"))
    wb = load_file(str(tmp_path / "killed" / "seed0" / "denoiserep" / "fused.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5, msg=k)


def error_of(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


def folder_args(root, out) -> list[str]:
    return [
        "classify",
        "--no-progress",
        "--output",
        str(out),
        "data.name=imagefolder",
        f"data.root={root}",
        "model.name=resnet18",
        "model.kwargs={}",
        "data.options={img_size: 16}",
        "baseline.epochs=1",
        "finetune.epochs=1",
        "finetune.phases=joint",
        "finetune.denoiser_epochs=0",
        "baseline.batch_size=2",
        "finetune.batch_size=2",
    ]


def write_images(folder, n: int = 3) -> None:
    folder.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (16, 16), (i * 40, 10, 10)).save(folder / f"{i}.png")


def test_bad_dataset_folders(tmp_path, capsys):
    err = error_of(capsys, folder_args(tmp_path / "nowhere", tmp_path / "o1"))
    assert "nowhere" in err and "not found" in err
    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "val").mkdir()
    err = error_of(capsys, folder_args(tmp_path / "empty", tmp_path / "o2"))
    assert "empty" in err


def test_truncated_image_is_named(tmp_path, capsys):
    for split in ("train", "val"):
        write_images(tmp_path / "data" / split / "a")
        write_images(tmp_path / "data" / split / "b")
    bad = tmp_path / "data" / "train" / "a" / "1.png"
    bad.write_bytes(bad.read_bytes()[:40])
    err = error_of(capsys, folder_args(tmp_path / "data", tmp_path / "o"))
    assert "1.png" in err and ("corrupt" in err or "truncated" in err)


def test_label_file_disagreeing_with_images(tmp_path, capsys):
    root = tmp_path / "pet"
    (root / "annotations").mkdir(parents=True)
    (root / "images").mkdir()
    Image.new("RGB", (16, 16)).save(root / "images" / "Abyssinian_1.jpg")
    (root / "annotations" / "trainval.txt").write_text("Abyssinian_1 1 1 1\nAbyssinian_2 1 1 1\n")
    (root / "annotations" / "test.txt").write_text("Abyssinian_1 1 1 1\n")
    err = error_of(
        capsys,
        ["classify", "--output", str(tmp_path / "o"), "data.name=oxford_pet", f"data.root={root}"],
    )
    assert "Abyssinian_2" in err


def test_mismatched_weights_and_existing_run_are_refused(tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "demo",
        "--output",
        str(out),
        *TINY[:2],
        "baseline.epochs=1",
        "finetune.epochs=1",
        "finetune.phases=joint",
        "finetune.denoiser_epochs=0",
    ]
    assert main(args) == 0
    capsys.readouterr()
    before = (out / "results.json").read_text()
    err = error_of(capsys, [*args, "finetune.lr=0.5"])
    assert "holds a different run" in err and "finetune" in err
    assert (out / "results.json").read_text() == before
    wrong = tmp_path / "wrong.safetensors"
    from safetensors.torch import save_file

    save_file({"fc.weight": torch.zeros(2, 2)}, str(wrong))
    err = error_of(capsys, ["demo", "--output", str(tmp_path / "o2"), f"baseline_weights={wrong}"])
    assert "does not match" in err and "wrong.safetensors" in err


def test_debug_shows_traceback(tmp_path):
    with pytest.raises(ValueError, match="unknown config key"):
        main(["demo", "--debug", "--output", str(tmp_path), "nope=1"])
