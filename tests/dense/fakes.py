"""A fake Fashion-MNIST (IDX files) for the dense pipeline tests, and what their end-to-end
runs check of the robustness evaluation."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

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


# robustness on dense tasks: corrupted images in [0, 1], feature noise, static 2-bit features
ROBUSTNESS = [
    "robustness.enabled=true",
    "robustness.corruptions=[gaussian_noise]",
    "robustness.severities=[5]",
    "robustness.feature_sigmas=[0.5]",
    "robustness.feature_bits=[2]",
    "robustness.feature_ranges=static",
    "robustness.calibration_images=2",
    "robustness.max_images=2",
]


def check_robustness(report: dict[str, Any], out: Path, metric: str) -> None:
    """Every arm scored on ROBUSTNESS's conditions with ``metric``, in the report and files."""
    for arm in ("baseline", "control", "denoiserep"):
        res = report["robustness"]["0"][arm]
        assert metric in res["corruptions"]["gaussian_noise"]["5"]
        assert metric in res["feature_noise"]["0.5"] and metric in res["feature_bits"]["2"]
        assert list(res["feature_ranges"]) == res["layers"]
        assert {"mCA", "mFA"} <= set(report["summary"][arm])
    assert f"Robustness ({metric}" in (out / "results.md").read_text()
    assert (out / "robustness.png").stat().st_size > 10_000
