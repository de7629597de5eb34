"""Ablation the paper lacks: DenoiseRep variants against one control arm, over seeds.

Every seed trains one baseline and one control (same extra epochs, no DenoiseRep); each
variant overrides the DenoiseRep config and/or the fine-tuning schedule. The report gives each
variant's accuracy, its paired difference to the control (same seed, same data order), a
paired t-test, how many test predictions it changed relative to the baseline, and its mean
per-layer denoising strength.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

import denoiserep as dr
from denoiserep.engine.config import from_dict, to_dict
from denoiserep.engine.experiment import Variant
from denoiserep.engine.report import robustness_section, status_line, write_figures, write_json
from denoiserep.engine.trainer import TrainConfig
from denoiserep.tasks.contract import Task

from .task import ClassifyConfig, run_arms_for


@dataclass
class AblationConfig:
    """``experiment`` is a classification config; ``variants`` maps a name to overrides
    ``{denoise: {...}, finetune: {...}}`` of its DenoiseRep arm."""

    experiment: ClassifyConfig = field(default_factory=ClassifyConfig)
    variants: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    output: str = "runs/ablation"

    def __post_init__(self) -> None:
        if not self.variants:
            raise ValueError("variants must name at least one DenoiseRep variant")
        for name, v in self.variants.items():
            bad = set(v) - {"denoise", "finetune", "train_corruption"}
            if bad:
                raise ValueError(
                    f"variant {name}: unknown section(s) {sorted(bad)}; "
                    "valid: denoise, finetune, train_corruption"
                )


def variant_configs(cfg: AblationConfig, name: str) -> tuple[dr.DenoiseConfig, TrainConfig]:
    base = cfg.experiment
    v = cfg.variants[name]
    denoise = dr.DenoiseConfig.from_dict({**base.denoise.to_dict(), **v.get("denoise", {})})
    finetune = from_dict(
        TrainConfig,
        {**to_dict(base.finetune), **v.get("finetune", {})},
        f"variants.{name}.finetune",
    )
    return denoise, finetune


def compare(values: dict[str, list[float]], reference: str = "control") -> dict[str, dict]:
    """Per arm: mean, std, and paired difference to ``reference`` with a paired t-test."""
    ref = np.array(values[reference])
    out = {}
    for arm, vals in values.items():
        v = np.array(vals)
        diff = v - ref
        row = {
            "mean": float(v.mean()),
            "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "values": v.tolist(),
            "diff_mean": float(diff.mean()),
            "diff_std": float(diff.std(ddof=1)) if len(v) > 1 else 0.0,
            "p_value": None,
        }
        if arm != reference and len(v) > 1 and np.any(diff != diff[0]):
            row["p_value"] = float(stats.ttest_rel(v, ref).pvalue)
        row["beats_control"] = bool(
            row["diff_mean"] > 0 and row["p_value"] is not None and row["p_value"] < 0.05
        )
        out[arm] = row
    return out


def ablation_table(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """acc@1 per arm with the paired comparison to the control, from the seeds that have both."""
    per_seed = report["per_seed"]
    arms = [a for a in report["arms"] if all(a in r for r in per_seed.values())]
    if "control" not in arms:
        return {}
    table = compare({a: [r[a]["acc1"] for r in per_seed.values()] for a in arms})
    for arm in arms:
        for key, name in (("changed_pct", "changed_pct"), ("mean_strength", "strength")):
            values = [r[arm][key] for r in per_seed.values() if key in r[arm]]
            if values and arm not in ("baseline", "control"):
                table[arm][name] = float(np.mean(values))
    return table


ROBUST_KEYS = ("mCA", "mFA")


def robustness_comparison(report: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """Paired comparison to the control of every robustness number: mCA, mean feature-noise
    accuracy (mFA), each corruption family (mean over severities), each noise level and each
    quantization width."""
    per_seed = report["per_seed"]
    arms = [a for a in report["arms"] if all(a in r for r in per_seed.values())]
    if "control" not in arms or not per_seed:
        return {}
    first = next(iter(per_seed.values()))["control"]
    keys = [k for k in first if k in ROBUST_KEYS or k.endswith("_mean")]
    keys += [k for k in first if k.startswith(("feature_noise_", "feature_bits_"))]
    return {key: compare({a: [r[a][key] for r in per_seed.values()] for a in arms}) for key in keys}


def robustness_comparison_rows(report: dict[str, Any]) -> list[str]:
    """Markdown: per robustness number, each arm's paired difference to the control and p."""
    table = report.get("robust_paired") or {}
    if not table:
        return []
    arms = list(next(iter(table.values())))
    lines = [
        "",
        "Robustness, paired difference to the control (points, mean over seeds; p of a paired "
        "t-test; * = beats the control at p < 0.05):",
        "",
        "| measure | " + " | ".join(arms) + " |",
        "| --- |" + " --- |" * len(arms),
    ]
    for key, rows in table.items():
        cells = []
        for arm in arms:
            r = rows[arm]
            p = "" if r["p_value"] is None else f" (p {r['p_value']:.2f})"
            cells.append(f"{r['diff_mean']:+.2f}{p}{' *' if r['beats_control'] else ''}")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return lines


def write_reports(report: dict[str, Any], out: Path) -> None:
    """results.json (with the ``acc1`` comparison), results.md and ablation.png."""
    report["acc1"] = ablation_table(report)
    report["robust_paired"] = robustness_comparison(report)
    write_json(report, out)
    (out / "results.md").write_text(ablation_markdown(report))
    if report["acc1"]:
        plot(report, out / "ablation.png")
    write_figures(report, out, "acc1")


def unmatched_recalibration(cfg: AblationConfig, variants: list[Variant]) -> str | None:
    """A warning when some variants recalibrate BatchNorm and the control does not (or the
    reverse): their difference to the control then includes the recalibration itself."""
    control = cfg.experiment.finetune.recalibrate_bn
    odd = [v.name for v in variants if v.finetune.recalibrate_bn != control]
    if not odd:
        return None
    return (
        f"variant(s) {', '.join(odd)} set finetune.recalibrate_bn={not control}, the control "
        f"{control}: their difference to the control includes the recalibration; set "
        "experiment.finetune.recalibrate_bn to treat every arm alike"
    )


def run(cfg: AblationConfig, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train baseline + control once per seed, then every variant; write the reports."""
    variants = [
        Variant(name, *variant_configs(cfg, name), cfg.variants[name].get("train_corruption"))
        for name in cfg.variants
    ]
    mismatch = unmatched_recalibration(cfg, variants)
    if mismatch:
        warnings.warn(mismatch, stacklevel=2)
    exp = dataclasses.replace(cfg.experiment, arms=["control"], output=cfg.output)
    report, _ = run_arms_for(exp, overwrite, progress, cfg, write_reports, variants, "ablate")
    report["acc1"] = ablation_table(report)
    report["robust_paired"] = robustness_comparison(report)
    return report


def ablation_markdown(report: dict[str, Any]) -> str:
    """Markdown: accuracy, paired difference to control, p-value, changed predictions."""
    seeds = len(report["per_seed"])
    lines = [
        f"acc@1 (%) over {seeds} seeds; diff = paired difference to the control arm (same seed).",
        "",
        "| arm | acc@1 | diff vs control | paired t-test p | beats control | "
        "changed predictions vs baseline (%) | mean strength ‖k_t D‖/√C |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for arm, r in report["acc1"].items():
        p = "-" if r["p_value"] is None else f"{r['p_value']:.3f}"
        changed = f"{r['changed_pct']:.2f}" if "changed_pct" in r else "-"
        strength = f"{r['strength']:.2e}" if "strength" in r else "-"
        lines.append(
            f"| {arm} | {r['mean']:.2f} ± {r['std']:.2f} | {r['diff_mean']:+.2f} ± "
            f"{r['diff_std']:.2f} | {p} | {'yes' if r['beats_control'] else 'no'} | {changed} | "
            f"{strength} |"
        )
    if report.get("partial"):
        lines += ["", status_line(report)]
    lines += robustness_section(report, "acc1") + robustness_comparison_rows(report)
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {k: v for k, v in report["acc1"].items() if k != "control"}
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(rows)), 3.8))
    names = list(rows)
    ax.bar(
        names,
        [rows[n]["diff_mean"] for n in names],
        yerr=[rows[n]["diff_std"] for n in names],
        capsize=4,
        color=["tab:gray" if n == "baseline" else "tab:green" for n in names],
    )
    ax.axhline(0, color="black", lw=0.8)
    ax.set(ylabel="acc@1 minus control (points)", title="DenoiseRep variants vs control")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


TASK = Task(
    name="ablate",
    help="classification ablation: DenoiseRep variants against one control arm",
    Config=AblationConfig,
    run=run,
    table=ablation_markdown,
    default_config="ablation_fashion.yaml",
    report_files=("results.json", "results.md", "ablation.png"),
    writer=write_reports,
)
