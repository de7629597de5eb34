"""A small real-image re-identification benchmark built from Fashion-MNIST.

Identity = one Fashion-MNIST item (a source image). Camera = a fixed image transformation
(`CAMERAS`), so recognising an identity across cameras means matching one garment seen
under different viewing conditions; every image also gets a small random jitter
(translation, brightness, pixel noise), so two images from the same camera differ.

Train identities come from the Fashion-MNIST train split, test identities and distractors
from its test split, so the two never share a source image. Files are written in the
Market-1501 layout and naming (`bounding_box_train`, `query`, `bounding_box_test`,
`0001_c1s1_000001_00.jpg`), so `read_market1501` loads the result; distractors have pid
0000 and sit in the gallery only, like Market-1501's.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from denoiserep.data.constants import FASHION_MNIST_ROOT
from denoiserep.data.idx import read_idx
from denoiserep.engine import dist

from .datasets import ReIDDataset, build_reid_dataset

FASHION_MNIST_DIR = FASHION_MNIST_ROOT  # Debian package dataset-fashion-mnist


def _flip_bright(img: Image.Image) -> Image.Image:
    return ImageEnhance.Brightness(ImageOps.mirror(img)).enhance(1.3)


def _rotate(img: Image.Image) -> Image.Image:
    return img.rotate(12, resample=Image.Resampling.BILINEAR)


def _zoom(img: Image.Image) -> Image.Image:
    size = img.size[0]
    m = round(0.1 * size)
    return img.crop((m, m, size - m, size - m)).resize(img.size, Image.Resampling.BILINEAR)


def _contrast_blur(img: Image.Image) -> Image.Image:
    low = ImageEnhance.Contrast(img).enhance(0.6)
    return low.filter(ImageFilter.GaussianBlur(radius=img.size[0] / 32))


def _tint(img: Image.Image) -> Image.Image:
    gains = np.array([1.0, 0.8, 0.55])
    return Image.fromarray((np.asarray(img) * gains).astype(np.uint8))


# Camera c (1-based) applies CAMERAS[c - 1]: (description, transformation of an RGB image).
CAMERAS: tuple[tuple[str, Callable[[Image.Image], Image.Image]], ...] = (
    ("identity", lambda img: img),
    ("horizontal flip, brightness x1.3", _flip_bright),
    ("rotation by 12 degrees", _rotate),
    ("zoom x1.25 (central 80% crop resized back)", _zoom),
    ("contrast x0.6 and Gaussian blur (radius size/32)", _contrast_blur),
    ("warm tint (RGB gains 1.0, 0.8, 0.55)", _tint),
)


def _jitter(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Random shift (up to size/16 px), brightness x[0.9, 1.1] and Gaussian noise (sigma 4)."""
    reach = max(1, img.size[0] // 16)
    dx, dy = rng.integers(-reach, reach + 1, size=2)
    img = img.transform(img.size, Image.Transform.AFFINE, (1, 0, int(dx), 0, 1, int(dy)))
    pixels = np.asarray(img, dtype=np.float64) * rng.uniform(0.9, 1.1)
    pixels += rng.normal(0.0, 4.0, size=pixels.shape)
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


def render(source: np.ndarray, camera: int, size: int, rng: np.random.Generator) -> Image.Image:
    """One RGB `size` x `size` view of a 28 x 28 uint8 source image through `camera` (1-based)."""
    base = Image.fromarray(source).resize((size, size), Image.Resampling.BILINEAR).convert("RGB")
    return _jitter(CAMERAS[camera - 1][1](base), rng)


def _load_split(fmnist_dir: Path, stem: str) -> np.ndarray:
    for name in (f"{stem}.gz", stem):
        if (fmnist_dir / name).is_file():
            return read_idx(fmnist_dir / name)
    raise FileNotFoundError(
        f"Fashion-MNIST file {fmnist_dir / stem}(.gz) not found "
        "(Debian: apt-get install dataset-fashion-mnist)"
    )


def build_fashion_reid(
    out_root: str | Path,
    fmnist_dir: str | Path = FASHION_MNIST_DIR,
    num_train_ids: int = 500,
    num_test_ids: int = 500,
    cameras: int = 6,
    images_per_camera: int = 3,
    query_cameras: int = 2,
    num_distractors: int = 100,
    image_size: int = 32,
    image_format: str = "jpg",
    seed: int = 0,
) -> Path:
    """Write a Fashion-MNIST re-ID dataset in Market-1501 layout under `out_root`.

    Every identity has `images_per_camera` images in each of cameras 1..`cameras`. Train
    identities (pids 1..num_train_ids) all go to `bounding_box_train`. For each test
    identity (the next num_test_ids pids), the first image of each of cameras
    1..`query_cameras` is a query and all its other images are gallery; `num_distractors`
    further test-split items, one image each through a random camera, join the gallery as
    pid 0. Returns `out_root`. Raises FileExistsError if a split folder already holds files.
    """
    if not 2 <= cameras <= len(CAMERAS):
        raise ValueError(f"cameras must be in 2..{len(CAMERAS)}, got {cameras}")
    if not 1 <= query_cameras <= cameras:
        raise ValueError(f"query_cameras must be in 1..cameras ({cameras}), got {query_cameras}")
    if min(num_train_ids, num_test_ids, images_per_camera) < 1 or num_distractors < 0:
        raise ValueError(
            "num_train_ids, num_test_ids, images_per_camera must be >= 1, num_distractors >= 0"
        )
    if num_train_ids + num_test_ids > 9999:
        raise ValueError("num_train_ids + num_test_ids must fit Market's 4-digit pids (<= 9999)")
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    if image_format not in ("jpg", "png"):
        raise ValueError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
    fmnist_dir = Path(fmnist_dir)
    train_split = _load_split(fmnist_dir, "train-images-idx3-ubyte")
    test_split = _load_split(fmnist_dir, "t10k-images-idx3-ubyte")
    if num_train_ids > len(train_split) or num_test_ids + num_distractors > len(test_split):
        raise ValueError(
            f"asked for {num_train_ids} train ids and {num_test_ids} + {num_distractors} test "
            f"ids + distractors; Fashion-MNIST has {len(train_split)} / {len(test_split)} images"
        )

    out_root = Path(out_root)
    folders = {s: out_root / s for s in ("bounding_box_train", "query", "bounding_box_test")}
    for folder in folders.values():
        if folder.is_dir() and any(folder.iterdir()):
            raise FileExistsError(f"refusing to write into non-empty folder {folder}")
        folder.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(seed)
    train_sources = train_split[rng.choice(len(train_split), num_train_ids, replace=False)]
    picked = test_split[rng.choice(len(test_split), num_test_ids + num_distractors, replace=False)]
    frame = 0

    def save(folder: str, source: np.ndarray, pid: int, camera: int, index: int) -> None:
        nonlocal frame
        frame += 1
        name = f"{pid:04d}_c{camera}s1_{frame:06d}_{index:02d}.{image_format}"
        render(source, camera, image_size, rng).save(folders[folder] / name)

    for pid, source in enumerate(train_sources, start=1):
        for camera in range(1, cameras + 1):
            for index in range(images_per_camera):
                save("bounding_box_train", source, pid, camera, index)
    for pid, source in enumerate(picked[:num_test_ids], start=num_train_ids + 1):
        for camera in range(1, cameras + 1):
            for index in range(images_per_camera):
                is_query = index == 0 and camera <= query_cameras
                save("query" if is_query else "bounding_box_test", source, pid, camera, index)
    for source in picked[num_test_ids:]:
        save("bounding_box_test", source, 0, int(rng.integers(1, cameras + 1)), 0)
    return out_root


def load_source(src: Any) -> ReIDDataset:
    """Read the dataset of ``src`` (a ``SourceConfig``: name, root, options,
    build_fashion), first writing the Fashion-MNIST benchmark to its root if configured.

    The benchmark is written by rank 0 into a temporary sibling folder that is renamed to
    ``root`` when complete, so an interrupted build never leaves a partial dataset.
    """
    root = Path(src.root)
    if src.build_fashion is not None and not root.exists():
        if dist.is_main():
            tmp = root.with_name(root.name + ".partial")
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                build_fashion_reid(tmp, **src.build_fashion)
            except TypeError as e:
                raise ValueError(f"build_fashion for {root}: {e}") from None
            tmp.rename(root)
        dist.barrier()
    return build_reid_dataset(src.name, root, **src.options)
