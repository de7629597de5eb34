"""``denoiserep bench``: what DenoiseRep costs at inference and in training.

Inference, per model and batch size, four variants (DESIGN.md section 1, paper Figure 1):

* ``baseline``: the plain model;
* ``fused``: ``dr.fuse`` of a converted copy with random non-trivial denoisers (Figure 1(d));
* ``explicit``: the converted model denoising every layer's input explicitly (Figure 1(c));
* ``final_feature``: T reverse steps on the pooled feature after the backbone (Figure 1(b)).

For each: parameters, FLOPs per image, latency (median of interleaved runs after warm-up) and
peak memory. Training: time per optimisation step and peak memory of DenoiseRep training in
each phase against plain training of the same model on the same batch. Optionally, each fused
model is exported to ONNX (checked with onnxruntime), through ``torch.export``, and reloaded
strictly into a fresh model. Writes results.json, results.md and bench.png.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

import denoiserep as dr
from denoiserep.engine.config import to_dict
from denoiserep.engine.optim import build_optimizer
from denoiserep.engine.runs import prepare_run_folder
from denoiserep.models.factory import create_model

from .export import check_onnx, check_strict_reload, check_torch_export, export_onnx
from .final_feature import FinalFeatureDenoiser
from .flops import count_flops, count_parameters, flops_of
from .latency import time_interleaved
from .memory import memory_method, module_tensors, optimizer_tensors, peak_memory, tensor_bytes

VARIANTS = ("baseline", "fused", "explicit", "final_feature")
PHASES = ("denoiser", "backbone", "joint")
DEFAULT_MODELS = ("vit_small_patch16_224", "resnet50", "swin_tiny_patch4_window7_224")
LATENCY_TOLERANCE = 0.03  # target: fused / baseline inference latency within 1 +- this
TRAIN_STEP_LIMIT = 1.3  # target: DenoiseRep train step <= this x baseline
TRAIN_MEMORY_LIMIT = 1.3  # target: DenoiseRep training peak memory <= this x baseline
MB = 2**20


@dataclass
class TrainBenchConfig:
    """The training-cost measurement: one batch, ``warmup`` + ``steps`` steps per variant."""

    enabled: bool = True
    batch_size: int = 32
    steps: int = 5
    warmup: int = 1
    phases: list[str] = field(default_factory=lambda: list(PHASES))
    lr: float = 1e-4
    weight_decay: float = 0.05
    profile_top: int = 0

    def __post_init__(self) -> None:
        bad = [p for p in self.phases if p not in PHASES]
        if bad:
            raise ValueError(f"train.phases must be among {PHASES}, got {bad}")
        if self.batch_size < 1 or self.steps < 1 or self.warmup < 1:
            raise ValueError(
                "train.batch_size, train.steps and train.warmup must be >= 1 (the first warm-up "
                f"step counts FLOPs), got {self.batch_size}, {self.steps}, {self.warmup}"
            )


@dataclass
class BenchConfig:
    """Everything one ``denoiserep bench`` run measures.

    ``model_kwargs`` maps a model name to keyword overrides for ``create_model``;
    ``final_feature_steps`` = 0 runs all ``denoise.timesteps`` steps; ``threads`` > 0 sets
    torch's intra-op threads for the run (0 leaves the default).
    """

    models: list[str] = field(default_factory=lambda: list(DEFAULT_MODELS))
    model_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    image_size: int = 224
    batch_sizes: list[int] = field(default_factory=lambda: [1, 32])
    repeats: int = 10
    warmup: int = 2
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    final_feature_steps: int = 0
    denoise: dr.DenoiseConfig = field(default_factory=lambda: dr.DenoiseConfig(loss_fraction=0.25))
    denoiser_strength: float = 0.1
    train: TrainBenchConfig = field(default_factory=TrainBenchConfig)
    device: str = "cpu"
    bf16: bool = False
    threads: int = 0
    memory: bool = True
    export: bool = False
    seed: int = 0
    output: str = "runs/bench"

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("models must name at least one model")
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad or "baseline" not in self.variants:
            raise ValueError(f"variants must include 'baseline' and be among {VARIANTS}")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError(f"batch_sizes must be positive, got {self.batch_sizes}")
        if self.repeats < 1 or self.warmup < 0:
            raise ValueError(f"need repeats >= 1, warmup >= 0; got {self.repeats}, {self.warmup}")
        if not 0 <= self.final_feature_steps <= self.denoise.timesteps:
            raise ValueError(
                f"final_feature_steps must be in 0..{self.denoise.timesteps} (0: all), "
                f"got {self.final_feature_steps}"
            )
        unknown = sorted(set(self.model_kwargs) - set(self.models))
        if unknown:
            raise ValueError(f"model_kwargs names model(s) not in models: {', '.join(unknown)}")


# -- building the variants ----------------------------------------------------------------------
def randomize_denoisers(model: nn.Module, strength: float, seed: int) -> None:
    """Random denoisers whose reverse step moves each layer's input by about ``strength``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in dr.denoise_layers(model).values():
            c_in, cg = layer.D.shape
            noise = torch.randn(c_in, cg, generator=g, dtype=torch.float64)
            layer.D.copy_(noise * strength / (layer.strength * math.sqrt(cg)))


def randomize_final_feature(model: FinalFeatureDenoiser, strength: float, seed: int) -> None:
    """A random noise predictor whose T steps together move the feature by about ``strength``."""
    g = torch.Generator().manual_seed(seed)
    weight = model.predictor.weight
    total_k = sum(model.strength(t) for t in model.timesteps())
    noise = torch.randn(weight.shape, generator=g, dtype=torch.float64)
    with torch.no_grad():
        weight.copy_(noise * strength / (total_k * math.sqrt(weight.shape[1])))


def _is_timm_classifier(model: nn.Module) -> bool:
    return all(hasattr(model, a) for a in ("get_classifier", "reset_classifier", "num_features"))


def build_variants(
    name: str, cfg: BenchConfig, device: torch.device
) -> tuple[dict[str, nn.Module], nn.Module]:
    """The inference variants of ``cfg.variants`` for one model, and the converted model."""
    torch.manual_seed(cfg.seed)
    baseline = create_model(name, **cfg.model_kwargs.get(name, {})).to(device).eval()
    example = torch.randn(1, 3, cfg.image_size, cfg.image_size, device=device)
    converted = dr.convert(copy.deepcopy(baseline), cfg.denoise, example_input=example)
    randomize_denoisers(converted, cfg.denoiser_strength, cfg.seed)
    converted.eval()
    variants: dict[str, nn.Module] = {"baseline": baseline}
    if "fused" in cfg.variants:
        variants["fused"] = dr.fuse(converted).eval()
    if "explicit" in cfg.variants:
        explicit = copy.deepcopy(converted).eval()
        for layer in dr.denoise_layers(explicit).values():
            layer.explicit = True
        variants["explicit"] = explicit
    if "final_feature" in cfg.variants:
        if not _is_timm_classifier(baseline):
            raise ValueError(
                f"variant final_feature needs a timm classifier (get_classifier, "
                f"reset_classifier, num_features); {name} is not one: drop it from variants"
            )
        schedule = cfg.denoise.build_schedule()
        final = FinalFeatureDenoiser.from_timm(baseline, schedule, cfg.final_feature_steps or None)
        randomize_final_feature(final, cfg.denoiser_strength, cfg.seed)
        variants["final_feature"] = final.to(device).eval()
    return variants, converted


# -- measurements ---------------------------------------------------------------------------------
def _autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def _stats_ms(times: list[float]) -> dict[str, Any]:
    ms = np.array(times) * 1e3
    q25, q50, q75 = np.percentile(ms, [25, 50, 75])
    return {"median_ms": float(q50), "iqr_ms": float(q75 - q25), "times_ms": ms.tolist()}


def _ratio(value: float | None, base: float | None) -> float | None:
    return None if value is None or not base else value / base


def weights_with_other_strides(baseline: nn.Module, fused: nn.Module) -> list[str]:
    """Parameters whose memory layout (strides) differs between the two models.

    The layout decides which kernels run (e.g. oneDNN picks channels-last convolutions for a
    channels-last weight), so it can change latency without changing the architecture.
    """
    base = dict(baseline.named_parameters())
    return [n for n, p in fused.named_parameters() if p.stride() != base[n].stride()]


@torch.no_grad()
def _max_abs_diff(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    return (a(x).float() - b(x).float()).abs().max().item()


def inference_at_batch(
    variants: dict[str, nn.Module], x: torch.Tensor, cfg: BenchConfig
) -> dict[str, dict[str, Any]]:
    """Latency (interleaved) and peak memory of every variant's forward on ``x``."""
    device = x.device

    def forward(model: nn.Module) -> Callable[[], Any]:
        def fn() -> Any:
            with torch.no_grad(), _autocast(device, cfg.bf16):
                return model(x)

        return fn

    fns = {name: forward(model) for name, model in variants.items()}
    times = time_interleaved(fns, cfg.repeats, cfg.warmup, device, cfg.seed)
    rows = {name: _stats_ms(ts) for name, ts in times.items()}
    for name, model in variants.items():
        peak = None
        if cfg.memory:
            static = tensor_bytes(module_tensors(model) + [x])
            peak = (static + peak_memory(fns[name], device)) / MB
        rows[name]["peak_mb"] = peak
    base = rows["baseline"]
    for row in rows.values():
        row["latency_ratio"] = _ratio(row["median_ms"], base["median_ms"])
        row["peak_ratio"] = _ratio(row["peak_mb"], base["peak_mb"])
    return rows


def _train_step(
    model: nn.Module,
    phase: str | None,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: BenchConfig,
) -> tuple[Callable[[], None], torch.optim.Optimizer]:
    """One optimisation step as the engine's trainer does it (phase None: plain training)."""
    optimizer = build_optimizer(model, "adamw", cfg.train.lr, cfg.train.weight_decay)
    lam = cfg.denoise.loss_weight

    def step() -> None:
        if phase == "denoiser":
            dr.train_frozen_backbone(model)
        else:
            model.train()
        optimizer.zero_grad(set_to_none=True)
        with _autocast(x.device, cfg.bf16):
            output = model(x)
            loss = lam * dr.denoise_loss(model) if phase else torch.zeros((), device=x.device)
            if phase != "denoiser":
                loss = loss + F.cross_entropy(output.float(), y)
        loss.backward()
        optimizer.step()

    return step, optimizer


def _top_ops(step: Callable[[], None], device: torch.device, top: int) -> list[dict[str, Any]]:
    """The ``top`` operators by self time (CPU, or CUDA kernels on a GPU) in one step."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        step()
        if cuda:
            torch.cuda.synchronize(device)
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)[:top]
    return [{"op": e.key, "self_ms": getattr(e, key) / 1e3, "calls": e.count} for e in events]


def training_cost(
    baseline: nn.Module,
    converted: nn.Module,
    cfg: BenchConfig,
    tick: Callable[[str], contextlib.AbstractContextManager],
) -> dict[str, Any]:
    """Step time (interleaved), peak memory and FLOPs per step of each training variant."""
    device = next(baseline.parameters()).device
    tc = cfg.train
    g = torch.Generator().manual_seed(cfg.seed)
    x = torch.randn(tc.batch_size, 3, cfg.image_size, cfg.image_size, generator=g).to(device)
    with torch.no_grad():
        num_classes = baseline.eval()(x[:1]).shape[-1]
    y = torch.randint(num_classes, (tc.batch_size,), generator=g).to(device)
    steps: dict[str, tuple[Callable[[], None], torch.optim.Optimizer, nn.Module]] = {}
    plain = copy.deepcopy(baseline)
    steps["baseline"] = (*_train_step(plain, None, x, y, cfg), plain)
    for phase in tc.phases:
        model = copy.deepcopy(converted)
        dr.set_phase(model, phase)
        steps[phase] = (*_train_step(model, phase, x, y, cfg), model)
    rows: dict[str, dict[str, Any]] = {}
    with tick("train warm-up and FLOPs"):
        for name, (step, _, _) in steps.items():
            rows[name] = {"gflops_per_step": flops_of(step) / 1e9}
            for _ in range(tc.warmup - 1):
                step()
    with tick("train step time"):
        times = time_interleaved({n: s[0] for n, s in steps.items()}, tc.steps, 0, device, cfg.seed)
    for name, ts in times.items():
        rows[name].update(_stats_ms(ts))
    with tick("train peak memory"):
        for name, (step, optimizer, model) in steps.items():
            peak = None
            if cfg.memory:
                optimizer.zero_grad(set_to_none=True)  # the step allocates its gradients anew
                static = tensor_bytes(module_tensors(model) + optimizer_tensors(optimizer) + [x, y])
                peak = (static + peak_memory(step, device)) / MB
            rows[name]["peak_mb"] = peak
    if tc.profile_top:
        with tick("train profile"):
            for name, (step, _, _) in steps.items():
                rows[name]["top_ops"] = _top_ops(step, device, tc.profile_top)
    base = rows["baseline"]
    for row in rows.values():
        row["step_ratio"] = _ratio(row["median_ms"], base["median_ms"])
        row["peak_ratio"] = _ratio(row["peak_mb"], base["peak_mb"])
        row["gflops_ratio"] = _ratio(row["gflops_per_step"], base["gflops_per_step"])
    return {"batch_size": tc.batch_size, "variants": rows}


def _attempt(prefix: str, check: Callable[[], float]) -> dict[str, Any]:
    """``{prefix}_ok`` and ``{prefix}_max_abs_diff`` of a check; a failure is a result too."""
    try:
        return {f"{prefix}_ok": True, f"{prefix}_max_abs_diff": check()}
    except Exception as e:  # noqa: BLE001 - an export that fails is what we report
        error = f"{type(e).__name__}: {e}".splitlines()[0]
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
    record["reload_max_abs_diff"] = _max_abs_diff(reloaded, model, example)
    return record


# -- the run --------------------------------------------------------------------------------------
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
        }
        check = {}
        if "fused" in variants:
            check["max_abs_diff_fused_vs_baseline"] = _max_abs_diff(
                variants["fused"], variants["baseline"], x1
            )
            other = weights_with_other_strides(variants["baseline"], variants["fused"])
            check["weights_with_other_strides"] = len(other)
            if "explicit" in variants:
                check["max_abs_diff_fused_vs_explicit"] = _max_abs_diff(
                    variants["fused"], variants["explicit"], x1
                )
        report["fusion_check"] = check
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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device


def run_bench(cfg: BenchConfig, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run every measurement of ``cfg``; write results.json / results.md / bench.png."""
    device = resolve_device(cfg.device)
    out = prepare_run_folder(cfg.output, to_dict(cfg), overwrite)
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
        "environment": {
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "threads": threads_used,
            "memory_method": memory_method(device),
        },
        "models": models,
        "targets": evaluate_targets(models),
        "wall_s": time.perf_counter() - start,
    }
    (out / "results.json").write_text(json.dumps(report, indent=2))
    (out / "results.md").write_text(markdown_report(report))
    plot_report(report, out / "bench.png")
    return report


# -- targets and reports --------------------------------------------------------------------------
def evaluate_targets(models: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target checked per model: latency ratio per batch, step and memory ratio per phase."""
    rows = []
    for name, rep in models.items():
        for batch, variants in rep["inference"].items():
            if "fused" in variants:
                ratio = variants["fused"]["latency_ratio"]
                rows.append(
                    {
                        "target": f"fused/baseline inference latency in 1 ± {LATENCY_TOLERANCE}",
                        "model": name,
                        "case": f"batch {batch}",
                        "value": ratio,
                        "met": abs(ratio - 1) <= LATENCY_TOLERANCE,
                    }
                )
        for phase, row in rep.get("train", {}).get("variants", {}).items():
            if phase == "baseline":
                continue
            checks = [("step_ratio", "train step", TRAIN_STEP_LIMIT)]
            checks.append(("peak_ratio", "train peak memory", TRAIN_MEMORY_LIMIT))
            for key, what, limit in checks:
                if row[key] is not None:
                    rows.append(
                        {
                            "target": f"DenoiseRep/baseline {what} <= {limit}",
                            "model": name,
                            "case": f"phase {phase}",
                            "value": row[key],
                            "met": row[key] <= limit,
                        }
                    )
    return rows


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def markdown_report(report: dict[str, Any]) -> str:
    """Inference, training, deployment and target tables in Markdown."""
    env, models = report["environment"], report["models"]
    lines = [
        f"Device: {env['device']} ({env['device_name'] or env['processor']}), "
        f"torch {env['torch']}, {env['threads']} thread(s), "
        f"bf16 autocast: {report['config']['bf16']}. Peak memory: {env['memory_method']}.",
        "",
        "### Inference",
        "",
        "| model | batch | variant | params (M) | GFLOPs/image | latency ms (median, IQR) "
        "| × baseline | peak MB | × baseline |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, rep in models.items():
        for batch, rows in rep["inference"].items():
            for v, row in rows.items():
                lines.append(
                    f"| {name} | {batch} | {v} | {rep['params'][v] / 1e6:.3f} | "
                    f"{rep['gflops_per_image'][v]:.3f} | "
                    f"{row['median_ms']:.2f} ({row['iqr_ms']:.2f}) | "
                    f"{row['latency_ratio']:.3f} | {_num(row['peak_mb'], '.1f')} | "
                    f"{_num(row['peak_ratio'], '.3f')} |"
                )
    trained = {n: r["train"] for n, r in models.items() if "train" in r}
    if trained:
        lines += [
            "",
            "### Training (one AdamW step: forward, loss, backward, update)",
            "",
            "| model | batch | variant | step ms (median, IQR) | × baseline | peak MB "
            "| × baseline | GFLOPs/step | × baseline |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, train in trained.items():
            for v, row in train["variants"].items():
                label = v if v == "baseline" else f"DenoiseRep {v}"
                lines.append(
                    f"| {name} | {train['batch_size']} | {label} | "
                    f"{row['median_ms']:.1f} ({row['iqr_ms']:.1f}) | {row['step_ratio']:.3f} | "
                    f"{_num(row['peak_mb'], '.1f')} | {_num(row['peak_ratio'], '.3f')} | "
                    f"{row['gflops_per_step']:.2f} | {row['gflops_ratio']:.3f} |"
                )
    lines += [
        "",
        "### Fusion and deployment checks",
        "",
        "| model | denoised layers | max abs(fused − explicit) | max abs(fused − baseline) "
        "| fused weights with other strides | ONNX max abs diff | torch.export max abs diff "
        "| strict reload |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, rep in models.items():
        check, exp = rep["fusion_check"], rep.get("export", {})
        onnx = _num(exp.get("onnx_max_abs_diff"), ".3g") if exp.get("onnx_ok", True) else "failed"
        tex = exp.get("torch_export_max_abs_diff")
        tex = _num(tex, ".3g") if exp.get("torch_export_ok", True) else "failed"
        reload = {True: "ok", None: "-"}[exp.get("strict_reload_ok")]
        lines.append(
            f"| {name} | {rep['denoise_layers']} | "
            f"{_num(check.get('max_abs_diff_fused_vs_explicit'), '.3g')} | "
            f"{_num(check.get('max_abs_diff_fused_vs_baseline'), '.3g')} | "
            f"{_num(check.get('weights_with_other_strides'), 'd')} | {onnx} | {tex} | {reload} |"
        )
    if report["targets"]:
        lines += ["", "### Targets", "", "| target | model | case | value | met |"]
        lines.append("| --- | --- | --- | --- | --- |")
        for t in report["targets"]:
            met = "yes" if t["met"] else "**no**"
            lines.append(
                f"| {t['target']} | {t['model']} | {t['case']} | {t['value']:.3f} | {met} |"
            )
    lines += ["", f"Wall time: {report['wall_s']:.0f} s."]
    return "\n".join(lines) + "\n"


def plot_report(report: dict[str, Any], path: Path) -> None:
    """Bar charts: inference latency per variant per (model, batch); training ratios per phase."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = report["models"]
    trained = {n: r["train"]["variants"] for n, r in models.items() if "train" in r}
    panels = 3 if trained else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 5), squeeze=False)
    axes = axes[0]
    groups = [(n, b, rows) for n, r in models.items() for b, rows in r["inference"].items()]
    variants = list(groups[0][2])
    width = 0.8 / len(variants)
    for i, v in enumerate(variants):
        axes[0].bar(
            [g + i * width for g in range(len(groups))],
            [rows[v]["median_ms"] for _, _, rows in groups],
            width,
            label=v,
        )
    axes[0].set_xticks([g + 0.4 - width / 2 for g in range(len(groups))])
    axes[0].set_xticklabels(
        [f"{n}, batch {b}" for n, b, _ in groups], fontsize=7, rotation=25, ha="right"
    )
    axes[0].set(yscale="log", ylabel="latency (ms, median)", title="inference latency")
    axes[0].legend(fontsize=8)
    if trained:
        names = list(trained)
        phases = [p for p in next(iter(trained.values())) if p != "baseline"]
        width = 0.8 / max(1, len(phases))
        for ax, key, limit, title in (
            (axes[1], "step_ratio", TRAIN_STEP_LIMIT, "training step time / baseline"),
            (axes[2], "peak_ratio", TRAIN_MEMORY_LIMIT, "training peak memory / baseline"),
        ):
            for i, p in enumerate(phases):
                values = [trained[n][p][key] or 0.0 for n in names]
                ax.bar([k + i * width for k in range(len(names))], values, width, label=p)
            ax.axhline(1.0, color="black", lw=0.8)
            ax.axhline(limit, color="red", ls="--", lw=0.8, label=f"target {limit}")
            ax.set_xticks([k + 0.4 - width / 2 for k in range(len(names))])
            ax.set_xticklabels(names, fontsize=7, rotation=25, ha="right")
            ax.set(ylabel="ratio", title=title)
            ax.legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- the command-line contract (see denoiserep.cli) -----------------------------------------------
Config = BenchConfig
run = run_bench
DEFAULT_CONFIG = "bench.yaml"


def summarize(report: dict[str, Any]) -> str:
    """The Markdown tables printed at the end of a run, and where the files are."""
    out = Path(report["config"]["output"])
    files = ", ".join(str(out / f) for f in ("results.json", "results.md", "bench.png"))
    return markdown_report(report) + f"\nresults: {files}"
