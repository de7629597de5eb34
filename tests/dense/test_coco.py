"""CocoDetection and coco_evaluate on COCO-format fixtures written by the tests."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from denoiserep.dense.coco import CategoryMap, CocoDetection, coco_evaluate, load_coco

H, W = 24, 32


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: column-major run lengths starting with a run of zeros."""
    flat = mask.flatten(order="F")
    counts, value, run = [], 0, 0
    for v in flat:
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = v, 1
    counts.append(run)
    return {"size": [mask.shape[0], mask.shape[1]], "counts": counts}


def _box_mask(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """uint8 HxW mask with ones on rows y0..y1-1 and columns x0..x1-1."""
    m = np.zeros((H, W), dtype=np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def _compressed(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def _ann(ann_id, image_id, cat, bbox, segmentation, iscrowd=0):
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": cat,
        "bbox": bbox,
        "area": float(bbox[2] * bbox[3]),
        "iscrowd": iscrowd,
        "segmentation": segmentation,
    }


def _write(tmp_path, data, images=("a.jpg", "b.jpg")):
    img_dir = tmp_path / "images"
    img_dir.mkdir(exist_ok=True)
    for name in images:
        Image.new("RGB", (W, H), (255, 0, 0)).save(img_dir / name, quality=100)
    ann_file = tmp_path / "instances.json"
    ann_file.write_text(json.dumps(data))
    return img_dir, ann_file


def _dataset_dict():
    """Two images; category ids 3 and 7 (not contiguous) map to labels 1 and 2."""
    return {
        "images": [
            {"id": 10, "file_name": "a.jpg", "height": H, "width": W},
            {"id": 20, "file_name": "b.jpg", "height": H, "width": W},
        ],
        "categories": [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}],
        "annotations": [
            # polygon: pycocotools fills rows 3..7, columns 2..9
            _ann(1, 10, 3, [2, 3, 8, 5], [[2, 3, 10, 3, 10, 8, 2, 8]]),
            _ann(2, 10, 7, [12, 4, 6, 10], _uncompressed_rle(_box_mask(12, 4, 18, 14))),
            _ann(3, 10, 3, [0, 0, 20, 20], _compressed(_box_mask(0, 0, 20, 20)), iscrowd=1),
            _ann(4, 10, 7, [25, 5, 1, 6], _compressed(_box_mask(25, 5, 26, 11))),  # w <= 1
            _ann(5, 20, 7, [20, 10, 10, 8], _compressed(_box_mask(20, 10, 30, 18))),
        ],
    }


def test_targets_decode_every_segmentation_format(tmp_path):
    ds = CocoDetection(*_write(tmp_path, _dataset_dict()))
    assert len(ds) == 2
    assert ds.category_map.category_ids == [3, 7]
    assert ds.category_map.names == ["three", "seven"]

    image, target = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, H, W)
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert image[0].mean() > 0.95 and image[1].mean() < 0.05  # red JPEG
    assert target["image_id"] == 10
    # crowd (id 3) and the 1-pixel-wide box (id 4) are dropped
    assert torch.equal(target["boxes"], torch.tensor([[2.0, 3, 10, 8], [12, 4, 18, 14]]))
    assert target["boxes"].dtype == torch.float32
    assert torch.equal(target["labels"], torch.tensor([1, 2]))
    assert target["masks"].dtype == torch.uint8 and target["masks"].shape == (2, H, W)
    assert torch.equal(target["masks"][0], torch.from_numpy(_box_mask(2, 3, 10, 8)))
    assert torch.equal(target["masks"][1], torch.from_numpy(_box_mask(12, 4, 18, 14)))
    assert torch.equal(target["area"], torch.tensor([40.0, 60.0]))
    assert torch.equal(target["iscrowd"], torch.tensor([0, 0]))

    _, target = ds[1]
    assert torch.equal(target["masks"][0], torch.from_numpy(_box_mask(20, 10, 30, 18)))
    assert target["labels"].tolist() == [2]


def test_image_without_objects_gives_empty_tensors(tmp_path):
    data = _dataset_dict()
    data["annotations"] = []
    _, target = CocoDetection(*_write(tmp_path, data))[0]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["masks"].shape == (0, H, W)


def test_transforms_receive_image_and_target(tmp_path):
    def flip(image, target):
        return image.flip(-1), {**target, "masks": target["masks"].flip(-1)}

    _, target = CocoDetection(*_write(tmp_path, _dataset_dict()), transforms=flip)[1]
    assert torch.equal(target["masks"][0], torch.from_numpy(_box_mask(2, 10, 12, 18)))


def test_category_map_round_trip():
    cmap = CategoryMap([90, 1, 5])
    assert [cmap.to_label(c) for c in (1, 5, 90)] == [1, 2, 3]
    assert [cmap.to_category_id(lab) for lab in (1, 2, 3)] == [1, 5, 90]
    with pytest.raises(ValueError, match="unknown category id 2"):
        cmap.to_label(2)
    with pytest.raises(ValueError, match="label 0 outside 1..3"):
        cmap.to_category_id(0)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("categories"), "missing top-level key 'categories'"),
        (
            lambda d: d["images"][1].pop("file_name"),
            r"images\[1\] is missing key\(s\) \['file_name'\]",
        ),
        (lambda d: d["annotations"][0].pop("bbox"), r"annotations\[0\] is missing key"),
        (
            lambda d: d["annotations"][2].update(image_id=99),
            "annotation id 3 .* unknown image_id 99",
        ),
        (
            lambda d: d["annotations"][4].update(category_id=4),
            "annotation id 5 .* unknown category_id 4",
        ),
        (lambda d: d["images"][1].update(id=10), r"images\[1\] repeats id 10"),
    ],
)
def test_invalid_json_names_the_offending_entry(tmp_path, mutate, message):
    data = _dataset_dict()
    mutate(data)
    with pytest.raises(ValueError, match=message):
        CocoDetection(*_write(tmp_path, data))


def test_missing_files_and_size_mismatch(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_coco(tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError, match="image id 20 .*b.jpg"):
        CocoDetection(*_write(tmp_path, _dataset_dict(), images=("a.jpg",)))
    data = _dataset_dict()
    data["images"][0]["width"] = W + 1
    ds = CocoDetection(*_write(tmp_path, data))
    with pytest.raises(ValueError, match=f"image id 10 .*file is {W}x{H}, annotation says {W + 1}"):
        ds[0]


# ---- evaluation ---------------------------------------------------------------------------


def _gt(tmp_path, annotations):
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": H, "width": W}],
        "categories": [{"id": 3, "name": "three"}, {"id": 7, "name": "seven"}],
        "annotations": annotations,
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(data))
    return load_coco(path)


def _pred(boxes, labels, masks=None, scores=None):
    pred = {
        "image_id": 1,
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "scores": torch.tensor(scores or [0.9] * len(labels)),
    }
    if masks is not None:
        pred["masks"] = torch.tensor(np.stack(masks), dtype=torch.float32)[:, None] * 0.8
    return pred


def test_predictions_equal_to_ground_truth_give_ap_one(tmp_path):
    gt = _gt(
        tmp_path,
        [
            _ann(1, 1, 3, [2, 3, 8, 5], _compressed(_box_mask(2, 3, 10, 8))),
            _ann(2, 1, 7, [12, 4, 6, 10], _compressed(_box_mask(12, 4, 18, 14))),
        ],
    )
    pred = _pred(
        [[2, 3, 10, 8], [12, 4, 18, 14]],
        [1, 2],  # contiguous labels; category ids 3 and 7 after mapping back
        masks=[_box_mask(2, 3, 10, 8), _box_mask(12, 4, 18, 14)],
    )
    metrics = coco_evaluate(gt, [pred])
    for iou_type in ("bbox", "segm"):
        assert metrics[iou_type]["AP"] == pytest.approx(1.0)
        assert metrics[iou_type]["AP50"] == pytest.approx(1.0)
        assert metrics[iou_type]["AP75"] == pytest.approx(1.0)
        assert metrics[iou_type]["APs"] == pytest.approx(1.0)  # both objects are small
        assert metrics[iou_type]["APm"] == -1.0 and metrics[iou_type]["APl"] == -1.0


def test_swapped_labels_give_ap_zero(tmp_path):
    gt = _gt(tmp_path, [_ann(1, 1, 3, [2, 3, 8, 5], _compressed(_box_mask(2, 3, 10, 8)))])
    metrics = coco_evaluate(gt, [_pred([[2, 3, 10, 8]], [2])], iou_types=("bbox",))
    assert metrics["bbox"]["AP"] == 0.0


def test_one_of_two_objects_found_caps_recall_at_half(tmp_path):
    """Recall reaches 0.5 at precision 1: COCO's 101-point interpolation gives 51/101.

    Precision is 1 at the recall thresholds 0.00, 0.01, ..., 0.50 (51 of them) and 0 above,
    so AP at every IoU threshold (the box is perfect) is 51/101.
    """
    gt = _gt(
        tmp_path,
        [
            _ann(1, 1, 3, [2, 3, 8, 5], _compressed(_box_mask(2, 3, 10, 8))),
            _ann(2, 1, 3, [12, 4, 6, 10], _compressed(_box_mask(12, 4, 18, 14))),
        ],
    )
    metrics = coco_evaluate(gt, [_pred([[2, 3, 10, 8]], [1])], iou_types=("bbox",))
    for key in ("AP", "AP50", "AP75"):
        assert metrics["bbox"][key] == pytest.approx(51 / 101)


def test_box_iou_between_thresholds(tmp_path):
    """A box with IoU 0.72 matches at IoU thresholds 0.50..0.70 (5 of 10): AP 0.5, AP75 0."""
    gt = _gt(tmp_path, [_ann(1, 1, 3, [0, 0, 10, 10], _compressed(_box_mask(0, 0, 10, 10)))])
    metrics = coco_evaluate(gt, [_pred([[0, 0, 10, 7.2]], [1])], iou_types=("bbox",))
    assert metrics["bbox"]["AP50"] == pytest.approx(1.0)
    assert metrics["bbox"]["AP75"] == pytest.approx(0.0)
    assert metrics["bbox"]["AP"] == pytest.approx(0.5)


def test_no_predictions_warn_and_report_zero(tmp_path):
    gt = _gt(tmp_path, [_ann(1, 1, 3, [2, 3, 8, 5], _compressed(_box_mask(2, 3, 10, 8)))])
    empty = _pred([], [], masks=None)
    empty["masks"] = torch.zeros(0, 1, H, W)
    with pytest.warns(UserWarning, match="no (bbox|segm) detections"):
        metrics = coco_evaluate(gt, [empty])
    assert metrics["bbox"] == dict.fromkeys(("AP", "AP50", "AP75", "APs", "APm", "APl"), 0.0)
    assert metrics["segm"]["AP"] == 0.0


def test_bad_predictions_are_rejected(tmp_path):
    gt = _gt(tmp_path, [_ann(1, 1, 3, [2, 3, 8, 5], _compressed(_box_mask(2, 3, 10, 8)))])
    stray = {**_pred([[2, 3, 10, 8]], [1]), "image_id": 5}
    with pytest.raises(ValueError, match=r"image ids not in the ground truth: \[5\]"):
        coco_evaluate(gt, [stray])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="has no 'masks' for segm"):
            coco_evaluate(gt, [_pred([[2, 3, 10, 8]], [1])], iou_types=("segm",))
