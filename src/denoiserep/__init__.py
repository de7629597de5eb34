"""DenoiseRep: denoising model for representation learning, fused exactly into the backbone.

import denoiserep as dr
model = dr.convert(model, dr.DenoiseConfig(targets="all"), example_input=x)
dr.set_phase(model, "joint")
loss = task_loss + cfg.loss_weight * dr.denoise_loss(model)
plain = dr.fuse(model)
"""

from .core.adapt import adapt
from .core.closed_form import fit_denoisers
from .core.config import DenoiseConfig
from .core.convert import (
    config_of,
    convert,
    denoise_layers,
    denoise_loss,
    denoise_losses,
    denoiser_parameters,
    fuse,
    get_phase,
    is_converted,
    set_phase,
    train_frozen_backbone,
    unwrap,
)
from .core.diagnostics import (
    change_from_baseline,
    denoising_strength,
    explicit_denoising,
    fused_vs_unfused,
)
from .core.fusion import apply_channel_map, fuse_weight, reverse_step_matrix
from .core.io import load_converted, save_converted
from .core.layer import DenoiseLayer
from .core.schedule import NoiseSchedule, cosine_schedule, linear_schedule
from .util.batchnorm import recalibrate_batchnorm

__version__ = "0.1.0"

__all__ = [
    "DenoiseConfig",
    "DenoiseLayer",
    "NoiseSchedule",
    "adapt",
    "apply_channel_map",
    "change_from_baseline",
    "config_of",
    "convert",
    "cosine_schedule",
    "denoise_layers",
    "denoise_loss",
    "denoise_losses",
    "denoising_strength",
    "denoiser_parameters",
    "explicit_denoising",
    "fit_denoisers",
    "fuse",
    "fuse_weight",
    "fused_vs_unfused",
    "get_phase",
    "is_converted",
    "linear_schedule",
    "load_converted",
    "recalibrate_batchnorm",
    "reverse_step_matrix",
    "save_converted",
    "set_phase",
    "train_frozen_backbone",
    "unwrap",
]
