"""VMamba vision backbone (Liu et al. 2024, "VMamba: Visual State Space Model") in pure PyTorch.

The architecture follows the paper's first release (the official repository's "v0" configs,
``vmambav0_{tiny,small,base}_224.yaml``): a conv patch embedding, four stages of VSS blocks with
Swin-style patch merging between them, a final LayerNorm, global average pooling and a Linear
head. A VSS block is ``x + DropPath(SS2D(LayerNorm(x)))``; SS2D is in_proj -> depthwise 3x3 conv
+ SiLU -> 2D selective scan along four directions -> LayerNorm -> gate with SiLU(z) -> out_proj.
An MLP branch as in the later "v2" configs is available through ``mlp_ratio > 0``.

Unlike the official code (per-direction projection weights stacked into raw Parameters for
einsum), every projection here is an ``nn.Linear`` / ``nn.Conv2d`` called through its own
forward once per model forward, so module-level tools (DenoiseRep, hooks, FLOP counters) see
every embedding layer; A_logs, Ds and dt_bias stay plain ``nn.Parameter``s.

Importing this module registers ``vmamba_micro``, ``vmamba_tiny``, ``vmamba_small`` and
``vmamba_base`` with timm, so ``timm.create_model("vmamba_tiny", num_classes=10)`` works. The
official v0 checkpoints convert to this layout (:mod:`denoiserep.models.vmamba_official`;
``checkpoint_filter_fn`` here follows timm's convention).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, to_2tuple, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import Tensor, nn

from denoiserep.data.constants import IMAGENET_CROP_RATIO, IMAGENET_MEAN, IMAGENET_STD
from denoiserep.models.scan import selective_scan
from denoiserep.models.vmamba_official import checkpoint_filter_fn

__all__ = [
    "SS2D",
    "VMamba",
    "VSSBlock",
    "checkpoint_filter_fn",
    "cross_merge",
    "cross_scan",
    "vmamba_base",
    "vmamba_micro",
    "vmamba_small",
    "vmamba_tiny",
]

NUM_DIRECTIONS = 4


def cross_scan(x: Tensor) -> Tensor:
    """Unfold a (b, h, w, c) grid into (b, 4, h*w, c) token sequences for the four scan directions.

    Direction 0 is row-major, 1 column-major, 2 and 3 are 0 and 1 reversed.
    """
    rows = x.flatten(1, 2)
    cols = x.transpose(1, 2).flatten(1, 2)
    forward = torch.stack([rows, cols], dim=1)
    return torch.cat([forward, forward.flip(2)], dim=1)


def cross_merge(seqs: Tensor, height: int, width: int) -> Tensor:
    """Inverse of :func:`cross_scan` up to summation: (b, 4, h*w, c) -> (b, h, w, c).

    Every direction is put back into grid order and the four grids are summed.
    """
    if seqs.dim() != 4 or seqs.shape[1] != NUM_DIRECTIONS or seqs.shape[2] != height * width:
        raise ValueError(
            f"expected sequences of shape (b, 4, {height * width}, c), got {tuple(seqs.shape)}"
        )
    forward = seqs[:, :2] + seqs[:, 2:].flip(2)
    rows = forward[:, 0].unflatten(1, (height, width))
    cols = forward[:, 1].unflatten(1, (width, height)).transpose(1, 2)
    return rows + cols


class SS2D(nn.Module):
    """2D selective scan on channels-last (b, h, w, dim) features.

    Each of the four directions has its own x_proj (tokens -> dt, B, C), dt_proj (low-rank dt ->
    per-channel step), A, D and dt bias, as in the paper; all four are scanned in one call.
    """

    def __init__(
        self,
        dim: int,
        d_state: int = 16,
        ssm_ratio: float = 2.0,
        d_conv: int = 3,
        dropout: float = 0.0,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
    ) -> None:
        super().__init__()
        d_inner = int(ssm_ratio * dim)
        self.d_inner = d_inner
        self.d_state = d_state
        self.dt_rank = math.ceil(dim / 16)
        self.dt_min, self.dt_max, self.dt_init_floor = dt_min, dt_max, dt_init_floor

        self.in_proj = nn.Linear(dim, 2 * d_inner, bias=False)
        self.conv2d = nn.Conv2d(
            d_inner, d_inner, d_conv, padding=(d_conv - 1) // 2, groups=d_inner, bias=True
        )
        self.act = nn.SiLU()
        self.x_proj = nn.ModuleList(
            nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
            for _ in range(NUM_DIRECTIONS)
        )
        self.dt_proj = nn.ModuleList(
            nn.Linear(self.dt_rank, d_inner, bias=False) for _ in range(NUM_DIRECTIONS)
        )
        self.dt_bias = nn.Parameter(torch.empty(NUM_DIRECTIONS, d_inner))
        self.A_logs = nn.Parameter(torch.empty(NUM_DIRECTIONS * d_inner, d_state))
        self.Ds = nn.Parameter(torch.empty(NUM_DIRECTIONS * d_inner))
        self.out_norm = nn.LayerNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, dim, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """Mamba's initialisation of the SSM: S4D-real A, unit D, dt in [dt_min, dt_max].

        The dt projection is uniform with std dt_rank**-0.5 and the dt bias is the inverse
        softplus of a log-uniform step size, so softplus(dt_bias) starts in [dt_min, dt_max].
        """
        for x_proj in self.x_proj:
            x_proj.reset_parameters()
        bound = self.dt_rank**-0.5
        for dt_proj in self.dt_proj:
            nn.init.uniform_(dt_proj.weight, -bound, bound)
        log_lo, log_hi = math.log(self.dt_min), math.log(self.dt_max)
        dt = torch.exp(torch.rand_like(self.dt_bias) * (log_hi - log_lo) + log_lo)
        dt = dt.clamp(min=self.dt_init_floor)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        states = torch.arange(1, self.d_state + 1, dtype=self.A_logs.dtype)
        self.A_logs.copy_(torch.log(states).expand_as(self.A_logs))
        self.Ds.fill_(1.0)

    def forward(self, x: Tensor) -> Tensor:
        _, height, width, _ = x.shape
        x, z = self.in_proj(x).chunk(2, dim=-1)
        x = self.act(self.conv2d(x.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)
        seqs = cross_scan(x)  # (b, k, l, d_inner)
        deltas, Bs, Cs = [], [], []
        for k, (x_proj, dt_proj) in enumerate(zip(self.x_proj, self.dt_proj, strict=True)):
            dt, B, C = x_proj(seqs[:, k]).split([self.dt_rank, self.d_state, self.d_state], -1)
            deltas.append(dt_proj(dt))
            Bs.append(B)
            Cs.append(C)
        y = selective_scan(
            seqs.transpose(-1, -2).flatten(1, 2),  # (b, k * d_inner, l)
            torch.stack(deltas, dim=1).transpose(-1, -2).flatten(1, 2),
            -torch.exp(self.A_logs),
            torch.stack(Bs, dim=1).transpose(-1, -2),  # (b, k, d_state, l): one group per direction
            torch.stack(Cs, dim=1).transpose(-1, -2),
            self.Ds,
            delta_bias=self.dt_bias.flatten(),
            delta_softplus=True,
        )
        y = y.unflatten(1, (NUM_DIRECTIONS, self.d_inner)).transpose(-1, -2)
        y = cross_merge(y, height, width)
        y = self.out_norm(y) * self.act(z)
        return self.dropout(self.out_proj(y))


class VSSBlock(nn.Module):
    """Visual state-space block: pre-norm SS2D residual, plus an optional pre-norm MLP residual."""

    def __init__(
        self,
        dim: int,
        drop_path: float = 0.0,
        d_state: int = 16,
        ssm_ratio: float = 2.0,
        mlp_ratio: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.op = SS2D(dim, d_state=d_state, ssm_ratio=ssm_ratio)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        if mlp_ratio > 0:
            self.norm2 = nn.LayerNorm(dim)
            self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.op(self.norm(x)))
        if hasattr(self, "mlp"):
            x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


class PatchEmbed(nn.Module):
    """Non-overlapping conv stem: (b, c, H, W) -> channels-last (b, H/p, W/p, dim), normalised."""

    def __init__(self, in_chans: int, dim: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class PatchMerging(nn.Module):
    """Swin-style 2x2 downsampling: concatenate each 2x2 neighbourhood, LayerNorm, Linear.

    Odd grids are zero-padded on the bottom / right first, as in the official code.
    """

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[1:3]
        x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
        x = torch.cat(
            [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1
        )
        return self.reduction(self.norm(x))


class VMambaStage(nn.Module):
    """A stage: VSS blocks at one resolution, then (except in the last stage) patch merging."""

    def __init__(self, blocks: Sequence[VSSBlock], downsample: nn.Module) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        return self.downsample(self.blocks(x))


class VMamba(nn.Module):
    """VMamba classifier with timm's model interface.

    Args:
        in_chans: input image channels.
        num_classes: classifier outputs; 0 replaces the head by an identity.
        patch_size: stride and kernel of the conv stem.
        depths: VSS blocks per stage.
        dims: stage widths, or the first stage width (doubled at every stage).
        d_state: SSM state size per channel.
        ssm_ratio: SS2D inner width / block width.
        mlp_ratio: MLP hidden width / block width in every block; 0 disables the MLP branch.
        drop_rate: dropout before the head.
        drop_path_rate: stochastic depth, rising linearly from 0 to this value over all blocks.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        patch_size: int = 4,
        depths: Sequence[int] = (2, 2, 9, 2),
        dims: int | Sequence[int] = 96,
        d_state: int = 16,
        ssm_ratio: float = 2.0,
        mlp_ratio: float = 0.0,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if isinstance(dims, int):
            dims = [dims * 2**i for i in range(len(depths))]
        if len(dims) != len(depths) or not depths:
            raise ValueError(f"need one width per stage, got dims={dims} for depths={depths}")
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = dims[-1]
        self.patch_embed = PatchEmbed(in_chans, dims[0], patch_size)
        total = sum(depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        stages = []
        for i, (depth, dim) in enumerate(zip(depths, dims, strict=True)):
            start = sum(depths[:i])
            blocks = [
                VSSBlock(dim, rates[start + j], d_state, ssm_ratio, mlp_ratio) for j in range(depth)
            ]
            last = i == len(depths) - 1
            downsample = nn.Identity() if last else PatchMerging(dim, dims[i + 1])
            stages.append(VMambaStage(blocks, downsample))
        self.layers = nn.ModuleList(stages)
        self.norm = nn.LayerNorm(self.num_features)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(_init_weights)
        for module in self.modules():
            if isinstance(module, SS2D):
                module.reset_ssm_parameters()

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Names of the SSM parameters exempt from weight decay (A_logs and Ds, as in Mamba)."""
        return {name for name, _ in self.named_parameters() if name.endswith(("A_logs", ".Ds"))}

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head by a fresh one with ``num_classes`` outputs (0: identity)."""
        if global_pool not in (None, "avg"):
            raise ValueError(f"VMamba supports only global_pool='avg', got {global_pool!r}")
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: Tensor) -> Tensor:
        """(b, c, H, W) images -> normalised channels-last features (b, h, w, num_features)."""
        x = self.patch_embed(x)
        for stage in self.layers:
            x = stage(x)
        return self.norm(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Global average pool, dropout and head; ``pre_logits`` stops before the head."""
        x = self.head_drop(x.mean(dim=(1, 2)))
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _init_weights(module: nn.Module) -> None:
    """Official init: truncated normal (std 0.02) Linear weights, zero biases, unit LayerNorm."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


_PRETRAINED_CFG = {  # timm's data config for ImageNet; there are no weights (empty url)
    "url": "",
    "num_classes": 1000,
    "input_size": (3, 224, 224),
    "pool_size": (7, 7),
    "crop_pct": IMAGENET_CROP_RATIO,
    "interpolation": "bicubic",
    "mean": IMAGENET_MEAN,
    "std": IMAGENET_STD,
    "first_conv": "patch_embed.proj",
    "classifier": "head",
}

default_cfgs = generate_default_cfgs(
    {
        name: dict(_PRETRAINED_CFG)
        for name in ("vmamba_micro", "vmamba_tiny", "vmamba_small", "vmamba_base")
    }
)


def _create_vmamba(variant: str, pretrained: bool = False, **kwargs: object) -> VMamba:
    """Build a registered variant; ``img_size`` only sets ``pretrained_cfg['input_size']``."""
    if pretrained:
        raise ValueError(
            f"no pretrained weights exist for {variant} to download: load an official VMamba v0 "
            f"file (vssmtiny_dp01_ckpt_epoch_292.pth, ...) with model.checkpoint=PATH"
        )
    img_size = to_2tuple(kwargs.pop("img_size", 224))
    model = build_model_with_cfg(
        VMamba, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn, **kwargs
    )
    model.pretrained_cfg["input_size"] = (model.patch_embed.proj.in_channels, *img_size)
    return model


@register_model
def vmamba_micro(pretrained: bool = False, **kwargs: object) -> VMamba:
    """A 1.0M-parameter VMamba for CPU experiments: widths 32..256, depths 1-1-2-1, d_state 8."""
    args = dict(dims=32, depths=(1, 1, 2, 1), d_state=8)
    return _create_vmamba("vmamba_micro", pretrained, **{**args, **kwargs})


@register_model
def vmamba_tiny(pretrained: bool = False, **kwargs: object) -> VMamba:
    """VMamba-T of the paper (v0): widths 96..768, depths 2-2-9-2, drop path 0.2."""
    args = dict(dims=96, depths=(2, 2, 9, 2), drop_path_rate=0.2)
    return _create_vmamba("vmamba_tiny", pretrained, **{**args, **kwargs})


@register_model
def vmamba_small(pretrained: bool = False, **kwargs: object) -> VMamba:
    """VMamba-S of the paper (v0): widths 96..768, depths 2-2-27-2, drop path 0.3."""
    args = dict(dims=96, depths=(2, 2, 27, 2), drop_path_rate=0.3)
    return _create_vmamba("vmamba_small", pretrained, **{**args, **kwargs})


@register_model
def vmamba_base(pretrained: bool = False, **kwargs: object) -> VMamba:
    """VMamba-B of the paper (v0): widths 128..1024, depths 2-2-27-2, drop path 0.5."""
    args = dict(dims=128, depths=(2, 2, 27, 2), drop_path_rate=0.5)
    return _create_vmamba("vmamba_base", pretrained, **{**args, **kwargs})
