"""Parameter and FLOP counts (FLOPs from ``torch.utils.flop_counter.FlopCounterMode``).

FlopCounterMode counts the matrix products and convolutions a run actually dispatches
(2 FLOPs per multiply-add), including those inside ``einsum`` and in a backward pass;
element-wise work (activations, norms, the optimizer update) is not counted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module) -> int:
    """Number of parameter elements, each shared parameter counted once."""
    return sum(p.numel() for p in model.parameters())


def flops_of(fn: Callable[[], Any]) -> int:
    """FLOPs dispatched while ``fn()`` runs (forward, and backward if it runs one)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@torch.no_grad()
def count_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one inference forward of ``model`` on ``x`` (eval mode, no gradients)."""
    model.eval()
    return flops_of(lambda: model(x))
