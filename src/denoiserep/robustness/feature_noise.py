"""Feature-noise evaluation: Gaussian noise at the input of every target layer, at eval time.

``with feature_noise(model, sigma=0.1, seed=0, targets=names): evaluate(model)`` adds
``sigma * std(x) * n`` to the input ``x`` of each named layer, with ``std(x)`` the standard
deviation of that whole input tensor and ``n`` standard normal noise. This is the perturbation a
DenoiseRep denoiser is trained to remove, applied identically to any arm:

* the noise of a layer's k-th call inside the context comes from a generator seeded from
  (seed, the layer's qualified name, k), so two models whose layers have the same names (the
  baseline, a control copy, a converted model, its fused export) see identical noise for
  identical inputs evaluated in the same order;
* in a converted model the noise goes to the :class:`DenoiseLayer` (the layer's name in the
  original model, as :func:`denoiserep.denoise_layers` reports it), i.e. before the fused
  reverse step, as in the fused export;
* ``sigma = 0`` changes nothing, bit for bit; the hooks are removed when the context exits,
  also on an exception.

``with feature_quantization(model, bits=4, targets=names): evaluate(model)`` rounds the same
inputs to ``2**bits`` levels instead: uniform, asymmetric, the range of each sample's input (the
min and max over all of ``x[i]``), as dynamic activation quantization does at deployment. The
rounding error is feature noise a quantized model really meets; per-sample ranges make the
result independent of the evaluation batch. ``ranges=calibrate_ranges(model, batches)`` makes it
static instead, as post-training INT8 quantization deploys: one range per layer, the min and max
of its input over calibration data (a min/max observer), with inputs outside it clipped.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from denoiserep.core.convert import denoise_layers, is_converted, unwrap
from denoiserep.core.layer import is_supported
from denoiserep.util.forward import modes_restored, run_batches


def noise_seed(seed: int, name: str, call: int) -> int:
    """A 63-bit seed for the noise of layer ``name``'s ``call``-th forward (stable everywhere)."""
    key = f"denoiserep.feature_noise:{int(seed)}:{name}:{int(call)}"
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") >> 1


def target_layers(model: nn.Module, targets: Iterable[str] | None = None) -> dict[str, nn.Module]:
    """The modules ``feature_noise`` hooks, by qualified name in the original model.

    ``targets=None``: the DenoiseRep layers of a converted model, or else every Linear / Conv
    layer :func:`denoiserep.convert` with ``targets="all"`` would wrap (registration order).
    A list of names: those layers, each looked up first among the converted model's DenoiseRep
    layers (by original name), then among its modules.
    """
    root = unwrap(model)
    converted = denoise_layers(root) if is_converted(root) else {}
    if targets is None:
        if converted:
            return dict(converted)
        chosen = {n: m for n, m in root.named_modules() if n and is_supported(m)}
        if not chosen and is_supported(root):  # the model is a single layer, named ""
            chosen = {"": root}
        if not chosen:
            raise ValueError(f"{type(root).__name__} has no Linear / Conv layer to add noise to")
        return chosen
    if isinstance(targets, str):
        raise TypeError("targets must be a list of layer names, not a string")
    modules = dict(root.named_modules())
    chosen = {}
    for name in targets:
        if name in converted:
            chosen[name] = converted[name]
        elif name in modules:
            chosen[name] = modules[name]
        else:
            examples = list(converted) or [n for n, m in modules.items() if is_supported(m)]
            raise KeyError(
                f"feature_noise: no layer named {name!r} in {type(root).__name__}; "
                f"e.g. {', '.join(examples[:6])}"
            )
    if not chosen:
        raise ValueError("feature_noise: targets is empty")
    return chosen


@dataclass
class FeatureNoise:
    """What a ``feature_noise`` context did: its layers and how often each was called."""

    sigma: float
    seed: int
    layers: list[str]
    calls: dict[str, int] = field(default_factory=dict)


@dataclass
class FeatureQuantization:
    """What a ``feature_quantization`` context did: its layers and how often each was called."""

    bits: int
    layers: list[str]
    calls: dict[str, int] = field(default_factory=dict)
    static: bool = False


Perturb = Callable[[str, int, torch.Tensor], "torch.Tensor | None"]


@contextmanager
def _perturbed_inputs(
    layers: dict[str, nn.Module], calls: dict[str, int], perturb: Perturb
) -> Iterator[None]:
    """Within the context, ``perturb(name, call, x)`` replaces the floating-point first input
    ``x`` of each layer (None: unchanged); ``calls`` counts every layer's forwards."""

    def hook_for(name: str):
        def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
            call = calls[name]
            calls[name] = call + 1
            if not args or not isinstance(args[0], torch.Tensor):
                return None
            x = args[0]
            if not x.is_floating_point() or x.numel() == 0:
                return None
            out = perturb(name, call, x)
            return None if out is None else (out, *args[1:])

        return hook

    handles = []
    try:
        for name, module in layers.items():
            handles.append(module.register_forward_pre_hook(hook_for(name)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _noisy(x: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    compute = torch.promote_types(x.dtype, torch.float32)
    g = torch.Generator(device=x.device)
    g.manual_seed(seed)
    noise = torch.randn(x.shape, generator=g, device=x.device, dtype=compute)
    std = x.detach().to(compute).std(correction=0)
    return x + (noise * (sigma * std)).to(x.dtype)


@contextmanager
def feature_noise(
    model: nn.Module, sigma: float, seed: int = 0, targets: Iterable[str] | None = None
) -> Iterator[FeatureNoise]:
    """Within the context, Gaussian noise of std ``sigma * std(x)`` joins each target's input x.

    ``targets``: qualified layer names (see :func:`target_layers`; pass the same list to every
    arm, e.g. ``list(dr.denoise_layers(converted))``), or None for the default targets. Yields a
    :class:`FeatureNoise` record whose ``calls`` count each layer's forwards.
    """
    sigma = float(sigma)
    if not math.isfinite(sigma) or sigma < 0:
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma}")
    layers = target_layers(model, targets)
    record = FeatureNoise(sigma, int(seed), list(layers), dict.fromkeys(layers, 0))

    def perturb(name: str, call: int, x: torch.Tensor) -> torch.Tensor | None:
        if sigma == 0.0:
            return None
        return _noisy(x, sigma, noise_seed(record.seed, name, call))

    with _perturbed_inputs(layers, record.calls, perturb):
        yield record


def quantize_per_sample(x: torch.Tensor, bits: int) -> torch.Tensor:
    """``x`` rounded to ``2**bits`` evenly spaced levels between the min and max of each sample
    ``x[i]`` (the whole tensor if it has one dimension); a constant sample stays as it is."""
    compute = torch.promote_types(x.dtype, torch.float32)
    v = x.detach().to(compute)
    rows = v.reshape(1, -1) if v.dim() < 2 else v.reshape(v.shape[0], -1)
    shape = (-1,) + (1,) * (v.dim() - 1) if v.dim() >= 2 else (1,)
    lo = rows.amin(dim=1).reshape(shape)
    levels = 2**bits - 1
    step = (rows.amax(dim=1).reshape(shape) - lo) / levels
    safe = torch.where(step > 0, step, torch.ones_like(step))
    q = torch.round((v - lo) / safe).clamp_(0, levels) * safe + lo
    return torch.where(step > 0, q, v).to(x.dtype)


def quantize_static(x: torch.Tensor, lo: float, hi: float, bits: int) -> torch.Tensor:
    """``x`` clipped to [lo, hi] and rounded to ``2**bits`` evenly spaced levels on it (per
    tensor, affine: one fixed range for every sample); ``lo == hi`` returns ``lo`` everywhere."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi < lo:
        raise ValueError(f"a static range needs finite lo <= hi, got ({lo}, {hi})")
    compute = torch.promote_types(x.dtype, torch.float32)
    v = x.detach().to(compute).clamp(lo, hi)
    levels = 2**bits - 1
    step = (hi - lo) / levels
    if step == 0:
        return v.to(x.dtype)
    return (torch.round((v - lo) / step) * step + lo).to(x.dtype)


@torch.no_grad()
def calibrate_ranges(
    model: nn.Module,
    data: torch.Tensor | Iterable[Any],
    *,
    targets: Iterable[str] | None = None,
    forward: Callable[[nn.Module, Any], Any] | None = None,
    max_batches: int | None = None,
) -> dict[str, tuple[float, float]]:
    """The (min, max) of each target layer's input over ``data`` with the model in eval mode
    (restored after): the static ranges of :func:`feature_quantization`. ``data``, ``forward``
    and ``max_batches`` as :func:`denoiserep.core.diagnostics.run_batches` reads them; calibrate
    every arm on its own activations, as post-training quantization does."""
    layers = target_layers(model, targets)
    seen: dict[str, tuple[float, float]] = {}

    def observe(name: str, call: int, x: torch.Tensor) -> None:
        lo, hi = x.min().item(), x.max().item()
        old = seen.get(name, (lo, hi))
        seen[name] = (min(lo, old[0]), max(hi, old[1]))

    with modes_restored(model), _perturbed_inputs(layers, dict.fromkeys(layers, 0), observe):
        model.eval()
        run_batches(model, data, forward, max_batches)
    missing = [name for name in layers if name not in seen]
    if missing:
        raise ValueError(f"calibrate_ranges: the data never reached {', '.join(missing[:6])}")
    return {name: seen[name] for name in layers}  # in the targets' order, not the calls'


@contextmanager
def feature_quantization(
    model: nn.Module,
    bits: int,
    targets: Iterable[str] | None = None,
    ranges: dict[str, tuple[float, float]] | None = None,
) -> Iterator[FeatureQuantization]:
    """Within the context each target's input is rounded to ``bits`` bits per entry, as a
    model with quantized activations computes; weights are left in floating point. ``ranges``
    None: dynamic, each sample on its own range (:func:`quantize_per_sample`); from
    :func:`calibrate_ranges`: static, each layer on its calibrated range, clipped outside it
    (:func:`quantize_static`). ``targets`` as for :func:`feature_noise`."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
        raise ValueError(f"bits must be an integer in 2..16, got {bits!r}")
    layers = target_layers(model, targets)
    if ranges is not None:
        missing = [name for name in layers if name not in ranges]
        if missing:
            names = ", ".join(missing[:6])
            raise KeyError(f"feature_quantization: no calibrated range for {names}")

    def perturb(name: str, call: int, x: torch.Tensor) -> torch.Tensor:
        if ranges is None:
            return quantize_per_sample(x, bits)
        return quantize_static(x, *ranges[name], bits)

    record = FeatureQuantization(bits, list(layers), dict.fromkeys(layers, 0), ranges is not None)
    with _perturbed_inputs(layers, record.calls, perturb):
        yield record
