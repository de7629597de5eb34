"""Preprocessing that follows a model's weights: normalisation, interpolation, input size, crop.

:func:`preprocessing` reads it from where each library keeps it: timm's pretrained config
(``resolve_data_config``), torchvision's weights enum (``weights.transforms()``), a Hugging Face
image-processor config; ImageNet defaults for anything else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from denoiserep.data.constants import IMAGENET_MEAN, IMAGENET_STD

DEFAULTS = {
    "mean": IMAGENET_MEAN,
    "std": IMAGENET_STD,
    "interpolation": "bilinear",
    "input_size": (3, 224, 224),
    "crop_pct": 0.875,
}
# PIL resampling codes (Hugging Face image processors store them as ints).
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


#: Interpolation names torchvision's ``InterpolationMode`` takes.
INTERPOLATIONS = ("nearest", "nearest-exact", "bilinear", "bicubic", "box", "hamming", "lanczos")


def preprocessing(
    model_or_name: nn.Module | str,
    pretrained: bool | str = True,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    interpolation: str | None = None,
    crop_pct: float | None = None,
) -> dict[str, Any]:
    """``dict(mean, std, interpolation, input_size, crop_pct)`` for a model or a model name.

    A model made by :func:`denoiserep.models.create_model` carries its weights' settings
    (timm's ``pretrained_cfg``, the torchvision weights it was built for, the Hugging Face
    processor config); ``input_size`` is the model's own (e.g. a ViT built with
    ``img_size=32``), and a 1-channel model gets the mean of the RGB statistics. A name
    resolves the weights ``pretrained`` names (default: the library's default weights) without
    building the model. ``crop_pct`` is the centre crop's share of the resized image at
    evaluation (input size / resize size). ``mean`` / ``std`` / ``interpolation`` /
    ``crop_pct`` given here override what the weights imply (``data.mean`` ... in a run's
    config; see :func:`override`).
    """
    if isinstance(model_or_name, str):
        cfg = _from_name(model_or_name, pretrained)
    else:
        cfg = _from_model(model_or_name)
    return override(_finish(cfg), mean, std, interpolation, crop_pct)


def check_overrides(
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    interpolation: str | None = None,
    crop_pct: float | None = None,
    where: str = "data",
) -> None:
    """One-line ValueError for preprocessing overrides no transform can use (``where`` is the
    config section named in the message)."""
    if (mean is None) != (std is None):
        raise ValueError(
            f"set both {where}.mean and {where}.std, or neither (then they follow the weights)"
        )
    if mean is not None and std is not None:
        if not mean or len(mean) != len(std):
            raise ValueError(
                f"{where}.mean and {where}.std need one value per channel each, got {list(mean)} "
                f"and {list(std)}"
            )
        if any(not v > 0 for v in std):
            raise ValueError(f"{where}.std must be positive, got {list(std)}")
    if interpolation is not None and interpolation not in INTERPOLATIONS:
        raise ValueError(
            f"{where}.interpolation must be one of {', '.join(INTERPOLATIONS)}, got "
            f"{interpolation!r}"
        )
    if crop_pct is not None and not 0 < crop_pct <= 1:
        raise ValueError(f"{where}.crop_pct is the centre crop's share in (0, 1], got {crop_pct}")


def override(
    pre: dict[str, Any],
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    interpolation: str | None = None,
    crop_pct: float | None = None,
    where: str = "data",
) -> dict[str, Any]:
    """``pre`` (a :func:`preprocessing` dict) with the given settings in place of the weights'.

    ``mean`` / ``std`` need one value per input channel (a single value is used for every
    channel); a count that fits neither is a one-line ValueError.
    """
    check_overrides(mean, std, interpolation, crop_pct, where)
    pre = dict(pre)
    channels = int(pre["input_size"][0])
    for name, values in (("mean", mean), ("std", std)):
        if values is None:
            continue
        values = tuple(float(v) for v in values)
        if len(values) == 1:
            values *= channels
        if len(values) != channels:
            raise ValueError(
                f"{where}.{name} has {len(values)} values but the model takes {channels} "
                f"input channel(s)"
            )
        pre[name] = values
    if interpolation is not None:
        pre["interpolation"] = interpolation
    if crop_pct is not None:
        pre["crop_pct"] = float(crop_pct)
    return pre


def _from_name(name: str, pretrained: bool | str) -> dict[str, Any]:
    if name.startswith("tv:"):
        from .hub import has_weights, tv_weights

        tv_name = name[3:]
        if not has_weights(tv_name):
            return dict(DEFAULTS)
        return _from_tv_weights(tv_weights(tv_name, pretrained or True))
    if name.startswith("hf:"):
        from .hf import processor_config

        return _from_hf_processor(processor_config(name[3:]), None)
    import timm
    from timm.data import resolve_data_config

    if name.startswith("vmamba"):
        from . import vmamba  # noqa: F401

    if isinstance(pretrained, str) and "." not in name:
        name = f"{name}.{pretrained}"
    arch = name.partition(".")[0]
    if not timm.is_model(arch):
        raise ValueError(f"unknown model {name!r}")
    pretrained_cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=True)
    if pretrained_cfg is None:
        return dict(DEFAULTS)
    return dict(resolve_data_config(pretrained_cfg=pretrained_cfg.to_dict()))


def _from_model(model: nn.Module) -> dict[str, Any]:
    from .hf import HFImageClassifier

    if isinstance(model, HFImageClassifier):
        return _from_hf_processor(model.processor_config, model.config)
    weights = getattr(model, "_denoiserep_weights", None)
    if weights:
        import torchvision

        return _from_tv_weights(torchvision.models.get_weight(weights))
    if isinstance(getattr(model, "pretrained_cfg", None), Mapping):  # timm
        from timm.data import resolve_model_data_config

        cfg = dict(resolve_model_data_config(model))
        try:
            from timm.models import get_model_input_config

            cfg["input_size"] = tuple(get_model_input_config(model)["input_size"])
        except (ImportError, KeyError, TypeError):
            pass
        return cfg
    return dict(DEFAULTS)


def _from_tv_weights(weights: Any) -> dict[str, Any]:
    t = weights.transforms()
    cfg = dict(DEFAULTS)
    cfg["mean"] = tuple(getattr(t, "mean", IMAGENET_MEAN))
    cfg["std"] = tuple(getattr(t, "std", IMAGENET_STD))
    interpolation = getattr(t, "interpolation", None)
    if interpolation is not None:
        cfg["interpolation"] = getattr(interpolation, "value", str(interpolation))
    resize = _first(getattr(t, "resize_size", None))
    crop = _first(getattr(t, "crop_size", None))
    if crop:
        cfg["input_size"] = (3, crop, crop)
        cfg["crop_pct"] = crop / resize if resize else 1.0
    elif resize:
        cfg["input_size"] = (3, resize, resize)
        cfg["crop_pct"] = 1.0
    return cfg


def _from_hf_processor(proc: Mapping | None, config: Any) -> dict[str, Any]:
    cfg = dict(DEFAULTS)
    proc = proc or {}
    if proc.get("image_mean") is not None:
        cfg["mean"] = tuple(_as_list(proc["image_mean"]))
    if proc.get("image_std") is not None:
        cfg["std"] = tuple(_as_list(proc["image_std"]))
    resample = proc.get("resample")
    if resample is not None:
        cfg["interpolation"] = _PIL_RESAMPLE.get(resample, str(resample))
    size = _hf_size(proc.get("size"))
    crop = _hf_size(proc.get("crop_size")) if proc.get("do_center_crop") else None
    if proc.get("crop_pct"):
        cfg["crop_pct"] = float(proc["crop_pct"])
    elif crop and size:
        cfg["crop_pct"] = crop / size
    elif proc:
        cfg["crop_pct"] = 1.0  # resized straight to the input size
    side = crop or size
    channels = int(getattr(config, "num_channels", 3) or 3)
    image_size = getattr(config, "image_size", None)
    if isinstance(image_size, int | list | tuple) and image_size:
        hw = tuple(image_size) if isinstance(image_size, list | tuple) else (image_size,) * 2
        cfg["input_size"] = (channels, *hw)
    elif side:
        cfg["input_size"] = (channels, side, side)
    else:
        cfg["input_size"] = (channels, *DEFAULTS["input_size"][1:])
    return cfg


def _finish(cfg: dict[str, Any]) -> dict[str, Any]:
    """The five keys, as plain tuples / floats; statistics matched to the input channels."""
    channels, *hw = (int(v) for v in cfg.get("input_size", DEFAULTS["input_size"]))
    mean = tuple(float(v) for v in _as_list(cfg.get("mean", IMAGENET_MEAN)))
    std = tuple(float(v) for v in _as_list(cfg.get("std", IMAGENET_STD)))
    if len(mean) != channels:
        mean = (sum(mean) / len(mean),) * channels
    if len(std) != channels:
        std = (sum(std) / len(std),) * channels
    return {
        "mean": mean,
        "std": std,
        "interpolation": str(cfg.get("interpolation", "bilinear")),
        "input_size": (channels, *hw),
        "crop_pct": float(cfg.get("crop_pct") or 1.0),
    }


def _first(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, list | tuple):
        return int(value[0]) if value else None
    return int(value)


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, list | tuple) else [value]


def _hf_size(size: Any) -> int | None:
    """A side length from a processor's ``size`` / ``crop_size`` (int or dict)."""
    if isinstance(size, int):
        return size
    if isinstance(size, Mapping):
        for key in ("shortest_edge", "height", "width"):
            if size.get(key):
                return int(size[key])
    return None
