"""Load a weights file or a state dict into any model this package creates: timm,
torchvision and plain models through :func:`~denoiserep.models.weights.load_plain_state`,
Hugging Face ones through transformers' loader (:func:`~denoiserep.models.hf.load_hf_state`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .hf import HFImageClassifier, load_hf_state
from .weights import is_transformers_model, load_plain_state, read_checkpoint, strip_common_prefix


def _loads_as_transformers(model: nn.Module) -> bool:
    return isinstance(model, HFImageClassifier) or is_transformers_model(model)


def load_checkpoint(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    name: str | None = None,
    heads: tuple[str, ...] | None = None,
    key: str | None = None,
    remap: Any = None,
) -> nn.Module:
    """Load the weights file ``path`` into ``model`` (see :func:`load_state`): the state dict
    under ``key`` (:func:`read_checkpoint`), keys rewritten by ``remap``, and one wrapper
    prefix common to every key stripped where that makes them fit (:func:`strip_common_prefix`).
    """
    state = read_checkpoint(path, key=key, remap=remap)
    source = f"checkpoint {path}"
    arch = name or type(model).__name__
    if not _loads_as_transformers(model):
        state = strip_common_prefix(state, model.state_dict(), source, arch)
    return load_state(model, state, source=source, name=name, heads=heads)


def load_state(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    source: str = "checkpoint",
    name: str | None = None,
    heads: tuple[str, ...] | None = None,
) -> nn.Module:
    """Load ``state`` into ``model``: every key must match but the classifier head's.

    Keys under the head (:func:`~denoiserep.models.weights.head_prefixes`) that are missing,
    unexpected or of another shape leave the model's fresh head in place, and one line is
    logged; anything else that does not fit is a ValueError naming the first few keys
    (:func:`~denoiserep.models.weights.load_plain_state`). ``heads`` overrides the head's
    module names. Transformers models load through transformers' own key conversions.
    """
    if _loads_as_transformers(model):
        return load_hf_state(model, state, source, name or type(model).__name__)
    return load_plain_state(model, state, source=source, name=name, heads=heads)
