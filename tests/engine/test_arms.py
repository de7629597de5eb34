"""The experiment engine: results written as each arm finishes, rebuilt from a run folder."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

import denoiserep
from denoiserep.cli import main
from denoiserep.engine import arms
from denoiserep.tasks.rebuild import rebuild_report

TINY = [
    "robustness.enabled=false",
    "model.kwargs={img_size: 8, patch_size: 4, embed_dim: 32, depth: 1, num_heads: 2}",
    "baseline.epochs=1",
    "finetune.epochs=1",
    "finetune.denoiser_epochs=0",
    "finetune.phases=joint",
    "seeds=[0, 1]",
]
SRC = Path(denoiserep.__file__).parent


def test_stopped_run_keeps_finished_arms_and_report_rebuilds(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    original = arms.ArmRunner.baseline

    def stop_at_second_seed(self, seed):
        if seed == 1:
            raise KeyboardInterrupt  # a time limit / Ctrl-C after the first seed
        return original(self, seed)

    monkeypatch.setattr(arms.ArmRunner, "baseline", stop_at_second_seed)
    assert main(["demo", "--no-progress", "--output", str(out), *TINY]) == 130
    report = json.loads((out / "results.json").read_text())
    assert report["partial"] is True
    assert set(report["per_seed"]) == {"0"}
    assert set(report["per_seed"]["0"]) == {"baseline", "control", "denoiserep"}
    assert report["per_seed"]["0"]["denoiserep"]["max_abs_diff_fused_unfused"] < 1e-4
    assert "PARTIAL" in (out / "results.md").read_text()

    (out / "results.md").unlink()
    (out / "curves.png").unlink()
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    assert "PARTIAL" in (out / "results.md").read_text()
    assert (out / "curves.png").stat().st_size > 1000
    assert "acc@1" in capsys.readouterr().out

    monkeypatch.setattr(arms.ArmRunner, "baseline", original)
    assert main(["demo", "--no-progress", "--output", str(out), *TINY]) == 0  # resumes
    report = json.loads((out / "results.json").read_text())
    assert report["partial"] is False and set(report["per_seed"]) == {"0", "1"}
    for name in ("baseline/model.safetensors", "control/model.safetensors"):
        assert (out / "seed1" / name).is_file()
    assert (out / "seed1" / "denoiserep" / "fused.safetensors").is_file()


def test_report_errors_are_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "not a denoiserep run folder" in capsys.readouterr().err
    (tmp_path / "results.json").write_text('{"task": "nope"}')
    with pytest.raises(ValueError, match="no known task"):
        rebuild_report(tmp_path)


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            prefix = "." * node.level
            names.add(prefix + (node.module or ""))
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


@pytest.mark.parametrize("package", ["reid", "dense", "engine", "core"])
def test_task_packages_do_not_import_classification(package):
    for path in (SRC / package).rglob("*.py"):
        bad = {n for n in _imports(path) if "classification" in n}
        assert not bad, f"{path.relative_to(SRC)} imports {bad}"


def test_modules_stay_small():
    sizes = {p.relative_to(SRC): len(p.read_text().splitlines()) for p in SRC.rglob("*.py")}
    big = {str(p): n for p, n in sizes.items() if n > 420}
    assert not big, f"modules over ~400 lines: {big}"


def test_start_from_a_checkpoint_with_baseline_epochs_zero(tmp_path, capsys, caplog):
    """model.checkpoint through the CLI: the loaded weights are the baseline, bit for bit; a
    head of another class count is re-initialised with one line."""
    from safetensors.torch import load_file

    first = tmp_path / "first"
    assert main(["demo", "--no-progress", "--output", str(first), *TINY, "seeds=[0]"]) == 0
    weights = first / "seed0" / "baseline" / "model.safetensors"
    accuracy = json.loads((first / "results.json").read_text())["per_seed"]["0"]["baseline"]
    again = tmp_path / "again"
    args = ["classify", "--config", "digits_demo.yaml", "--no-progress", "--output", str(again)]
    args += [*TINY[:2], "baseline.epochs=0", "arms=[]", f"model.checkpoint={weights}"]
    assert main(args) == 0
    report = json.loads((again / "results.json").read_text())
    assert report["per_seed"]["0"]["baseline"]["acc1"] == accuracy["acc1"]
    saved, loaded = (
        load_file(weights),
        load_file(again / "seed0" / "baseline" / "model.safetensors"),
    )
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)

    caplog.clear()
    subset = tmp_path / "subset"
    args[args.index(str(again))] = str(subset)
    assert main([*args, "data.options={subset: [0, 1, 2]}"]) == 0
    heads = [r.getMessage() for r in caplog.records if "head" in r.getMessage()]
    assert len(heads) == 1, heads


def test_old_run_folder_is_refused_clearly(tmp_path, capsys):
    out = tmp_path / "old"
    (out / "seed0" / "baseline" / "checkpoints").mkdir(parents=True)
    (out / "config.yaml").write_text("output: old\nseeds: [0]\n")  # no run marker
    for overwrite in ([], ["--overwrite"]):  # a folder without the marker is never a run
        assert main(["demo", "--no-progress", "--output", str(out), *TINY, *overwrite]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "not a denoiserep run" in err and "marker" in err
    assert (out / "config.yaml").read_text() == "output: old\nseeds: [0]\n"
