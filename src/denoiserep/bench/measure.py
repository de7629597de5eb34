"""Inference measurements of one model's variants: latency, peak memory, fusion and export.

Each function returns plain dicts that go into ``results.json`` unchanged; ratios are to the
``baseline`` variant (None where a value was not measured).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from denoiserep.engine.latency import time_interleaved
from denoiserep.models.factory import create_model
from denoiserep.util.errors import first_line

from .config import MB, BenchConfig
from .export import check_onnx, check_strict_reload, check_torch_export, export_onnx
from .memory import module_tensors, peak_memory, tensor_bytes


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on ``device`` when ``bf16``, else a no-op context."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def stats_ms(times: list[float]) -> dict[str, Any]:
    """Median and inter-quartile range (ms) of timings in seconds, and the timings in ms."""
    ms = np.array(times) * 1e3
    q25, q50, q75 = np.percentile(ms, [25, 50, 75])
    return {"median_ms": float(q50), "iqr_ms": float(q75 - q25), "times_ms": ms.tolist()}


def ratio(value: float | None, base: float | None) -> float | None:
    """``value / base``, or None when either is missing (or ``base`` is 0)."""
    return None if value is None or not base else value / base


def weights_with_other_strides(baseline: nn.Module, fused: nn.Module) -> list[str]:
    """Parameters whose memory layout (strides) differs between the two models.

    The layout decides which kernels run (e.g. oneDNN picks channels-last convolutions for a
    channels-last weight), so it can change latency without changing the architecture.
    """
    base = dict(baseline.named_parameters())
    return [n for n, p in fused.named_parameters() if p.stride() != base[n].stride()]


@torch.no_grad()
def max_abs_diff(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    """Largest absolute difference between the outputs of ``a`` and ``b`` on ``x``."""
    return (a(x).float() - b(x).float()).abs().max().item()


def fusion_check(variants: dict[str, nn.Module], x: torch.Tensor) -> dict[str, Any]:
    """Fused vs baseline (must differ) and vs explicit (must agree), and weight layouts."""
    check: dict[str, Any] = {}
    if "fused" in variants:
        fused, baseline = variants["fused"], variants["baseline"]
        check["max_abs_diff_fused_vs_baseline"] = max_abs_diff(fused, baseline, x)
        check["weights_with_other_strides"] = len(weights_with_other_strides(baseline, fused))
        if "explicit" in variants:
            check["max_abs_diff_fused_vs_explicit"] = max_abs_diff(fused, variants["explicit"], x)
    return check


def inference_at_batch(
    variants: dict[str, nn.Module], x: torch.Tensor, cfg: BenchConfig
) -> dict[str, dict[str, Any]]:
    """Latency (interleaved) and peak memory of every variant's forward on ``x``."""
    device = x.device

    def forward(model: nn.Module) -> Callable[[], Any]:
        def fn() -> Any:
            with torch.no_grad(), autocast(device, cfg.bf16):
                return model(x)

        return fn

    fns = {name: forward(model) for name, model in variants.items()}
    times = time_interleaved(fns, cfg.repeats, cfg.warmup, device, cfg.seed)
    rows = {name: stats_ms(ts) for name, ts in times.items()}
    for name, model in variants.items():
        peak = None
        if cfg.memory:
            static = tensor_bytes(module_tensors(model) + [x])
            peak = (static + peak_memory(fns[name], device)) / MB
        rows[name]["peak_mb"] = peak
    base = rows["baseline"]
    for row in rows.values():
        row["latency_ratio"] = ratio(row["median_ms"], base["median_ms"])
        row["peak_ratio"] = ratio(row["peak_mb"], base["peak_mb"])
    return rows


def _attempt(prefix: str, check: Callable[[], float]) -> dict[str, Any]:
    """``{prefix}_ok`` and ``{prefix}_max_abs_diff`` of a check; a failure is a result too."""
    try:
        return {f"{prefix}_ok": True, f"{prefix}_max_abs_diff": check()}
    except Exception as e:  # noqa: BLE001 - an export that fails is what we report
        error = f"{type(e).__name__}: {first_line(e)}"
        return {f"{prefix}_ok": False, f"{prefix}_max_abs_diff": None, f"{prefix}_error": error}


def export_checks(name: str, fused: nn.Module, cfg: BenchConfig, out: Path) -> dict[str, Any]:
    """ONNX (onnxruntime) max diff, torch.export success and diff, strict reload of ``fused``."""
    model = copy.deepcopy(fused).cpu().eval()
    example = torch.randn(1, 3, cfg.image_size, cfg.image_size)
    path = out / "onnx" / f"{name.replace(':', '_').replace('/', '_')}.onnx"
    record = {
        **_attempt("onnx", lambda: check_onnx(model, example, export_onnx(model, example, path))),
        **_attempt("torch_export", lambda: check_torch_export(model, example)),
    }
    fresh = create_model(name, **cfg.model_kwargs.get(name, {}))
    reloaded = check_strict_reload(model, fresh).eval()
    record["strict_reload_ok"] = True
    record["reload_max_abs_diff"] = max_abs_diff(reloaded, model, example)
    return record
