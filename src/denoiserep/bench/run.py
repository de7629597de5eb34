"""``denoiserep bench``: what DenoiseRep costs at inference and in training.

Inference, per model and batch size, four variants (paper Figure 1; the method: docs/method.md):

* ``baseline``: the plain model;
* ``fused``: ``dr.fuse`` of a converted copy with random non-trivial denoisers (Figure 1(d));
* ``explicit``: the converted model denoising every layer's input explicitly (Figure 1(c));
* ``final_feature``: T reverse steps on the pooled feature after the backbone (Figure 1(b)).

For each: parameters, FLOPs per image, latency (median of interleaved runs after warm-up) and
peak memory. Training: time per optimisation step and peak memory of DenoiseRep training in
each phase against plain training of the same model on the same batch. Optionally, each fused
model is exported to ONNX (checked with onnxruntime), through ``torch.export``, and reloaded
strictly into a fresh model. Writes results.json, results.md and bench.png.

This module runs the measurements and holds the command-line contract; the pieces live in
``config`` (what to measure), ``variants``, ``measure`` (inference, fusion, export),
``training``, ``report`` (Markdown, targets) and ``plot`` (bench.png).
"""

from __future__ import annotations

import contextlib
import json
import platform
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

import denoiserep as dr
from denoiserep.engine.config import to_dict
from denoiserep.engine.dist import resolve_device
from denoiserep.engine.runs import prepare_run_folder
from denoiserep.tasks.contract import Task

from .config import (
    DEFAULT_MODELS,
    LATENCY_TOLERANCE,
    MB,
    PHASES,
    TRAIN_MEMORY_LIMIT,
    TRAIN_STEP_LIMIT,
    VARIANTS,
    BenchConfig,
    TrainBenchConfig,
)
from .flops import count_flops, count_parameters
from .measure import (
    export_checks,
    fusion_check,
    inference_at_batch,
    weights_with_other_strides,
)
from .memory import memory_method
from .plot import plot_report
from .report import evaluate_targets, markdown_report
from .training import training_cost
from .variants import build_variants, randomize_denoisers, randomize_final_feature

__all__ = [  # the names this module has always offered, wherever they now live
    "DEFAULT_MODELS",
    "LATENCY_TOLERANCE",
    "MB",
    "PHASES",
    "TRAIN_MEMORY_LIMIT",
    "TRAIN_STEP_LIMIT",
    "VARIANTS",
    "BenchConfig",
    "TrainBenchConfig",
    "bench_model",
    "build_variants",
    "evaluate_targets",
    "export_checks",
    "inference_at_batch",
    "markdown_report",
    "measurements_per_model",
    "plot_report",
    "randomize_denoisers",
    "randomize_final_feature",
    "resolve_device",
    "run_bench",
    "training_cost",
    "weights_with_other_strides",
]


def measurements_per_model(cfg: BenchConfig) -> int:
    """How many progress-bar steps :func:`bench_model` makes."""
    n = 2 + len(cfg.batch_sizes) + int(cfg.export)
    if cfg.train.enabled:
        n += 3 + int(cfg.train.profile_top > 0)
    return n


def bench_model(
    name: str, cfg: BenchConfig, device: torch.device, out: Path, bar: tqdm
) -> dict[str, Any]:
    """Every measurement of one model."""

    @contextlib.contextmanager
    def tick(label: str) -> Iterator[None]:
        bar.set_description(f"{name}: {label}")
        yield
        bar.update(1)

    start = time.perf_counter()
    with tick("build variants"):
        variants, converted = build_variants(name, cfg, device)
    x1 = torch.randn(1, 3, cfg.image_size, cfg.image_size, device=device)
    with tick("parameters and FLOPs"):
        report: dict[str, Any] = {
            "denoise_layers": len(dr.denoise_layers(converted)),
            "params": {v: count_parameters(m) for v, m in variants.items()},
            "gflops_per_image": {v: count_flops(m, x1) / 1e9 for v, m in variants.items()},
            "fusion_check": fusion_check(variants, x1),
        }
    report["inference"] = {}
    for batch in cfg.batch_sizes:
        with tick(f"inference batch {batch}"):
            x = torch.randn(batch, 3, cfg.image_size, cfg.image_size, device=device)
            report["inference"][str(batch)] = inference_at_batch(variants, x, cfg)
    if cfg.train.enabled:
        report["train"] = training_cost(variants["baseline"], converted, cfg, tick)
    if cfg.export:
        if "fused" not in variants:
            raise ValueError("export needs the 'fused' variant in variants")
        with tick("export"):
            report["export"] = export_checks(name, variants["fused"], cfg, out)
    report["wall_s"] = time.perf_counter() - start
    return report


def _environment(device: torch.device, threads: int) -> dict[str, Any]:
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": threads,
        "memory_method": memory_method(device),
    }


def run_bench(cfg: BenchConfig, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run every measurement of ``cfg``; write results.json / results.md / bench.png."""
    device = resolve_device(cfg.device)
    out = prepare_run_folder(cfg.output, to_dict(cfg), overwrite, type(cfg))
    threads = torch.get_num_threads()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    start = time.perf_counter()
    try:
        total = measurements_per_model(cfg) * len(cfg.models)
        with tqdm(total=total, unit="measurement", disable=not progress, dynamic_ncols=True) as bar:
            models = {name: bench_model(name, cfg, device, out, bar) for name in cfg.models}
        threads_used = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)
    report = {
        "config": to_dict(cfg),
        "environment": _environment(device, threads_used),
        "models": models,
        "targets": evaluate_targets(models),
        "wall_s": time.perf_counter() - start,
    }
    (out / "results.json").write_text(json.dumps(report, indent=2))
    (out / "results.md").write_text(markdown_report(report))
    plot_report(report, out / "bench.png")
    return report


TASK = Task(
    name="bench",
    help="inference/training cost of fused vs baseline models",
    Config=BenchConfig,
    run=run_bench,
    table=markdown_report,
    default_config="bench.yaml",
    report_files=("results.json", "results.md", "bench.png"),
    writer=None,  # results.md and bench.png are written by the run; `report` cannot rebuild them
)
