"""The task contract: what a CLI command runs, in one object per task module.

A task module ends with ``TASK = Task(name=..., help=..., Config=..., run=..., ...)``. The
CLI builds ``Config`` from defaults <- YAML <- ``key=value`` overrides, calls
``run(cfg, overwrite, progress)`` and prints ``summarize(report)``; ``denoiserep report``
calls ``write_reports(report, out)`` on a run folder's ``results.json``. What every task
shares (the "results: ..." line, the refusal of a report that cannot be rebuilt) lives
here, once; the registry imports a task module only when that task runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Report = dict[str, Any]


@dataclass(frozen=True)
class Task:
    """One command of ``denoiserep``: its config, how it runs, how its report is written.

    Args:
        name: the command (``denoiserep NAME``) and the ``task`` key of ``results.json``.
        help: one line for ``denoiserep --help``.
        Config: the config dataclass (defaults <- YAML <- overrides).
        run: ``run(cfg, overwrite, progress) -> report`` (writes the run folder).
        table: ``table(report) -> str``, the Markdown printed at the end of a run.
        default_config: a packaged YAML (``denoiserep/configs``) run without ``--config``.
        report_files: the files of the run folder that ``summarize`` lists.
        writer: ``writer(report, out)`` rewrites the tables and plots from a report;
            None when they cannot be rebuilt from ``results.json`` alone.
        fixed_config: the command runs ``default_config`` only and takes no ``--config``.
    """

    name: str
    help: str
    Config: type
    run: Callable[..., Report]
    table: Callable[[Report], str]
    default_config: str | None = None
    report_files: tuple[str, ...] = ("results.json", "results.md")
    writer: Callable[[Report, Path], None] | None = None
    fixed_config: bool = False

    @property
    def rebuildable(self) -> bool:
        """Whether ``denoiserep report`` can rewrite this task's tables and plots."""
        return self.writer is not None

    def write_reports(self, report: Report, out: Path) -> None:
        """Rewrite the tables and plots of run folder ``out`` from ``report``."""
        if self.writer is None:
            raise ValueError(
                f"the reports of a {self.name} run cannot be rebuilt from results.json; "
                "rerun the command that made the run"
            )
        self.writer(report, Path(out))

    def summarize(self, report: Report) -> str:
        """The Markdown table printed at the end of a run, and where the files are."""
        text = self.table(report)
        if not self.report_files:
            return text
        out = Path(report["config"]["output"])
        files = ", ".join(str(out / f) for f in self.report_files)
        return text + f"\nresults: {files}"
