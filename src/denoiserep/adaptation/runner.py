"""One arm of an ``adapt`` run: adapt the source model on the target images, timed."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from .domains import Domains, loader
from .methods import bn_adapt, denoiserep_adapt, no_adaptation, tent

#: arms that re-estimate BatchNorm statistics: they do not exist for a model without BatchNorm
NEEDS_BATCHNORM = ("bn", "dr_target_bn")


def adapt_arm(
    arm: str, model: nn.Module, domains: Domains, images: Dataset, cfg: Any, has_bn: bool
) -> tuple[nn.Module, float] | None:
    """``(adapted model, seconds)`` of ``arm`` on the unlabelled target ``images``; None for a
    BatchNorm arm of a model without BatchNorm. ``dr_source`` reads the clean images at the
    same indices (denoising without adapting)."""
    if arm in NEEDS_BATCHNORM and not has_bn:
        return None
    batch = cfg.data.batch_size
    target = loader(images, batch)
    device = next(model.parameters()).device
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
        adapted = tent(model, target, lr=t.lr, optimizer=t.optimizer, momentum=t.momentum)
    elif arm == "dr_source":
        adapted = denoiserep_adapt(model, loader(domains.source_images, batch), cfg.denoise)
    elif arm == "dr_target":
        adapted = denoiserep_adapt(model, target, cfg.denoise)
    elif arm == "dr_target_bn":
        adapted = denoiserep_adapt(model, target, cfg.denoise, recalibrate_bn=True)
    else:
        raise ValueError(f"unknown arm {arm!r}")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return adapted, time.perf_counter() - start
