"""Which Linear / ConvNd layers DenoiseRep can wrap with an exact fusion; checkpoint replays."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

SUPPORTED_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BASE_FORWARDS = {nn.Linear.forward, nn.Conv1d.forward, nn.Conv2d.forward, nn.Conv3d.forward}


def unsupported_reason(module: nn.Module) -> str | None:
    """Why a Linear / Conv1-3d cannot be denoised with an exact fusion (None: it can)."""
    if type(module).forward not in _BASE_FORWARDS:
        return "whose class overrides forward (fusion would not be exact)"
    if parametrize.is_parametrized(module, "weight"):
        return (
            "whose weight is parametrized (weight_norm, spectral_norm, ...: fusion cannot write "
            "W·A_t through it; torch.nn.utils.parametrize.remove_parametrizations first)"
        )
    return None


def is_supported(module: nn.Module) -> bool:
    """True for Linear / Conv1-3d and subclasses that keep the base class's forward and a plain
    weight."""
    return isinstance(module, SUPPORTED_TYPES) and unsupported_reason(module) is None


def recomputing_in_backward() -> bool:
    """Whether this forward runs inside a backward pass, as activation checkpointing
    (``torch.utils.checkpoint``) recomputes a block. Not asked while ``torch.compile`` traces."""
    if torch.compiler.is_compiling():
        return False
    return torch._C._current_graph_task_id() != -1


def zero_padding_conv_arguments(module: nn.Module) -> tuple | None:
    """(stride, padding, dilation) of a ConvNd with zero padding given in numbers ("valid" as
    zeros), as ``aten.convolution`` takes them; None for "same" or another padding mode."""
    padding = module.padding
    if padding == "valid":
        padding = (0,) * len(module.stride)
    if module.padding_mode != "zeros" or isinstance(padding, str):
        return None
    return (module.stride, padding, module.dilation)
