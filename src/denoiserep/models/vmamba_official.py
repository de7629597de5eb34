"""Official VMamba checkpoints (github.com/MzeroMiko/VMamba) loaded into this package's VMamba.

Supported: the first release ("v0", configs ``vmambav0_{tiny,small,base}_224.yaml``; published
as ``vssmtiny_dp01_ckpt_epoch_292.pth``, ``vssmsmall_dp03_ckpt_epoch_238.pth`` and
``vssmbase_dp06_ckpt_epoch_241.pth``, weights under ``model``), in its own key layout
(``patch_embed.proj``, ``layers.i.blocks.j.ln_1`` / ``.self_attention``, ``norm``, ``head``) and
in the layout the later official code saves v0 models with (``patch_embed.0`` / ``.2``,
``.norm`` / ``.op``, ``classifier.norm`` / ``classifier.head``).

The official SS2D stacks its four scan directions' projections into raw parameters:
``x_proj_weight`` (K, dt_rank + 2 d_state, d_inner), ``dt_projs_weight`` (K, d_inner, dt_rank),
``dt_projs_bias`` (K, d_inner), ``A_logs`` (K d_inner, d_state) and ``Ds`` (K d_inner), K = 4,
directions ordered row-major, column-major, then both reversed, exactly as
:func:`denoiserep.models.vmamba.cross_scan`. Conversion unstacks them into the K ``x_proj`` /
``dt_proj`` Linears and renames the rest; values are copied unchanged, so the converted model
computes what the official one does. Later versions (v2, ``vssm1_*`` checkpoints: conv
downsampling, channels-first norms, no gate) are refused in one line.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

__all__ = [
    "checkpoint_filter_fn",
    "convert_official_vmamba",
    "is_official_vmamba",
    "load_vmamba_checkpoint",
]

log = logging.getLogger("denoiserep.models")

NUM_DIRECTIONS = 4
SUPPORTED = (
    "VMamba v0 (first release: vssm{tiny,small,base}_dp0*_ckpt_epoch_*.pth, "
    "configs vmambav0_*_224.yaml)"
)
_STACKED = ("x_proj_weight", "dt_projs_weight", "dt_projs_bias")

# official key (any version's v0 layout) -> this package's key; the SS2D internals are separate
_RENAMES = [
    (re.compile(r"^patch_embed\.(?:proj|0)\.(weight|bias)$"), r"patch_embed.proj.\1"),
    (re.compile(r"^patch_embed\.(?:norm|2)\.(weight|bias)$"), r"patch_embed.norm.\1"),
    (re.compile(r"^(layers\.\d+\.blocks\.\d+)\.(?:ln_1|norm)\.(weight|bias)$"), r"\1.norm.\2"),
    (
        re.compile(r"^(layers\.\d+\.downsample)\.(norm\.weight|norm\.bias|reduction\.weight)$"),
        r"\1.\2",
    ),
    (re.compile(r"^(?:classifier\.)?(norm|head)\.(weight|bias)$"), r"\1.\2"),
]
_SS2D = re.compile(r"^(layers\.\d+\.blocks\.\d+)\.(?:self_attention|op)\.(.+)$")
_SS2D_SAME = {
    "in_proj.weight",
    "conv2d.weight",
    "conv2d.bias",
    "out_norm.weight",
    "out_norm.bias",
    "out_proj.weight",
    "A_logs",
    "Ds",
}


def is_official_vmamba(state_dict: Mapping[str, Any]) -> bool:
    """Whether ``state_dict`` is laid out as the official VMamba code saves it: SS2D parameters
    stacked over the scan directions (``...x_proj_weight`` / ``...dt_projs_weight``). True for
    every official version; :func:`convert_official_vmamba` refuses those it does not know."""
    return any(str(k).endswith(_STACKED[:2]) for k in state_dict)


def convert_official_vmamba(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The official VMamba v0 ``state_dict`` with this package's VMamba keys and shapes.

    Stacked direction tensors are unstacked into ``op.x_proj.{k}.weight`` /
    ``op.dt_proj.{k}.weight`` (k = 0..3) and ``op.dt_bias``; everything else is renamed only.
    A key or shape of another layout is a one-line ValueError naming it and the supported one.
    """
    if not is_official_vmamba(state_dict):
        raise ValueError(
            f"not an official VMamba checkpoint (no stacked x_proj_weight / dt_projs_weight); "
            f"supported: {SUPPORTED}"
        )
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        for new_key, new_value in _convert_one(key, value):
            if new_key in out:
                raise ValueError(f"{key} and another key both map to {new_key}; {_refusal()}")
            out[new_key] = new_value
    return out


def checkpoint_filter_fn(state_dict: Mapping[str, Tensor], model: nn.Module | None = None) -> dict:
    """timm's checkpoint-filter convention: an official VMamba state dict converted
    (:func:`convert_official_vmamba`), any other returned unchanged."""
    if is_official_vmamba(state_dict):
        return convert_official_vmamba(state_dict)
    return dict(state_dict)


def load_vmamba_checkpoint(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    name: str | None = None,
    key: str | None = None,
    remap: Any = None,
) -> nn.Module:
    """Load a weights file into this package's VMamba as
    :func:`denoiserep.models.weights.load_checkpoint` does, converting an official VMamba
    checkpoint first (one logged line says so)."""
    from .weights import load_plain_state, read_checkpoint, strip_common_prefix

    state = read_checkpoint(path, key=key, remap=remap)
    source = f"checkpoint {path}"
    arch = name or type(model).__name__
    if is_official_vmamba(state):
        try:
            state = convert_official_vmamba(state)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None
        log.info(f"{arch}: {source} converted from the official VMamba v0 layout")
    state = strip_common_prefix(state, model.state_dict(), source, arch)
    return load_plain_state(model, state, source=source, name=name)


def _refusal() -> str:
    return f"supported: {SUPPORTED}; later versions (v2, vssm1_*) are not"


def _convert_one(key: str, value: Tensor) -> list[tuple[str, Tensor]]:
    """This package's (key, tensor) pairs for one official entry."""
    for pattern, replacement in _RENAMES:
        if pattern.match(key):
            return [(pattern.sub(replacement, key), value)]
    match = _SS2D.match(key)
    if match is None:
        raise ValueError(f"unknown key {key!r} for an official VMamba checkpoint; {_refusal()}")
    block, name = match.groups()
    op = f"{block}.op"
    if name in _SS2D_SAME:
        return [(f"{op}.{name}", value)]
    if name not in _STACKED:
        raise ValueError(f"unknown SS2D parameter {key!r}; {_refusal()}")
    ndim = 2 if name == "dt_projs_bias" else 3
    if value.ndim != ndim or value.shape[0] != NUM_DIRECTIONS:
        raise ValueError(
            f"{key} has shape {tuple(value.shape)}, expected {NUM_DIRECTIONS} stacked directions "
            f"({ndim}-d); {_refusal()}"
        )
    if name == "dt_projs_bias":
        return [(f"{op}.dt_bias", value)]
    module = "x_proj" if name == "x_proj_weight" else "dt_proj"
    return [(f"{op}.{module}.{k}.weight", value[k].clone()) for k in range(NUM_DIRECTIONS)]
