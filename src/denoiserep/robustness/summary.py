"""The comparison of arms' robustness results (ImageNet-C's mCA / mCE), tables and plots.

:func:`summarize_robustness` compares arms (results of
:func:`denoiserep.robustness.evaluate.evaluate_robustness`) on one metric: mean corrupted accuracy
(mCA, over corruptions and severities), corruption errors against the baseline arm as in
ImageNet-C, ``CE_c = sum_s E_arm,c,s / sum_s E_base,c,s`` with ``E = scale - metric``, their
mean (mCE, in %, baseline = 100), the relative mCE (errors minus each arm's clean error), and
the metric per feature-noise level and quantization width.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


def _mean(values: Iterable[float | None]) -> float | None:
    vals = list(values)
    if not vals or any(v is None for v in vals):
        return None
    return sum(vals) / len(vals)


def _get(metrics: dict[str, float], metric: str, where: str) -> float:
    if metric not in metrics:
        raise KeyError(f"metric {metric!r} missing in {where} (has {', '.join(metrics)})")
    return float(metrics[metric])


def _conditions(per_arm: dict[str, dict[str, Any]]) -> tuple[list, dict, list, list]:
    """(corruptions, severities per corruption, sigmas, bit widths) every arm shares."""
    first = next(iter(per_arm))
    ref = per_arm[first]
    corruptions = list(ref.get("corruptions", {}))
    severities = {c: list(ref["corruptions"][c]) for c in corruptions}
    sigmas = list(ref.get("feature_noise", {}))
    widths = list(ref.get("feature_bits", {}))
    for arm, res in per_arm.items():
        got = (
            list(res.get("corruptions", {})),
            {c: list(v) for c, v in res.get("corruptions", {}).items()},
            list(res.get("feature_noise", {})),
            list(res.get("feature_bits", {})),
        )
        if got != (corruptions, severities, sigmas, widths):
            raise ValueError(
                f"arm {arm!r} was evaluated under other conditions than arm {first!r}: "
                "rerun with the same RobustnessConfig"
            )
    return corruptions, severities, sigmas, widths


def _arm_row(
    arm: str, res: dict[str, Any], metric: str, conditions: tuple[list, dict, list, list]
) -> dict[str, Any]:
    """One arm's clean, mCA, per-corruption / per-severity means, feature noise and bits."""
    corruptions, severities, sigmas, widths = conditions
    clean = _get(res["clean"], metric, f"{arm}/clean")
    acc = {
        c: {s: _get(res["corruptions"][c][s], metric, f"{arm}/{c}/{s}") for s in severities[c]}
        for c in corruptions
    }
    all_sev = sorted({s for c in corruptions for s in severities[c]}, key=float)
    both = [
        res["corruptions"][c][s].get(f"both/{metric}") for c in corruptions for s in severities[c]
    ]
    row: dict[str, Any] = {
        "clean": clean,
        "mCA": _mean(v for c in corruptions for v in acc[c].values()),
        "corruption_acc": {c: _mean(acc[c].values()) for c in corruptions},
        "severity_acc": {s: _mean(acc[c][s] for c in corruptions if s in acc[c]) for s in all_sev},
        "CE": {},
        "relative_CE": {},
        "mCE": None,
        "relative_mCE": None,
        "feature_noise": {
            k: _get(res["feature_noise"][k], metric, f"{arm}/feature_noise/{k}") for k in sigmas
        },
        "feature_bits": {
            k: _get(res["feature_bits"][k], metric, f"{arm}/feature_bits/{k}") for k in widths
        },
    }
    row["mFA"] = _mean(row["feature_noise"].values())
    row["mCA_both"] = _mean(both) if both and None not in both else None
    return row


def _add_corruption_errors(
    row: dict[str, Any],
    errors: dict[str, list[float]],
    base_errors: dict[str, list[float]],
    base_clean_error: float,
    clean_error: float,
) -> None:
    """ImageNet-C's CE / mCE and relative CE / mCE of one arm against the baseline's errors
    (per corruption, one error per severity)."""
    for c, mine_per_severity in errors.items():
        base, mine, n = sum(base_errors[c]), sum(mine_per_severity), len(mine_per_severity)
        rel_base = base - n * base_clean_error
        rel_mine = mine - n * clean_error
        row["CE"][c] = 100.0 * mine / base if base > 0 else None
        row["relative_CE"][c] = 100.0 * rel_mine / rel_base if rel_base > 0 else None
    row["mCE"] = _mean(row["CE"].values())
    row["relative_mCE"] = _mean(row["relative_CE"].values())


def summarize_robustness(
    per_arm: dict[str, dict[str, Any]],
    metric: str,
    baseline: str = "baseline",
    scale: float = 100.0,
) -> dict[str, Any]:
    """Compare arms (results of :func:`evaluate_robustness`) on ``metric`` (higher is better,
    at most ``scale``: 100 for % accuracy / mAP, 1 for fractions).

    Per arm: ``clean``; ``mCA`` (mean over corruptions and severities); ``corruption_acc``
    (per corruption, mean over severities); ``severity_acc`` (per severity, mean over
    corruptions); ``CE`` / ``mCE`` and ``relative_CE`` / ``relative_mCE`` in % against the
    ``baseline`` arm as in ImageNet-C (None without a baseline arm, or where the baseline's
    summed error is 0); ``feature_noise`` (per sigma) and ``mFA`` (their mean);
    ``feature_bits`` (per bit width, empty when not evaluated); ``mCA_both``, the mCA with
    the gallery corrupted too (re-ID's ``both/`` scores, ``robustness.corrupt_gallery``), None
    where an arm lacks them (``"both"`` in the summary says whether every arm has them). Every
    arm must have the same corruptions, severities, sigmas and bit widths.
    """
    if not per_arm:
        raise ValueError("summarize_robustness: no arms")
    conditions = _conditions(per_arm)
    corruptions, severities, sigmas, widths = conditions

    def errors(arm: str) -> dict[str, list[float]]:
        return {
            c: [
                scale - _get(per_arm[arm]["corruptions"][c][s], metric, f"{arm}/{c}/{s}")
                for s in severities[c]
            ]
            for c in corruptions
        }

    arms: dict[str, Any] = {}
    for arm, res in per_arm.items():
        row = _arm_row(arm, res, metric, conditions)
        if baseline in per_arm:
            base_clean = scale - _get(per_arm[baseline]["clean"], metric, f"{baseline}/clean")
            _add_corruption_errors(
                row, errors(arm), errors(baseline), base_clean, scale - row["clean"]
            )
        arms[arm] = row
    return {
        "metric": metric,
        "baseline": baseline if baseline in per_arm else None,
        "scale": scale,
        "corruptions": corruptions,
        "severities": severities,
        "sigmas": sigmas,
        "bits": widths,
        "both": bool(arms) and all(row["mCA_both"] is not None for row in arms.values()),
        "arms": arms,
    }


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def robustness_table(summary: dict[str, Any]) -> str:
    """Markdown: one table of clean / mCA / mCE / relative mCE / feature-noise levels /
    quantized features per arm, and one of the metric per corruption (mean over severities, CE
    in parentheses)."""
    metric = summary["metric"]
    sigmas = summary["sigmas"]
    widths = summary.get("bits", [])
    both = bool(summary.get("both"))
    head = ["arm", f"clean {metric}", "mCA", "mCE (%)", "rel. mCE (%)"]
    head += ["mCA, gallery corrupted too"] if both else []
    head += [f"σ={s}" for s in sigmas] + (["mean σ"] if sigmas else [])
    head += [f"{b}-bit features" for b in widths]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for arm, row in summary["arms"].items():
        cells = [
            arm,
            _fmt(row["clean"]),
            _fmt(row["mCA"]),
            _fmt(row["mCE"], 1),
            _fmt(row["relative_mCE"], 1),
        ]
        cells += [_fmt(row.get("mCA_both"))] if both else []
        cells += [_fmt(row["feature_noise"][s]) for s in sigmas]
        cells += [_fmt(row["mFA"])] if sigmas else []
        cells += [_fmt(row.get("feature_bits", {}).get(b)) for b in widths]
        lines.append("| " + " | ".join(cells) + " |")
    corruptions = summary["corruptions"]
    if corruptions:
        lines += [
            "",
            f"{metric} per corruption (mean over severities; corruption error vs "
            f"{summary['baseline'] or 'no baseline'} in %, in parentheses):",
            "",
        ]
        head = ["arm", *corruptions]
        lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        for arm, row in summary["arms"].items():
            cells = [arm]
            for c in corruptions:
                ce = row["CE"].get(c)
                cells.append(
                    _fmt(row["corruption_acc"][c]) + ("" if ce is None else f" ({ce:.0f})")
                )
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_robustness(
    per_arm: dict[str, dict[str, Any]],
    path: str,
    metric: str | None = None,
    title: str | None = None,
) -> None:
    """The metric against severity (0 = clean), one line per arm, one panel per corruption,
    one panel against the feature-noise sigma (0 = clean) and one against the bits features
    are quantized to (clean at 32). ``metric`` defaults to the first metric of the first arm's
    clean results."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not per_arm:
        raise ValueError("plot_robustness: no arms")
    first = next(iter(per_arm.values()))
    metric = metric or next(iter(first["clean"]))
    corruptions = list(first.get("corruptions", {}))
    panels = [*corruptions]
    panels += ["feature_noise"] if first.get("feature_noise") else []
    panels += ["feature_bits"] if first.get("feature_bits") else []
    cols = min(4, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.4 * cols, 2.9 * nrows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, panel in zip(list(axes.flat)[: len(panels)], panels, strict=True):
        for arm, res in per_arm.items():
            clean = res["clean"].get(metric)
            if panel == "feature_noise":
                items = sorted(res["feature_noise"].items(), key=lambda kv: float(kv[0]))
                xs = [0.0] + [float(k) for k, _ in items]
            elif panel == "feature_bits":
                items = sorted(res["feature_bits"].items(), key=lambda kv: -int(kv[0]))
                xs = [32] + [int(k) for k, _ in items]
            else:
                items = sorted(res["corruptions"][panel].items(), key=lambda kv: int(kv[0]))
                xs = [0] + [int(k) for k, _ in items]
            ys = [clean] + [m.get(metric) for _, m in items]
            ax.plot(xs, [math.nan if y is None else y for y in ys], "o-", ms=3, label=arm)
        if panel == "feature_noise":
            ax.set_xlabel("feature noise σ (× input std)")
        elif panel == "feature_bits":
            ax.set_xscale("log", base=2)
            ax.set_xticks(xs, [str(x) for x in xs])
            ax.minorticks_off()
            ax.set_xlabel("bits per feature (32 = clean)")
        else:
            ax.set_xlabel("severity (0 = clean)")
            ax.set_xticks(range(0, 6))
        heading = panel.replace("_", " ")
        if panel == "feature_bits":
            static = (first.get("config") or {}).get("feature_ranges") == "static"
            heading = "quantized features" + (" (static ranges)" if static else "")
        ax.set_title(heading, fontsize=10)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
