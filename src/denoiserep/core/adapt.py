"""Label-free adaptation to a shifted domain: fit the denoisers on unlabelled target data.

The closed-form denoiser D* = b (a² M + b² I)⁻¹ depends on the data only through the second
moment M of each layer's input, which is what a domain shift changes and what unlabelled target
images give for free. :func:`adapt` converts a model, sets every D to that optimum under the
target domain's statistics (:func:`~denoiserep.core.closed_form.fit_denoisers`, one forward pass,
no labels) and fuses: the result is a plain model of the original class, with the original
parameters and FLOPs, so the adaptation costs nothing at inference. It needs no BatchNorm, so it
applies to LayerNorm models (ViTs) too.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from .closed_form import fit_denoisers
from .config import DenoiseConfig
from .convert import config_of, convert, fuse, is_converted, unwrap


def _first_input(batch: Any) -> Any:
    """What the model is called with for one batch (``(inputs, labels, ...)`` -> inputs)."""
    if isinstance(batch, tuple | list):
        if not batch:
            raise ValueError("adapt: the first batch of data is empty")
        batch = batch[0]
    return batch


def _peek(data: torch.Tensor | Iterable[Any]) -> tuple[Any, torch.Tensor | Iterable[Any]]:
    """The first batch of ``data`` and ``data`` itself (a one-shot iterator is re-chained)."""
    if isinstance(data, torch.Tensor):
        if data.dim() == 0 or len(data) == 0:
            raise ValueError(f"adapt: data is an empty tensor of shape {tuple(data.shape)}")
        return data, data
    if isinstance(data, dict):
        return data, [data]
    try:
        iterator = iter(data)
    except TypeError:
        raise TypeError(
            f"adapt: data must be a tensor or an iterable of batches, got {type(data).__name__}"
        ) from None
    try:
        first = next(iterator)
    except StopIteration:
        raise ValueError("adapt: data holds no batch (an empty loader?)") from None
    if iterator is data:  # one-shot: put the batch back in front
        return first, itertools.chain([first], iterator)
    return first, data


def adapt(
    model: nn.Module,
    data: torch.Tensor | Iterable[Any],
    config: DenoiseConfig | None = None,
    *,
    forward: Callable[[nn.Module, Any], Any] | None = None,
    max_batches: int | None = None,
    example_input: Any = None,
) -> nn.Module:
    """A plain model of ``model``'s class whose denoisers were fitted on ``data`` and fused.

    ``model`` is a plain (or fused) model, converted here with ``config`` (default: a default
    :class:`DenoiseConfig`; its schedule and targets decide how strongly each layer denoises),
    or an already converted model, whose own config is used (passing another is an error).
    ``data`` is the unlabelled target domain: one input batch (a tensor) or an iterable of
    batches (``(inputs, labels, ...)`` tuples have their labels ignored, dicts are keyword
    inputs), read as :func:`~denoiserep.core.closed_form.fit_denoisers` reads it (``forward``,
    ``max_batches``). Layers are ordered by execution on ``example_input`` (default: the first
    batch's inputs). ``model`` itself is not modified; the result has its ``state_dict`` keys.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"adapt() needs an nn.Module, got {type(model).__name__}")
    if config is not None and not isinstance(config, DenoiseConfig):
        raise TypeError(f"adapt: config must be a DenoiseConfig, got {type(config).__name__}")
    first, data = _peek(data)
    if is_converted(model):
        if config is not None and config != config_of(model):
            raise ValueError(
                "adapt: the model is already converted with another DenoiseConfig; pass "
                "config=None to use its own, or adapt the plain (fused) model"
            )
        converted = copy.deepcopy(unwrap(model))
    else:
        x = _first_input(first) if example_input is None else example_input
        if isinstance(x, torch.Tensor) and x.dim() > 1:
            x = x[:2]  # the order of execution needs a forward, not the whole batch
        converted = convert(copy.deepcopy(model), config or DenoiseConfig(), example_input=x)
    fit_denoisers(converted, data, forward=forward, max_batches=max_batches)
    return fuse(converted)
