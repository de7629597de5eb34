"""``bench.png``: inference latency per variant and training cost ratios per phase."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import TRAIN_MEMORY_LIMIT, TRAIN_STEP_LIMIT


def plot_report(report: dict[str, Any], path: Path) -> None:
    """Bar charts: inference latency per variant per (model, batch); training ratios per phase."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = report["models"]
    trained = {n: r["train"]["variants"] for n, r in models.items() if "train" in r}
    panels = 3 if trained else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 5), squeeze=False)
    axes = axes[0]
    groups = [(n, b, rows) for n, r in models.items() for b, rows in r["inference"].items()]
    variants = list(groups[0][2])
    width = 0.8 / len(variants)
    for i, v in enumerate(variants):
        axes[0].bar(
            [g + i * width for g in range(len(groups))],
            [rows[v]["median_ms"] for _, _, rows in groups],
            width,
            label=v,
        )
    axes[0].set_xticks([g + 0.4 - width / 2 for g in range(len(groups))])
    axes[0].set_xticklabels(
        [f"{n}, batch {b}" for n, b, _ in groups], fontsize=7, rotation=25, ha="right"
    )
    axes[0].set(yscale="log", ylabel="latency (ms, median)", title="inference latency")
    axes[0].legend(fontsize=8)
    if trained:
        names = list(trained)
        phases = [p for p in next(iter(trained.values())) if p != "baseline"]
        width = 0.8 / max(1, len(phases))
        memory_limits = dict.fromkeys(phases, TRAIN_MEMORY_LIMIT)
        for ax, key, limits, title in (
            (axes[1], "step_ratio", TRAIN_STEP_LIMIT, "training step time / baseline"),
            (axes[2], "peak_ratio", memory_limits, "training peak memory / baseline"),
        ):
            for i, p in enumerate(phases):
                xs = [k + i * width for k in range(len(names))]
                ax.bar(xs, [trained[n][p][key] or 0.0 for n in names], width, label=p)
                ax.hlines(  # this phase's target, as a red dash over its bars
                    [limits[p]] * len(xs),
                    [x - width / 2 for x in xs],
                    [x + width / 2 for x in xs],
                    color="red",
                    ls="--",
                    lw=1.0,
                    label="target" if i == 0 else None,
                )
            ax.axhline(1.0, color="black", lw=0.8)
            ax.set_xticks([k + 0.4 - width / 2 for k in range(len(names))])
            ax.set_xticklabels(names, fontsize=7, rotation=25, ha="right")
            ax.set(ylabel="ratio", title=title)
            ax.legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
