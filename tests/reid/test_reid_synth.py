"""The Fashion-MNIST re-ID builder on a fake IDX fixture, read back by the Market reader."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from denoiserep.reid import build_fashion_reid, evaluate, read_market1501
from denoiserep.reid.datasets import MARKET_PATTERN

TRAIN_GREY, TEST_GREY = 60, 200  # uniform source images: tells the two splits apart


def write_idx_images(path: Path, images: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, 3]) + struct.pack(">3i", *images.shape)
    path.write_bytes(gzip.compress(header + images.astype(np.uint8).tobytes()))


@pytest.fixture
def fmnist(tmp_path):
    folder = tmp_path / "fmnist"
    folder.mkdir()
    write_idx_images(folder / "train-images-idx3-ubyte.gz", np.full((20, 28, 28), TRAIN_GREY))
    write_idx_images(folder / "t10k-images-idx3-ubyte.gz", np.full((15, 28, 28), TEST_GREY))
    return folder


TINY = {
    "num_train_ids": 4,
    "num_test_ids": 5,
    "cameras": 3,
    "images_per_camera": 2,
    "query_cameras": 2,
    "num_distractors": 2,
    "image_size": 16,
}


def original_pids(items):
    return {int(MARKET_PATTERN.fullmatch(Path(p).stem).group(1)) for p, _, _ in items}


def test_builds_market_layout_with_expected_counts(tmp_path, fmnist):
    root = build_fashion_reid(tmp_path / "out", fmnist_dir=fmnist, **TINY)
    ds = read_market1501(root)
    assert len(ds.train) == 4 * 3 * 2 and ds.num_train_pids == 4 and ds.num_train_cams == 3
    assert len(ds.query) == 5 * 2  # first image of each identity in cameras 1 and 2
    assert {cam for _, _, cam in ds.query} == {0, 1}
    assert len(ds.gallery) == 5 * 3 * 2 - 10 + 2
    assert sum(pid == 0 for _, pid, _ in ds.gallery) == 2  # distractors
    # disjoint identities: train pids 1..4, test pids 5..9
    assert original_pids(ds.train) == {1, 2, 3, 4}
    assert {pid for _, pid, _ in ds.query} == {5, 6, 7, 8, 9}
    assert {pid for _, pid, _ in ds.gallery} == {0, 5, 6, 7, 8, 9}
    # every query has cross-camera matches in the gallery
    q_pids = np.array([pid for _, pid, _ in ds.query])
    g_pids = np.array([pid for _, pid, _ in ds.gallery])
    q_cams = np.array([cam for _, _, cam in ds.query])
    g_cams = np.array([cam for _, _, cam in ds.gallery])
    distmat = (q_pids[:, None] != g_pids[None, :]).astype(float)
    assert evaluate(distmat, q_pids, g_pids, q_cams, g_cams)[1] == 1.0


def test_images_are_rgb_jittered_and_from_the_right_split(tmp_path, fmnist):
    ds = read_market1501(build_fashion_reid(tmp_path / "out", fmnist_dir=fmnist, **TINY))

    def load(path):
        with Image.open(path) as img:
            assert img.mode == "RGB" and img.size == (16, 16)
            return np.asarray(img, dtype=float)

    def camera1(items):  # camera 1 is the identity transformation (plus jitter)
        return [load(p) for p, _, cam in items if cam == 0 and "_c1s1_" in p]

    # the shift jitter blacks out at most one row and column of 16; brightness x[0.9, 1.1]
    assert all(0.75 * TRAIN_GREY < img.mean() < 1.15 * TRAIN_GREY for img in camera1(ds.train))
    test_items = [it for it in ds.query + ds.gallery if it[1] != 0]
    assert all(0.75 * TEST_GREY < img.mean() < 1.15 * TEST_GREY for img in camera1(test_items))
    same_camera = [load(p) for p, pid, cam in ds.train if pid == 0 and cam == 0]
    assert len(same_camera) == 2 and not np.array_equal(*same_camera)


def test_seeded(tmp_path, fmnist):
    a = build_fashion_reid(tmp_path / "a", fmnist_dir=fmnist, seed=1, **TINY)
    b = build_fashion_reid(tmp_path / "b", fmnist_dir=fmnist, seed=1, **TINY)
    for name in ("bounding_box_train", "query", "bounding_box_test"):
        files_a, files_b = sorted((a / name).iterdir()), sorted((b / name).iterdir())
        assert [f.name for f in files_a] == [f.name for f in files_b]
        assert all(
            fa.read_bytes() == fb.read_bytes() for fa, fb in zip(files_a, files_b, strict=True)
        )


def test_errors(tmp_path, fmnist):
    root = build_fashion_reid(tmp_path / "out", fmnist_dir=fmnist, **TINY)
    with pytest.raises(FileExistsError, match="bounding_box_train"):
        build_fashion_reid(root, fmnist_dir=fmnist, **TINY)
    with pytest.raises(ValueError, match="cameras"):
        build_fashion_reid(tmp_path / "x", fmnist_dir=fmnist, **{**TINY, "cameras": 7})
    with pytest.raises(ValueError, match="Fashion-MNIST has"):
        build_fashion_reid(tmp_path / "x", fmnist_dir=fmnist, **{**TINY, "num_test_ids": 14})
    (fmnist / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        build_fashion_reid(tmp_path / "other", fmnist_dir=fmnist, **TINY)
