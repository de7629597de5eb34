"""Nothing lost, nothing run that should not run (issue 39): untrusted checkpoints, late
failures under --overwrite, user folders, duplicate keys, and one clear line for each mistake.

Every case goes through the command line; run folders are hashed before and after."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from denoiserep.cli import main
from tests.engine.test_run_folder import TINY_DEMO as TINY
from tests.engine.test_run_folder import one_line_error, snapshot
from tests.reid.test_reid_pipeline import TINY as REID_TINY
from tests.reid.test_reid_pipeline import write_market


def demo(out: Path, *extra: str) -> list[str]:
    return ["demo", "--output", str(out), *TINY, *extra]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished tiny demo run, copied by each test that changes it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(demo(out)) == 0
    return out


def copy_of(finished: Path, tmp_path: Path, name: str = "run") -> Path:
    out = tmp_path / name
    shutil.copytree(finished, out, symlinks=True)
    return out


def newest_state(out: Path) -> Path:
    ckpt = out / "seed0" / "baseline" / "checkpoints"
    return ckpt / (ckpt / "latest").read_text().strip() / "state.pt"


class Payload:
    """Unpickling it calls ``open(marker, 'w')``: a stand-in for any code a pickle can run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# -- code execution ----------------------------------------------------------------------------
def test_a_planted_state_pt_is_refused_and_never_runs(finished, tmp_path, capsys):
    out = copy_of(finished, tmp_path)
    marker = tmp_path / "payload-ran"
    state = newest_state(out)
    saved = torch.load(state, weights_only=True)
    torch.save(dict(saved, history=Payload(marker)), state)  # a killed run's, then planted
    before = snapshot(out)
    err = one_line_error(capsys, demo(out))
    assert f"checkpoint file {state} refused: reading it would run code" in err
    assert "io.open" in err and "weights_only" not in err
    assert not marker.exists()
    after = snapshot(out)  # the same run, resumed at a new path, records that path: no more
    assert {k: v for k, v in after.items() if k != "config.yaml"} == {
        k: v for k, v in before.items() if k != "config.yaml"
    }


def test_training_state_reads_with_weights_only_for_every_optimizer(tmp_path):
    """What save_training_state writes needs no code to read back, whatever the optimizer."""
    import denoiserep as dr
    from denoiserep.engine.checkpoint import latest_checkpoint, save_training_state
    from denoiserep.engine.optim import build_optimizer, cosine_with_warmup

    for optimizer, for_d in (("adamw", "same"), ("sgd", "adafactor")):
        net = torch.nn.Sequential(torch.nn.Linear(4, 4))
        model = dr.convert(net, dr.DenoiseConfig(), example_input=torch.randn(1, 4))
        opt = build_optimizer(model, optimizer, 1e-3, 0.0, 0.9, for_d)
        scheduler = cosine_with_warmup(opt, 10, 2)
        model(torch.randn(3, 4)).sum().backward()
        opt.step()
        scheduler.step()
        folder = tmp_path / optimizer / "checkpoints"
        state = {"epoch": 1, "step": 0, "global_step": 1, "history": [{"loss": 1.0}], "sums": {}}
        save_training_state(folder, model, opt, scheduler, state)
        found = latest_checkpoint(folder)
        torch.load(found / "state.pt", weights_only=True)  # raises if it needed more


def test_a_state_pt_of_another_structure_is_named_and_skipped(finished, tmp_path, capsys):
    out = copy_of(finished, tmp_path)
    state = newest_state(out)
    torch.save({"global_step": 5}, state)
    assert main(demo(out)) == 0  # resumed from scratch: that was the only checkpoint
    err = capsys.readouterr().err
    assert f"checkpoint {state.parent} cannot be read" in err
    assert "holds no training state (missing: epoch, step" in err and "KeyError" not in err


# -- data lost -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad, message",
    [
        ("baseline.batch_size=100000000", "1437 training items give no batch"),
        ("data.eval_batch_size=0", "data.eval_batch_size must be >= 1"),
    ],
)
def test_overwrite_that_fails_late_keeps_the_finished_run(finished, tmp_path, capsys, bad, message):
    out = copy_of(finished, tmp_path)
    before = snapshot(out)
    err = one_line_error(capsys, demo(out, "--overwrite", bad))
    assert message in err
    assert snapshot(out) == before and sorted(os.listdir(tmp_path)) == ["run"]


def test_overwrite_with_a_truncated_lazily_read_image_keeps_the_run(tmp_path, capsys):
    """Re-ID reads images lazily by default: the bad one is met inside the first epoch,
    before the first checkpoint, so the run being replaced is put back byte for byte."""
    good, bad = write_market(tmp_path / "good"), write_market(tmp_path / "bad")
    victim = sorted((bad / "bounding_box_train").glob("*.jpg"))[3]
    victim.write_bytes(victim.read_bytes()[:40])
    out = tmp_path / "run"
    args = ["reid", "--config", REID_TINY, "--output", str(out), "--no-progress", "arms=[]"]
    args.append("data.preload=false")  # REID_TINY preloads; the re-ID default reads lazily
    assert main([*args, f"data.root={good}"]) == 0
    capsys.readouterr()
    before = snapshot(out)
    err = one_line_error(capsys, [*args, f"data.root={bad}", "--overwrite"])
    assert victim.name in err
    assert snapshot(out) == before
    assert sorted(os.listdir(tmp_path)) == ["bad", "good", "run"]
    # the corrected command replaces the run safely
    assert main([*args, f"data.root={good}", "baseline.epochs=2", "--overwrite"]) == 0
    assert len(json.loads((out / "results.json").read_text())["histories"]["0"]["baseline"]) == 2


def test_a_users_folder_with_its_own_config_is_never_touched(tmp_path, capsys):
    mine = tmp_path / "myexp"
    mine.mkdir()
    text = "# my experiment, commented\ndata: {name: digits}\noutput: myexp\n"
    (mine / "config.yaml").write_text(text)
    err = one_line_error(capsys, ["demo", "--output", str(mine), *TINY])
    assert "not a denoiserep run (e.g. config.yaml; no .denoiserep-run marker)" in err
    assert f"--output {mine / 'run'}" in err
    (mine / "notes.txt").write_text("notes")
    before = snapshot(mine)
    one_line_error(capsys, ["demo", "--output", str(mine), "--overwrite", *TINY])
    assert snapshot(mine) == before and (mine / "config.yaml").read_text() == text


def test_overwrite_through_a_symbolic_link_follows_it(finished, tmp_path, capsys):
    target = copy_of(finished, tmp_path, "target")
    link = tmp_path / "link"
    link.symlink_to(target, target_is_directory=True)
    for epochs in (2, 3):  # twice: the second replaces the first through the same link
        assert main(demo(link, "--overwrite", f"finetune.epochs={epochs}")) == 0
        assert link.is_symlink() and os.readlink(link) == str(target)
        saved = (target / "config.yaml").read_text()
        assert f"epochs: {epochs}" in saved
    assert sorted(os.listdir(tmp_path)) == ["link", "target"]


def test_a_long_output_name_overwrites_without_an_internal_path(finished, tmp_path, capsys):
    out = copy_of(finished, tmp_path, "r" * 240)
    assert main(demo(out, "--overwrite", "finetune.epochs=3")) == 0
    assert sorted(os.listdir(tmp_path)) == [out.name]
    before = snapshot(out)
    err = one_line_error(capsys, demo(out, "--overwrite", "baseline.batch_size=100000000"))
    assert "denoiserep-replaced" not in err and snapshot(out) == before


# -- silently wrong ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, key, lines",
    [
        (
            "baseline:\n  epochs: 1\nfinetune:\n  epochs: 2\nbaseline:\n  lr: 0.1\n",
            "baseline",
            (1, 5),
        ),
        ("seeds: [0]\nbaseline: {epochs: 1,\n  epochs: 3}\n", "epochs", (2, 3)),
    ],
)
def test_a_key_repeated_in_a_config_file_is_an_error(tmp_path, capsys, text, key, lines):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    err = one_line_error(capsys, ["classify", "--config", str(path), "--output", str(tmp_path)])
    assert (
        f"config file {path}: key '{key}' appears twice, at lines {lines[0]} and {lines[1]}" in err
    )


def test_a_repeated_key_in_a_denoise_config_yaml_is_an_error():
    import denoiserep as dr

    with pytest.raises(ValueError, match="key 'timesteps' appears twice, at lines 1 and 2"):
        dr.DenoiseConfig.from_yaml("timesteps: 10\ntimesteps: 20\n")


def test_untrained_arms_and_an_empty_output_are_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an empty output used to mean the config's runs/demo
    err = one_line_error(
        capsys, demo(tmp_path / "a", "finetune.epochs=0", "arms=[control,denoiserep]")
    )
    assert "finetune.epochs=0 would leave the control and denoiserep arm(s) untrained" in err
    assert not (tmp_path / "a").exists()
    for argv in (["demo", "--output", "", *TINY], ["demo", *TINY, "output="]):
        err = one_line_error(capsys, argv)
        assert "the output folder is empty" in err
    assert sorted(os.listdir(tmp_path)) == []  # no runs/demo, nothing else


# -- one clear line ------------------------------------------------------------------------------
def test_a_full_disk_while_writing_a_checkpoint_says_so(tmp_path, capsys, monkeypatch):
    from denoiserep.engine import checkpoint

    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(checkpoint.torch, "save", full)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda p: usage._replace(free=0))
    err = one_line_error(capsys, demo(tmp_path / "a"))
    assert "no space left on the device of" in err and "rerun the same command" in err
    assert "inline_container" not in err


@pytest.mark.parametrize("seed", [2**64, -1])
def test_a_seed_beyond_32_bits_is_one_line(tmp_path, capsys, seed):
    err = one_line_error(capsys, demo(tmp_path / "a", f"seeds=[{seed}]"))
    assert f"seeds must be integers from 0 to {2**32 - 1} (32 bits), got [{seed}]" in err


def test_report_on_a_results_json_without_summary(finished, tmp_path, capsys):
    out = copy_of(finished, tmp_path)
    report = json.loads((out / "results.json").read_text())
    del report["summary"]
    (out / "results.json").write_text(json.dumps(report))
    err = one_line_error(capsys, ["report", str(out)])
    assert "results.json has no 'summary'" in err


def test_a_reid_set_without_any_match_is_refused_before_training(tmp_path, capsys):
    root = write_market(tmp_path / "market")
    for image in (root / "bounding_box_test").glob("*.jpg"):
        if not image.name.startswith("0000_"):  # keep only the distractor
            image.unlink()
    out = tmp_path / "run"
    argv = ["reid", "--config", REID_TINY, "--output", str(out), f"data.root={root}"]
    err = one_line_error(capsys, [*argv, "--no-progress"])
    assert "no query has a true match in the gallery" in err
    assert not out.exists()


def test_an_empty_config_file_gets_one_line_that_says_what_to_set(tmp_path, capsys):
    path = tmp_path / "empty.yaml"
    path.write_text("\n")
    out = tmp_path / "run"
    err = one_line_error(capsys, ["classify", "--config", str(path), "--output", str(out)])
    assert "model vit_tiny_patch16_224 cannot take the data's 1x8x8 images" in err
    assert "model.kwargs" in err and not out.exists()
