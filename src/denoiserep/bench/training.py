"""Training cost: step time, peak memory and FLOPs of DenoiseRep training in each phase
against plain training of the same model on the same batch."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import DeviceType

import denoiserep as dr
from denoiserep.engine.latency import time_interleaved
from denoiserep.engine.optim import build_optimizer
from denoiserep.models.grad_checkpointing import enable_grad_checkpointing

from .config import MB, BenchConfig
from .flops import flops_by_dtype
from .measure import autocast, ratio, stats_ms
from .memory import module_tensors, optimizer_tensors, peak_memory, tensor_bytes

Step = Callable[[], None]


def train_step(
    model: nn.Module,
    phase: str | None,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: BenchConfig,
    optimizer: torch.optim.Optimizer | None = None,
    compiled: bool = False,
) -> tuple[Step, torch.optim.Optimizer]:
    """One optimisation step as the engine's trainer does it (phase None: plain training);
    ``compiled``: the forward runs through ``torch.compile(model)``."""
    tc = cfg.train
    optimizer = optimizer or build_optimizer(
        model,
        "adamw",
        tc.lr,
        tc.weight_decay,
        denoiser_optimizer=tc.denoiser_optimizer,
        fused=tc.fused_optimizer,
    )
    lam = cfg.denoise.loss_weight
    runner = torch.compile(model) if compiled else model

    def step() -> None:
        if phase == "denoiser":
            dr.train_frozen_backbone(model)
        else:
            model.train()
        optimizer.zero_grad(set_to_none=True)
        with autocast(x.device, cfg.bf16):
            output = runner(x)
            loss = lam * dr.denoise_loss(model) if phase else torch.zeros((), device=x.device)
            if phase != "denoiser":
                loss = loss + F.cross_entropy(output.float(), y)
        loss.backward()
        optimizer.step()

    return step, optimizer


def product_precision(model: nn.Module) -> dict[str, str]:
    """The dtype each DenoiseRep product ran in at the last training forward, over all layers
    (e.g. ``{"W·A_t": "bfloat16", "D·x_t": "float32"}``); the export product is float64."""
    dtypes: dict[str, set[str]] = {}
    for layer in dr.denoise_layers(model).values():
        for product, dtype in layer.precision.items():
            dtypes.setdefault(product, set()).add(str(dtype).removeprefix("torch."))
    return {product: "/".join(sorted(names)) for product, names in dtypes.items()}


def profile_step(step: Step, device: torch.device, top: int) -> dict[str, Any]:
    """Profile one step: :func:`summarize_profile` of what it ran (CPU, or CUDA kernels)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        step()
        if cuda:
            torch.cuda.synchronize(device)
    return summarize_profile(prof.key_averages(), cuda, top)


def summarize_profile(events: Iterable[Any], cuda: bool, top: int) -> dict[str, Any]:
    """The ``top`` operators by self time and, on a GPU, the step's kernels.

    On a GPU an operator's self time is that of the kernels it launched. The kernel rows
    themselves are left out of the top list (they would count that time twice) and summed
    into ``kernels`` (launches) and ``kernel_ms``: a step whose kernels run for much less than
    its wall time leaves the GPU waiting on the host, so launches, not FLOPs, set its time.
    """
    events = list(events)
    if cuda:
        ops = [e for e in events if e.device_type == DeviceType.CPU]
        kernels = [
            e for e in events if e.device_type == DeviceType.CUDA and not e.is_user_annotation
        ]
        key = "self_device_time_total"
    else:
        ops, kernels, key = events, [], "self_cpu_time_total"
    ranked = sorted(ops, key=lambda e: getattr(e, key), reverse=True)[:top]
    rows = [{"op": e.key, "self_ms": getattr(e, key) / 1e3, "calls": e.count} for e in ranked]
    summary: dict[str, Any] = {"top_ops": rows}
    if cuda:
        summary["kernels"] = sum(e.count for e in kernels)
        summary["kernel_ms"] = sum(e.self_device_time_total for e in kernels) / 1e3
    return summary


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
    models = {"baseline": copy.deepcopy(baseline)}
    for phase in tc.phases:
        models[phase] = copy.deepcopy(converted)
        dr.set_phase(models[phase], phase)
    if tc.grad_checkpointing:
        for model in models.values():
            enable_grad_checkpointing(model)
    steps: dict[str, tuple[Step, torch.optim.Optimizer, nn.Module]] = {}
    rows: dict[str, dict[str, Any]] = {}
    with tick("train warm-up and FLOPs"):
        for name, model in models.items():
            phase = None if name == "baseline" else name
            step, optimizer = train_step(model, phase, x, y, cfg)
            flops = flops_by_dtype(step)  # an eager step
            rows[name] = {
                "gflops_per_step": sum(flops.values()) / 1e9,
                "gflops_float32": flops.get("float32", 0) / 1e9,
            }
            if tc.compile:
                step, _ = train_step(model, phase, x, y, cfg, optimizer, compiled=True)
                step()  # compiles
            steps[name] = (step, optimizer, model)
            for _ in range(tc.warmup - 1):
                step()
            if phase:
                rows[name]["precision"] = product_precision(model)
    with tick("train step time"):
        times = time_interleaved({n: s[0] for n, s in steps.items()}, tc.steps, 0, device, cfg.seed)
    for name, ts in times.items():
        rows[name].update(stats_ms(ts))
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
                rows[name].update(profile_step(step, device, tc.profile_top))
    base = rows["baseline"]
    for row in rows.values():
        row["step_ratio"] = ratio(row["median_ms"], base["median_ms"])
        row["peak_ratio"] = ratio(row["peak_mb"], base["peak_mb"])
        row["gflops_ratio"] = ratio(row["gflops_per_step"], base["gflops_per_step"])
    # what the denoisers alone hold while D trains: D, its gradient and its optimizer state
    d_params = dr.denoiser_parameters(converted)
    out = {
        "batch_size": tc.batch_size,
        "variants": rows,
        "denoiser_params": sum(p.numel() for p in d_params),
        "denoiser_optimizer": tc.denoiser_optimizer,
        "fused_optimizer": tc.fused_optimizer,
    }
    trains_d = [steps[p] for p in ("joint", "denoiser") if p in steps]
    if trains_d:
        _, optimizer, model = trains_d[0]
        states = optimizer.state
        state = [v for p in dr.denoiser_parameters(model) for v in states.get(p, {}).values()]
        held = 2 * tensor_bytes(d_params) + tensor_bytes([v for v in state if torch.is_tensor(v)])
        out["denoiser_state_mb"] = held / MB
    return out
