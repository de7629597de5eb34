"""The re-ID strong baseline (BoT, Luo et al. 2019; TransReID's head): backbone + BNNeck.

backbone (pooled feature, ``global_feat``) -> BatchNorm1d with a frozen zero bias (the
BNNeck) -> bias-free linear classifier. Training returns ``(cls_score, global_feat)``: the
identity loss reads the scores, the triplet loss the pre-BN feature. Evaluation returns the
BN feature (``neck_feat="after"``) or ``global_feat`` (``"before"``). BNNeck and classifier
are ordinary modules, so DenoiseRep's ``targets="all"`` also wraps the classifier Linear
(exclude it with ``DenoiseConfig(exclude=["classifier"])``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from denoiserep.models.factory import create_model

NECK_FEATS = ("after", "before")


def set_last_stride(backbone: nn.Module, stride: int = 1) -> nn.Module:
    """Set the stride of a ResNet's ``layer4`` (its first block: conv and shortcut) in place.

    Works for timm and torchvision ResNets (BasicBlock or Bottleneck): every strided Conv2d
    of ``layer4[0]`` gets ``stride``; with stride 1 a strided pooling there (timm's
    ``avg_down`` shortcut or anti-aliasing layer) becomes the identity. The last feature map
    is then twice as large (output stride 16 instead of 32), as in BoT.
    """
    layer4 = getattr(backbone, "layer4", None)
    if not isinstance(layer4, nn.Sequential) or len(layer4) == 0:
        raise ValueError(
            f"last_stride needs a ResNet with a `layer4` stage; {type(backbone).__name__} has none"
        )
    block = layer4[0]
    changed = 0
    for name, module in list(block.named_modules()):
        if isinstance(module, nn.Conv2d) and module.stride != (1, 1):
            module.stride = (stride, stride)
            changed += 1
        elif isinstance(module, nn.AvgPool2d | nn.MaxPool2d) and module.stride not in (1, (1, 1)):
            if stride != 1:
                raise ValueError(f"layer4.0.{name}: cannot set a pooling stride to {stride}")
            parent_name, _, child = name.rpartition(".")
            setattr(block.get_submodule(parent_name), child, nn.Identity())
            changed += 1
    if changed == 0:
        raise ValueError(f"{type(backbone).__name__}.layer4[0] has no strided layer to change")
    return backbone


def build_backbone(name: str, **kwargs: Any) -> tuple[nn.Module, int]:
    """A feature extractor returning one pooled vector per image, and its dimension.

    timm models are created with ``num_classes=0`` (their pooled, normed feature: the class
    token for ViTs, global average pooling for CNNs); torchvision models (``tv:<name>``) get
    their ``fc`` (ResNets, RegNets) or ``heads`` (ViTs) replaced by the identity.
    """
    if not name.startswith("tv:"):
        backbone = create_model(name, num_classes=0, **kwargs)
        return backbone, int(backbone.num_features)
    backbone = create_model(name, **kwargs)
    if isinstance(getattr(backbone, "fc", None), nn.Linear):
        dim = backbone.fc.in_features
        backbone.fc = nn.Identity()
    elif isinstance(getattr(backbone, "heads", None), nn.Sequential):
        dim = backbone.heads[-1].in_features
        backbone.heads = nn.Identity()
    else:
        raise ValueError(f"torchvision model {name[3:]!r} has no `fc` or `heads` classifier")
    return backbone, int(dim)


class ReIDModel(nn.Module):
    """Backbone + BNNeck + classifier (BoT / TransReID head).

    Args:
        backbone: module mapping images (N, C, H, W) to pooled features (N, feat_dim).
        feat_dim: the backbone's feature dimension.
        num_classes: number of training identities.
        neck_feat: which feature evaluation returns: ``"after"`` the BNNeck or ``"before"``.
    """

    def __init__(
        self, backbone: nn.Module, feat_dim: int, num_classes: int, neck_feat: str = "after"
    ) -> None:
        super().__init__()
        if neck_feat not in NECK_FEATS:
            raise ValueError(f"neck_feat must be one of {NECK_FEATS}, got {neck_feat!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.backbone = backbone
        self.bottleneck = nn.BatchNorm1d(feat_dim)
        self.bottleneck.bias.requires_grad_(False)  # BNNeck: no shift before the classifier
        self.classifier = nn.Linear(feat_dim, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)
        self.neck_feat = neck_feat

    @property
    def feat_dim(self) -> int:
        return self.bottleneck.num_features

    def forward(
        self, x: torch.Tensor, return_logits: bool | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``(cls_score, global_feat)`` when ``return_logits`` (default: in training), else the
        evaluation feature."""
        global_feat = self.backbone(x)
        feat = self.bottleneck(global_feat)
        if self.training if return_logits is None else return_logits:
            return self.classifier(feat), global_feat
        return feat if self.neck_feat == "after" else global_feat


def build_reid_model(
    name: str,
    num_classes: int,
    last_stride: int | None = None,
    neck_feat: str = "after",
    **kwargs: Any,
) -> ReIDModel:
    """``ReIDModel`` on the backbone ``name`` (timm, or ``tv:<name>``) with keyword overrides.

    ``last_stride`` (ResNets only) sets the stride of ``layer4`` (BoT uses 1).
    """
    backbone, dim = build_backbone(name, **kwargs)
    if last_stride is not None:
        set_last_stride(backbone, last_stride)
    return ReIDModel(backbone, dim, num_classes, neck_feat)
