"""TransReID-SSL ViTs with the ICS convolutional stem (Luo et al. 2021), as timm models.

"Self-Supervised Pre-Training for Transformer-Based Person Re-Identification" pre-trains ViT-S/16
and ViT-B/16 on LUPerson with DINO and fine-tunes them with TransReID's head; its ViTs replace the
16 x 16 patch projection by an IBN convolutional stem ("ICS": a 7 x 7 stride-2 conv and two 3 x 3
convs, each followed by IBN / BatchNorm and ReLU) and an 8 x 8 projection of the stem's output,
on 256 x 128 person crops (a 16 x 8 grid of tokens + the class token). The re-ID feature is the
final LayerNorm's class token.

Here the model is timm's ``VisionTransformer`` with :class:`ConvStemPatchEmbed` as its
``embed_layer``. Module names follow the published checkpoints (``vit_small_ics_cfs_lup.pth``,
``vit_base_ics_cfs_lup.pth``: the DINO teacher's backbone), so their keys load as they are::

    cls_token (1, 1, D)                 pos_embed (1, 1 + 16 * 8, D)
    patch_embed.conv.0.weight           (64, 3, 7, 7)     conv, no bias
    patch_embed.conv.1.IN.{weight,bias} (32)              IBN: InstanceNorm on channels 0-31
    patch_embed.conv.1.BN.*             (32)              ... BatchNorm on channels 32-63
    patch_embed.conv.3.weight           (64, 64, 3, 3)    patch_embed.conv.4.{IN,BN}.*
    patch_embed.conv.6.weight           (64, 64, 3, 3)    patch_embed.conv.7.* BatchNorm (64)
    patch_embed.proj.{weight,bias}      (D, 64, 8, 8), (D)
    blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*   norm.*

(D = 384 for ViT-S, 768 for ViT-B.) Loading through :func:`denoiserep.models.create_model`
applies :func:`checkpoint_filter_fn`: position embeddings of another grid (a 16 x 8 checkpoint
in a 384 x 128 model) are resampled as timm does, and a stem-less checkpoint gets a one-line
error. The classifier is timm's ``head`` (none by default: ``num_classes=0``). Fine-tuned
TransReID checkpoints nest the backbone under ``base.`` beside their BNNeck (``bottleneck.``),
identity classifier (``classifier.``) and an unused 1000-way ``base.fc``: load their backbone
with ``checkpoint_remap=[["^base\\.", ""], ["^(fc|bottleneck|classifier)\\.", "head.\\1."]]``
(the ``head.*`` keys are then the unused head, one logged line says so).

Importing this module registers ``transreid_ssl_vit_small`` and ``transreid_ssl_vit_base`` with
timm. No weights are downloadable: pass the LUPerson file as ``checkpoint``.
"""

from __future__ import annotations

import math
import os
from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed, resample_abs_pos_embed, to_2tuple
from timm.layers.format import Format, nchw_to
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from .weights import load_plain_state, read_checkpoint, strip_common_prefix

__all__ = [
    "IBN",
    "ConvStemPatchEmbed",
    "checkpoint_filter_fn",
    "create_transreid",
    "transreid_ssl_vit_base",
    "transreid_ssl_vit_small",
]

#: Channels and stride of the ICS stem (TransReID-SSL: hidden_dim 64, stem_stride 2).
STEM_WIDTH = 64
STEM_STRIDE = 2
NAMES = ("transreid_ssl_vit_small", "transreid_ssl_vit_base")


class IBN(nn.Module):
    """IBN-a normalisation (Pan et al. 2018): InstanceNorm (affine) on the first half of the
    channels, BatchNorm on the rest; children named ``IN`` and ``BN`` as in the checkpoints."""

    def __init__(self, channels: int, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.half = channels // 2
        self.IN = nn.InstanceNorm2d(self.half, affine=True, **dd)
        self.BN = nn.BatchNorm2d(channels - self.half, **dd)

    def forward(self, x: Tensor) -> Tensor:
        a, b = torch.split(x, [self.half, x.shape[1] - self.half], dim=1)
        return torch.cat([self.IN(a.contiguous()), self.BN(b.contiguous())], dim=1)


def ics_stem(in_chans: int, width: int = STEM_WIDTH, stride: int = STEM_STRIDE, **dd: Any):
    """conv7x7/s -> IBN -> ReLU -> conv3x3 -> IBN -> ReLU -> conv3x3 -> BN -> ReLU (no biases)."""
    return nn.Sequential(
        nn.Conv2d(in_chans, width, 7, stride, 3, bias=False, **dd),
        IBN(width, **dd),
        nn.ReLU(inplace=True),
        nn.Conv2d(width, width, 3, 1, 1, bias=False, **dd),
        IBN(width, **dd),
        nn.ReLU(inplace=True),
        nn.Conv2d(width, width, 3, 1, 1, bias=False, **dd),
        nn.BatchNorm2d(width, **dd),
        nn.ReLU(inplace=True),
    )


class ConvStemPatchEmbed(PatchEmbed):
    """timm's ``PatchEmbed`` with the ICS stem: ``proj`` (kernel = stride = patch_size / 2) runs
    on the stem's half-resolution output, so the token grid is still image size / patch_size.

    Takes timm's ``PatchEmbed`` arguments (``VisionTransformer`` passes them as ``embed_layer``)
    plus ``stem_width`` / ``stem_stride``.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] | None = (256, 128),
        patch_size: int | tuple[int, int] = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        stem_width: int = STEM_WIDTH,
        stem_stride: int = STEM_STRIDE,
        bias: bool = True,
        device: Any = None,
        dtype: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(img_size, patch_size, stem_width, embed_dim, bias=bias, **kwargs)
        dd = {"device": device, "dtype": dtype}
        if any(p % stem_stride for p in self.patch_size):
            raise ValueError(f"patch_size {self.patch_size} must be a multiple of {stem_stride}")
        kernel = tuple(p // stem_stride for p in self.patch_size)
        del self.proj  # the parent's full-patch projection; registered again after the stem
        self.conv = ics_stem(in_chans, stem_width, stem_stride, **dd)
        self.proj = nn.Conv2d(stem_width, embed_dim, kernel, kernel, bias=bias, **dd)
        self.to(**{k: v for k, v in dd.items() if v is not None})  # the parent's norm, if any

    def set_input_size(
        self,
        img_size: int | tuple[int, int] | None = None,
        patch_size: int | tuple[int, int] | None = None,
    ) -> None:
        """Another image size (the grid follows); the patch size of a stem is fixed."""
        if patch_size is not None and to_2tuple(patch_size) != self.patch_size:
            raise ValueError("the patch size of a convolutional-stem embedding cannot change")
        super().set_input_size(img_size)

    def forward(self, x: Tensor) -> Tensor:
        _, _, h, w = x.shape
        ph, pw = self.patch_size
        if self.img_size is not None and self.strict_img_size:
            torch._assert(
                (h, w) == tuple(self.img_size),
                f"input size {h} x {w} does not match the model's {self.img_size[0]} x "
                f"{self.img_size[1]}",
            )
        elif not self.dynamic_img_pad:
            torch._assert(h % ph == 0 and w % pw == 0, f"{h} x {w} is not a multiple of {ph}")
        if self.dynamic_img_pad:
            x = F.pad(x, (0, (pw - w % pw) % pw, 0, (ph - h % ph) % ph))
        x = self.proj(self.conv(x))
        if self.flatten:
            x = x.flatten(2).transpose(1, 2)  # NCHW -> NLC
        elif self.output_fmt != Format.NCHW:
            x = nchw_to(x, self.output_fmt)
        return self.norm(x)


# -- checkpoints ----------------------------------------------------------------------------------
def source_grid(num_tokens: int, grid: tuple[int, int]) -> tuple[int, int]:
    """The (h, w) grid a checkpoint's ``num_tokens`` position embeddings were laid out on: the
    factorisation closest in aspect ratio to the model's ``grid`` (ties: the squarer one), e.g.
    128 tokens -> 16 x 8 (TransReID-SSL's 256 x 128 pre-training) for a 24 x 8 model."""
    target = math.log(grid[0] / grid[1])
    pairs = [(h, num_tokens // h) for h in range(1, num_tokens + 1) if num_tokens % h == 0]
    return min(pairs, key=lambda hw: (abs(math.log(hw[0] / hw[1]) - target), abs(hw[0] - hw[1])))


def checkpoint_filter_fn(state: dict[str, Tensor], model: VisionTransformer) -> dict[str, Tensor]:
    """A TransReID-SSL state dict made to fit ``model``: position embeddings of another grid
    resampled (timm's bicubic ``resample_abs_pos_embed``, grid from :func:`source_grid`); a
    checkpoint without the ICS stem is a one-line ValueError."""
    state = dict(state)
    if "patch_embed.proj.weight" in state and "patch_embed.conv.0.weight" not in state:
        raise ValueError(
            "the checkpoint has no convolutional stem (patch_embed.conv.*): it is a plain ViT "
            "(e.g. vit_small_cfs_lup.pth); load it into vit_small_patch16_224 / "
            "vit_base_patch16_224 with img_size [256, 128]"
        )
    pos = state.get("pos_embed")
    if pos is not None and pos.shape[1] != model.pos_embed.shape[1]:
        prefix = model.num_prefix_tokens
        grid = tuple(model.patch_embed.grid_size)
        state["pos_embed"] = resample_abs_pos_embed(
            pos,
            new_size=grid,
            old_size=source_grid(pos.shape[1] - prefix, grid),
            num_prefix_tokens=prefix,
        )
    return state


def create_transreid(
    name: str,
    pretrained: bool | str = False,
    checkpoint: str | os.PathLike | None = None,
    kwargs: dict[str, Any] | None = None,
    *,
    key: str | None = None,
    remap: list | None = None,
) -> VisionTransformer:
    """A TransReID-SSL ViT by name (``create_model``'s route for ``transreid_ssl_*``).

    ``checkpoint`` is read as :func:`denoiserep.models.create_model` reads weights files
    (``key``, ``remap``, a common wrapper prefix stripped), passed through
    :func:`checkpoint_filter_fn` and loaded strictly but for the classifier head.
    ``pretrained`` only chooses preprocessing: there is nothing to download.
    """
    if name not in NAMES:
        raise ValueError(f"unknown model {name!r}; TransReID-SSL models: {', '.join(NAMES)}")
    if pretrained and checkpoint is None:
        raise ValueError(
            f"{name} has no downloadable weights: set model.checkpoint to the LUPerson file "
            f"(vit_small_ics_cfs_lup.pth / vit_base_ics_cfs_lup.pth, TransReID-SSL's README)"
        )
    model = timm.create_model(name, **(kwargs or {}))
    if checkpoint is not None:
        source = f"checkpoint {checkpoint}"
        state = read_checkpoint(checkpoint, key=key, remap=remap)
        state = strip_common_prefix(state, model.state_dict(), source, name)
        load_plain_state(model, checkpoint_filter_fn(state, model), source=source, name=name)
    return model


# -- timm registration ----------------------------------------------------------------------------
_PRETRAINED_CFG = {
    "url": "",
    "num_classes": 0,
    "input_size": (3, 256, 128),
    "pool_size": None,
    "crop_pct": 1.0,
    "interpolation": "bicubic",
    "fixed_input_size": True,
    "mean": (0.5, 0.5, 0.5),  # TransReID-SSL's PIXEL_MEAN / PIXEL_STD
    "std": (0.5, 0.5, 0.5),
    "first_conv": "patch_embed.conv.0",
    "classifier": "head",
}

default_cfgs = generate_default_cfgs({name: dict(_PRETRAINED_CFG) for name in NAMES})


def _create(variant: str, pretrained: bool, **kwargs: Any) -> VisionTransformer:
    if pretrained:
        raise ValueError(f"{variant} has no downloadable weights; load the LUPerson checkpoint")
    kwargs.setdefault("img_size", (256, 128))
    model = build_model_with_cfg(
        VisionTransformer,
        variant,
        pretrained=False,
        pretrained_filter_fn=checkpoint_filter_fn,
        embed_layer=ConvStemPatchEmbed,
        **kwargs,
    )
    model.pretrained_cfg["input_size"] = (3, *model.patch_embed.img_size)
    return model


@register_model
def transreid_ssl_vit_small(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """TransReID-SSL ViT-S/16 with the ICS stem: width 384, 12 blocks, 6 heads, drop path 0.1."""
    args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, drop_path_rate=0.1)
    return _create("transreid_ssl_vit_small", pretrained, **{**args, **kwargs})


@register_model
def transreid_ssl_vit_base(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """TransReID-SSL ViT-B/16 with the ICS stem: width 768, 12 blocks, 12 heads, drop path 0.1."""
    args = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, drop_path_rate=0.1)
    return _create("transreid_ssl_vit_base", pretrained, **{**args, **kwargs})
