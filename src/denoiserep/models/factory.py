"""Create models by name: timm names as they are, torchvision ones as ``tv:<name>``."""

from __future__ import annotations

from typing import Any

import timm
import torchvision
from torch import nn


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """A randomly initialised model, with keyword overrides passed straight through.

    ``create_model("vit_tiny_patch16_224", img_size=28, in_chans=1, num_classes=10)`` builds
    a timm model; ``create_model("tv:resnet18", num_classes=10)`` a torchvision one. VMamba
    configs (``vmamba_micro`` ... ``vmamba_base``) are registered with timm by this package.
    """
    if name.startswith("tv:"):
        tv_name = name[3:]
        in_chans = kwargs.pop("in_chans", 3)
        if in_chans != 3:
            raise ValueError(f"torchvision model {tv_name} takes 3 input channels, got {in_chans}")
        kwargs.pop("img_size", None)
        try:
            return torchvision.models.get_model(tv_name, weights=None, **kwargs)
        except ValueError as e:
            raise ValueError(f"unknown torchvision model {tv_name!r}: {e}") from None
    if name.startswith("vmamba"):
        from . import vmamba  # noqa: F401  (registers the VMamba configs with timm)
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise ValueError(f"unknown model {name!r}; similar timm names: {', '.join(close) or '-'}")
    return timm.create_model(name, pretrained=False, **kwargs)


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
