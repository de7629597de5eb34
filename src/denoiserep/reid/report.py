"""Results of a re-ID run as JSON, a Markdown table and a PNG of the CMC curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from denoiserep.engine.report import (
    arm_label,
    fusion_rows,
    metric_table,
    robustness_section,
    status_line,
    write_figures,
    write_json,
)

METRICS = (("mAP", "mAP"), ("rank1", "Rank-1"), ("rank5", "Rank-5"), ("rank10", "Rank-10"))
PROTOCOL_NOTES = {
    "label_free": "denoisers trained label-free on the target training images, backbone frozen",
    "label_augmented": "denoisers and backbone trained with labels under the phase schedule",
    "merged": "denoisers trained label-free on the union of several datasets' training images",
}


def markdown_table(report: dict[str, Any]) -> str:
    """Per arm: mAP, Rank-1/5/10, mINP (%, mean ± std over seeds), then the fusion checks."""
    lines = metric_table(report, {**dict(METRICS), "mINP": "mINP"})
    data = report["dataset"]
    protocol = report["protocol"]
    lines += [
        "",
        f"Protocol: {protocol} ({PROTOCOL_NOTES[protocol]}). Dataset: {data['name']} "
        f"({data['train_ids']} train ids, {data['train_images']} train / "
        f"{data['query_images']} query / {data['gallery_images']} gallery images). "
        + status_line(report),
        *fusion_rows(report, "feature"),
        *robustness_section(report, "mAP"),
    ]
    return "\n".join(lines) + "\n"


def mean_cmc(report: dict[str, Any]) -> dict[str, list[float]]:
    """Per arm, the CMC curve averaged over the seeds that have it."""
    curves: dict[str, list] = {}
    for per_arm in report["curves"].values():
        for arm, c in per_arm.items():
            curves.setdefault(arm, []).append(c["cmc"])
    return {arm: np.mean(c, axis=0).tolist() for arm, c in curves.items()}


def plot_cmc(report: dict[str, Any], path: Path) -> None:
    """CMC curves (matching rate vs rank, mean over seeds) of every arm, mAP in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for arm, curve in report["cmc"].items():
        m_ap = report["summary"][arm]["mAP"]["mean"]
        ranks = range(1, len(curve) + 1)
        ax.plot(ranks, curve, marker=".", ms=3, label=f"{arm_label(arm)}, mAP {m_ap:.1f}")
    ax.set(
        xlabel="rank",
        ylabel="matching rate (%)",
        title=f"CMC, {report['dataset']['name']} ({report['protocol']})",
        xscale="log",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_reports(report: dict[str, Any], out: Path) -> None:
    """results.json, results.md and cmc.png under ``out``."""
    report["cmc"] = mean_cmc(report)
    write_json(report, out)
    (out / "results.md").write_text(markdown_table(report))
    plot_cmc(report, out / "cmc.png")
    write_figures(report, out, "mAP")
