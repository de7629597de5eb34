"""Dense-prediction models from torchvision, randomly initialised, and where DenoiseRep goes.

Detection: Faster R-CNN / Mask R-CNN on a ResNet-FPN backbone (torchvision's classes and
``resnet_fpn_backbone``; ``backbone="resnet50"`` gives exactly the modules and state_dict keys
of ``maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)``, smaller ResNets suit a
CPU). Segmentation: torchvision's FCN / DeepLabV3 / LR-ASPP builders. SegFormer is left out:
it needs ``transformers``, which this package does not depend on.

DenoiseRep targets are module-name patterns (``DenoiseConfig.targets``): the backbone's
convolutions by default (:data:`DETECTION_BACKBONE`, :data:`SEGMENTATION_BACKBONE`), the FPN
optionally (:data:`DETECTION_FPN`). The RPN head runs once per pyramid level (shared
weights), so it cannot get a single timestep and is never a target.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.ops.misc import FrozenBatchNorm2d

DETECTORS = {"fasterrcnn": FasterRCNN, "maskrcnn": MaskRCNN}
DETECTION_BACKBONES = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "wide_resnet50_2",
    "wide_resnet101_2",
)
SEGMENTERS = (
    "fcn_resnet50",
    "fcn_resnet101",
    "deeplabv3_resnet50",
    "deeplabv3_resnet101",
    "deeplabv3_mobilenet_v3_large",
    "lraspp_mobilenet_v3_large",
)
DETECTION_BACKBONE = ["backbone.body.*"]
DETECTION_FPN = ["backbone.fpn.*"]
SEGMENTATION_BACKBONE = ["backbone.*"]
# torchvision's default anchor sizes, one per FPN output (P2..P5 and the max-pooled P6).
DEFAULT_ANCHOR_SIZES = (32, 64, 128, 256, 512)


def load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a state_dict file (``.safetensors`` or a ``torch.save`` file) with strict=True."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state_dict (a mapping), got {type(state).__name__}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1:2] or [str(e)]
        raise ValueError(
            f"{path} does not fit {type(model).__name__}: {first[0].strip()}"
        ) from None
    return model


def build_detector(
    arch: str,
    num_classes: int,
    backbone: str = "resnet50",
    *,
    min_size: int = 800,
    max_size: int = 1333,
    anchor_sizes: tuple[int, ...] | list[int] = DEFAULT_ANCHOR_SIZES,
    trainable_layers: int = 5,
    frozen_bn: bool = False,
    weights: str | os.PathLike | None = None,
    **kwargs: Any,
) -> GeneralizedRCNN:
    """A randomly initialised Faster R-CNN (``arch="fasterrcnn"``) or Mask R-CNN (``"maskrcnn"``).

    ``num_classes`` counts the background, as in torchvision (COCO: 91). Images are resized
    so their short side is ``min_size`` (long side at most ``max_size``); set both to the
    image size to keep small images as they are. ``anchor_sizes`` gives one anchor size per
    FPN level (5). ``trainable_layers`` (0..5) freezes the ResNet stem and early stages as
    torchvision does; ``frozen_bn`` uses ``FrozenBatchNorm2d`` (as torchvision's pretrained
    detectors) instead of trainable BatchNorm (its choice without weights). ``weights`` is an
    optional state_dict file loaded with strict=True; ``kwargs`` go to the detector class
    (e.g. ``box_detections_per_img``, ``rpn_pre_nms_top_n_train``).
    """
    if arch not in DETECTORS:
        raise ValueError(f"unknown detector {arch!r}; choose one of {', '.join(DETECTORS)}")
    if backbone not in DETECTION_BACKBONES:
        choices = ", ".join(DETECTION_BACKBONES)
        raise ValueError(f"unknown detection backbone {backbone!r}; choose one of {choices}")
    if num_classes < 2:
        raise ValueError(f"num_classes counts the background and must be >= 2, got {num_classes}")
    if len(anchor_sizes) != len(DEFAULT_ANCHOR_SIZES):
        raise ValueError(
            f"anchor_sizes needs one size per FPN level ({len(DEFAULT_ANCHOR_SIZES)}), "
            f"got {list(anchor_sizes)}"
        )
    body = resnet_fpn_backbone(
        backbone_name=backbone,
        weights=None,
        norm_layer=FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d,
        trainable_layers=trainable_layers,
    )
    anchors = AnchorGenerator(
        tuple((int(s),) for s in anchor_sizes), ((0.5, 1.0, 2.0),) * len(anchor_sizes)
    )
    model = DETECTORS[arch](
        body,
        num_classes=num_classes,
        min_size=min_size,
        max_size=max_size,
        rpn_anchor_generator=anchors,
        **kwargs,
    )
    if weights is not None:
        load_weights(model, weights)
    return model


def build_segmenter(
    name: str,
    num_classes: int,
    *,
    aux_loss: bool = False,
    bn_momentum: float | None = None,
    weights: str | os.PathLike | None = None,
    **kwargs: Any,
) -> nn.Module:
    """A randomly initialised torchvision segmentation model (one of :data:`SEGMENTERS`).

    The model maps a normalised image batch to ``{"out": logits}`` (plus ``"aux"`` with
    ``aux_loss``) at the input resolution. ``bn_momentum`` overrides every BatchNorm's
    momentum: torchvision's MobileNetV3 uses 0.01, so after a short from-scratch run its
    running statistics still lag the weights and eval-mode outputs are poor (0.1 fixes it).
    ``weights`` is an optional state_dict file loaded with strict=True; ``kwargs`` go to the
    torchvision builder.
    """
    if name not in SEGMENTERS:
        raise ValueError(
            f"unknown segmentation model {name!r}; choose one of {', '.join(SEGMENTERS)}"
        )
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if aux_loss and name.startswith("lraspp"):
        raise ValueError(f"{name} has no auxiliary head; set aux_loss to false")
    model = torchvision.models.get_model(
        name,
        weights=None,
        weights_backbone=None,
        num_classes=num_classes,
        aux_loss=aux_loss,
        **kwargs,
    )
    if bn_momentum is not None:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = bn_momentum
    if weights is not None:
        load_weights(model, weights)
    return model


def detection_features(
    model: GeneralizedRCNN, images: torch.Tensor | list[torch.Tensor]
) -> list[torch.Tensor]:
    """The backbone + FPN feature maps of ``images`` (after the detector's own resize/normalise)."""
    batch, _ = model.transform(images)
    return list(model.backbone(batch.tensors).values())
