"""Crash-safe training checkpoints: written to a temporary folder, then renamed into place.

A checkpoint folder holds ``model.safetensors`` (the model as trained: converted, not fused),
``denoiserep.yaml`` for converted models, and ``state.pt`` (optimizer, scheduler, epoch,
step, RNG states, history, config). ``latest`` names the newest complete checkpoint.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn

import denoiserep as dr

LATEST = "latest"


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def save_checkpoint(
    directory: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    keep: int = 1,
) -> Path:
    """Write ``step-<step>`` under ``directory`` atomically and point ``latest`` at it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    root = dr.unwrap(model)
    name = f"step-{state['global_step']:08d}"
    tmp = directory / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    if dr.is_converted(root):
        dr.save_converted(root, tmp)
    else:
        save_model(root, str(tmp / "model.safetensors"))
    payload = dict(state, optimizer=optimizer.state_dict(), rng=_rng_state())
    payload["scheduler"] = scheduler.state_dict() if scheduler is not None else None
    torch.save(payload, tmp / "state.pt")
    final = directory / name
    shutil.rmtree(final, ignore_errors=True)
    os.rename(tmp, final)
    pointer = directory / f".{LATEST}.tmp"
    pointer.write_text(name)
    os.replace(pointer, directory / LATEST)
    old = sorted(p for p in directory.glob("step-*") if p.is_dir() and p != final)
    for stale in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest complete checkpoint under ``directory``, or None."""
    pointer = Path(directory) / LATEST
    if not pointer.is_file():
        return None
    path = Path(directory) / pointer.read_text().strip()
    return path if (path / "state.pt").is_file() else None


def load_checkpoint(
    path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None, scheduler: Any
) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and RNG states; return the saved training state."""
    path = Path(path)
    root = dr.unwrap(model)
    missing, unexpected = load_model(root, str(path / "model.safetensors"), strict=False)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {path} does not match the model: missing keys {sorted(missing)[:4]}, "
            f"unexpected keys {sorted(unexpected)[:4]}"
        )
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state
