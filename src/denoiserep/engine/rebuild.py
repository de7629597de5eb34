"""Read a run folder's ``results.json`` back, for ``denoiserep report RUN_DIR``.

Every run rewrites ``results.json`` after each finished arm, so this works on a run that is
still going, was interrupted, or finished. Which task rewrites the tables and plots is the
task registry's business (:func:`denoiserep.tasks.rebuild.rebuild_report`); this module
knows run folders only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_report(run_dir: str | Path) -> dict[str, Any]:
    """The report in ``run_dir/results.json``; a missing, malformed or foreign file is one line
    saying what to do."""
    run_dir = Path(run_dir)
    path = run_dir / "results.json"
    if not path.is_file():
        if (run_dir / "config.yaml").is_file():
            raise FileNotFoundError(
                f"{run_dir} holds a run but no results.json yet: no arm has finished"
            )
        raise FileNotFoundError(f"{path} not found: {run_dir} is not a denoiserep run folder")
    try:
        report = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{path} is not valid JSON ({e}); rerun the command to rewrite it"
        ) from None
    if not isinstance(report, dict):
        raise ValueError(f"{path} holds no report (a JSON {type(report).__name__})")
    return report


def check_summary(report: dict[str, Any], path: Path) -> None:
    """Refuse a report without the ``summary`` every finished arm writes."""
    if not isinstance(report.get("summary"), dict):
        raise ValueError(
            f"{path} has no 'summary' (not a finished arm's report: edited, or from another "
            "tool); rerun the command that made the run to rewrite it"
        )
