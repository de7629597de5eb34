"""Parameter, FLOP and operator counts (FLOPs from ``torch.utils.flop_counter.FlopCounterMode``).

FlopCounterMode counts the matrix products and convolutions a run actually dispatches
(2 FLOPs per multiply-add), including those inside ``einsum`` and in a backward pass;
element-wise work (activations, norms, the optimizer update) is not counted.
:class:`CountOps` counts every non-view operator instead: on a GPU, each one is a kernel launch
(or an allocation).
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry

VIEWS = {
    "_reshape_alias", "_unsafe_view", "alias", "as_strided", "detach", "expand", "flatten",
    "permute", "reshape", "select", "slice", "split", "squeeze", "t", "transpose", "unbind",
    "unflatten", "unsqueeze", "view",
}  # fmt: skip


class CountOps(TorchDispatchMode):
    """Counts the non-view ATen operators dispatched inside the context, below autograd (so
    the same on any device), by name in ``counts``."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        name = func.overloadpacket.__name__
        if name not in VIEWS:
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))


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
