"""What both benchmarks do to their source model: check it takes the data, load its weights."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from denoiserep.engine.arms import load_baseline_weights
from denoiserep.util.errors import first_line
from denoiserep.util.state_dict import read_weights


def check_model(model: nn.Module, probe: torch.Tensor, name: str) -> None:
    """One line when ``model`` (eval mode) cannot run on the images of ``probe``."""
    try:
        with torch.no_grad():
            model.eval()(probe)
    except Exception as e:  # noqa: BLE001 - whatever the model raises becomes one line
        first = first_line(e)
        size = "x".join(str(s) for s in probe.shape[1:])
        raise ValueError(f"model {name} cannot take the data's {size} images ({first})") from None


def load_source_weights(model: nn.Module, path: str, seed: int, classes: str) -> list[str]:
    """Load ``path`` into ``model`` (a head of another size is re-initialised); return the
    note saying so (``classes``: e.g. ``10 classes``), or none."""
    expected = model.state_dict()
    state = read_weights(path)
    load_baseline_weights(model, path, reinit_head=True)  # or one line
    reset = [k for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    if not reset:
        return []
    return [
        f"seed {seed}: classifier head ({', '.join(reset)}) of {path} re-initialised for {classes}"
    ]


def seeded_source_model(
    build: Callable[[], nn.Module], weights: str | None, seed: int, classes: str
) -> tuple[nn.Module, list[str]]:
    """A model built under ``seed``, with ``weights`` loaded when given, and the notes
    :func:`load_source_weights` returns."""
    torch.manual_seed(seed)
    model = build()
    notes = load_source_weights(model, weights, seed, classes) if weights else []
    return model, notes
