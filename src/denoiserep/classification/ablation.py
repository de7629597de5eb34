"""Ablation the paper lacks: DenoiseRep variants against one control arm, over seeds.

Every seed trains one baseline and one control (same extra epochs, no DenoiseRep); each
variant overrides the DenoiseRep config and/or the fine-tuning schedule. The report gives each
variant's accuracy, its paired difference to the control (same seed, same data order), a
paired t-test, how many test predictions it changed relative to the baseline, and its mean
per-layer denoising strength.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import nn
from torch.utils.data import DataLoader

import denoiserep as dr
from denoiserep.engine import dist
from denoiserep.engine.config import from_dict, to_dict
from denoiserep.engine.runs import prepare_run_folder
from denoiserep.engine.trainer import TrainConfig

from .protocol import ClassifyConfig, Experiment, denoising_strength


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
            bad = set(v) - {"denoise", "finetune"}
            if bad:
                raise ValueError(
                    f"variant {name}: unknown section(s) {sorted(bad)}; valid: denoise, finetune"
                )


@torch.no_grad()
def predictions(model: nn.Module, exp: Experiment) -> torch.Tensor:
    model.eval()
    loader = DataLoader(exp.test_set, batch_size=exp.cfg.data.eval_batch_size)
    return torch.cat([model(x.to(exp.device)).argmax(-1).cpu() for x, _ in loader])


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


def run(cfg: AblationConfig, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train baseline + control once per seed, then every variant; write the reports."""
    exp = Experiment(cfg.experiment, progress)
    out = prepare_run_folder(cfg.output, to_dict(cfg), overwrite)
    acc: dict[str, list[float]] = {"baseline": [], "control": []}
    extra: dict[str, dict[str, list[float]]] = {}
    for seed in cfg.experiment.seeds:
        seed_dir = out / f"seed{seed}"
        baseline, _ = exp.baseline(seed, seed_dir / "baseline")
        base_pred = predictions(baseline, exp)
        control, _ = exp.control(baseline, seed, seed_dir / "control")
        acc["baseline"].append(exp.evaluate(baseline)["acc1"])
        acc["control"].append(exp.evaluate(control)["acc1"])
        for name in cfg.variants:
            denoise, finetune = variant_configs(cfg, name)
            model, fused, _ = exp.denoiserep(
                baseline, seed, seed_dir / name, denoise, finetune, tag=name
            )
            acc.setdefault(name, []).append(exp.evaluate(fused)["acc1"])
            changed = (predictions(fused, exp) != base_pred).float().mean().item() * 100
            strength = np.mean([r["strength"] for r in denoising_strength(model)])
            row = extra.setdefault(name, {"changed_pct": [], "strength": []})
            row["changed_pct"].append(changed)
            row["strength"].append(float(strength))
    table = compare(acc)
    for name, row in extra.items():
        table[name].update({k: float(np.mean(v)) for k, v in row.items()})
    report = {"config": to_dict(cfg), "device": str(exp.device), "acc1": table}
    if dist.is_main():
        (Path(out) / "results.json").write_text(json.dumps(report, indent=2))
        (Path(out) / "results.md").write_text(summarize(report))
        plot(report, Path(out) / "ablation.png")
    return report


def summarize(report: dict[str, Any]) -> str:
    """Markdown: accuracy, paired difference to control, p-value, changed predictions."""
    seeds = len(report["config"]["experiment"]["seeds"])
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


Config = AblationConfig
DEFAULT_CONFIG = "ablation_fashion.yaml"
