"""A fake Fashion-MNIST (IDX files) for the dense pipeline tests."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np


def write_fake_fmnist(folder: Path, n: int = 20) -> Path:
    """Fashion-MNIST IDX files (uncompressed) holding bright rectangles labelled 0..9."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    for source in ("train", "t10k"):
        images = np.zeros((n, 28, 28), dtype=np.uint8)
        for i in range(n):
            h, w = rng.integers(12, 27, size=2)
            images[i, 1 : 1 + h, 1 : 1 + w] = rng.integers(120, 255)
        for kind, array in (("images-idx3", images), ("labels-idx1", np.arange(n) % 10)):
            header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
            data = header + array.astype(np.uint8).tobytes()
            (folder / f"{source}-{kind}-ubyte").write_bytes(data)
    return folder
