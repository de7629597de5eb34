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
from torch.utils.flop_counter import FlopCounterMode, flop_registry


def count_parameters(model: nn.Module) -> int:
    """Number of parameter elements, each shared parameter counted once."""
    return sum(p.numel() for p in model.parameters())


def flops_of(fn: Callable[[], Any]) -> int:
    """FLOPs dispatched while ``fn()`` runs (forward, and backward if it runs one)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def flops_by_dtype(fn: Callable[[], Any]) -> dict[str, int]:
    """:func:`flops_of`, split by the dtype each product ran in (that of its first tensor
    input), e.g. ``{"bfloat16": ..., "float32": ...}``: under autocast, the work that stayed in
    float32."""
    counts: dict[str, int] = {}

    def by_dtype(formula: Callable[..., int]) -> Callable[..., int]:
        def count(*args: Any, out_val: Any = None, **kwargs: Any) -> int:
            flops = formula(*args, out_val=out_val, **kwargs)
            first = next((a for a in args if isinstance(a, torch.Tensor)), None)
            dtype = str(first.dtype).removeprefix("torch.") if first is not None else "other"
            counts[dtype] = counts.get(dtype, 0) + flops
            return flops

        count._get_raw = True  # type: ignore[attr-defined]  # FlopCounterMode: pass tensors
        return count

    mapping = {op: by_dtype(formula) for op, formula in flop_registry.items()}
    with FlopCounterMode(display=False, custom_mapping=mapping):
        fn()
    return counts


@torch.no_grad()
def count_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one inference forward of ``model`` on ``x`` (eval mode, no gradients)."""
    model.eval()
    return flops_of(lambda: model(x))
