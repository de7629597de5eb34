"""Create models by name, randomly initialised or from pretrained weights.

Names: timm names as they are (``resnet50``, or with a pretrained tag as timm takes it,
``vit_base_patch16_224.augreg2_in21k_ft_in1k``), torchvision ones as ``tv:<name>`` and Hugging
Face ones as ``hf:<hub id or local directory>`` (``transformers`` is the optional extra ``hf``).

Weights come from the libraries' own caches and hubs (``pretrained``), so a model downloaded once
loads offline afterwards, or from a local file (``checkpoint``): ``.safetensors``, ``.pth`` /
``.pt``, ``.bin`` or ``.ckpt``, a raw state dict or one nested under ``state_dict`` / ``model`` /
``model_ema`` / ... (``checkpoint_key``), its keys rewritten by ``checkpoint_remap``, with DDP /
``torch.compile`` prefixes and one common wrapper prefix stripped and timm's own checkpoint
filter applied where a model needs it (e.g. ViT position embeddings at another image size). A
classifier head whose class count differs is re-initialised and one line says so; any other
missing, unexpected or mis-shaped key is an error that lists the first few.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import timm
import torchvision
from torch import nn

from .hub import (
    DOWNLOAD_ERRORS,
    has_weights,
    tv_weights,
    unavailable,
)
from .loading import load_checkpoint, load_state
from .weights import as_tuple, check_remap

log = logging.getLogger("denoiserep.models")


def create_model(
    name: str,
    pretrained: bool | str = False,
    checkpoint: str | os.PathLike | None = None,
    *,
    checkpoint_remap: list | None = None,
    checkpoint_key: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """A model by name, randomly initialised or with pretrained weights; ``kwargs`` go to it.

    ``create_model("vit_tiny_patch16_224", img_size=28, in_chans=1, num_classes=10)`` builds a
    timm model; ``create_model("tv:resnet18", num_classes=10)`` a torchvision one;
    ``create_model("hf:google/vit-base-patch16-224", num_classes=10)`` a Hugging Face image
    classifier (``num_classes`` / ``in_chans`` / ``img_size`` map to ``num_labels`` /
    ``num_channels`` / ``image_size``; other keywords must be attributes of its config). VMamba
    configs (``vmamba_micro`` ... ``vmamba_base``) are registered with timm by this package.

    ``pretrained``: ``True`` loads the default weights (timm's default tag or the one in the
    name; torchvision's ``DEFAULT`` weights enum; the Hugging Face hub id or local directory),
    a string names them (a timm tag, a torchvision enum name such as ``"IMAGENET1K_V2"``).
    ``checkpoint``: a local weights file loaded instead of any download (with ``pretrained``
    set too, the named weights still choose the preprocessing, see
    :func:`denoiserep.models.preprocessing`). ``checkpoint_key`` names the entry of a training
    checkpoint that holds the weights (``state_dict``, ``model``, ``model_ema``, ...; default:
    the first of :data:`denoiserep.core.io.STATE_KEYS` present); ``checkpoint_remap`` is an
    ordered list of ``[regex, replacement]`` pairs applied to its keys (``re.sub``, e.g.
    ``[["^base\\.", ""]]``). Then one wrapper prefix that every key carries
    (``module.``, ``model.``, ``base.``, ``backbone.``, ``encoder.``) is stripped when that makes
    the keys fit, and one line says so.
    """
    check_remap(checkpoint_remap)
    if checkpoint is None and (checkpoint_remap or checkpoint_key is not None):
        raise ValueError(
            "model.checkpoint_remap and model.checkpoint_key apply to a weights file: "
            "set model.checkpoint"
        )
    load = {"key": checkpoint_key, "remap": checkpoint_remap}
    if name.startswith("hf:"):
        from .hf import create_hf_classifier

        if isinstance(pretrained, str):
            raise ValueError(f"{name}: pretrained is true or false, got {pretrained!r}")
        return create_hf_classifier(name[3:], pretrained, kwargs, checkpoint, **load)
    if name.startswith("transreid_ssl_"):  # TransReID-SSL ViTs: their checkpoints' layout
        from .transreid import create_transreid

        return create_transreid(name, pretrained, checkpoint, kwargs, **load)
    if name.startswith("tv:"):
        model = _create_torchvision(name, pretrained, checkpoint is None, kwargs)
    else:
        model = _create_timm(name, pretrained, checkpoint is None, kwargs)
    if checkpoint is not None and name.startswith("vmamba"):  # official layout converted
        from .vmamba_official import load_vmamba_checkpoint

        load_vmamba_checkpoint(model, checkpoint, name=name, **load)
    elif checkpoint is not None:
        load_checkpoint(model, checkpoint, name=name, **load)
    return model


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# -- timm ---------------------------------------------------------------------------------------
def _create_timm(
    name: str, pretrained: bool | str, download: bool, kwargs: dict[str, Any]
) -> nn.Module:
    if isinstance(pretrained, str):  # a pretrained tag, as in timm's "name.tag"
        if "." in name:
            raise ValueError(f"{name} already names a pretrained tag; pretrained={pretrained!r}")
        name, pretrained = f"{name}.{pretrained}", True
    if name.startswith("vmamba"):
        from . import vmamba  # noqa: F401  (registers the VMamba configs with timm)
    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        close = timm.list_models(f"*{arch.split('_')[0]}*")[:8]
        raise ValueError(f"unknown model {name!r}; similar timm names: {', '.join(close) or '-'}")
    if tag:
        tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{arch}.*")]
        if tag not in tags:
            raise ValueError(
                f"timm has no pretrained tag {tag!r} for {arch}; tags: {', '.join(tags) or '-'}"
            )
    try:
        model = timm.create_model(name, pretrained=bool(pretrained) and download, **kwargs)
    except DOWNLOAD_ERRORS as e:
        raise unavailable(name, e) from None
    if pretrained and download:
        cfg = model.pretrained_cfg
        n_model, n_weights = getattr(model, "num_classes", 0), cfg.get("num_classes", 0)
        if cfg.get("classifier") and n_model and n_weights and n_model != n_weights:
            keys = ", ".join(
                f"{h}.{p}" for h in as_tuple(cfg["classifier"]) for p in ("weight", "bias")
            )
            log.warning(
                f"{name}: classifier head ({keys}) re-initialised for {n_model} classes "
                f"(the pretrained weights have {n_weights})"
            )
    return model


def _create_torchvision(
    name: str, pretrained: bool | str, download: bool, kwargs: dict[str, Any]
) -> nn.Module:
    tv_name = name[3:]
    in_chans = kwargs.pop("in_chans", 3)
    if in_chans != 3:
        raise ValueError(f"torchvision model {tv_name} takes 3 input channels, got {in_chans}")
    kwargs.pop("img_size", None)
    if tv_name not in torchvision.models.list_models():
        raise ValueError(f"unknown torchvision model {tv_name!r}")
    weights = tv_weights(tv_name, pretrained)
    try:
        if weights is None or not download:
            model = torchvision.models.get_model(tv_name, weights=None, **kwargs)
        else:
            n_weights = len(weights.meta.get("categories") or [])
            n_model = kwargs.get("num_classes", n_weights)
            if n_model == n_weights:
                model = torchvision.models.get_model(tv_name, weights=weights, **kwargs)
            else:  # torchvision refuses another class count with weights: load, then re-head
                source = torchvision.models.get_model(
                    tv_name,
                    weights=weights,
                    **{k: v for k, v in kwargs.items() if k != "num_classes"},
                )
                model = torchvision.models.get_model(tv_name, weights=None, **kwargs)
                load_state(model, source.state_dict(), source=str(weights), name=name)
    except DOWNLOAD_ERRORS as e:
        raise unavailable(f"{name} ({weights})", e) from None
    # preprocessing follows these weights (or the default ones when trained from scratch)
    if weights is None and has_weights(tv_name):
        weights = tv_weights(tv_name, True)
    model._denoiserep_weights = str(weights) if weights is not None else None
    return model
