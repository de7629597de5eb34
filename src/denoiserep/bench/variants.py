"""The inference variants a bench compares: baseline, fused, explicit and final-feature.

Denoisers are random but non-trivial (each reverse step moves its input by about
``strength``), so that fused and baseline differ measurably while costing the same.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

import denoiserep as dr
from denoiserep.core.structure import randomize
from denoiserep.models.factory import create_model

from .config import BenchConfig
from .final_feature import FinalFeatureDenoiser


def randomize_denoisers(model: nn.Module, strength: float, seed: int) -> None:
    """Random denoisers whose reverse step moves each layer's input by about ``strength``."""
    g = torch.Generator().manual_seed(seed)
    for layer in dr.denoise_layers(model).values():
        randomize(layer, strength, g)


def randomize_final_feature(model: FinalFeatureDenoiser, strength: float, seed: int) -> None:
    """A random noise predictor whose T steps together move the feature by about ``strength``."""
    g = torch.Generator().manual_seed(seed)
    weight = model.predictor.weight
    total_k = sum(model.strength(t) for t in model.timesteps())
    noise = torch.randn(weight.shape, generator=g, dtype=torch.float64)
    with torch.no_grad():
        weight.copy_(noise * strength / (total_k * math.sqrt(weight.shape[1])))


def _is_timm_classifier(model: nn.Module) -> bool:
    return all(hasattr(model, a) for a in ("get_classifier", "reset_classifier", "num_features"))


def build_variants(
    name: str, cfg: BenchConfig, device: torch.device
) -> tuple[dict[str, nn.Module], nn.Module]:
    """The inference variants of ``cfg.variants`` for one model, and the converted model."""
    torch.manual_seed(cfg.seed)
    baseline = create_model(name, **cfg.model_kwargs.get(name, {})).to(device).eval()
    example = torch.randn(1, 3, cfg.image_size, cfg.image_size, device=device)
    converted = dr.convert(copy.deepcopy(baseline), cfg.denoise, example_input=example)
    randomize_denoisers(converted, cfg.denoiser_strength, cfg.seed)
    converted.eval()
    variants: dict[str, nn.Module] = {"baseline": baseline}
    if "fused" in cfg.variants:
        variants["fused"] = dr.fuse(converted).eval()
    if "explicit" in cfg.variants:
        explicit = copy.deepcopy(converted).eval()
        for layer in dr.denoise_layers(explicit).values():
            layer.explicit = True
        variants["explicit"] = explicit
    if "final_feature" in cfg.variants:
        if not _is_timm_classifier(baseline):
            raise ValueError(
                f"variant final_feature needs a timm classifier (get_classifier, "
                f"reset_classifier, num_features); {name} is not one: drop it from variants"
            )
        schedule = cfg.denoise.build_schedule()
        final = FinalFeatureDenoiser.from_timm(baseline, schedule, cfg.final_feature_steps or None)
        randomize_final_feature(final, cfg.denoiser_strength, cfg.seed)
        variants["final_feature"] = final.to(device).eval()
    return variants, converted
