"""Peak-memory accounting and interleaved timing, on hand-made workloads."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from denoiserep.bench.memory import (
    memory_method,
    module_tensors,
    optimizer_tensors,
    peak_memory,
    tensor_bytes,
)
from denoiserep.engine.latency import measure_latency, time_interleaved


def test_cpu_peak_counts_live_tensor_bytes_above_the_start():
    held = torch.empty(100_000)  # 400 kB alive before the work starts: not counted

    def work():
        a = torch.empty(250_000)  # 1.0 MB
        b = torch.empty(125_000)  # + 0.5 MB = 1.5 MB live
        del a
        c = torch.empty(200_000)  # 0.5 + 0.8 = 1.3 MB live
        del b, c
        held.add_(1.0)  # in place: no allocation
        d = torch.empty(300_000)  # 1.2 MB
        del d

    assert peak_memory(work, "cpu") == 1_500_000
    assert "profile_memory" in memory_method("cpu")


def test_cpu_peak_of_a_forward_is_at_least_its_output():
    layer = nn.Linear(256, 512)
    x = torch.randn(64, 256)
    with torch.no_grad():
        assert peak_memory(lambda: layer(x)) >= 64 * 512 * 4


def test_unsupported_device_is_an_error():
    with pytest.raises(ValueError, match="cpu and cuda"):
        peak_memory(lambda: None, "meta")


def test_tensor_bytes_counts_each_storage_once():
    w = torch.zeros(10, 10)
    assert tensor_bytes([w, w.t(), w[2:5], torch.zeros(3, dtype=torch.float64)]) == 400 + 24


def test_module_and_optimizer_tensors():
    layer = nn.Linear(3, 2)
    layer.register_buffer("scale", torch.ones(5))
    assert tensor_bytes(module_tensors(layer)) == (6 + 2 + 5) * 4  # no gradients yet
    optimizer = torch.optim.AdamW(layer.parameters())
    layer(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    assert tensor_bytes(module_tensors(layer)) == (2 * (6 + 2) + 5) * 4
    # AdamW keeps two moment estimates per parameter and a step counter per parameter
    assert tensor_bytes(optimizer_tensors(optimizer)) == 2 * (6 + 2) * 4 + 2 * 4


def test_time_interleaved_warms_up_then_runs_rounds():
    calls = []
    fns = {name: (lambda n=name: calls.append(n)) for name in "abc"}
    times = time_interleaved(fns, repeats=3, warmup=2, seed=None)
    assert calls == ["a", "a", "b", "b", "c", "c"] + ["a", "b", "c"] * 3
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(t >= 0 for ts in times.values() for t in ts)
    calls.clear()
    time_interleaved(fns, repeats=20, warmup=0, seed=0)
    rounds = [tuple(calls[i : i + 3]) for i in range(0, 60, 3)]
    assert all(sorted(r) == ["a", "b", "c"] for r in rounds)  # each round calls each once
    assert len(set(rounds)) > 1  # in shuffled orders
    with pytest.raises(ValueError, match="repeats >= 1"):
        time_interleaved(fns, repeats=0, warmup=0)


def test_torch_benchmark_timer_times_one_statement_in_blocks_on_one_thread():
    """Why time_interleaved stays: torch.utils.benchmark.Timer runs one statement at a time
    (warm-up calls inside every measurement) on one thread unless told otherwise; the bench
    times every variant's single calls in shuffled rounds at the process's thread count."""
    from torch.utils.benchmark import Timer

    calls, threads = [], []

    def fn():
        calls.append("a")
        threads.append(torch.get_num_threads())

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        Timer("fn()", globals={"fn": fn}).timeit(1)
        assert len(calls) == 3 and set(threads) == {1}  # 2 warm-up calls + 1 timed, 1 thread
        calls.clear()
        threads.clear()
        time_interleaved({"a": fn}, repeats=1, warmup=0)
        assert len(calls) == 1 and threads == [2]
    finally:
        torch.set_num_threads(before)


def test_measure_latency_returns_medians_in_eval_mode():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)).train()
    latency = measure_latency({"m": model}, torch.randn(2, 4), repeats=3, warmup=1)
    assert set(latency) == {"m"} and latency["m"] > 0
    assert not model.training
