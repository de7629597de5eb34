"""``denoiserep report RUN_DIR``: rebuild a run's tables and plots from its ``results.json``.

Every pipeline rewrites ``results.json`` after each finished arm, so this works on a run that
is still going, was interrupted, or finished; figures that need the trained models (the dense
tasks' ``predictions.png``) are drawn only by the run itself.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

# the ``task`` key of results.json -> the module whose ``write_reports(report, out)`` draws it
WRITERS = {
    "classify": "denoiserep.classification.protocol",
    "ablate": "denoiserep.classification.ablation",
    "reid": "denoiserep.reid.protocol",
    "detect": "denoiserep.dense.detection",
    "segment": "denoiserep.dense.segmentation",
}


def rebuild_report(run_dir: str | Path) -> dict[str, Any]:
    """Re-write results.md and the plots of ``run_dir``; return its report."""
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
    task = report.get("task")
    if task not in WRITERS:
        raise ValueError(
            f"{path} names no known task ({task!r}); reports can be rebuilt for: "
            f"{', '.join(WRITERS)}"
        )
    if not isinstance(report.get("summary"), dict):
        raise ValueError(
            f"{path} has no 'summary' (not a finished arm's report: edited, or from another "
            "tool); rerun the command that made the run to rewrite it"
        )
    try:
        importlib.import_module(WRITERS[task]).write_reports(report, run_dir)
    except KeyError as e:
        raise ValueError(
            f"{path} lacks {e} that its {task} report needs; rerun the command that made "
            "the run to rewrite it"
        ) from None
    return report
