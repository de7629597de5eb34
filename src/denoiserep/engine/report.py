"""What every pipeline's report shares: arm labels, mean ± std over seeds, fusion-check rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

ARM_LABELS = {
    "baseline": "baseline",
    "control": "control (same extra epochs, no DenoiseRep)",
    "denoiserep": "DenoiseRep (fused)",
}


def arm_label(arm: str) -> str:
    """The table label of an arm (a DenoiseRep variant is named as it is)."""
    return ARM_LABELS.get(arm, arm)


def aggregate_seeds(per_seed: dict[Any, dict[str, dict[str, float]]]) -> dict[str, dict[str, Any]]:
    """Per arm and metric: mean, std (ddof 1; 0 for one seed) and the per-seed values.

    Arms are taken in the order they first appear; an arm missing from a seed (a run that
    stopped part-way) is aggregated over the seeds that have it.
    """
    summary: dict[str, dict[str, Any]] = {}
    for results in per_seed.values():
        for arm, metrics in results.items():
            for m in metrics:
                summary.setdefault(arm, {}).setdefault(m, [])
    for arm, metrics in summary.items():
        for m in metrics:
            values = np.array(
                [r[arm][m] for r in per_seed.values() if arm in r and m in r[arm]], dtype=float
            )
            std = values.std(ddof=1) if len(values) > 1 else 0.0
            summary[arm][m] = {
                "mean": float(values.mean()),
                "std": float(std),
                "values": values.tolist(),
            }
    return summary


def format_stat(stat: dict[str, Any], digits: int = 2) -> str:
    """``mean ± std`` over several seeds, the plain value for one."""
    if len(stat["values"]) > 1:
        return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"
    return f"{stat['mean']:.{digits}f}"


def metric_table(report: dict[str, Any], columns: dict[str, str]) -> list[str]:
    """Markdown rows: one per arm, the metrics named by ``columns`` (key -> header)."""
    lines = [
        "| arm | " + " | ".join(columns.values()) + " |",
        "| --- |" + " --- |" * len(columns),
    ]
    for arm, stats in report["summary"].items():
        cells = [format_stat(stats[key]) if key in stats else "-" for key in columns]
        lines.append(f"| {arm_label(arm)} | " + " | ".join(cells) + " |")
    return lines


def status_line(report: dict[str, Any]) -> str:
    """Seeds, device, and whether the run is still incomplete."""
    line = f"Seeds: {len(report['per_seed'])}. Device: {report['device']}."
    if report.get("partial"):
        done = sum(len(arms) for arms in report["per_seed"].values())
        line += f" PARTIAL: {done} arm(s) finished so far; the run has not completed."
    return line


def cost_rows(report: dict[str, Any]) -> list[str]:
    """Markdown rows: parameters and inference latency of the fused model against the baseline."""
    return [
        f"| parameters baseline / fused | {report['params_baseline']:,} / "
        f"{report['params_fused']:,} |",
        f"| inference latency fused / baseline (batch {report['latency_batch']}) | "
        f"{report['latency_ratio_fused_over_baseline']:.3f} "
        f"({report['latency_ms_fused']:.2f} ms / {report['latency_ms_baseline']:.2f} ms) |",
    ]


def fusion_rows(report: dict[str, Any], output: str = "output") -> list[str]:
    """The fusion-check table of the DenoiseRep arms (empty before one has finished)."""
    checks = [s for s in report["summary"].values() if "max_abs_diff_fused_unfused" in s]
    if not checks or "params_fused" not in report:
        return []
    diff = max(max(s["max_abs_diff_fused_unfused"]["values"]) for s in checks)
    change = max(max(s["max_abs_change_from_baseline"]["values"]) for s in checks)
    return [
        "",
        "| fusion check | value |",
        "| --- | --- |",
        f"| denoised layers | {report['denoised_layers']} |",
        f"| max abs(fused - unfused) {output} difference | {diff:.3g} |",
        f"| max abs change of non-denoiser weights from the baseline | {change:.3g} |",
        *cost_rows(report),
    ]


def write_json(report: dict[str, Any], out: Path) -> None:
    """results.json, written to a temporary file and renamed (never half-written)."""
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(out / "results.json")


def _mean_nested(items: list[Any]) -> Any:
    """Element-wise mean of equally shaped nested dicts with numeric leaves."""
    first = items[0]
    if isinstance(first, dict):
        return {k: _mean_nested([i[k] for i in items]) for k in first if k not in ("config",)}
    if isinstance(first, int | float) and not isinstance(first, bool):
        return float(np.mean(items))
    return first


def robustness_over_seeds(report: dict[str, Any]) -> dict[str, Any]:
    """Per arm, the robustness results averaged over the seeds that have that arm."""
    per_seed = report.get("robustness") or {}
    arms: dict[str, list] = {}
    for results in per_seed.values():
        for arm, res in results.items():
            arms.setdefault(arm, []).append(res)
    return {arm: _mean_nested(items) for arm, items in arms.items()}


def robustness_section(report: dict[str, Any], metric: str) -> list[str]:
    """Markdown: clean / mCA / mCE / feature-noise / quantized-feature table (mean over seeds),
    if measured."""
    per_arm = robustness_over_seeds(report)
    if not per_arm:
        return []
    from denoiserep.robustness.summary import robustness_table, summarize_robustness

    seeds = len(report["robustness"])
    first = next(iter(next(iter(report["robustness"].values())).values()))["config"]
    severities = ", ".join(str(s) for s in first["severities"])
    images = first.get("max_images") or "all"
    bits = first.get("feature_bits") or []
    over = "each sample's range"
    if first.get("feature_ranges") == "static":
        over = f"one range per layer (static, from {first['calibration_images']} training images)"
    quantized = f"; n-bit features: each target layer's input rounded to n bits over {over}"
    quantized = quantized if bits else ""
    return [
        "",
        f"Robustness ({metric}, mean over {seeds} seed(s), {images} test images; ImageNet-C "
        f"corruptions ({first['table']} parameters) at severities {severities}; feature noise "
        f"sigma relative to each target layer's input std, the same noise for every arm"
        f"{quantized}):",
        "",
        robustness_table(summarize_robustness(per_arm, metric)).rstrip("\n"),
    ]


def write_figures(report: dict[str, Any], out: Path, metric: str) -> None:
    """robustness.png (metric against severity / sigma) and spectrum_<arm>.png, if measured."""
    per_arm = robustness_over_seeds(report)
    if per_arm:
        from denoiserep.robustness.summary import plot_robustness

        plot_robustness(per_arm, str(out / "robustness.png"), metric=metric)
    if report.get("spectrum"):
        for arm, rows in report["spectrum"].items():
            plot_spectrum(rows, out / f"spectrum_{arm}.png", title=f"{arm_label(arm)}: k_t D")


def plot_spectrum(rows: list[dict[str, Any]], path: str, title: str | None = None) -> None:
    """Layer depth on the x axis; top: the band of eigenvalues (real parts) of k_t D, their mean
    and k_t; bottom: variance removed and relative change on data (when measured)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        raise ValueError("plot_spectrum: no layers")
    depth = [r.get("depth", i) for i, r in enumerate(rows)]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6.0, 0.12 * len(rows) + 4), 6.5))
    top.fill_between(
        depth,
        [r["eig_min"] for r in rows],
        [r["eig_max"] for r in rows],
        alpha=0.3,
        step="mid",
        label="eigenvalues of $k_t D$ (min..max, real part)",
    )
    top.plot(depth, [r["eig_mean_real"] for r in rows], "o-", ms=3, label="mean eigenvalue")
    top.plot(depth, [r["k_t"] for r in rows], "k--", lw=1, label="$k_t$ (eigenvalue if D = I)")
    top.axhline(0.0, color="grey", lw=0.5)
    top.set_ylabel("eigenvalue of $k_t D$")
    top.legend(fontsize=7, loc="upper left", framealpha=0.7)
    top.set_title(title or "learned reverse steps, by layer (execution order)")
    measured = [r for r in rows if r.get("variance_removed") is not None]
    if measured:
        d = [r.get("depth", 0) for r in measured]
        bottom.plot(
            d,
            [r["variance_removed"] for r in measured],
            "o-",
            ms=3,
            label="variance removed by $A_t$",
        )
        bottom.plot(
            d,
            [r["denoiser_variance_removed"] for r in measured],
            "s-",
            ms=3,
            label="variance removed by $I - k_t D$",
        )
        bottom.plot(
            d, [r["relative_change"] for r in measured], "^:", ms=3, label="$||A_t x - x|| / ||x||$"
        )
        bottom.axhline(0.0, color="grey", lw=0.5)
        bottom.legend(fontsize=8)
    else:
        bottom.text(0.5, 0.5, "not measured on data", ha="center", va="center")
    bottom.set_xlabel("layer depth (0 = first executed)")
    bottom.set_ylabel("share of the layer input")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
