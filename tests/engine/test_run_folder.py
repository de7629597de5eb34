"""Run folders: nothing lost on --overwrite, a failed start claims nothing, identity without
the output path (issue 15)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

import denoiserep as dr
from denoiserep.cli import main
from denoiserep.engine.config import to_dict
from denoiserep.engine.runs import RunFolderConflict, prepare_run_folder
from denoiserep.engine.trainer import TrainConfig
from denoiserep.tasks.contract import Task
from denoiserep.tasks.registry import register_task, unregister_task


# -- a pipeline as small as a pipeline can be, behind the real command line ---------------------
@dataclass
class FakeConfig:
    model: str = "tiny"
    finetune: TrainConfig = field(
        default_factory=lambda: TrainConfig(phases="alternating", denoiser_epochs=1)
    )
    denoise: dr.DenoiseConfig = field(default_factory=dr.DenoiseConfig)
    fail_in_worker: bool = False
    output: str = "runs/fake"


class BrokenImages:
    """A dataset whose second item is a corrupt image, read in a DataLoader worker."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        if i == 1:
            raise ValueError("corrupt or unreadable image data/train/a/1.png: truncated file")
        return i


def fake_run(cfg: FakeConfig, overwrite: bool = False, progress: bool = True) -> dict:
    """Like the pipelines before the rewrite: the folder is prepared, then the model fails."""
    out = prepare_run_folder(cfg.output, to_dict(cfg), overwrite, type(cfg))
    if cfg.model != "tiny":
        raise ValueError(f"unknown model {cfg.model!r}")
    if cfg.fail_in_worker:
        from torch.utils.data import DataLoader

        list(DataLoader(BrokenImages(), batch_size=1, num_workers=1))
    config = to_dict(cfg)
    (out / "results.json").write_text(json.dumps(config, sort_keys=True))
    return {"output": str(out), "config": config}


@pytest.fixture
def fake_cli(monkeypatch):
    """``denoiserep fake ...`` runs :func:`fake_run`; returns the task."""
    task = Task(
        name="fake",
        help="a pipeline for tests",
        Config=FakeConfig,
        run=fake_run,
        table=lambda report: f"results: {report['output']}",
        report_files=(),
    )
    register_task(task)
    yield task
    unregister_task("fake")


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) -> sha256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# the smallest `denoiserep demo` that trains every phase (seconds): a 1-block ViT, 1 + 2 epochs
TINY_DEMO = [
    "--no-progress",
    "model.kwargs={img_size: 8, patch_size: 4, embed_dim: 16, depth: 1, num_heads: 2}",
    "baseline.epochs=1",
    "finetune.epochs=2",
    "finetune.denoiser_epochs=0",
    "arms=[denoiserep]",
    "robustness.enabled=false",
]


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


# -- 1. --overwrite ---------------------------------------------------------------------------
def test_failed_overwrite_leaves_the_finished_run_byte_identical(tmp_path, capsys, fake_cli):
    out = tmp_path / "a"
    assert main(["fake", "--output", str(out), "finetune.epochs=3"]) == 0
    before = snapshot(out)
    assert "results.json" in before and ".denoiserep-run" in before
    err = one_line_error(capsys, ["fake", "--output", str(out), "--overwrite", "model=typo"])
    assert "unknown model 'typo'" in err
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # nothing left aside
    # the same overwrite with a valid configuration replaces the run
    assert main(["fake", "--output", str(out), "--overwrite", "finetune.epochs=4"]) == 0
    assert json.loads((out / "results.json").read_text())["finetune"]["epochs"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_overwrite_never_deletes_a_folder_that_holds_no_run(tmp_path, capsys, fake_cli):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("three weeks of notes")
    err = one_line_error(capsys, ["fake", "--output", str(out), "--overwrite"])
    assert "not a denoiserep run" in err and "notes.txt" in err
    assert (out / "notes.txt").read_text() == "three weeks of notes"
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_overwrite_replaces_a_run_only_once_the_new_one_started(tmp_path):
    from denoiserep.engine.runs import open_run_folder

    out = tmp_path / "run"
    with open_run_folder(out, {"lr": 1, "output": str(out)}) as run:
        (run.path / "result.txt").write_text("finished")
    before = snapshot(out)
    replacing = open_run_folder(out, {"lr": 2, "output": str(out)}, overwrite=True)
    assert not (out / "result.txt").exists()  # the new run sees an empty folder...
    replacing.failed()  # ...and fails to start: the old run is back as it was
    assert snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    # a crash (no started(), no failed()) between the two: the next open puts it back
    open_run_folder(out, {"lr": 2, "output": str(out)}, overwrite=True)
    with pytest.raises(RunFolderConflict, match=r"config differs in: lr"):
        open_run_folder(out, {"lr": 3, "output": str(out)})
    assert snapshot(out) == before
    replacing = open_run_folder(out, {"lr": 2, "output": str(out)}, overwrite=True)
    replacing.started()
    assert not (out / "result.txt").exists() and sorted(p.name for p in tmp_path.iterdir()) == [
        "run"
    ]
    assert open_run_folder(out, {"lr": 2, "output": str(out)}).is_started  # resumed


# -- 2. identity without the output path ------------------------------------------------------
def test_the_output_path_is_not_part_of_the_run(tmp_path, capsys, fake_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["fake", "--output", "out/a", "finetune.epochs=3"]) == 0
    for spelling in ("./out/a", str(tmp_path / "out" / "a"), "out/../out/a"):
        assert main(["fake", "--output", spelling, "finetune.epochs=3"]) == 0, spelling
    shutil.move(tmp_path / "out" / "a", tmp_path / "moved")
    assert main(["fake", "--output", "moved", "finetune.epochs=3"]) == 0
    capsys.readouterr()
    err = one_line_error(capsys, ["fake", "--output", "moved", "finetune.epochs=4"])
    assert "holds a different run (config differs in: finetune.epochs)" in err


def test_a_run_from_before_a_config_key_was_added_resumes(tmp_path, capsys, fake_cli):
    out = tmp_path / "old"
    assert main(["fake", "--output", str(out)]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    del saved["denoise"]["loss_dtype"]  # as a package without that key wrote it
    (out / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    with pytest.raises(RunFolderConflict, match=r"differs in: denoise.loss_dtype\)"):
        prepare_run_folder(out, to_dict(FakeConfig(output=str(out))))  # no schema: a difference
    assert main(["fake", "--output", str(out)]) == 0  # resumed: the key has its default
    assert "loss_dtype" in yaml.safe_load((out / "config.yaml").read_text())["denoise"]
    capsys.readouterr()
    err = one_line_error(capsys, ["fake", "--output", str(out), "denoise.loss_dtype=autocast"])
    assert "holds a different run (config differs in: denoise.loss_dtype)" in err


# -- 3. a failed start claims nothing ---------------------------------------------------------
def test_a_run_that_fails_to_start_does_not_claim_its_folder(tmp_path, capsys, fake_cli):
    out = tmp_path / "b"
    err = one_line_error(capsys, ["fake", "--output", str(out), "model=typo"])
    assert "unknown model" in err
    assert not out.exists()  # a failed start leaves no folder
    assert main(["fake", "--output", str(out)]) == 0  # the corrected command runs
    assert (out / "results.json").is_file()


def test_a_folder_left_by_a_killed_start_is_nobodys(tmp_path):
    from denoiserep.engine.runs import open_run_folder

    out = tmp_path / "c"
    open_run_folder(out, {"model": "typo", "output": str(out)})  # killed before it started
    run = open_run_folder(out, {"model": "tiny", "output": str(out)})  # no conflict
    assert not run.is_started
    run.started()
    with pytest.raises(RunFolderConflict, match="config differs in: model"):
        open_run_folder(out, {"model": "typo", "output": str(out)})


def test_a_checkpoint_claims_the_folder_inside_the_command(tmp_path):
    """Once training wrote a checkpoint the run has started: a later failure keeps it."""
    import torch

    from denoiserep.engine.checkpoint import save_training_state
    from denoiserep.engine.runs import open_run_folder, run_scope

    out = tmp_path / "d"
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(RuntimeError, match="diverged"), run_scope():
        path = prepare_run_folder(out, {"lr": 1, "output": str(out)})
        save_training_state(path / "checkpoints", model, opt, None, {"global_step": 3})
        raise RuntimeError("diverged at epoch 2")
    assert (out / "checkpoints" / "step-00000003" / "state.pt").is_file()
    with pytest.raises(RunFolderConflict):
        open_run_folder(out, {"lr": 2, "output": str(out)})


def test_real_pipeline_failed_overwrite_keeps_the_run(tmp_path, capsys):
    """The same as the first test with ``denoiserep demo`` itself."""
    out = tmp_path / "a"
    assert main(["demo", "--output", str(out), *TINY_DEMO]) == 0
    capsys.readouterr()
    before = snapshot(out)
    argv = ["demo", "--output", str(out), "--overwrite", *TINY_DEMO, "model.name=no_such_model"]
    err = one_line_error(capsys, argv)
    assert "no_such_model" in err
    assert snapshot(out) == before
    assert sorted(os.listdir(tmp_path)) == ["a"]
