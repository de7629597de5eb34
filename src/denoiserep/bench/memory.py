"""Peak memory of a piece of PyTorch work, on CUDA and on CPU.

CUDA: the caching allocator's own counter, ``torch.cuda.max_memory_allocated``.
CPU: PyTorch's CPU allocator keeps no peak counter, and Python-level tools (tracemalloc) do
not see tensor memory. ``torch.profiler`` with ``profile_memory=True`` records every
allocation and free of the CPU allocator as a ``[memory]`` event with a signed byte count;
the peak of their running sum, in time order, is the peak of live tensor bytes above the
starting point. It counts every tensor the work allocates (activations, gradients, optimizer
updates, workspace tensors allocated through PyTorch); it does not count memory that
libraries allocate behind PyTorch's back (e.g. oneDNN's private scratchpads) or Python objects.
The profiler cannot see the size of a tensor allocated before it started, so freeing such a
tensor inside the work goes unrecorded: free them first (e.g. ``optimizer.zero_grad()``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

CPU_METHOD = "torch.profiler(profile_memory=True): peak of the running sum of [memory] events"
CUDA_METHOD = "torch.cuda.max_memory_allocated after reset_peak_memory_stats"


def memory_method(device: torch.device | str) -> str:
    """One line saying how :func:`peak_memory` measures on ``device``."""
    return CUDA_METHOD if torch.device(device).type == "cuda" else CPU_METHOD


def peak_memory(fn: Callable[[], Any], device: torch.device | str = "cpu") -> int:
    """Peak bytes of tensors allocated while ``fn()`` runs, above those live when it starts.

    Tensors that already exist (weights, inputs) are not counted; add :func:`tensor_bytes` of
    them for the total footprint. On CPU, ``fn`` should not free tensors that exist before it
    starts (their release is invisible to the profiler, so the peak would come out too high).
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - start
    if device.type != "cpu":
        raise ValueError(f"peak_memory supports cpu and cuda devices, got {device}")
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [
        e
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    ]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes held by ``tensors``, each storage counted once (tied weights, views)."""
    storages: dict[int, int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def module_tensors(model: nn.Module) -> list[torch.Tensor]:
    """Parameters, their gradients (where present) and buffers of ``model``."""
    params = list(model.parameters())
    grads = [p.grad for p in params if p.grad is not None]
    return params + grads + list(model.buffers())


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The tensors of an optimizer's state (e.g. AdamW's moment estimates)."""
    return [v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
