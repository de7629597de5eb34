"""Save and restore a converted model: weights in safetensors, config and timesteps in YAML.

Also reads weights files with one-line errors (:func:`read_weights`) and loads a state dict
with a one-line summary of what does not match (:func:`load_state_checked`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_model
from torch import nn

from .config import DenoiseConfig, yaml_error_line
from .convert import _state, convert, denoise_layers, set_phase, unwrap
from .layer import PHASES

WEIGHTS = "model.safetensors"
META = "denoiserep.yaml"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file or a torch file (a state dict, or one under
    ``state_dict`` / ``model``); a missing, truncated or corrupt file is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found")
    try:
        if path.suffix == ".safetensors":
            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - every reader error becomes one line naming the file
        raise ValueError(
            f"weights file {path} cannot be read, it is truncated or corrupt "
            f"({_first_line(e)}); write it again"
        ) from None
    if isinstance(state, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(state.get(key), Mapping):
                state = state[key]
                break
    if not (
        isinstance(state, Mapping) and all(isinstance(v, torch.Tensor) for v in state.values())
    ):
        found = type(state).__name__
        if isinstance(state, Mapping):
            found += f" with keys {', '.join(list(map(str, state))[:5])}"
        raise ValueError(
            f"weights file {path}: expected a state dict (names -> tensors), raw or under "
            f"'state_dict' / 'model', got a {found}"
        )
    return dict(state)


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


def save_converted(model: nn.Module, directory: str | Path) -> Path:
    """Write ``model.safetensors`` and ``denoiserep.yaml`` (config, phase, timesteps) atomically."""
    root = unwrap(model)
    state = _state(root)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{WEIGHTS}.tmp"
    save_model(root, str(tmp))
    os.replace(tmp, directory / WEIGHTS)
    meta = {
        "config": state.config.to_dict(),
        "phase": state.phase,
        "timesteps": {n: layer.t for n, layer in denoise_layers(root).items()},
    }
    _atomic_write_text(directory / META, yaml.safe_dump(meta, sort_keys=False))
    return directory


def _read_meta(path: Path) -> tuple[DenoiseConfig, dict[str, int], str]:
    """Config, timesteps and phase from ``denoiserep.yaml``, or a one-line error naming it."""
    again = "save the model again with denoiserep.save_converted"
    try:
        meta = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: {yaml_error_line(e)}; {again}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} cannot be read ({_first_line(e)}); {again}") from None
    if not (
        isinstance(meta, dict)
        and isinstance(meta.get("config"), dict)
        and isinstance(meta.get("timesteps"), dict)
    ):
        raise ValueError(
            f"{path} is not a DenoiseRep model description (it needs `config` and "
            f"`timesteps` mappings); {again}"
        )
    try:
        config = DenoiseConfig.from_dict(meta["config"])
        timesteps = {str(n): int(t) for n, t in meta["timesteps"].items()}
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {_first_line(e)}; {again}") from None
    phase = meta.get("phase", "joint")
    if phase not in PHASES:
        raise ValueError(f"{path}: phase must be one of {PHASES}, got {phase!r}; {again}")
    return config, timesteps, phase


def load_converted(model: nn.Module, directory: str | Path, strict: bool = True) -> nn.Module:
    """Convert a freshly built ``model`` as saved in ``directory`` and load its weights.

    The restored model has the saved config, timesteps, phase and weights, and fuses to the
    same weights as the model that was saved. Both files are read before ``model`` is
    touched, so a broken file leaves it as it was.
    """
    directory = Path(directory)
    for name in (WEIGHTS, META):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory / name} not found: not a saved DenoiseRep model")
    config, timesteps, phase = _read_meta(directory / META)
    state = read_weights(directory / WEIGHTS)
    model = convert(model, config, timesteps=timesteps)
    load_state_checked(model, state, source=str(directory / WEIGHTS), strict=strict)
    set_phase(model, phase)
    return model
