"""The task registry: built-ins, unknown names, entry-point plug-ins (working and broken)."""

from __future__ import annotations

import json
import textwrap
from importlib import metadata

import pytest

from denoiserep.cli import main, packaged_config
from denoiserep.tasks import registry
from denoiserep.tasks.contract import Task
from denoiserep.tasks.registry import BUILTIN, get_task, task_info, task_names

PLUGIN = """
from dataclasses import dataclass
import json
from pathlib import Path

from denoiserep.engine.runs import prepare_run_folder
from denoiserep.engine.config import to_dict
from denoiserep.tasks import Task


@dataclass
class Config:
    value: int = 1
    output: str = "runs/mytask"


def table(report):
    return f"| value | {report['summary']['value']} |\\n"


def write(report, out):
    (Path(out) / "results.md").write_text(table(report))


def run(cfg, overwrite=False, progress=True):
    out = prepare_run_folder(cfg.output, to_dict(cfg), overwrite, type(cfg))
    report = {"task": "mytask", "config": to_dict(cfg), "summary": {"value": 2 * cfg.value}}
    (out / "results.json").write_text(json.dumps(report))
    write(report, out)
    return report


TASK = Task(name="mytask", help="a third-party task", Config=Config, run=run, table=table,
            writer=write)
"""


def test_every_builtin_task_resolves_to_what_its_registry_line_says():
    for name, info in BUILTIN.items():
        task = get_task(name)
        assert isinstance(task, Task), name
        assert packaged_config(info.default_config).is_file(), name
        if info.fixed_config:  # demo: classify on its packaged config
            assert task.name == "classify" and task.default_config == info.default_config
            continue
        assert (task.name, task.help, task.default_config) == (
            name,
            info.help,
            info.default_config,
        )
        assert task.fixed_config is False


def test_an_unknown_task_is_one_line_listing_the_known_ones():
    with pytest.raises(ValueError) as e:
        get_task("clasify")
    message = str(e.value)
    assert "\n" not in message and "'clasify'" in message
    for name in ("classify", "reid", "detect", "segment", "bench", "probe", "ablate"):
        assert name in message


def test_register_task_refuses_a_taken_name():
    with pytest.raises(ValueError, match="already registered"):
        registry.register_task(get_task("probe"))


def _entry_points(monkeypatch, tmp_path, value: str, source: str | None = PLUGIN):
    if source is not None:
        (tmp_path / "mypkg_tasks.py").write_text(textwrap.dedent(source))
        monkeypatch.syspath_prepend(str(tmp_path))
    ep = metadata.EntryPoint(name="mytask", value=value, group=registry.ENTRY_POINT_GROUP)

    def entry_points(group=None, **kwargs):
        return [ep] if group == registry.ENTRY_POINT_GROUP else []

    monkeypatch.setattr(registry.metadata, "entry_points", entry_points)
    registry.plugins(reload=True)


@pytest.fixture
def clean_plugins(monkeypatch):
    """Read the real entry points again once the test's fake ones are gone (undoing the patch
    first: a reload before it would cache the fake plug-in for later tests in the process)."""
    yield
    monkeypatch.undo()
    registry.plugins(reload=True)


def test_an_entry_point_adds_a_task_the_cli_runs_and_report_rebuilds(
    monkeypatch, tmp_path, capsys, clean_plugins
):
    _entry_points(monkeypatch, tmp_path, "mypkg_tasks:TASK")
    assert "mytask" in task_names()
    assert task_info("mytask").help == "a third-party task"
    out = tmp_path / "run"
    assert main(["mytask", "--no-progress", "--output", str(out), "value=21"]) == 0
    printed = capsys.readouterr().out
    assert "| value | 42 |" in printed and str(out / "results.json") in printed
    assert json.loads((out / "results.json").read_text())["summary"] == {"value": 42}
    (out / "results.md").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "results.md").read_text() == "| value | 42 |\n"
    assert "| value | 42 |" in capsys.readouterr().out


def test_a_broken_entry_point_is_one_line_naming_it(monkeypatch, tmp_path, capsys, clean_plugins):
    _entry_points(monkeypatch, tmp_path, "mypkg_missing:TASK", source=None)
    assert "mytask" in task_names()
    assert "broken plug-in" in task_info("mytask").help  # --help still lists the others
    assert main(["mytask", "--no-progress", "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert "entry point mytask = mypkg_missing:TASK" in err and "denoiserep.tasks" in err
    assert not (tmp_path / "run").exists()


def test_an_entry_point_that_is_not_a_task_is_one_line(
    monkeypatch, tmp_path, capsys, clean_plugins
):
    _entry_points(monkeypatch, tmp_path, "mypkg_tasks:table")
    assert main(["mytask", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "mypkg_tasks:table" in err and "not a denoiserep.tasks.Task" in err


def test_a_report_of_an_unknown_task_lists_the_known_ones(tmp_path, capsys):
    (tmp_path / "results.json").write_text('{"task": "nope", "summary": {}}')
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no known task ('nope')" in err and "classify" in err


def test_bench_reports_say_they_cannot_be_rebuilt(tmp_path, capsys):
    report = {"task": "bench", "summary": {}, "config": {"output": str(tmp_path)}}
    (tmp_path / "results.json").write_text(json.dumps(report))
    assert main(["report", str(tmp_path)]) == 2
    assert "cannot be rebuilt" in capsys.readouterr().err
