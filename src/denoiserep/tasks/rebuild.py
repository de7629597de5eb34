"""``denoiserep report RUN_DIR``: rebuild a run's tables and plots from its ``results.json``.

The report's ``task`` key names the registered task whose ``write_reports`` draws it; figures
that need the trained models (the dense tasks' ``predictions.png``) are drawn only by the run
itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from denoiserep.engine.rebuild import check_summary, read_report

from .contract import Task
from .registry import get_task, task_info, task_names


def report_task(name: Any, path: Path) -> Task:
    """The task whose ``results.json`` names ``name`` (``demo`` runs report ``classify``)."""
    names = [n for n in task_names() if not task_info(n).fixed_config]
    if not isinstance(name, str) or name not in names:
        raise ValueError(f"{path} names no known task ({name!r}); known tasks: {', '.join(names)}")
    return get_task(name)


def rebuild_report(run_dir: str | Path) -> dict[str, Any]:
    """Re-write results.md and the plots of ``run_dir``; return its report."""
    run_dir = Path(run_dir)
    path = run_dir / "results.json"
    report = read_report(run_dir)
    task = report_task(report.get("task"), path)
    check_summary(report, path)
    try:
        task.write_reports(report, run_dir)
    except KeyError as e:
        raise ValueError(
            f"{path} lacks {e} that its {task.name} report needs; rerun the command that made "
            "the run to rewrite it"
        ) from None
    return report
