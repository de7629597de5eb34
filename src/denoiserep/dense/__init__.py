"""Dense prediction building blocks: COCO / ADE20K readers, metrics and a canvas dataset."""

from denoiserep.dense.ade20k import ADE20KSegmentation, JointRandomTransform
from denoiserep.dense.canvas import FASHION_MNIST_CLASSES, FashionCanvas, build_fashion_canvas
from denoiserep.dense.coco import (
    CategoryMap,
    CocoDetection,
    coco_evaluate,
    detection_collate,
    load_coco,
    predictions_to_coco_results,
)
from denoiserep.dense.metrics import (
    SegmentationMetric,
    boundary_intersection_union,
    boundary_iou,
)
from denoiserep.dense.models import (
    DETECTION_BACKBONE,
    DETECTION_FPN,
    SEGMENTATION_BACKBONE,
    build_detector,
    build_segmenter,
    load_weights,
)

__all__ = [
    "ADE20KSegmentation",
    "CategoryMap",
    "CocoDetection",
    "DETECTION_BACKBONE",
    "DETECTION_FPN",
    "FASHION_MNIST_CLASSES",
    "FashionCanvas",
    "JointRandomTransform",
    "SEGMENTATION_BACKBONE",
    "SegmentationMetric",
    "boundary_intersection_union",
    "boundary_iou",
    "build_detector",
    "build_fashion_canvas",
    "build_segmenter",
    "coco_evaluate",
    "detection_collate",
    "load_coco",
    "load_weights",
    "predictions_to_coco_results",
]
