"""ADE20KSegmentation and JointRandomTransform on fixtures in the ADEChallengeData2016 layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from denoiserep.dense.ade20k import ADE20KSegmentation, JointRandomTransform

RAW = np.array([[0, 1, 2, 150], [255, 3, 3, 0], [1, 1, 150, 150]], dtype=np.uint8)
# reduce_zero_label: 0 -> 255, k -> k-1, 255 stays 255
REDUCED = np.array([[255, 0, 1, 149], [255, 2, 2, 255], [0, 0, 149, 149]])


def _write_ade(root, split="training", names=("ADE_a", "ADE_b"), raw=RAW, size=None):
    base = root / "ADEChallengeData2016"
    for sub in ("images", "annotations"):
        (base / sub / split).mkdir(parents=True, exist_ok=True)
    h, w = raw.shape
    for name in names:
        Image.new("RGB", size or (w, h), (0, 255, 0)).save(base / "images" / split / f"{name}.jpg")
        Image.fromarray(raw).save(base / "annotations" / split / f"{name}.png")
    return base


def test_reads_pairs_and_reduces_zero_label(tmp_path):
    base = _write_ade(tmp_path)
    for root in (tmp_path, base):  # the parent or the ADEChallengeData2016 folder itself
        ds = ADE20KSegmentation(root, "training")
        assert len(ds) == 2
        assert [p.name for p, _ in ds.samples] == ["ADE_a.jpg", "ADE_b.jpg"]
        image, mask = ds[1]
        assert image.dtype == torch.float32 and image.shape == (3, 3, 4)
        assert image[1].min() > 0.95 and image[0].max() < 0.05
        assert mask.dtype == torch.int64
        assert torch.equal(mask, torch.from_numpy(REDUCED))


def test_fewer_classes_and_out_of_range_labels(tmp_path):
    raw = np.array([[0, 1], [2, 3]], dtype=np.uint8)
    _write_ade(tmp_path, "validation", names=("x",), raw=raw)
    _, mask = ADE20KSegmentation(tmp_path, "validation", num_classes=3)[0]
    assert mask.tolist() == [[255, 0], [1, 2]]
    with pytest.raises(ValueError, match=r"x.png: label value\(s\) \[3\] outside 0..2"):
        ADE20KSegmentation(tmp_path, "validation", num_classes=2)[0]


def test_layout_errors_name_the_offending_path(tmp_path):
    with pytest.raises(ValueError, match="split must be one of"):
        ADE20KSegmentation(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="images/training"):
        ADE20KSegmentation(tmp_path, "training")
    base = _write_ade(tmp_path)
    (base / "annotations" / "training" / "ADE_b.png").unlink()
    with pytest.raises(ValueError, match="1 image.* no annotation .* e.g. ADE_b.jpg"):
        ADE20KSegmentation(tmp_path)
    (base / "images" / "training" / "ADE_b.jpg").unlink()
    Image.fromarray(RAW).save(base / "annotations" / "training" / "ADE_c.png")
    with pytest.raises(ValueError, match="1 annotation.* no image .* e.g. ADE_c.png"):
        ADE20KSegmentation(tmp_path)


def test_size_mismatch_is_reported(tmp_path):
    _write_ade(tmp_path, names=("big",), size=(5, 3))
    with pytest.raises(ValueError, match="big.png: annotation is 4x3 but image big.jpg is 5x3"):
        ADE20KSegmentation(tmp_path)[0]


def _coded_pair(h=4, w=5):
    """Image whose three channels equal mask / 10, so any misalignment is visible."""
    mask = torch.arange(h * w).reshape(h, w) % 7
    return (mask / 10).expand(3, h, w).clone(), mask


def test_joint_transform_flip_and_crop_keep_alignment():
    image, mask = _coded_pair()
    torch.manual_seed(0)
    out_image, out_mask = JointRandomTransform((3, 4), scale_range=(1, 1), flip_prob=1.0)(
        image, mask
    )
    assert out_image.shape == (3, 3, 4) and out_mask.shape == (3, 4)
    assert torch.allclose(out_image[0], out_mask / 10)
    flipped = mask.flip(-1)
    windows = [flipped[t : t + 3, s : s + 4] for t in range(2) for s in range(2)]
    assert any(torch.equal(out_mask, w) for w in windows)


def test_joint_transform_nearest_resize_and_ignore_padding():
    image, mask = _coded_pair()
    up = JointRandomTransform(8, scale_range=(2, 2), flip_prob=0.0)
    _, out_mask = up(image, mask)
    expected = mask.repeat_interleave(2, 0).repeat_interleave(2, 1)  # nearest, exact x2
    assert any(
        torch.equal(out_mask, expected[t : t + 8, s : s + 8]) for t in range(1) for s in range(3)
    )
    pad = JointRandomTransform((6, 7), scale_range=(1, 1), flip_prob=0.0, ignore_index=255)
    out_image, out_mask = pad(image, mask)
    assert torch.equal(out_mask[:4, :5], mask) and torch.equal(out_image[:, :4, :5], image)
    assert (out_mask[4:] == 255).all() and (out_mask[:, 5:] == 255).all()
    assert (out_image[:, 4:] == 0).all() and (out_image[:, :, 5:] == 0).all()
