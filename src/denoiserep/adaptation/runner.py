"""One arm of an ``adapt`` run: adapt the source model on the target images, timed."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from .domains import loader
from .methods import bn_adapt, denoiserep_adapt, no_adaptation, tent

#: arms that re-estimate BatchNorm statistics: they do not exist for a model without BatchNorm
NEEDS_BATCHNORM = ("bn", "dr_target_bn")


@dataclass
class ModelCalls:
    """How the arms call a model that is not a plain classifier (None: ``model(x)``).

    ``logits(model, x)``: the class logits TENT's entropy reads; ``fit(model, batch)``: the
    forward DenoiseRep's closed form runs on a batch; ``example_input``: what orders the layers.
    """

    logits: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None
    fit: Callable[[nn.Module, Any], Any] | None = None
    example_input: Any = None


def adapt_arm(
    arm: str,
    model: nn.Module,
    source: Dataset,
    images: Dataset,
    cfg: Any,
    has_bn: bool,
    calls: ModelCalls | None = None,
) -> tuple[nn.Module, float] | None:
    """``(adapted model, seconds)`` of ``arm`` on the unlabelled target ``images``; None for a
    BatchNorm arm of a model without BatchNorm. ``dr_source`` reads the clean ``source`` images
    (the same images uncorrupted: denoising without adapting)."""
    if arm in NEEDS_BATCHNORM and not has_bn:
        return None
    calls = calls or ModelCalls()
    batch = cfg.data.batch_size
    target = loader(images, batch)
    device = next(model.parameters()).device
    dr_calls = {"forward": calls.fit, "example_input": calls.example_input}
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    if arm == "none":
        adapted = no_adaptation(model)
    elif arm == "bn":
        adapted = bn_adapt(model, target)
    elif arm == "tent":
        t = cfg.tent
        options = {"lr": t.lr, "optimizer": t.optimizer, "momentum": t.momentum}
        adapted = tent(model, target, forward=calls.logits, **options)
    elif arm == "dr_source":
        adapted = denoiserep_adapt(model, loader(source, batch), cfg.denoise, **dr_calls)
    elif arm == "dr_target":
        adapted = denoiserep_adapt(model, target, cfg.denoise, **dr_calls)
    elif arm == "dr_target_bn":
        adapted = denoiserep_adapt(model, target, cfg.denoise, recalibrate_bn=True, **dr_calls)
    else:
        raise ValueError(f"unknown arm {arm!r}")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return adapted, time.perf_counter() - start
