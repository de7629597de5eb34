"""What every pipeline's report shares: the arms, their labels, mean ± std over seeds."""

from __future__ import annotations

from typing import Any

import numpy as np

ARMS = ("baseline", "control", "denoiserep")
ARM_LABELS = {
    "baseline": "baseline",
    "control": "control (same extra epochs, no DenoiseRep)",
    "denoiserep": "DenoiseRep (fused)",
}


def aggregate_seeds(per_seed: dict[int, dict[str, dict[str, float]]]) -> dict[str, dict[str, Any]]:
    """Per arm and metric: mean, std (ddof 1; 0 for one seed) and the per-seed values."""
    first = next(iter(per_seed.values()))
    summary: dict[str, dict[str, Any]] = {}
    for arm, metrics in first.items():
        summary[arm] = {}
        for m in metrics:
            values = np.array([per_seed[s][arm][m] for s in per_seed], dtype=float)
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


def cost_rows(report: dict[str, Any]) -> list[str]:
    """Markdown rows: parameters and inference latency of the fused model against the baseline."""
    return [
        f"| parameters baseline / fused | {report['params_baseline']:,} / "
        f"{report['params_fused']:,} |",
        f"| inference latency fused / baseline (batch {report['latency_batch']}) | "
        f"{report['latency_ratio_fused_over_baseline']:.3f} "
        f"({report['latency_ms_fused']:.2f} ms / {report['latency_ms_baseline']:.2f} ms) |",
    ]
