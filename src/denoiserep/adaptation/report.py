"""The ``adapt`` report: accuracy per arm and target domain over seeds, paired tests, cost."""

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


def aggregate(per_seed: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per target domain and arm: mean / std of acc1 over seeds, adaptation seconds, images,
    and the paired p-values against no adaptation and BN re-estimation (same seeds)."""
    seeds = sorted(per_seed)
    conditions = [k for k in per_seed[seeds[0]] if k != "clean_acc1"]
    summary: dict[str, dict[str, Any]] = {}
    for cond in conditions:
        rows = {}
        arms = [a for a in ARMS if all(a in per_seed[s].get(cond, {}) for s in seeds)]
        accs = {a: [per_seed[s][cond][a]["acc1"] for s in seeds] for a in arms}
        for arm in arms:
            row = {
                "acc1_mean": statistics.fmean(accs[arm]),
                "acc1_std": statistics.stdev(accs[arm]) if len(seeds) > 1 else 0.0,
                "adapt_s_mean": statistics.fmean(per_seed[s][cond][arm]["adapt_s"] for s in seeds),
                "images": per_seed[seeds[0]][cond][arm]["images"],
                "seeds": len(seeds),
            }
            for ref in REFERENCES:
                if ref in accs and ref != arm:
                    row[f"p_vs_{ref}"] = paired_p(accs[arm], accs[ref])
            rows[arm] = row
        summary[cond] = rows
    clean = [per_seed[s]["clean_acc1"] for s in seeds]
    summary["clean"] = {"none": {"acc1_mean": statistics.fmean(clean), "seeds": len(seeds)}}
    return summary


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def markdown_table(report: dict[str, Any]) -> str:
    """One table: accuracy (mean ± std over seeds) of each arm per target domain, with the
    paired p-values, adaptation seconds, images used and inference cost."""
    summary = report.get("summary", {})
    conds = [c for c in summary if c != "clean"]
    m = report["config"]["model"]["name"]
    clean = summary.get("clean", {}).get("none", {}).get("acc1_mean")
    lines = [
        f"label-free adaptation of {m} ({report['config']['data']['name']}): "
        f"{report['target_images']} unlabelled target images, {report['test_images']} test "
        f"images per target domain, {len(report.get('per_seed', {}))} seed(s); clean top-1 "
        f"of the source model {'-' if clean is None else f'{clean:.2f}'}",
        "",
        "| arm | "
        + " | ".join(f"{c} top-1 (p vs none / vs BN)" for c in conds)
        + " | adapt s | images | params | latency ratio |",
        "| --- | " + " | ".join("---" for _ in conds) + " | --- | --- | --- | --- |",
    ]
    cost = report.get("cost", {})
    for arm in ARMS:
        cells = []
        seconds, images = [], None
        for c in conds:
            row = summary[c].get(arm)
            if row is None:
                cells.append("n/a")
                continue
            seconds.append(row["adapt_s_mean"])
            images = row["images"]
            pv = f" ({_p(row.get('p_vs_none'))} / {_p(row.get('p_vs_bn'))})"
            cells.append(f"{row['acc1_mean']:.2f} ± {row['acc1_std']:.2f}{pv}")
        if not seconds:
            if arm in report["config"].get("arms", ()):
                blank = " | ".join("n/a (no BatchNorm)" for _ in conds)
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
