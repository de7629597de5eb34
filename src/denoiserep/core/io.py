"""Save and restore a converted model: weights in safetensors, config and timesteps in YAML."""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from safetensors.torch import save_model
from torch import nn

from denoiserep.util.config import yaml_error_line
from denoiserep.util.errors import first_line
from denoiserep.util.files import atomic_write_text
from denoiserep.util.state_dict import load_state_checked, read_weights

from .config import DenoiseConfig
from .convert import config_of, convert, denoise_layers, get_phase, set_phase, unwrap
from .layer import PHASES

WEIGHTS = "model.safetensors"
META = "denoiserep.yaml"


def save_converted(model: nn.Module, directory: str | Path) -> Path:
    """Write ``model.safetensors`` and ``denoiserep.yaml`` (config, phase, timesteps) atomically."""
    root = unwrap(model)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{WEIGHTS}.tmp"
    save_model(root, str(tmp))
    os.replace(tmp, directory / WEIGHTS)
    meta = {
        "config": config_of(root).to_dict(),
        "phase": get_phase(root),
        "timesteps": {n: layer.t for n, layer in denoise_layers(root).items()},
    }
    atomic_write_text(directory / META, yaml.safe_dump(meta, sort_keys=False))
    return directory


def _read_meta(path: Path) -> tuple[DenoiseConfig, dict[str, int], str]:
    """Config, timesteps and phase from ``denoiserep.yaml``, or a one-line error naming it."""
    again = "save the model again with denoiserep.save_converted"
    try:
        meta = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: {yaml_error_line(e)}; {again}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} cannot be read ({first_line(e)}); {again}") from None
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
        raise ValueError(f"{path}: {first_line(e)}; {again}") from None
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
