"""Results of a classification run as JSON, a Markdown table and a PNG of curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from denoiserep.engine.report import (
    fusion_rows,
    metric_table,
    robustness_section,
    status_line,
    write_figures,
    write_json,
)


def markdown_table(report: dict[str, Any]) -> str:
    """The run's summary: accuracy per arm (mean ± std over seeds) and the fusion checks."""
    lines = metric_table(report, {"acc1": "acc@1 (%)", "acc5": "acc@5 (%)"})
    lines += ["", status_line(report), *fusion_rows(report), *robustness_section(report, "acc1")]
    return "\n".join(lines) + "\n"


def plot_curves(report: dict[str, Any], path: Path) -> None:
    """Loss and test accuracy per epoch of each arm (first seed), and denoising strength."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = next(iter(report["histories"].values()), {})
    panels = 3 if report.get("strength") else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.8))
    offset = len(hist.get("baseline", []))
    for arm, records in hist.items():
        start = 0 if arm == "baseline" else offset
        epochs = [start + r["epoch"] for r in records]
        axes[0].plot(
            epochs, [r.get("task_loss", float("nan")) for r in records], marker=".", label=arm
        )
        axes[1].plot(
            epochs, [r.get("test_acc1", float("nan")) for r in records], marker=".", label=arm
        )
        if any("ploss" in r for r in records):
            ploss = [r.get("ploss", float("nan")) for r in records]  # absent in backbone epochs
            axes[0].plot(epochs, ploss, ls="--", marker="x", label=f"{arm}: noise-pred. loss")
    axes[0].set(xlabel="epoch", ylabel="training loss", title="training loss", yscale="log")
    axes[1].set(xlabel="epoch", ylabel="test acc@1 (%)", title="test accuracy")
    for ax in axes[:2]:
        if ax.get_legend_handles_labels()[0]:  # no trained arm yet: nothing to label
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    if panels == 3:
        rows = report["strength"]
        ax = axes[2]
        ax.plot(range(1, len(rows) + 1), [r["strength"] for r in rows], marker=".")
        ax.set(
            xlabel="target layer (execution order)",
            ylabel="||k_t D||_F / sqrt(C_in)",
            title="per-layer denoising strength",
        )
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_reports(report: dict[str, Any], out: Path) -> None:
    """results.json, results.md and curves.png under ``out``."""
    write_json(report, out)
    (out / "results.md").write_text(markdown_table(report))
    plot_curves(report, out / "curves.png")
    write_figures(report, out, "acc1")
