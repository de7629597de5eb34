"""Latency measurement: median of interleaved repeated runs after warm-up."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    fns: dict[str, Callable[[], Any]],
    repeats: int,
    warmup: int,
    device: torch.device | str = "cpu",
    seed: int | None = 0,
) -> dict[str, list[float]]:
    """Seconds of each of ``repeats`` calls of every function, calls interleaved in rounds.

    Each function is first called ``warmup`` times. Then every round calls each function once,
    in an order shuffled per round (seeded; ``seed=None`` keeps the dict order). Interleaving
    spreads slow drifts (other processes, clock changes) over all functions, and shuffling
    removes the small systematic advantage or penalty of a fixed position in the round.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    device = torch.device(device)
    rng = random.Random(seed)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        order = list(fns)
        if seed is not None:
            rng.shuffle(order)
        for name in order:
            _sync(device)
            start = time.perf_counter()
            fns[name]()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return times


@torch.no_grad()
def measure_latency(
    models: dict[str, nn.Module], x: torch.Tensor, repeats: int = 20, warmup: int = 3
) -> dict[str, float]:
    """Median seconds per forward of each model on ``x``, runs interleaved (drift hits all)."""
    for model in models.values():
        model.eval()
    fns = {name: (lambda m=model: m(x)) for name, model in models.items()}
    times = time_interleaved(fns, repeats, warmup, x.device)
    return {name: statistics.median(ts) for name, ts in times.items()}
