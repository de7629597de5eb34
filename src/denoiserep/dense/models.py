"""Dense-prediction models, randomly initialised or from pretrained weights, and where
DenoiseRep goes.

Detection: Faster R-CNN / Mask R-CNN on a ResNet-FPN backbone (torchvision's classes and
``resnet_fpn_backbone``; ``backbone="resnet50"`` gives exactly the modules and state_dict keys
of ``maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)``, smaller ResNets suit a
CPU). Segmentation: torchvision's FCN / DeepLabV3 / LR-ASPP builders, and SegFormer
(``segformer_b0`` ... ``segformer_b5``, the MiT-b0..b5 encoders with the all-MLP decoder) through
Hugging Face ``transformers`` (the optional extra ``hf``), wrapped in :class:`SegFormer` so that
it maps images to ``{"out": logits}`` at the input resolution like the torchvision models.

Pretrained weights (``pretrained``) come through the libraries' caches: ImageNet backbones for
the torchvision models (the ``DEFAULT`` weights enum or a name such as ``"IMAGENET1K_V2"``), the
ImageNet MiT encoder ``nvidia/mit-b<k>`` for SegFormer (or any SegFormer hub id / local
directory, e.g. ``nvidia/segformer-b0-finetuned-ade-512-512``). ``checkpoint`` loads a local
weights file with the head rule of :func:`denoiserep.models.load_state` (a head of another class
count is re-initialised); ``weights`` loads this package's own state-dict files strictly.

DenoiseRep targets are module-name patterns (``DenoiseConfig.targets``): the backbone's
convolutions by default (:data:`DETECTION_BACKBONE`, :data:`SEGMENTATION_BACKBONE`; SegFormer's
encoder is its ``backbone`` too), the FPN optionally (:data:`DETECTION_FPN`). The RPN head runs
once per pyramid level (shared weights), so it cannot get a single timestep and is never a
target.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.ops.misc import FrozenBatchNorm2d

from denoiserep.models.hub import DOWNLOAD_ERRORS, tv_weights, unavailable
from denoiserep.models.loading import load_checkpoint
from denoiserep.models.weights import read_checkpoint
from denoiserep.util.state_dict import load_state_checked

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
TV_SEGMENTERS = (
    "fcn_resnet50",
    "fcn_resnet101",
    "deeplabv3_resnet50",
    "deeplabv3_resnet101",
    "deeplabv3_mobilenet_v3_large",
    "lraspp_mobilenet_v3_large",
)
# MiT-b0..b5 (SegFormer paper, table 6): stage widths, depths, decoder width; the other
# SegformerConfig defaults (heads 1/2/5/8, reduction ratios 8/4/2/1, patch 7/3/3/3) are shared.
MIT_VARIANTS = {
    "b0": dict(hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2], decoder_hidden_size=256),
    "b1": dict(hidden_sizes=[64, 128, 320, 512], depths=[2, 2, 2, 2], decoder_hidden_size=256),
    "b2": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 6, 3], decoder_hidden_size=768),
    "b3": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 18, 3], decoder_hidden_size=768),
    "b4": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 8, 27, 3], decoder_hidden_size=768),
    "b5": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 6, 40, 3], decoder_hidden_size=768),
}
SEGFORMERS = tuple(f"segformer_{v}" for v in MIT_VARIANTS)
SEGMENTERS = TV_SEGMENTERS + SEGFORMERS
# Module names whose class-count-dependent weights a checkpoint may lack or size differently.
SEGMENTATION_HEADS = ("classifier", "aux_classifier")
DETECTION_HEADS = ("roi_heads.box_predictor", "roi_heads.mask_predictor")
DETECTION_BACKBONE = ["backbone.body.*"]
DETECTION_FPN = ["backbone.fpn.*"]
SEGMENTATION_BACKBONE = ["backbone.*"]
# torchvision's default anchor sizes, one per FPN output (P2..P5 and the max-pooled P6).
DEFAULT_ANCHOR_SIZES = (32, 64, 128, 256, 512)


def load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a state_dict file (``.safetensors`` or a ``torch.save`` file) with strict=True;
    a mismatch is one line that summarises it (``denoiserep.core.io.load_state_checked``)."""
    load_state_checked(model, path)
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
    pretrained: bool | str = False,
    checkpoint: str | os.PathLike | None = None,
    **kwargs: Any,
) -> GeneralizedRCNN:
    """A randomly initialised Faster R-CNN (``arch="fasterrcnn"``) or Mask R-CNN (``"maskrcnn"``).

    ``num_classes`` counts the background, as in torchvision (COCO: 91). Images are resized
    so their short side is ``min_size`` (long side at most ``max_size``); set both to the
    image size to keep small images as they are. ``anchor_sizes`` gives one anchor size per
    FPN level (5). ``trainable_layers`` (0..5) freezes the ResNet stem and early stages as
    torchvision does; ``frozen_bn`` uses ``FrozenBatchNorm2d`` (as torchvision's pretrained
    detectors) instead of trainable BatchNorm (its choice without weights). ``pretrained``
    gives the ResNet its ImageNet weights (True: torchvision's ``DEFAULT``; or an enum name
    such as ``"IMAGENET1K_V2"``); ``checkpoint`` is a detector weights file whose box / mask
    predictors may have another class count (re-initialised); ``weights`` is a state_dict
    file loaded with strict=True; ``kwargs`` go to the detector class (e.g.
    ``box_detections_per_img``, ``rpn_pre_nms_top_n_train``).
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
    backbone_weights = tv_weights(backbone, pretrained) if pretrained else None
    try:
        body = resnet_fpn_backbone(
            backbone_name=backbone,
            weights=backbone_weights,
            norm_layer=FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d,
            trainable_layers=trainable_layers,
        )
    except DOWNLOAD_ERRORS as e:
        raise unavailable(f"{backbone} ({backbone_weights})", e) from None
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
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, name=f"{arch} ({backbone})", heads=DETECTION_HEADS)
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
    pretrained: bool | str = False,
    checkpoint: str | os.PathLike | None = None,
    **kwargs: Any,
) -> nn.Module:
    """A segmentation model (one of :data:`SEGMENTERS`), random or from pretrained weights.

    The model maps a normalised image batch to ``{"out": logits}`` (plus ``"aux"`` with
    ``aux_loss``) at the input resolution. ``bn_momentum`` overrides every BatchNorm's
    momentum: torchvision's MobileNetV3 uses 0.01, so after a short from-scratch run its
    running statistics still lag the weights and eval-mode outputs are poor (0.1 fixes it).
    ``pretrained``: torchvision models get an ImageNet backbone (True: its ``DEFAULT``
    weights, or an enum name such as ``"IMAGENET1K_V2"``); SegFormer see
    :func:`build_segformer`. ``checkpoint`` is a local weights file whose class-count
    dependent head may differ (re-initialised, one line says so); ``weights`` is a state_dict
    file of this package loaded with strict=True. ``kwargs`` go to the torchvision builder
    (SegFormer: to its ``SegformerConfig``).
    """
    if name not in SEGMENTERS:
        raise ValueError(
            f"unknown segmentation model {name!r}; choose one of {', '.join(SEGMENTERS)}"
        )
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if aux_loss and (name.startswith("lraspp") or name in SEGFORMERS):
        raise ValueError(f"{name} has no auxiliary head; set aux_loss to false")
    if name in SEGFORMERS:
        model: nn.Module = build_segformer(
            name.removeprefix("segformer_"), num_classes, pretrained, checkpoint, **kwargs
        )
    else:
        backbone_weights = _backbone_weights(name, pretrained) if pretrained else None
        try:
            model = torchvision.models.get_model(
                name,
                weights=None,
                weights_backbone=backbone_weights,
                num_classes=num_classes,
                aux_loss=aux_loss,
                **kwargs,
            )
        except DOWNLOAD_ERRORS as e:
            raise unavailable(f"{name} ({backbone_weights})", e) from None
        if checkpoint is not None:
            load_checkpoint(model, checkpoint, name=name, heads=SEGMENTATION_HEADS)
    if bn_momentum is not None:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = bn_momentum
    if weights is not None:
        load_weights(model, weights)
    return model


def _backbone_weights(name: str, pretrained: bool | str) -> Any:
    """The ImageNet weights enum of a torchvision segmenter's backbone (``fcn_resnet50``:
    ResNet-50's)."""
    backbone = name.split("_", 1)[1]
    return tv_weights(backbone, pretrained)


class SegFormer(nn.Module):
    """A transformers SegFormer as the torchvision segmenters: a normalised image batch in,
    ``{"out": logits}`` at the input resolution out (the decoder's 1/4-resolution logits,
    upsampled bilinearly as SegFormer's own loss and post-processing do).

    ``backbone`` is the MiT encoder (``SegformerModel``) and ``decode_head`` the all-MLP
    decoder, so :data:`SEGMENTATION_BACKBONE` selects the encoder's layers; :meth:`to_hf`
    gives back a ``SegformerForSemanticSegmentation`` sharing these modules.
    """

    head_names = ("decode_head", "classifier")  # checkpoint keys a fresh decoder may replace

    def __init__(self, hf_model: nn.Module) -> None:
        super().__init__()
        self.backbone = hf_model.segformer
        self.decode_head = hf_model.decode_head
        self.config = hf_model.config
        self.train(hf_model.training)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        hidden = self.backbone(x, output_hidden_states=True).hidden_states
        logits = self.decode_head(hidden)
        out = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return {"out": out}

    def to_hf(self) -> nn.Module:
        """A ``SegformerForSemanticSegmentation`` made of this model's modules."""
        from transformers import SegformerForSemanticSegmentation

        model = SegformerForSemanticSegmentation(self.config)
        model.segformer, model.decode_head = self.backbone, self.decode_head
        return model


def build_segformer(
    variant: str,
    num_classes: int,
    pretrained: bool | str = False,
    checkpoint: str | os.PathLike | None = None,
    **config: Any,
) -> SegFormer:
    """SegFormer with the MiT-``variant`` encoder (``"b0"`` ... ``"b5"``) for ``num_classes``.

    Built from its config offline (``pretrained=False``; ``config`` overrides SegformerConfig
    fields such as ``drop_path_rate``), or with pretrained weights through the Hugging Face
    cache: ``True`` loads the ImageNet encoder ``nvidia/mit-<variant>`` (the decoder starts
    fresh, as in the paper), a string any SegFormer hub id or local directory (e.g.
    ``nvidia/segformer-b0-finetuned-ade-512-512``; a decoder classifier of another class
    count is re-initialised). ``checkpoint`` loads a local weights file in either key layout
    (transformers' ``segformer.*`` or this wrapper's ``backbone.*``); a checkpoint without
    the decoder (an ImageNet MiT) leaves it fresh. One line says what was re-initialised.
    """
    from denoiserep.models.hf import from_pretrained_checked, load_hf_state, require_transformers

    transformers = require_transformers()
    if variant not in MIT_VARIANTS:
        raise ValueError(
            f"unknown SegFormer variant {variant!r}; choose one of {', '.join(MIT_VARIANTS)}"
        )
    base = transformers.SegformerConfig(**MIT_VARIANTS[variant], num_labels=num_classes)
    unknown = [k for k in config if not hasattr(base, k)]
    if unknown:
        raise ValueError(f"segformer_{variant}: {', '.join(unknown)} not in SegformerConfig")
    for key, value in config.items():
        setattr(base, key, value)
    name = f"segformer_{variant}"
    cls = transformers.SegformerForSemanticSegmentation
    if pretrained and checkpoint is None:
        source = f"nvidia/mit-{variant}" if pretrained is True else str(pretrained)
        hf_model = from_pretrained_checked(
            cls,
            source,
            base,
            name=name,
            heads=("decode_head.classifier",),
            fresh=("decode_head",),
        )
    else:
        hf_model = cls(base)
    if checkpoint is not None:
        state = {  # this wrapper's layout (backbone.*) as transformers' (segformer.*)
            ("segformer." + k.removeprefix("backbone.")) if k.startswith("backbone.") else k: v
            for k, v in read_checkpoint(checkpoint).items()
        }
        load_hf_state(
            hf_model,
            state,
            f"checkpoint {checkpoint}",
            name,
            heads=("decode_head.classifier",),
            fresh=("decode_head",),
            unused=("classifier",),  # an ImageNet MiT's classifier
        )
    return SegFormer(hf_model.float()).train()


def detection_features(
    model: GeneralizedRCNN, images: torch.Tensor | list[torch.Tensor]
) -> list[torch.Tensor]:
    """The backbone + FPN feature maps of ``images`` (after the detector's own resize/normalise)."""
    batch, _ = model.transform(images)
    return list(model.backbone(batch.tensors).values())
