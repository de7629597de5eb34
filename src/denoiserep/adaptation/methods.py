"""The label-free adaptation arms, each a plain function ``model, data -> adapted copy``.

Every function leaves its input model unchanged and returns a new model in eval mode that
computes one fixed function of each image (no statistics of the test batch are used), so all
arms are scored on the same footing and cost at inference what a plain model costs:

- :func:`no_adaptation`: the source model as it is;
- :func:`bn_adapt`: BatchNorm re-estimation on the target data (Schneider et al., "Improving
  robustness against common corruptions by covariate shift adaptation", NeurIPS 2020):
  running statistics reset and recomputed as the plain average over the target batches
  (their N = 0 prior: the source statistics are discarded);
- :func:`tent`: TENT (Wang et al., "Tent: Fully Test-Time Adaptation by Entropy
  Minimization", ICLR 2021);
- :func:`denoiserep_adapt`: DenoiseRep's closed-form denoisers fitted on the given data and
  fused (``denoiserep.adapt``): on the source data it denoises without adapting, on the
  target data it adapts; with ``recalibrate_bn`` BatchNorm is re-estimated on the same data.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import denoiserep as dr
from denoiserep.core.config import DenoiseConfig
from denoiserep.util.batchnorm import batchnorm_layers, recalibrate_batchnorm
from denoiserep.util.forward import modes_restored

NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)
TENT_OPTIMIZERS = ("adam", "sgd")


def _inputs(batch: Any, device: torch.device) -> torch.Tensor:
    """The images of a batch (``(images, labels, ...)`` or images alone), on ``device``."""
    x = batch[0] if isinstance(batch, tuple | list) else batch
    return x.to(device)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def no_adaptation(model: nn.Module, data: Any = None) -> nn.Module:
    """The source model, copied, in eval mode (``data`` is not read)."""
    return copy.deepcopy(model).eval()


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` has a BatchNorm layer with running statistics to re-estimate."""
    return bool(batchnorm_layers(model))


def bn_adapt(model: nn.Module, data: Iterable[Any], *, max_batches: int | None = None) -> nn.Module:
    """A copy of ``model`` whose BatchNorm running statistics are recomputed on ``data`` (the
    target images; labels are not read). A model without BatchNorm is refused in one line:
    the anchor does not exist for it."""
    if not has_batchnorm(model):
        raise ValueError(
            f"bn_adapt: {type(model).__name__} has no BatchNorm layer with running statistics"
        )
    adapted = copy.deepcopy(model)
    recalibrate_batchnorm(adapted, data, max_batches=max_batches)
    return adapted.eval()


def norm_affine_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The affine parameters (weight, bias) of every BatchNorm, LayerNorm and GroupNorm."""
    params = []
    for m in model.modules():
        if isinstance(m, NORM_TYPES):
            params += [p for p in (m.weight, m.bias) if p is not None]
    return params


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """The entropy of softmax(logits) per row: -sum_k p_k log p_k."""
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()  # half-precision logits: the entropy in float32
    logp = F.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def _tent_optimizer(
    params: list[nn.Parameter], optimizer: str, lr: float, momentum: float
) -> torch.optim.Optimizer:
    if optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), weight_decay=0.0)
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    raise ValueError(f"tent: optimizer must be one of {TENT_OPTIMIZERS}, got {optimizer!r}")


def tent(
    model: nn.Module,
    data: Iterable[Any],
    *,
    lr: float = 1e-3,
    optimizer: str = "adam",
    momentum: float = 0.9,
    max_batches: int | None = None,
    forward: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
) -> nn.Module:
    """TENT (Wang et al., ICLR 2021): one pass over ``data`` minimising the mean entropy of
    the predictions w.r.t. the affine parameters of every normalisation layer, all other
    parameters frozen, one optimizer step per batch; return the adapted copy.

    As in the authors' code (github.com/DequanWang/tent, ``tent.configure_model``), BatchNorm
    normalises by the statistics of the current batch while adapting. Hyper-parameters: their
    CIFAR-10/100-C setting, Adam (betas 0.9 / 0.999, no weight decay) at lr 1e-3 with batches
    of 128 (the default here); their ImageNet-C setting, SGD lr 0.00025 momentum 0.9 at batch
    64, is ``optimizer="sgd", lr=2.5e-4``. One deliberate difference: TENT normalises the test
    batches by their own statistics at evaluation too; here the adapted model's BatchNorm
    running statistics are re-estimated on ``data`` under the final parameters, so the result
    is a fixed model scored image by image, as every other arm is. ``forward(model, x)``
    returns logits (default: ``model(x)``). Labels are never read.
    """
    adapted = copy.deepcopy(model)
    adapted.requires_grad_(False)
    params = norm_affine_parameters(adapted)
    if not params:
        raise ValueError(
            f"tent: {type(model).__name__} has no normalisation layer with affine parameters"
        )
    for p in params:
        p.requires_grad_(True)
    opt = _tent_optimizer(params, optimizer, lr, momentum)
    run = forward or (lambda m, x: m(x))
    device = _device(adapted)
    norms = batchnorm_layers(adapted)
    with modes_restored(adapted), torch.enable_grad():
        adapted.eval()
        for bn in norms:
            bn.train()  # normalise by the batch's statistics (dropout & co. stay in eval)
        for i, batch in enumerate(data):
            if max_batches is not None and i >= max_batches:
                break
            loss = softmax_entropy(run(adapted, _inputs(batch, device))).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    adapted.requires_grad_(False)
    if norms:
        recalibrate_batchnorm(adapted, data, max_batches=max_batches)
    return adapted.eval()


def denoiserep_adapt(
    model: nn.Module,
    data: Iterable[Any],
    config: DenoiseConfig | None = None,
    *,
    recalibrate_bn: bool = False,
    max_batches: int | None = None,
    forward: Callable[[nn.Module, Any], Any] | None = None,
    example_input: Any = None,
) -> nn.Module:
    """DenoiseRep's closed-form denoisers fitted on ``data`` and fused (:func:`denoiserep.adapt`);
    with ``recalibrate_bn`` (BatchNorm models) the statistics are first re-estimated on
    ``data`` (so that D sees the adapted network's features), then D is fitted, then the
    statistics are re-estimated again under the fused weights. ``forward`` and
    ``example_input`` as :func:`denoiserep.adapt` reads them (a re-ID model runs its
    classifier too, so that every target layer sees input)."""
    if recalibrate_bn:
        model = bn_adapt(model, data, max_batches=max_batches)
    options = {"forward": forward, "example_input": example_input}
    fused = dr.adapt(model, data, config, max_batches=max_batches, **options)
    if recalibrate_bn:
        recalibrate_batchnorm(fused, data, max_batches=max_batches)
    return fused.eval()
