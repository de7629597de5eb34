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
    task = report.get("task")
    if task not in WRITERS:
        raise ValueError(
            f"{path} names no known task ({task!r}); reports can be rebuilt for: "
            f"{', '.join(WRITERS)}"
        )
    importlib.import_module(WRITERS[task]).write_reports(report, run_dir)
    return report
