"""Results of a re-ID run as JSON, a Markdown table and a PNG of the CMC curves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from denoiserep.engine.report import ARM_LABELS, cost_rows, format_stat

METRICS = (("mAP", "mAP"), ("rank1", "Rank-1"), ("rank5", "Rank-5"), ("rank10", "Rank-10"))
PROTOCOL_NOTES = {
    "label_free": "denoisers trained label-free on the target training images, backbone frozen",
    "label_augmented": "denoisers and backbone trained with labels under the phase schedule",
    "merged": "denoisers trained label-free on the union of several datasets' training images",
}


def markdown_table(report: dict[str, Any]) -> str:
    """Per arm: mAP, Rank-1/5/10, mINP (%, mean ± std over seeds), then the fusion checks."""
    summary = report["summary"]
    header = [label for _, label in METRICS] + ["mINP"]
    lines = [
        "| arm | " + " | ".join(header) + " |",
        "| --- |" + " --- |" * len(header),
    ]
    for arm, stats in summary.items():
        cells = [format_stat(stats[key]) for key, _ in METRICS] + [format_stat(stats["mINP"])]
        lines.append(f"| {ARM_LABELS[arm]} | " + " | ".join(cells) + " |")
    data = report["dataset"]
    protocol = report["protocol"]
    lines += [
        "",
        f"Protocol: {protocol} ({PROTOCOL_NOTES[protocol]}). Dataset: {data['name']} "
        f"({data['train_ids']} train ids, {data['train_images']} train / "
        f"{data['query_images']} query / {data['gallery_images']} gallery images). "
        f"Seeds: {len(report['per_seed'])}. Device: {report['device']}.",
    ]
    if "denoiserep" in summary:
        dr_stats = summary["denoiserep"]
        diff = max(dr_stats["max_abs_diff_fused_unfused"]["values"])
        change = max(dr_stats["max_abs_change_from_baseline"]["values"])
        lines += [
            "",
            "| fusion check | value |",
            "| --- | --- |",
            f"| max abs(fused - unfused) feature difference | {diff:.3g} |",
            f"| max abs change of backbone/head weights from the baseline | {change:.3g} |",
            *cost_rows(report),
        ]
    return "\n".join(lines) + "\n"


def plot_cmc(report: dict[str, Any], path: Path) -> None:
    """CMC curves (matching rate vs rank, mean over seeds) of every arm, mAP in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for arm, curve in report["cmc"].items():
        m_ap = report["summary"][arm]["mAP"]["mean"]
        ranks = range(1, len(curve) + 1)
        ax.plot(ranks, curve, marker=".", ms=3, label=f"{ARM_LABELS[arm]}, mAP {m_ap:.1f}")
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
    (out / "results.json").write_text(json.dumps(report, indent=2))
    (out / "results.md").write_text(markdown_table(report))
    plot_cmc(report, out / "cmc.png")
