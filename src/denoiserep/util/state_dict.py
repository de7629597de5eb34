"""Read a weights file of any common format safely, and load a state dict with a one-line
summary of what does not match (:func:`read_weights`, :func:`load_state_checked`)."""

from __future__ import annotations

import argparse
import os
import pickle
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from .errors import first_line, warn_once
from .modules import unwrap

#: Where training checkpoints keep their state dict, in the order one is chosen by default:
#: the trained weights first (``state_dict``: timm / Lightning / mmengine; ``model``: DeiT, MAE,
#: torchvision's references), their EMA copies only when nothing else is there.
STATE_KEYS = ("state_dict", "model", "model_state_dict", "model_ema", "state_dict_ema")
#: Plain-data classes a training checkpoint often holds beside its tensors (timm / DeiT save
#: their ``argparse`` arguments): unpickled safely, they only carry attributes.
_SAFE_EXTRAS = (argparse.Namespace,)
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def _is_state_dict(value: Any) -> bool:
    return isinstance(value, Mapping) and all(isinstance(v, torch.Tensor) for v in value.values())


def _unsafe_globals(path: Path, error: BaseException) -> list[str]:
    """The classes / functions a ``weights_only`` load refused: first the one torch's error
    names (the first met, e.g. a pickled model's own class), then those torch's disassembler
    reads from the pickle without running it (zip files only)."""
    names = _GLOBAL.findall(str(error))[:1]
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # noqa: BLE001 - legacy (non-zip) files: the error's name only
        found = []
    return names + sorted(n for n in found if n not in names)


def _is_module_class(name: str) -> bool:
    """``name`` (``pkg.mod.Class``) is an ``nn.Module`` subclass, judged without importing
    anything: torch's own layers by name, other classes only if their module is loaded."""
    if name.startswith("torch.nn.modules."):
        return True
    module, _, attr = name.rpartition(".")
    cls = getattr(sys.modules.get(module), attr, None)
    return isinstance(cls, type) and issubclass(cls, nn.Module)


def _refusal(path: Path, names: list[str]) -> ValueError:
    """A one-line account of a pickle that holds more than tensors (nothing of it is run)."""
    modules = [n for n in names if _is_module_class(n)]
    if modules:
        top = next((n for n in modules if not n.startswith("torch.nn.")), modules[0])
        return ValueError(
            f"weights file {path} is a whole pickled model ({top}, written by torch.save(model)), "
            f"not a state dict of tensors; it is not unpickled here because unpickling a "
            f"model runs code the file names; if you trust the file, turn it into a state "
            f"dict once with torch.save(torch.load(f, weights_only=False).state_dict(), out) "
            f"and point model.checkpoint at out"
        )
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "") or "unknown objects"
    return ValueError(
        f"weights file {path} holds Python objects besides tensors ({shown}); they are not "
        f"unpickled here because unpickling them runs code the file names; if you trust the "
        f"file, load it in your own Python session and torch.save only its state dict "
        f"(names -> tensors) to a new file"
    )


def read_weights(path: str | Path, key: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file or a torch file: a state dict, or one nested in a
    training checkpoint (``state_dict``, ``model``, ``model_state_dict``, ``model_ema``,
    ``state_dict_ema``, or any other entry holding one).

    ``key`` chooses the nested entry; without it the first of :data:`STATE_KEYS` present is
    used (one logged line names it when the file holds several). A missing, truncated or
    corrupt file, a whole pickled model (``torch.save(model)``, never unpickled here) and a
    ``key`` the file lacks are one-line errors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found")
    try:
        if path.suffix == ".safetensors":
            state: Any = load_file(str(path))
        else:
            with torch.serialization.safe_globals(list(_SAFE_EXTRAS)):
                state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        if "weights only" not in text.lower():
            raise _corrupt(path, first_line(e)) from None
        names = _unsafe_globals(path, e)
        if names:  # intact, but it holds more than tensors
            raise _refusal(path, names) from None
        operand = re.search(r"Unsupported operand \w+", text)  # garbage read as a pickle
        raise _corrupt(path, operand.group(0) if operand else "not a pickle of tensors") from None
    except Exception as e:  # noqa: BLE001 - every reader error becomes one line naming the file
        raise _corrupt(path, first_line(e)) from None
    return dict(_select(state, path, key))


def _corrupt(path: Path, cause: str) -> ValueError:
    return ValueError(
        f"weights file {path} cannot be read, it is truncated or corrupt ({cause}); write it again"
    )


def _select(state: Any, path: Path, key: str | None) -> Mapping[str, torch.Tensor]:
    """The state dict in a loaded file: the file itself, or its entry ``key`` / the default."""
    nested = (
        [k for k, v in state.items() if isinstance(k, str) and _is_state_dict(v) and v]
        if isinstance(state, Mapping)
        else []
    )
    if key is not None:
        if key in nested:
            return state[key]
        holds = (
            f"it holds state dicts under {', '.join(map(repr, nested))}"
            if nested
            else "it is a plain state dict; unset model.checkpoint_key"
            if _is_state_dict(state)
            else f"it holds no state dict (top-level keys: {_keys(state)})"
        )
        raise ValueError(f"model.checkpoint_key {key!r} is not in weights file {path}: {holds}")
    if _is_state_dict(state):
        return state
    known = [k for k in STATE_KEYS if k in nested]
    if known:
        if len(known) > 1:  # several known layouts (a model and its EMA): say which one
            others = ", ".join(repr(k) for k in known[1:])
            warn_once(
                f"weights file {path} holds several state dicts; using {known[0]!r} "
                f"(set model.checkpoint_key to {others} for another)"
            )
        return state[known[0]]
    if len(nested) == 1:
        return state[nested[0]]
    if nested:
        raise ValueError(
            f"weights file {path} holds state dicts under {', '.join(map(repr, nested))}: "
            f"set model.checkpoint_key to the one to load"
        )
    found = type(state).__name__
    if isinstance(state, Mapping):
        found += f" with keys {_keys(state)}"
    raise ValueError(
        f"weights file {path}: expected a state dict (names -> tensors), raw or under "
        f"{' / '.join(repr(k) for k in STATE_KEYS)}, got a {found}"
    )


def _keys(state: Any) -> str:
    if not isinstance(state, Mapping):
        return type(state).__name__
    names = list(map(str, state))
    return ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def load_state_checked(
    model: nn.Module,
    weights: str | Path | Mapping[str, torch.Tensor],
    source: str | None = None,
    strict: bool = True,
) -> None:
    """Load ``weights`` (a file path or a state dict) into ``model``, or explain in one line.

    Size mismatches are summarised ("14 tensors differ in shape, e.g. blocks.0.attn.qkv.weight:
    (384, 128) in the file vs (192, 64) in the model"); with ``strict`` missing and
    unexpected names are errors too (a name missing because it shares its tensor with a
    loaded one, as tied weights do, is fine). ``source`` names the weights in the message.
    """
    if isinstance(weights, str | os.PathLike):
        source = source or str(weights)
        state = read_weights(weights)
    else:
        source = source or "the state dict"
        state = dict(weights)
    root = unwrap(model)
    expected = root.state_dict()
    differ = [
        (k, tuple(state[k].shape), tuple(v.shape))
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    present = {
        (v.data_ptr(), tuple(v.shape)) for k, v in expected.items() if k in state and v.numel()
    }
    missing = [
        k
        for k, v in expected.items()
        if k not in state and not (v.numel() and (v.data_ptr(), tuple(v.shape)) in present)
    ]
    unexpected = [k for k in state if k not in expected]
    problems = []
    if differ:
        name, got, want = differ[0]
        problems.append(
            f"{len(differ)} tensor{'s' if len(differ) > 1 else ''} differ in shape, e.g. "
            f"{name}: {_shape(got)} in the file vs {_shape(want)} in the model"
        )
    if strict and missing:
        problems.append(f"{len(missing)} missing, e.g. {', '.join(missing[:3])}")
    if strict and unexpected:
        problems.append(f"{len(unexpected)} unexpected, e.g. {', '.join(unexpected[:3])}")
    if problems:
        raise ValueError(
            f"{source} does not match the model ({type(root).__name__}): {'; '.join(problems)}"
        )
    root.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
