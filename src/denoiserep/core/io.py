"""Save and restore a converted model: weights in safetensors, config and timesteps in YAML."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import yaml
from safetensors.torch import load_model, save_model
from torch import nn

from .config import DenoiseConfig
from .convert import _state, convert, denoise_layers, set_phase, unwrap

WEIGHTS = "model.safetensors"
META = "denoiserep.yaml"


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


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


def load_converted(model: nn.Module, directory: str | Path, strict: bool = True) -> nn.Module:
    """Convert a freshly built ``model`` as saved in ``directory`` and load its weights.

    The restored model has the saved config, timesteps, phase and weights, and fuses to the
    same weights as the model that was saved.
    """
    directory = Path(directory)
    for name in (WEIGHTS, META):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory / name} not found: not a saved DenoiseRep model")
    meta = yaml.safe_load((directory / META).read_text())
    config = DenoiseConfig.from_dict(meta["config"])
    model = convert(model, config, timesteps={n: int(t) for n, t in meta["timesteps"].items()})
    missing, unexpected = load_model(model, str(directory / WEIGHTS), strict=False)
    if strict and (missing or unexpected):
        raise ValueError(
            f"{directory / WEIGHTS} does not match the model: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    set_phase(model, meta.get("phase", "joint"))
    return model
