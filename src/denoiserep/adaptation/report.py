"""The ``adapt`` report: accuracy (classification) or mAP and rank-1 (re-ID) per arm and
target domain over seeds, paired tests, cost."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from denoiserep.engine.report import write_json

#: every arm, in the order of the tables
ARMS = ("none", "bn", "tent", "dr_source", "dr_target", "dr_target_bn")
ARM_NAMES = {
    "none": "no adaptation",
    "bn": "BN re-estimation",
    "tent": "TENT",
    "dr_source": "DenoiseRep fitted on source",
    "dr_target": "DenoiseRep fitted on target",
    "dr_target_bn": "DenoiseRep (target) + BN",
}
REFERENCES = ("none", "bn")  # the arms every other is tested against


def paired_p(a: list[float], b: list[float]) -> float | None:
    """Two-sided paired t-test p-value (scipy.stats.ttest_rel); None under 2 pairs, 1.0 when
    every difference is zero."""
    if len(a) < 2 or len(a) != len(b):
        return None
    if all(x == y for x, y in zip(a, b, strict=True)):
        return 1.0
    from scipy.stats import ttest_rel

    p = float(ttest_rel(a, b).pvalue)
    return None if math.isnan(p) else p


#: the metrics of each benchmark, the first one the primary (its p-values have no prefix)
METRICS = {"classify": ("acc1",), "reid": ("mAP", "rank1")}
METRIC_NAMES = {"acc1": "top-1", "mAP": "mAP", "rank1": "rank-1"}


def metrics_of(report: dict[str, Any]) -> tuple[str, ...]:
    """The metrics of a report (``classify``'s for reports written before benchmarks)."""
    return METRICS[report.get("benchmark", "classify")]


def _row(values: dict[str, dict[str, list[float]]], arm: str) -> dict[str, Any]:
    """Mean / std over seeds of each metric of ``arm`` and its paired p-values against the
    reference arms (``p_vs_none`` for the primary metric, ``rank1_p_vs_none`` for others)."""
    row: dict[str, Any] = {}
    for i, (metric, per_arm) in enumerate(values.items()):
        xs = per_arm[arm]
        row[f"{metric}_mean"] = statistics.fmean(xs)
        row[f"{metric}_std"] = statistics.stdev(xs) if len(xs) > 1 else 0.0
        prefix = "" if i == 0 else f"{metric}_"
        for ref in REFERENCES:
            if ref in per_arm and ref != arm:
                row[f"{prefix}p_vs_{ref}"] = paired_p(xs, per_arm[ref])
    return row


def aggregate(
    per_seed: dict[str, dict[str, Any]], metrics: tuple[str, ...] = ("acc1",)
) -> dict[str, dict[str, Any]]:
    """Per target domain and arm: mean / std of each metric over seeds, adaptation seconds,
    images, and the paired p-values against no adaptation and BN re-estimation (same seeds);
    ``clean``: the source model on the clean test data (``clean_<metric>`` of each seed)."""
    seeds = sorted(per_seed)
    conditions = [k for k in per_seed[seeds[0]] if not k.startswith("clean_")]
    summary: dict[str, dict[str, Any]] = {}
    for cond in conditions:
        arms = [a for a in ARMS if all(a in per_seed[s].get(cond, {}) for s in seeds)]
        values = {m: {a: [per_seed[s][cond][a][m] for s in seeds] for a in arms} for m in metrics}
        rows = {}
        for arm in arms:
            rows[arm] = _row(values, arm) | {
                "adapt_s_mean": statistics.fmean(per_seed[s][cond][arm]["adapt_s"] for s in seeds),
                "images": per_seed[seeds[0]][cond][arm]["images"],
                "seeds": len(seeds),
            }
        summary[cond] = rows
    clean = {
        f"{m}_mean": statistics.fmean(per_seed[s][f"clean_{m}"] for s in seeds) for m in metrics
    }
    summary["clean"] = {"none": clean | {"seeds": len(seeds)}}
    return summary


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _header(report: dict[str, Any], metrics: tuple[str, ...]) -> str:
    clean = report.get("summary", {}).get("clean", {}).get("none", {})
    scores = ", ".join(
        f"{METRIC_NAMES[m]} {clean[f'{m}_mean']:.2f}" if f"{m}_mean" in clean else "-"
        for m in metrics
    )
    cfg, seeds = report["config"], len(report.get("per_seed", {}))
    if report.get("benchmark", "classify") == "reid":
        return (
            f"label-free adaptation of the re-ID model {cfg['model']['name']} "
            f"({cfg['reid']['data']['root']}): {report['target_images']} unlabelled target "
            f"images of training identities, {report['query_images']} queries against "
            f"{report['gallery_images']} gallery images (both corrupted) per target domain, "
            f"{seeds} seed(s); clean {scores} of the source model"
        )
    return (
        f"label-free adaptation of {cfg['model']['name']} ({cfg['data']['name']}): "
        f"{report['target_images']} unlabelled target images, {report['test_images']} test "
        f"images per target domain, {seeds} seed(s); clean {scores} of the source model"
    )


def _cell(row: dict[str, Any], metric: str, primary: bool) -> str:
    prefix = "" if primary else f"{metric}_"
    pv = f" ({_p(row.get(f'{prefix}p_vs_none'))} / {_p(row.get(f'{prefix}p_vs_bn'))})"
    return f"{row[f'{metric}_mean']:.2f} ± {row[f'{metric}_std']:.2f}{pv}"


def markdown_table(report: dict[str, Any]) -> str:
    """One table: each metric (mean ± std over seeds) of each arm per target domain, with the
    paired p-values, adaptation seconds, images used and inference cost."""
    summary = report.get("summary", {})
    metrics = metrics_of(report)
    conds = [c for c in summary if c != "clean"]
    columns = [(c, m) for c in conds for m in metrics]
    lines = [
        _header(report, metrics),
        "",
        "| arm | "
        + " | ".join(f"{c} {METRIC_NAMES[m]} (p vs none / vs BN)" for c, m in columns)
        + " | adapt s | images | params | latency ratio |",
        "| --- | " + " | ".join("---" for _ in columns) + " | --- | --- | --- | --- |",
    ]
    cost = report.get("cost", {})
    for arm in ARMS:
        cells = []
        seconds, images = [], None
        for c, m in columns:
            row = summary[c].get(arm)
            if row is None:
                cells.append("n/a")
                continue
            if m == metrics[0]:
                seconds.append(row["adapt_s_mean"])
            images = row["images"]
            cells.append(_cell(row, m, m == metrics[0]))
        if not seconds:
            if arm in report["config"].get("arms", ()):
                blank = " | ".join("n/a (no BatchNorm)" for _ in columns)
                lines.append(f"| {ARM_NAMES[arm]} | {blank} | - | - | - | - |")
            continue
        c = cost.get(arm, {})
        params = c.get("params", "-")
        ratio = f"{c['latency_ratio']:.2f}" if "latency_ratio" in c else "-"
        lines.append(
            f"| {ARM_NAMES[arm]} | "
            + " | ".join(cells)
            + f" | {statistics.fmean(seconds):.2f} | {images} | {params} | {ratio} |"
        )
    lines += [f"\n{note}" for note in report.get("notes", [])]
    return "\n".join(lines) + "\n"


def write_reports(report: dict[str, Any], out: Path) -> None:
    """results.json and results.md."""
    write_json(report, Path(out))
    (Path(out) / "results.md").write_text(markdown_table(report))
