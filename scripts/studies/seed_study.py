"""What the seed-study scripts share (a helper, not a study: nothing to rerun).

The seeds of ``denoiserep ablate`` runs with their data loaded once per run, the models their
arms saved, and the paired comparison over seeds as a Markdown table: the tables of
docs/results/robustness.md and docs/results/training-cost.md that those scripts print.

Imported by ``bn_recalibration.py``, ``activation_quantization.py``, ``denoising_snr.py``,
``layer_noise.py``, ``patch_denoiser.py``, ``target_subsets.py``, ``pool_seeds.py`` and
``regression_precision.py`` (``scripts/studies`` is on ``sys.path`` when one of them runs).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from torch import nn
from torch.utils.data import DataLoader

import denoiserep as dr
from denoiserep.classification.ablation import compare
from denoiserep.classification.datasets import build_classification_data
from denoiserep.classification.task import materialize
from denoiserep.core.convert import select_targets
from denoiserep.models.factory import create_model
from denoiserep.util.state_dict import load_state_checked


def run_seeds(runs: Sequence[Path]) -> Iterator[tuple[dict[str, Any], Any, Path]]:
    """(experiment config, data sets held in memory, seed folder) for every seed of every run."""
    for run in runs:
        exp = yaml.safe_load((run / "config.yaml").read_text())["experiment"]
        data = exp["data"]
        sets = build_classification_data(data["name"], data.get("root"), **data.get("options", {}))
        sets.train, sets.test = materialize(sets.train), materialize(sets.test)
        for seed_dir in sorted(run.glob("seed*")):
            yield exp, sets, seed_dir


def saved_model(exp: dict[str, Any], sets: Any, arm_dir: Path) -> nn.Module:
    """The run's model, in eval mode, with the weights an arm saved in ``arm_dir``:
    ``model.safetensors`` (baseline, control) or ``fused.safetensors`` (DenoiseRep arms)."""
    kwargs = dict(exp["model"].get("kwargs") or {}, num_classes=sets.num_classes)
    model = create_model(exp["model"]["name"], in_chans=sets.in_chans, **kwargs).eval()
    weights = arm_dir / "model.safetensors"
    if not weights.exists():
        weights = arm_dir / "fused.safetensors"
    load_state_checked(model, weights)
    return model


def run_targets(exp: dict[str, Any], sets: Any, model: nn.Module) -> list[str]:
    """The run's target layers, as the pipelines choose them (names in the plain model; a
    ``main_path`` run finds them on the first test images, as the pipelines' probe does)."""
    probe = next(iter(DataLoader(sets.test, batch_size=2)))[0]
    return list(select_targets(model, dr.DenoiseConfig(**exp["denoise"]), probe))


def paired_cell(a: Sequence[float], b: Sequence[float]) -> str:
    """Mean of a - b over seeds, with the paired t-test's p: ``+1.23 (p 0.004)``."""
    row = compare({"a": list(a), "b": list(b)}, reference="b")["a"]
    p = row["p_value"]
    p_text = "" if p is None else f" (p {p:.3f})" if p >= 0.001 else " (p < 0.001)"
    return f"{row['diff_mean']:+.2f}{p_text}"


def mean_table(
    results: Sequence[dict[str, Sequence[float]]], names: Sequence[str], columns: Sequence[str]
) -> str:
    """One row per name: its mean score in every column over the seeds in ``results``."""
    lines = ["| model | " + " | ".join(columns) + " |", "| --- " * (len(columns) + 1) + "|"]
    for name in names:
        means = [sum(r[name][i] for r in results) / len(results) for i in range(len(columns))]
        lines.append(f"| {name} | " + " | ".join(f"{m:.2f}" for m in means) + " |")
    return "\n".join(lines)


def paired_table(
    results: Sequence[dict[str, Sequence[float]]],
    comparisons: Sequence[tuple[str, str]],
    columns: Sequence[str],
) -> str:
    """One row per (a, b) comparison: ``a − b`` in every column, over the seeds in ``results``
    (each a mapping of model name to its scores, one per column)."""
    lines = ["| comparison | " + " | ".join(columns) + " |", "| --- " * (len(columns) + 1) + "|"]
    for a, b in comparisons:
        cells = [
            paired_cell([r[a][i] for r in results], [r[b][i] for r in results])
            for i in range(len(columns))
        ]
        lines.append(f"| {a} − {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
