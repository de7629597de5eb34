"""BatchNorm statistics for the denoised forward, recomputed without labels.

A label-free DenoiseRep phase (or ``fit_denoisers``) changes what every fused layer outputs
while BatchNorm keeps the running mean and variance it collected under the baseline's weights.
On some CNNs that mismatch costs far more accuracy than the denoising does
(docs/results/robustness.md, "Two more CNNs"). :func:`recalibrate_batchnorm` recomputes those
statistics in one label-free pass, as ``torch.optim.swa_utils.update_bn`` does for weight
averaging, but with the rest of the model in eval mode: dropout off and DenoiseRep layers
computing exactly the fused weight, so the statistics are those of the model that will be
exported. The two agree bit for bit only where nothing before a BatchNorm acts differently in
train mode; on a converted model in phase "joint" to rounding; in phase "denoiser" update_bn
gets the original weights' statistics (tests/core/test_batchnorm.py, docs/development.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from .forward import modes_restored, run_batches


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers (1d / 2d / 3d, SyncBatchNorm, timm's BatchNormAct) that keep
    running statistics; frozen ones (torchvision's FrozenBatchNorm2d) are not among them."""
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module,
    data: torch.Tensor | Iterable[Any],
    *,
    forward: Callable[[nn.Module, Any], Any] | None = None,
    max_batches: int | None = None,
) -> int:
    """Reset every BatchNorm layer's running statistics and recompute them on ``data`` as the
    plain average over its batches; return how many layers were recalibrated (0 when none
    keeps running statistics: the model is unchanged).

    Works on plain, fused and converted models (these run their exact fused weight, as in
    eval). As in training (and ``update_bn``), each layer's statistics are taken while the
    BatchNorm layers before it normalise by their batch's statistics. A layer no batch
    reaches keeps its statistics, and so does every layer when the pass fails. ``data``,
    ``forward`` and ``max_batches`` as :func:`diagnostics.run_batches` reads them; no label
    is read. Modes and momenta are restored. Under ``torch.distributed`` the statistics are
    averaged over processes (every process should see as many batches).

    Pass the training images augmented as in training: the layers after each BatchNorm were
    trained on features normalised with those statistics (recalibrating on clean images can
    cost accuracy: docs/results/robustness.md).
    """
    norms = batchnorm_layers(model)
    if not norms:
        return 0
    momenta = [bn.momentum for bn in norms]
    saved = [[s.clone() for s in _stats(bn)] for bn in norms]
    reached = 0
    try:
        with modes_restored(model):
            model.eval()
            for bn in norms:
                bn.reset_running_stats()
                bn.momentum = None  # a cumulative average over the batches
                bn.train()
            run_batches(model, data, forward, max_batches)
            reached = sum(int(bn.num_batches_tracked) > 0 for bn in norms)
    finally:
        for bn, momentum, old in zip(norms, momenta, saved, strict=True):
            bn.momentum = momentum
            if not reached or int(bn.num_batches_tracked) == 0:  # failed, or off the path
                for stat, value in zip(_stats(bn), old, strict=True):
                    stat.copy_(value)
    if not reached:
        raise ValueError("recalibrate_batchnorm: no batch reached the BatchNorm layers")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        world = torch.distributed.get_world_size()
        for bn in norms:
            for stat in (bn.running_mean, bn.running_var):
                torch.distributed.all_reduce(stat)
                stat.div_(world)
    return reached


def _stats(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, ...]:
    return bn.running_mean, bn.running_var, bn.num_batches_tracked
