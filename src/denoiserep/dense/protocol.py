"""The baseline / control / DenoiseRep protocol shared by detection and segmentation.

Per seed: train a baseline (or load ``baseline_weights``); CONTROL: fine-tune a copy for the
same epochs with the same optimizer and data order, without DenoiseRep; DENOISEREP: convert a
copy, fine-tune it under the phase schedule, fuse, and evaluate the plain fused model.
What differs between tasks (model, data, loss, metrics) comes in a :class:`Pipeline`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save_model
from torch import nn
from torch.utils.data import Dataset

import denoiserep as dr
from denoiserep.bench.latency import measure_latency
from denoiserep.classification.protocol import denoising_strength
from denoiserep.engine import dist
from denoiserep.engine.config import to_dict
from denoiserep.engine.report import ARM_LABELS, ARMS, aggregate_seeds, format_stat
from denoiserep.engine.trainer import TrainConfig, fit
from denoiserep.models.factory import num_parameters

from .canvas import FashionCanvas, build_fashion_canvas
from .models import load_weights

CANVAS_RECORD = "canvas.yaml"


def check_protocol_fields(cfg: Any) -> None:
    """Validate the fields :func:`run_arms` reads from a task config (see there)."""
    bad = [a for a in cfg.arms if a not in ARMS[1:]]
    if bad:
        raise ValueError(f"arms must be among {ARMS[1:]}, got {bad}")
    if "denoiserep" in cfg.arms and cfg.finetune.phases == "none":
        raise ValueError("finetune.phases must name a DenoiseRep schedule, not 'none'")
    if not cfg.seeds:
        raise ValueError("seeds must list at least one seed")
    if cfg.latency_repeats < 1:
        raise ValueError(f"latency_repeats must be >= 1, got {cfg.latency_repeats}")


@dataclass
class CanvasConfig:
    """A Fashion-MNIST canvas dataset (see ``build_fashion_canvas``), built on first use."""

    root: str = "data/fashion_canvas"
    fmnist_dir: str = "/usr/share/datasets/fashion-mnist"
    num_train: int = 2000
    num_val: int = 500
    canvas_size: int = 96
    objects_per_image: list[int] = field(default_factory=lambda: [2, 5])
    seed: int = 0


def ensure_canvas(cfg: CanvasConfig) -> FashionCanvas:
    """The canvas at ``cfg.root``, built there (atomically) if missing.

    The build parameters are recorded in ``canvas.yaml``; a folder built with other
    parameters, or a non-empty folder without that record, is an error rather than a
    silent mix of datasets.
    """
    root = Path(cfg.root)
    params = {k: v for k, v in to_dict(cfg).items() if k not in ("root", "fmnist_dir")}
    record = root / CANVAS_RECORD
    if dist.is_main() and not record.is_file():
        if root.exists() and any(root.iterdir()):
            raise ValueError(
                f"data folder {root} is not empty but holds no {CANVAS_RECORD}; "
                "remove it or set canvas.root to another folder"
            )
        tmp = root.with_name(root.name + ".building")
        shutil.rmtree(tmp, ignore_errors=True)
        build_fashion_canvas(
            tmp,
            cfg.fmnist_dir,
            num_train=cfg.num_train,
            num_val=cfg.num_val,
            canvas_size=cfg.canvas_size,
            objects_per_image=tuple(cfg.objects_per_image),
            seed=cfg.seed,
        )
        (tmp / CANVAS_RECORD).write_text(yaml.safe_dump(params, sort_keys=True))
        if root.exists():
            root.rmdir()
        tmp.rename(root)
    dist.barrier()
    built = yaml.safe_load(record.read_text())
    if built != params:
        keys = sorted(k for k in params if built.get(k) != params[k])
        raise ValueError(
            f"{root} holds a canvas built with other parameters ({', '.join(keys)}); "
            "set canvas.root to another folder or delete it"
        )
    return FashionCanvas(root)


@dataclass
class Pipeline:
    """What a dense task brings to the protocol.

    ``probe`` is a small batch the model accepts (``model(probe)``): it orders the layers for
    ``dr.convert``, checks fused against unfused outputs through ``features`` and measures
    latency. ``evaluate`` returns the task's metrics for a model (any mode; restored after).
    """

    build_model: Callable[[], nn.Module]
    train_set: Dataset
    task: Any
    evaluate: Callable[[nn.Module], dict[str, float]]
    probe: torch.Tensor
    features: Callable[[nn.Module, torch.Tensor], list[torch.Tensor]]
    collate_fn: Callable[[list], Any] | None = None


def probe_batch(dataset: Dataset, size: int = 2) -> torch.Tensor:
    """The first ``size`` images of ``dataset`` (items are (image, target)) that share the
    first one's shape, as one batch."""
    first = dataset[0][0]
    images = [first] + [dataset[i][0] for i in range(1, min(size, len(dataset)))]
    return torch.stack([im for im in images if im.shape == first.shape])


@torch.no_grad()
def fused_vs_unfused(
    converted: nn.Module, fused: nn.Module, features: Callable, probe: torch.Tensor
) -> float:
    """max |fused - unfused| over ``features``, where unfused denoises each input explicitly."""
    layers = dr.denoise_layers(converted).values()
    modes = converted.training, fused.training
    converted.eval()
    fused.eval()
    for layer in layers:
        layer.explicit = True
    try:
        pairs = zip(features(fused, probe), features(converted, probe), strict=True)
        return max((a.float() - b.float()).abs().max().item() for a, b in pairs)
    finally:
        for layer in layers:
            layer.explicit = False
        converted.train(modes[0])
        fused.train(modes[1])


def run_arms(
    cfg: Any, pipeline: Pipeline, out: Path, device: torch.device, progress: bool = True
) -> tuple[dict[str, Any], dict[str, nn.Module]]:
    """Run every seed of ``cfg`` and return (report, {arm: model of the first seed}).

    ``cfg`` provides ``baseline`` and ``finetune`` (TrainConfig), ``denoise``
    (DenoiseConfig), ``seeds``, ``arms``, ``baseline_weights`` and ``latency_repeats``. The
    returned models are the first seed's baseline, control and FUSED DenoiseRep models.
    """

    def train(model: nn.Module, train_cfg: TrainConfig, folder: Path, seed: int, tag: str):
        return fit(
            model,
            pipeline.train_set,
            train_cfg,
            pipeline.task,
            folder,
            seed,
            collate_fn=pipeline.collate_fn,
            tag=f"seed {seed} {tag}",
            progress=progress,
        )

    per_seed: dict[int, dict[str, dict[str, float]]] = {}
    histories: dict[str, dict[str, list]] = {}
    extras: dict[str, Any] = {}
    first: dict[str, nn.Module] = {}
    for seed in cfg.seeds:
        seed_dir = out / f"seed{seed}"
        torch.manual_seed(seed)
        models = {"baseline": pipeline.build_model().to(device)}
        hist: dict[str, list] = {}
        if cfg.baseline_weights:
            load_weights(models["baseline"], cfg.baseline_weights)
        else:
            hist["baseline"] = train(
                models["baseline"], cfg.baseline, seed_dir / "baseline", seed, "baseline"
            )
        results = {"baseline": pipeline.evaluate(models["baseline"])}
        if "control" in cfg.arms:
            models["control"] = copy.deepcopy(models["baseline"])
            plain = dataclasses.replace(cfg.finetune, phases="none", denoiser_epochs=0)
            hist["control"] = train(models["control"], plain, seed_dir / "control", seed, "control")
            results["control"] = pipeline.evaluate(models["control"])
        if "denoiserep" in cfg.arms:
            converted = dr.convert(
                copy.deepcopy(models["baseline"]), cfg.denoise, example_input=pipeline.probe
            )
            hist["denoiserep"] = train(
                converted, cfg.finetune, seed_dir / "denoiserep", seed, "denoiserep"
            )
            fused = models["denoiserep"] = dr.fuse(converted).to(device)
            results["denoiserep"] = pipeline.evaluate(fused)
            results["denoiserep"]["max_abs_diff_fused_unfused"] = fused_vs_unfused(
                converted, fused, pipeline.features, pipeline.probe
            )
            if dist.is_main():
                save_model(fused, str(seed_dir / "denoiserep" / "fused.safetensors"))
            if not extras:
                latency = measure_latency(
                    {"baseline": models["baseline"], "fused": fused},
                    pipeline.probe,
                    repeats=cfg.latency_repeats,
                )
                extras = {
                    "denoised_layers": len(dr.denoise_layers(converted)),
                    "params_baseline": num_parameters(models["baseline"]),
                    "params_fused": num_parameters(fused),
                    "latency_ms_baseline": 1e3 * latency["baseline"],
                    "latency_ms_fused": 1e3 * latency["fused"],
                    "latency_ratio_fused_over_baseline": latency["fused"] / latency["baseline"],
                    "strength": denoising_strength(converted),
                }
        per_seed[seed] = results
        histories[str(seed)] = hist
        first = first or models
    report = {
        "config": to_dict(cfg),
        "device": str(device),
        "per_seed": {str(s): r for s, r in per_seed.items()},
        "summary": aggregate_seeds(per_seed),
        "histories": histories,
        **extras,
    }
    return report, first


def markdown_table(report: dict[str, Any], columns: dict[str, str]) -> str:
    """Per arm, the metrics named by ``columns`` (key -> header), then the fusion checks."""
    summary = report["summary"]
    lines = [
        "| arm | " + " | ".join(columns.values()) + " |",
        "| --- |" + " --- |" * len(columns),
    ]
    for arm, stats in summary.items():
        cells = [format_stat(stats[key]) for key in columns]
        lines.append(f"| {ARM_LABELS[arm]} | " + " | ".join(cells) + " |")
    lines += ["", f"Seeds: {len(report['per_seed'])}. Device: {report['device']}."]
    if "denoiserep" in summary:
        diff = max(summary["denoiserep"]["max_abs_diff_fused_unfused"]["values"])
        lines += [
            "",
            "| fusion check | value |",
            "| --- | --- |",
            f"| denoised layers | {report['denoised_layers']} |",
            f"| max abs(fused - unfused) feature difference | {diff:.3g} |",
            f"| parameters baseline / fused | {report['params_baseline']:,} / "
            f"{report['params_fused']:,} |",
            f"| inference latency fused / baseline | "
            f"{report['latency_ratio_fused_over_baseline']:.3f} "
            f"({report['latency_ms_fused']:.2f} ms / {report['latency_ms_baseline']:.2f} ms) |",
        ]
    return "\n".join(lines) + "\n"


def write_results(report: dict[str, Any], out: Path, columns: dict[str, str]) -> None:
    """results.json (everything) and results.md (the table of ``markdown_table``)."""
    (out / "results.json").write_text(json.dumps(report, indent=2))
    (out / "results.md").write_text(markdown_table(report, columns))
