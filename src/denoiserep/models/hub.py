"""Where pretrained weights come from, and the one-line error when they cannot be had offline."""

from __future__ import annotations

from typing import Any

import torchvision

from denoiserep.util.errors import short_cause

#: What a failed download suggests instead (one line, ends every offline error).
OFFLINE_ROUTE = (
    "without network the weights must already be in the library's cache, "
    "or set model.checkpoint to a local weights file (.safetensors, .pth/.pt, .bin)"
)


class PretrainedWeightsUnavailable(RuntimeError):
    """Pretrained weights could neither be downloaded nor found in the library's cache."""


# -- torchvision --------------------------------------------------------------------------------
def tv_weights(tv_name: str, pretrained: bool | str = True) -> Any:
    """The torchvision weights enum member for ``pretrained`` (True: ``DEFAULT``; a string:
    ``"IMAGENET1K_V2"`` or ``"ResNet50_Weights.IMAGENET1K_V2"``), or None without weights."""
    try:
        enum = torchvision.models.get_model_weights(tv_name)
    except ValueError:
        if pretrained:
            raise ValueError(f"torchvision model {tv_name!r} has no pretrained weights") from None
        return None
    if not pretrained:
        return None
    key = "DEFAULT" if pretrained is True else str(pretrained).split(".")[-1]
    try:
        return enum[key]
    except KeyError:
        names = ", ".join(w.name for w in enum)
        raise ValueError(
            f"torchvision {tv_name} has no weights {pretrained!r}; choose one of {names}"
        ) from None


def has_weights(tv_name: str) -> bool:
    """Whether torchvision knows pretrained weights for ``tv_name``."""
    try:
        torchvision.models.get_model_weights(tv_name)
    except ValueError:
        return False
    return True


def _download_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError]  # URLError, hub errors, connection errors
    try:
        import httpx

        errors.append(httpx.HTTPError)
    except ImportError:
        pass
    return tuple(errors)


DOWNLOAD_ERRORS = _download_errors()


def unavailable(what: str, error: BaseException) -> PretrainedWeightsUnavailable:
    """The error for weights of ``what`` that could not be downloaded (``error``) nor found."""
    return PretrainedWeightsUnavailable(
        f"cannot get the pretrained weights of {what} ({short_cause(error)}); " + OFFLINE_ROUTE
    )
