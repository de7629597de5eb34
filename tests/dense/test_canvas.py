"""build_fashion_canvas on a tiny fake Fashion-MNIST written in IDX format, read back by both
the COCO and the ADE20K readers."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from denoiserep.dense.ade20k import ADE20KSegmentation
from denoiserep.dense.canvas import FASHION_MNIST_CLASSES, build_fashion_canvas
from denoiserep.dense.coco import CocoDetection

REAL_FMNIST = Path("/usr/share/datasets/fashion-mnist")


def _write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


@pytest.fixture
def fake_fmnist(tmp_path):
    """20 items per split: bright rectangles (one with a dark hole) labelled 0..9."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "fmnist"
    folder.mkdir()
    for source, compress in (("train", True), ("t10k", False)):
        images = np.zeros((20, 28, 28), dtype=np.uint8)
        for i in range(20):
            h, w = rng.integers(12, 27, size=2)
            images[i, 1 : 1 + h, 1 : 1 + w] = rng.integers(120, 255)
        images[0, 8:12, 8:12] = 0  # a hole: filled into the silhouette
        labels = np.arange(20) % 10
        name = "" if not compress else ".gz"
        _write_idx(folder / f"{source}-images-idx3-ubyte{name}", images, compress)
        _write_idx(folder / f"{source}-labels-idx1-ubyte{name}", labels, compress)
    return folder


def test_coco_and_ade_views_agree(tmp_path, fake_fmnist):
    out = build_fashion_canvas(
        tmp_path / "canvas", fake_fmnist, num_train=6, num_val=3, canvas_size=64, seed=1
    )
    for split, ade_split, count in (("train", "training", 6), ("val", "validation", 3)):
        data = json.loads(out.coco_ann_file(split).read_text())
        assert [c["name"] for c in data["categories"]] == list(FASHION_MNIST_CLASSES)
        coco = CocoDetection(out.coco_img_dir(split), out.coco_ann_file(split))
        ade = ADE20KSegmentation(out.root, ade_split, num_classes=10)
        assert len(coco) == len(ade) == count
        total = 0
        for i in range(count):
            image, target = coco[i]
            ade_image, mask = ade[i]
            assert image.shape == ade_image.shape == (3, 64, 64)
            assert torch.equal(image, ade_image)  # the same JPEG file
            n = len(target["labels"])
            assert 2 <= n <= 5
            total += n
            # visible silhouettes are disjoint and paint exactly the ADE class map
            masks = target["masks"].bool()
            assert masks.sum(0).max() <= 1
            expected = torch.full((64, 64), 255, dtype=torch.int64)
            for m, label in zip(masks, target["labels"], strict=True):
                expected[m] = label - 1  # COCO label 1..10 -> ADE class 0..9
            assert torch.equal(mask, expected)
            for m, box in zip(masks, target["boxes"], strict=True):
                ys, xs = torch.nonzero(m, as_tuple=True)
                assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert total == len(data["annotations"])  # no object dropped by the reader


def test_same_seed_same_files(tmp_path, fake_fmnist):
    a = build_fashion_canvas(tmp_path / "a", fake_fmnist, num_train=2, num_val=1, seed=3)
    b = build_fashion_canvas(tmp_path / "b", fake_fmnist, num_train=2, num_val=1, seed=3)
    c = build_fashion_canvas(tmp_path / "c", fake_fmnist, num_train=2, num_val=1, seed=4)
    a_ann, b_ann, c_ann = (x.coco_ann_file("train").read_bytes() for x in (a, b, c))
    assert a_ann == b_ann and a_ann != c_ann


def test_missing_source_file_is_named(tmp_path, fake_fmnist):
    (fake_fmnist / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        build_fashion_canvas(tmp_path / "out", fake_fmnist, num_train=1, num_val=1)
    with pytest.raises(ValueError, match="objects_per_image"):
        build_fashion_canvas(tmp_path / "out", fake_fmnist, objects_per_image=(3, 2))


@pytest.mark.skipif(not REAL_FMNIST.is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist(tmp_path):
    out = build_fashion_canvas(tmp_path, num_train=3, num_val=2)
    coco = CocoDetection(out.coco_img_dir("val"), out.coco_ann_file("val"))
    ade = ADE20KSegmentation(out.ade_root, "validation", num_classes=out.num_classes)
    for i in range(2):
        labels = set(coco[i][1]["labels"].tolist())
        assert {c + 1 for c in ade[i][1].unique().tolist() if c != 255} == labels
