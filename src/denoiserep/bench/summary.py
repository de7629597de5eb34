"""One training-cost table over several bench runs, in the shape of the training-cost issue.

``scripts/gpu_check.sh`` leaves one bench folder per model and per lever, all packed in
``results_json.tar.gz``; this reads them back (a folder of run folders, or that archive) and
puts every model's phases side by side: baseline step, each phase's step and the joint
step's memory and FLOPs as multiples of the baseline's, the share of the joint step the GPU
spent in kernels, and whether the targets were met. Each run is labelled with the levers
its config turned on, so the rows of a lever sit beside the default's.

    .venv/bin/python scripts/bench_summary.py OUT/results_json.tar.gz
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .config import TRAIN_MEMORY_LIMIT, TRAIN_STEP_LIMIT


def load_runs(path: str | Path) -> dict[str, dict[str, Any]]:
    """``{run name: results.json}`` from a folder of bench run folders, a single run folder,
    or a ``.tar.gz`` of ``<run>/results.json`` files."""
    path = Path(path)
    runs: dict[str, dict[str, Any]] = {}
    if path.is_file():
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                if member.isfile() and member.name.endswith("results.json"):
                    name = Path(member.name).parent.name or path.stem
                    runs[name] = json.load(tar.extractfile(member))
    elif (path / "results.json").is_file():
        runs[path.name] = json.loads((path / "results.json").read_text())
    else:
        for file in sorted(path.glob("*/results.json")):
            runs[file.parent.name] = json.loads(file.read_text())
    if not runs:
        raise FileNotFoundError(f"no results.json in {path}")
    return dict(sorted(runs.items()))


def levers(config: Mapping[str, Any]) -> str:
    """The cost levers a bench config turned on, e.g. ``batch_loss, D: adafactor`` (the
    bench's defaults, 256 regression tokens included, are ``default``)."""
    denoise, train = config.get("denoise", {}), config.get("train", {})
    on = []
    if denoise.get("targets", "all") != "all":
        on.append(f"targets: {denoise['targets']}")
    tokens = denoise.get("loss_tokens", 256)
    if tokens != 256:  # the bench's own default
        on.append(f"loss_tokens: {tokens or 'all'}")
    if denoise.get("batch_loss"):
        on.append("batch_loss")
    if denoise.get("loss_dtype", "float32") != "float32":
        on.append(f"D·x_t: {denoise['loss_dtype']}")
    if train.get("denoiser_optimizer", "same") != "same":
        on.append(f"D: {train['denoiser_optimizer']}")
    if train.get("fused_optimizer") is False:  # runs before the key existed were unfused too
        on.append("AdamW unfused")
    if train.get("compile"):
        on.append("compiled")
    if train.get("grad_checkpointing"):
        on.append("checkpointed")
    return ", ".join(on) or "default"


def _ratio(row: Mapping[str, Any] | None, key: str, limit: float | None = None) -> str:
    if row is None or row.get(key) is None:
        return "-"
    value = row[key]
    return f"**{value:.2f}**" if limit is not None and value > limit else f"{value:.2f}"


def cost_table(runs: Mapping[str, Mapping[str, Any]]) -> str:
    """The Markdown table: one row per (run, model) that trained; bold: a target missed."""
    lines = [
        "| model | run | levers | batch | baseline step ms | denoiser × | backbone × | joint × "
        "| joint peak memory × | joint GFLOPs × | joint kernel time % of step |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    environments = set()
    for run, results in runs.items():
        env = results.get("environment", {})
        environments.add(
            f"{env.get('device_name') or env.get('device', '?')}, torch {env.get('torch', '?')}, "
            f"bf16 {results.get('config', {}).get('bf16', False)}"
        )
        for model, rep in results.get("models", {}).items():
            train = rep.get("train")
            if not train:
                continue
            phases = train["variants"]
            joint = phases.get("joint")
            kernel = "-"
            if joint and joint.get("kernel_ms") is not None:
                kernel = f"{100 * joint['kernel_ms'] / joint['median_ms']:.0f}"
            cells = [
                model,
                run,
                levers(results.get("config", {})),
                str(train.get("batch_size", "-")),
                f"{phases['baseline']['median_ms']:.1f}",
                *(
                    _ratio(phases.get(p), "step_ratio", TRAIN_STEP_LIMIT[p])
                    for p in ("denoiser", "backbone", "joint")
                ),
                _ratio(joint, "peak_ratio", TRAIN_MEMORY_LIMIT),
                _ratio(joint, "gflops_ratio"),
                kernel,
            ]
            lines.append("| " + " | ".join(cells) + " |")
    header = [f"Measured on: {e}" for e in sorted(environments)]
    return "\n".join([*header, "", *lines])
