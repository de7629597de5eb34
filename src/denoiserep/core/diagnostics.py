"""What a converted model did: per-layer strength, fused-vs-explicit check, change from baseline.

These are read-only measurements of a converted model; none of them changes what it computes
once they return. ``explicit_denoising`` is the public switch to the paper's unfused form
(Figure 1(c)): the reverse step applied to each layer's input instead of folded into W.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from denoiserep.util.forward import modes_restored

from .convert import denoise_layers, unwrap
from .structure import STRUCTURE_PARAMETERS


@contextlib.contextmanager
def explicit_denoising(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, eval forwards denoise each layer's input (x -> A_t x) explicitly.

    The fused model computes the same function up to rounding; this form exists to check
    that, and to measure what fusion saves. The previous setting is restored on exit.
    """
    layers = list(denoise_layers(model).values())
    before = [layer.explicit for layer in layers]
    for layer in layers:
        layer.explicit = True
    try:
        yield model
    finally:
        for layer, flag in zip(layers, before, strict=True):
            layer.explicit = flag


@contextlib.contextmanager
def layer_inputs(model: nn.Module, add: Callable[[str, torch.Tensor], None]) -> Iterator[nn.Module]:
    """Within the block, every forward passes each DenoiseRep layer's input to
    ``add(name, x)``; on exit the hooks are removed and every module's training mode (which
    the block may change) is restored."""
    root = unwrap(model)
    hooks = [
        layer.register_forward_pre_hook(lambda _, args, name=name: add(name, args[0]))
        for name, layer in denoise_layers(root).items()
    ]
    try:
        with modes_restored(root):
            yield root
    finally:
        for hook in hooks:
            hook.remove()


def denoising_strength(model: nn.Module) -> list[dict[str, Any]]:
    """Per layer in execution order: t, k_t and ||k_t D||_F / sqrt(C_in) (0 = identity step)."""
    rows = []
    for name, layer in denoise_layers(model).items():
        d = layer.D.detach().double()
        rows.append(
            {
                "layer": name,
                "t": layer.t,
                "k_t": layer.strength,
                "strength": (layer.strength * d.norm() / d.shape[0] ** 0.5).item(),
            }
        )
    return rows


def tensor_outputs(model: nn.Module, x: Any) -> list[torch.Tensor]:
    """The tensors a model returns for ``x`` (a tensor, a dict or sequence of them, or a
    Hugging Face output object's ``logits``)."""
    out = model(**x) if isinstance(x, dict) else model(x)
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [v for v in out.values() if isinstance(v, torch.Tensor)]
    if isinstance(out, Sequence):
        return [v for v in out if isinstance(v, torch.Tensor)]
    logits = getattr(out, "logits", None)  # Hugging Face output objects
    if isinstance(logits, torch.Tensor):
        return [logits]
    raise TypeError(f"cannot compare outputs of type {type(out).__name__}; pass `features`")


@torch.no_grad()
def fused_vs_unfused(
    converted: nn.Module,
    fused: nn.Module,
    inputs: Any,
    features: Callable[[nn.Module, Any], list[torch.Tensor]] | None = None,
) -> float:
    """max |fused - unfused| over the outputs (or ``features(model, inputs)``) in eval mode.

    Unfused is the converted model with :func:`explicit_denoising`. Train/eval modes of both
    models are restored afterwards.
    """
    features = features or tensor_outputs
    modes = converted.training, fused.training
    converted.eval()
    fused.eval()
    try:
        with explicit_denoising(converted):
            pairs = zip(features(fused, inputs), features(converted, inputs), strict=True)
            return max((a.float() - b.float()).abs().max().item() for a, b in pairs)
    finally:
        converted.train(modes[0])
        fused.train(modes[1])


@torch.no_grad()
def change_from_baseline(converted: nn.Module, baseline: nn.Module) -> float:
    """max |converted - baseline| over the baseline's float weights and buffers (the
    denoisers' parameters excluded).

    Zero after label-free training: the backbone, normalisation statistics and heads are frozen.
    """
    reference = unwrap(baseline).state_dict()
    denoisers = {
        f"{name}.{p}"
        for name, layer in denoise_layers(converted).items()
        for p in STRUCTURE_PARAMETERS[layer.structure]
    }
    change = 0.0
    for name, value in unwrap(converted).state_dict().items():
        if name in denoisers or not value.is_floating_point():
            continue
        key = name.replace(".base_layer.", ".")
        diff = (value.double() - reference[key].double().to(value.device)).abs().max().item()
        change = max(change, diff)
    return change
