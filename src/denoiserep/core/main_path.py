"""The main path of a network: the layers on its shortest route from input to output.

A residual block adds its branch to an identity (or one-layer) shortcut, so the route from the
input to the output that crosses the fewest Linear / Conv layers runs through the stem, the
downsampling shortcuts and the head, and through no residual branch. On the robustness studies'
CNNs the denoising steps on these layers do all the denoising that steps on every layer do, for a
small part of the training cost (docs/results/robustness.md, "Which steps do the work"); hence the
``targets="main_path"`` preset.

The route is found on the autograd graph of one forward: each candidate layer's output node costs
1 to cross, every other node 0, and a layer is on the main path when a route of least cost from
an output back to the input passes through it (a 0-1 breadth-first search each way).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from denoiserep.util.forward import call, modes_restored


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    """Every tensor inside nested tuples, lists, dicts and dataclass-like outputs."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _tensors(v)
    elif hasattr(value, "__dict__") and not isinstance(value, nn.Module):
        for v in vars(value).values():
            yield from _tensors(v)


def _with_grad(value: Any) -> Any:
    """``value`` with every floating-point tensor replaced by a leaf copy that requires grad."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone().requires_grad_(True) if value.is_floating_point() else value
    if isinstance(value, dict):
        return {k: _with_grad(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_with_grad(v) for v in value)
    if isinstance(value, list):
        return [_with_grad(v) for v in value]
    return value


def _least_cost(sources: list[Any], edges: dict[Any, list[Any]], cost: dict[Any, int]) -> dict:
    """0-1 BFS: the least summed node cost of a route from any source to each node (both ends
    counted)."""
    dist = {s: cost.get(s, 0) for s in sources}
    queue = deque(sorted(sources, key=dist.__getitem__))
    while queue:
        node = queue.popleft()
        for nxt in edges.get(node, ()):
            d = dist[node] + cost.get(nxt, 0)
            if d < dist.get(nxt, d + 1):
                dist[nxt] = d
                (queue.appendleft if cost.get(nxt, 0) == 0 else queue.append)(nxt)
    return dist


def main_path(model: nn.Module, candidates: dict[str, nn.Module], example_input: Any) -> list[str]:
    """Names of the ``candidates`` on a least-layer route from ``example_input`` to each output.

    One forward in eval mode with gradients on (every module's mode is restored). Each output
    tensor is traced on its own and the layers found are united; a layer whose output is not in
    the autograd graph (e.g. run under ``torch.no_grad``) cannot be found. Raises ``ValueError``
    when the input has no floating-point tensor or no output depends on it.
    """
    inputs = _with_grad(example_input)
    leaves = [x for x in _tensors(inputs) if x.requires_grad]
    if not leaves:
        raise ValueError("targets='main_path' needs an example_input with a floating-point tensor")
    tagged: dict[Any, str] = {}

    def hook_for(name: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            for t in _tensors(output):
                if t.grad_fn is not None:
                    tagged[t.grad_fn] = name

        return hook

    handles = [m.register_forward_hook(hook_for(n)) for n, m in candidates.items()]
    try:
        with modes_restored(model), torch.enable_grad():
            model.eval()
            outputs = [t for t in _tensors(call(model, inputs)) if t.grad_fn is not None]
    finally:
        for h in handles:
            h.remove()

    # the autograd graph, from the outputs towards the inputs; the inputs' leaves by identity
    edges: dict[Any, list[Any]] = {}
    leaf_ids = {id(x) for x in leaves}
    ends: set[Any] = set()
    stack = [t.grad_fn for t in outputs]
    while stack:
        node = stack.pop()
        if node in edges:
            continue
        nexts = [n for n, _ in node.next_functions if n is not None]
        edges[node] = nexts
        if id(getattr(node, "variable", None)) in leaf_ids:
            ends.add(node)
        stack.extend(nexts)
    if not ends:
        raise ValueError("targets='main_path': no output of the model depends on example_input")
    backwards: dict[Any, list[Any]] = {}
    for node, nexts in edges.items():
        for n in nexts:
            backwards.setdefault(n, []).append(node)
    cost = dict.fromkeys(tagged, 1)
    to_input = _least_cost(list(ends), backwards, cost)

    found: set[str] = set()
    for out in outputs:
        from_output = _least_cost([out.grad_fn], edges, cost)
        reached = [from_output[e] for e in ends if e in from_output]
        if not reached:
            continue
        least = min(reached)
        found.update(
            name
            for node, name in tagged.items()
            if node in from_output
            and node in to_input
            and from_output[node] + to_input[node] - 1 == least
        )
    return [n for n in candidates if n in found]
