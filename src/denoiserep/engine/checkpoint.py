"""Crash-safe training checkpoints: written to a temporary folder, then renamed into place.

A checkpoint folder holds ``model.safetensors`` (the model as trained: converted, not fused),
``denoiserep.yaml`` for converted models, and ``state.pt`` (optimizer, scheduler, epoch,
step, RNG states, history, config: tensors, numbers, strings and containers only, read back
with ``torch.load(weights_only=True)`` so that a planted file cannot run code; one that needs
more is refused, naming it). A ``strategy=fsdp`` run writes ``shards/`` instead of the model
files (:func:`save_sharded_state`) and no optimizer in ``state.pt``. ``state.pt`` keeps every
rank's running sums of the epoch (:func:`gather_rank_sums`; a resume on another number of
processes hands them to rank 0, rescaled: :func:`own_rank_sums`).
``latest`` names the newest checkpoint written. The last two checkpoints are kept; a run
resumes from the newest one that reads, and a checkpoint that cannot be read (truncated,
corrupt) is skipped with a one-line warning naming it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import re
import shutil
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_model
from torch import nn

import denoiserep as dr
from denoiserep.util.errors import first_line
from denoiserep.util.state_dict import load_state_checked, read_weights

from .dist import barrier, is_distributed, is_main, rank, world_size
from .optim import load_optimizer_state
from .runs import note_started

__all__ = [
    "KEEP",
    "UntrustedCheckpoint",
    "latest_checkpoint",
    "load_state_checked",
    "is_sharded_checkpoint",
    "load_sharded_state",
    "load_training_state",
    "read_weights",
    "save_sharded_state",
    "save_training_state",
]

LATEST = "latest"
SHARDS = "shards"  # a sharded run's model and optimizer (torch.distributed.checkpoint)
KEEP = 2
_verified: dict[str, Any] = {}  # the state.pt read while checking it, for load_training_state


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _payload(state: dict[str, Any], optimizer_state: Any, scheduler: Any) -> dict[str, Any]:
    """What ``state.pt`` holds beside the model: the training state, the optimizer's (None when
    the shards hold it), the scheduler's and the random generators'."""
    payload = dict(state, optimizer=optimizer_state, rng=_rng_state())
    payload["scheduler"] = scheduler.state_dict() if scheduler is not None else None
    return payload


def _restore_schedule_and_rng(state: dict[str, Any], scheduler: Any) -> None:
    """Put back what :func:`_payload` saved of the scheduler and the random generators."""
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])


def _clear_killed_writes(directory: Path) -> None:
    """Create ``directory``; remove the ``.step-*.tmp`` folders a killed write left in it."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob(".step-*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)


def _step(path: Path) -> int | None:
    try:
        return int(path.name.split("-", 1)[1])
    except (IndexError, ValueError):
        return None


def _checkpoints(directory: Path) -> list[Path]:
    """``step-*`` folders under ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.glob("step-*") if p.is_dir() and _step(p) is not None]
    return sorted(found, key=_step)


def save_training_state(
    directory: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    keep: int = KEEP,
) -> Path:
    """Write ``step-<step>`` under ``directory`` atomically, point ``latest`` at it and keep
    the ``keep`` newest checkpoints (older ones, and newer ones a resume went back past, go)."""
    directory = Path(directory)
    _clear_killed_writes(directory)
    root = dr.unwrap(model)
    step = int(state["global_step"])
    name = f"step-{step:08d}"
    tmp = directory / f".{name}.tmp"
    final = directory / name
    try:
        tmp.mkdir()
        if dr.is_converted(root):
            dr.save_converted(root, tmp)
        else:
            save_model(root, str(tmp / "model.safetensors"))
        torch.save(_payload(state, optimizer.state_dict(), scheduler), tmp / "state.pt")
    except Exception as e:  # noqa: BLE001 - safetensors, torch and the OS each say it their way
        message = _write_failure(final, e)  # free space measured before the cleanup
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(message) from None
    return _publish(directory, tmp, final, keep)


def _publish(directory: Path, tmp: Path, final: Path, keep: int) -> Path:
    """Rename the written ``tmp`` to ``final``, point ``latest`` at it, keep ``keep``."""
    step = _step(final)
    shutil.rmtree(final, ignore_errors=True)
    os.rename(tmp, final)
    pointer = directory / f".{LATEST}.tmp"
    pointer.write_text(final.name)
    os.replace(pointer, directory / LATEST)
    others = [p for p in _checkpoints(directory) if p != final]
    older = [p for p in others if _step(p) < step]
    stale = [p for p in others if _step(p) > step] + older[: max(0, len(older) - (keep - 1))]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    note_started(directory)  # a run with a checkpoint has started: its folder is claimed
    return final


def save_sharded_state(
    directory: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    keep: int = KEEP,
) -> Path:
    """``strategy=fsdp``: every rank calls it. Model and optimizer go through
    ``torch.distributed.checkpoint`` into ``<checkpoint>/shards`` (each rank writes its own
    shards; the files are laid out by parameter name, so any number of processes reads them
    back); rank 0 writes ``state.pt`` (no optimizer in it) and publishes the folder."""
    from torch.distributed.checkpoint import save
    from torch.distributed.checkpoint.state_dict import get_state_dict

    directory = Path(directory)
    final = directory / f"step-{int(state['global_step']):08d}"
    tmp = directory / f".{final.name}.tmp"
    if is_main():
        _clear_killed_writes(directory)
        tmp.mkdir()
    barrier()
    model_state, optim_state = get_state_dict(model, optimizer)
    with _one_process_is_fine():
        save({"model": model_state, "optim": optim_state}, checkpoint_id=str(tmp / SHARDS))
    if is_main():
        torch.save(_payload(state, None, scheduler), tmp / "state.pt")
        _publish(directory, tmp, final, keep)
    barrier()
    return final


def gather_rank_sums(sums: dict[str, float]) -> list[dict[str, float]]:
    """Every rank's running sums of the epoch, for ``state.pt`` (each rank logs its own part
    of the batch; rank 0's alone, restored on every rank, would count its steps once per
    rank). All ranks call it."""
    if not is_distributed():
        return [sums]
    every: list[Any] = [None] * world_size()
    torch.distributed.all_gather_object(every, sums)
    return every


def own_rank_sums(every: list[dict[str, float]]) -> dict[str, float]:
    """This rank's share of the saved sums: its own on the same number of processes. On
    another number, rank 0 takes the total and the others zeros (the epoch's all-reduce adds
    them up), scaled by new / old processes: a step's per-rank means then sum to what the new
    ranks' halves of that batch would have logged, so the epoch's mean weighs each batch once."""
    if len(every) == world_size():
        return every[rank()]
    if rank() > 0:
        return {k: 0 * v for k, v in every[0].items()}
    scale = world_size() / len(every)
    total = {k: sum(s[k] for s in every) * scale for k in every[0]}
    if "n" in total:  # the step count stays an integer: n of every rank is the same
        total["n"] = round(total["n"])
    return total


@contextlib.contextmanager
def _one_process_is_fine() -> Iterator[None]:
    """Silence torch.distributed.checkpoint's note that it runs without a process group (a
    ``strategy=fsdp`` run on one process: it trains as ``ddp``, and says so once)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def is_sharded_checkpoint(path: str | Path) -> bool:
    """Whether checkpoint ``path`` was written by :func:`save_sharded_state`."""
    return (Path(path) / SHARDS).is_dir()


def load_sharded_state(
    path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> dict[str, Any]:
    """Every rank: restore what :func:`save_sharded_state` wrote into ``model`` (sharded or
    plain, on any number of processes) and ``optimizer``; return the training state."""
    from torch.distributed.checkpoint import load
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    path = Path(path)
    state = _read_state(path)
    model_state, optim_state = get_state_dict(model, optimizer)
    both = {"model": model_state, "optim": optim_state}
    with _one_process_is_fine():
        load(both, checkpoint_id=str(path / SHARDS))
    set_state_dict(model, optimizer, model_state_dict=both["model"], optim_state_dict=both["optim"])
    _restore_schedule_and_rng(state, scheduler)
    return state


class UntrustedCheckpoint(ValueError):
    """A ``state.pt`` that could only be read by running code it names: never unpickled."""


# What a training state holds; a state.pt without one of these is not ours (or is damaged).
_STATE_KEYS = ("epoch", "step", "global_step", "history", "optimizer", "scheduler", "rng")


def _write_failure(path: Path, e: BaseException) -> str:
    """One line for a checkpoint that could not be written. torch reports a full disk as
    "enforce fail at inline_container.cc ... unexpected pos", so the free space decides
    where the error does not say it."""
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    said = getattr(e, "errno", None) == errno.ENOSPC or "No space left" in str(e)
    full = said or (free is not None and free < 1 << 20)
    if full:
        return (
            f"no space left on the device of {path.parent} while writing checkpoint {path.name} "
            f"({free if free is not None else 'unknown'} bytes free); free some space or choose "
            "another output, then rerun the same command: it resumes from the last checkpoint"
        )
    return f"checkpoint {path} could not be written ({first_line(e)})"


def _read_state(path: Path) -> dict[str, Any]:
    """``state.pt`` of checkpoint ``path``, or a one-line error naming the file."""
    file = path / "state.pt"
    key = str(file)
    cached = _verified.pop(key, None)
    if cached is not None and cached[0] == _stamp(file):
        return cached[1]
    try:
        return _torch_state(file)
    except UntrustedCheckpoint:
        raise
    except Exception as e:  # noqa: BLE001 - every reader error becomes one line naming the file
        raise ValueError(
            f"checkpoint file {file} cannot be read, it is truncated or corrupt "
            f"({first_line(e)}); delete {path} to resume from the checkpoint before it"
        ) from None


def _torch_state(file: Path) -> dict[str, Any]:
    """Read a training state with ``weights_only=True``: tensors, numbers, strings and
    containers only, so a planted file cannot run code. A file that needs more is refused."""
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():
            raise
        found = re.search(r"Unsupported (?:global|operand)[^A-Za-z]*(?:GLOBAL )?([\w.]+)", str(e))
        what = f" (it names {found.group(1)})" if found else ""
        raise UntrustedCheckpoint(
            f"checkpoint file {file} refused: reading it would run code it names{what}, which "
            "a denoiserep checkpoint never holds; it was not unpickled. Delete "
            f"{file.parent} to resume from the checkpoint before it, or use another output"
        ) from None
    if not isinstance(state, dict):
        raise ValueError("it holds no training state")
    missing = [k for k in _STATE_KEYS if k not in state]
    if missing or not isinstance(state["rng"], dict) or "torch" not in state["rng"]:
        raise ValueError(f"it holds no training state (missing: {', '.join(missing) or 'rng'})")
    return state


def _stamp(file: Path) -> tuple[int, int]:
    st = file.stat()
    return st.st_mtime_ns, st.st_size


def _problem(path: Path) -> str | None:
    """Why checkpoint ``path`` cannot be resumed from, or None if it reads."""
    if is_sharded_checkpoint(path):  # torch.distributed.checkpoint writes .metadata last
        names: tuple[str, ...] = (f"{SHARDS}/.metadata", "state.pt")
    else:
        names = ("model.safetensors", "state.pt")
    for name in names:
        if not (path / name).is_file():
            return f"{name} is missing"
    try:
        if not is_sharded_checkpoint(path):
            with safe_open(str(path / "model.safetensors"), "pt"):
                pass
    except Exception as e:  # noqa: BLE001
        return f"model.safetensors: {first_line(e)}"
    meta = path / "denoiserep.yaml"
    if meta.exists():
        try:
            yaml.safe_load(meta.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            return f"denoiserep.yaml: {first_line(e)}"
    try:
        state = _torch_state(path / "state.pt")
    except UntrustedCheckpoint:
        raise  # not a crash's leftover: never skipped silently to an older checkpoint
    except Exception as e:  # noqa: BLE001
        return f"state.pt: {first_line(e)}"
    _verified.clear()
    _verified[str(path / "state.pt")] = (_stamp(path / "state.pt"), state)
    return None


def _warn(message: str) -> None:
    if is_main():
        print(f"denoiserep: warning: {message}", file=sys.stderr, flush=True)


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest checkpoint under ``directory`` that reads, or None.

    A checkpoint that cannot be read is skipped with a one-line warning naming it, so a run
    resumes from the one before it (two are kept).
    """
    for path in reversed(_checkpoints(Path(directory))):
        problem = _problem(path)
        if problem is None:
            return path
        _warn(f"checkpoint {path} cannot be read ({problem}); skipped")
    return None


def load_training_state(
    path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None, scheduler: Any
) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and RNG states from checkpoint ``path``; return the
    saved training state. (Not ``denoiserep.models.load_checkpoint(model, path)``, which reads
    pretrained weights into a model.)"""
    path = Path(path)
    root = dr.unwrap(model)
    state = _read_state(path)
    load_state_checked(root, path / "model.safetensors", source=f"checkpoint {path}")
    if optimizer is not None:
        load_optimizer_state(optimizer, state["optimizer"])
    _restore_schedule_and_rng(state, scheduler)
    return state
