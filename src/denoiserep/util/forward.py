"""Running a model on an example or on batches: the call convention, batches without
gradients, and the restore of train/eval modes."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn


def _describe(example_input: Any) -> str:
    """`` of shape (2, 3, 8, 8)`` for a tensor (a tuple: its tensors' shapes), else ``""``."""
    items = example_input if isinstance(example_input, tuple) else (example_input,)
    shapes = [tuple(x.shape) for x in items if isinstance(x, torch.Tensor)]
    if not shapes or len(shapes) != len(items):
        return ""
    return " of shape " + ", ".join(str(s) for s in shapes)


def call(model: nn.Module, example_input: Any) -> Any:
    """Run the model on an example: a tuple is positional args, a dict keyword args.

    An error of the model's is re-raised as one ``ValueError`` naming the input's shape.
    """
    try:
        if isinstance(example_input, tuple):
            return model(*example_input)
        if isinstance(example_input, dict):
            return model(**example_input)
        return model(example_input)
    except Exception as e:  # noqa: BLE001 - the model's own error, in one line
        text = str(e).strip()
        reason = text.splitlines()[0] if text else ""
        raise ValueError(
            f"example_input{_describe(example_input)}: the model rejected it: "
            f"{type(e).__name__}: {reason}; pass an input the model accepts (e.g. a batch of "
            "training inputs)"
        ) from e


@contextlib.contextmanager
def modes_restored(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block the model may switch any module between train and eval; on exit
    every module's training mode is what it was before."""
    modes = {m: m.training for m in model.modules()}
    try:
        yield model
    finally:
        for m, mode in modes.items():
            m.training = mode


def _default_forward(model: nn.Module, batch: Any) -> None:
    device = next(model.parameters()).device
    if isinstance(batch, (tuple, list)):
        batch = batch[0]
    if isinstance(batch, dict):
        model(**{k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()})
    else:
        model(batch.to(device))


def run_batches(
    model: nn.Module,
    data: torch.Tensor | Iterable[Any],
    forward: Callable[[nn.Module, Any], Any] | None = None,
    max_batches: int | None = None,
) -> None:
    """Run ``model`` without gradients on one input batch (a tensor) or an iterable of batches
    (a tuple / list batch is read as ``(inputs, labels, ...)``, a dict as keyword inputs), at
    most ``max_batches`` of them; ``forward(model, batch)`` runs models that take other inputs."""
    run = forward or _default_forward
    batches = [data] if isinstance(data, torch.Tensor) else data
    with torch.no_grad():
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            run(model, batch)
