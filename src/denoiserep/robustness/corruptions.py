"""ImageNet-C corruptions (Hendrycks & Dietterich, ICLR 2019) on image tensors.

``corrupt(images, name, severity, seed)`` corrupts a float batch ``(N, C, H, W)`` in [0, 1] with
one of :data:`CORRUPTIONS` at severity 1..5 and returns a batch of the same shape, dtype and
device, in [0, 1]. Each image's randomness comes from its own generator, seeded from
(seed, image index, corruption, severity), so an image is corrupted the same way whatever batch
it arrives in and in whichever process. :class:`CorruptedDataset` applies a corruption to the
images of a dataset whose items are ``(image, label, ...)``, undoing and redoing the dataset's
normalisation.

Parameters are the published ones of the authors' generators (github.com/hendrycks/robustness):
``table="imagenet"`` (default) is ``ImageNet-C/create_c/make_imagenet_c.py``, ``table="cifar"``
is ``ImageNet-C/create_c/make_cifar_c.py`` (CIFAR-10-C, the authors' table for 32x32 images,
milder at the same severity). The operations follow the same code:

============================  ===================================================================
gaussian_noise                x + N(0, c^2), per value
shot_noise                    Poisson(c x) / c, per value
impulse_noise                 salt & pepper (skimage ``random_noise(mode="s&p", amount=c)``): each
                              value is replaced with probability c, by 0 or 1 with equal odds
gaussian_blur                 Gaussian filter of std c pixels, kernel radius int(4 c + 0.5),
                              edges replicated (skimage ``gaussian`` / scipy mode "nearest")
contrast                      (x - m) c + m, m the image's per-channel mean
jpeg_compression              PIL JPEG at quality c (RGB images as RGB, others per channel as L)
pixelate                      PIL BOX resize to (int(W c), int(H c)), NEAREST resize back
============================  ===================================================================

Differences from the authors' scripts, all deliberate: the input is a float tensor and the output
is not quantised to 8 bits (JPEG excepted, which quantises by nature), grayscale images stay
single-channel, pixelate scales the image's own size rather than 224 / 32 and resizes back with
NEAREST (as ``imagecorruptions`` does; the authors' BOX upsampling is the same except that it
averages two source pixels where an output pixel's centre falls on their edge, which at 28 px
made severity 1 move the image further than severity 2), and the random numbers come from torch
generators seeded per image instead of NumPy's global state.

Pixelate's distance to the clean image is not monotone in severity on every image: at 32 px the
CIFAR table keeps 30 px at severity 1 and 28 px at severity 2, and on Fashion-MNIST images
upscaled to 32 px the non-integer 30 -> 32 resize moves the average image further than 28 -> 32
(on the tests' images, and on 28 px Fashion-MNIST with both tables, the mean distance grows).

``imagecorruptions`` (bethgelab, 1.1.2, the maintained packaging of these scripts) was tried on
this stack and is not used: it rejects images under 32x32 pixels (Fashion-MNIST is 28x28),
imports ``pkg_resources`` (gone from setuptools >= 81), its ``gaussian_blur`` calls
``skimage.filters.gaussian(multichannel=True)`` (removed in scikit-image 0.19+), it turns
grayscale images into RGB, draws from NumPy's global random state (no per-image seed) and pulls
in opencv-python and scikit-image.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "gaussian_blur",
    "contrast",
    "jpeg_compression",
    "pixelate",
)
"""The corruptions :func:`corrupt` implements (ImageNet-C names)."""

FAMILIES: dict[str, str] = {
    "gaussian_noise": "noise",
    "shot_noise": "noise",
    "impulse_noise": "noise",
    "gaussian_blur": "blur",
    "contrast": "digital",
    "jpeg_compression": "digital",
    "pixelate": "digital",
}
"""ImageNet-C's category of each corruption (Gaussian blur is one of its extra corruptions)."""

SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

# corruption -> the parameter c at severities 1..5 (see the module docstring for the sources)
PARAMETERS: dict[str, dict[str, tuple[float, ...]]] = {
    "imagenet": {
        "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
        "shot_noise": (60, 25, 12, 5, 3),
        "impulse_noise": (0.03, 0.06, 0.09, 0.17, 0.27),
        "gaussian_blur": (1, 2, 3, 4, 6),
        "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
        "jpeg_compression": (25, 18, 15, 10, 7),
        "pixelate": (0.6, 0.5, 0.4, 0.3, 0.25),
    },
    "cifar": {
        "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
        "shot_noise": (500, 250, 100, 75, 50),
        "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
        "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),
        "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
        "jpeg_compression": (80, 65, 58, 50, 40),
        "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
    },
}
TABLES: tuple[str, ...] = tuple(PARAMETERS)
# inputs may overshoot [0, 1] by float rounding (e.g. after undoing a normalisation)
_RANGE_TOLERANCE = 1e-3


def parameter(name: str, severity: int, table: str = "imagenet") -> float:
    """The parameter c of corruption ``name`` at ``severity`` in ``table``."""
    if table not in PARAMETERS:
        raise ValueError(f"unknown parameter table {table!r}; valid: {', '.join(TABLES)}")
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; valid: {', '.join(CORRUPTIONS)}")
    if isinstance(severity, bool) or severity not in SEVERITIES:
        raise ValueError(f"severity must be an integer in 1..5, got {severity!r}")
    return PARAMETERS[table][name][severity - 1]


def image_seed(seed: int, index: int, name: str, severity: int) -> int:
    """A 63-bit seed for one image's corruption, stable across processes and platforms."""
    key = f"denoiserep.corruptions:{int(seed)}:{int(index)}:{name}:{int(severity)}"
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") >> 1


# ----------------------------------------------------------------------------- operations
# each takes a float (C, H, W) image in [0, 1] on the CPU (and a generator for the random ones)


def _gaussian_noise(x: torch.Tensor, c: float, g: torch.Generator) -> torch.Tensor:
    return x + c * torch.randn(x.shape, generator=g, dtype=x.dtype)


def _shot_noise(x: torch.Tensor, c: float, g: torch.Generator) -> torch.Tensor:
    return torch.poisson(x * c, generator=g) / c


def _impulse_noise(x: torch.Tensor, c: float, g: torch.Generator) -> torch.Tensor:
    flipped = torch.rand(x.shape, generator=g) < c
    salted = torch.rand(x.shape, generator=g) < 0.5
    out = x.masked_fill(flipped & salted, 1.0)
    return out.masked_fill(flipped & ~salted, 0.0)


def gaussian_kernel1d(sigma: float, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """scipy.ndimage's Gaussian kernel: radius int(4 sigma + 0.5), weights summing to 1."""
    radius = int(4.0 * sigma + 0.5)
    k = torch.arange(-radius, radius + 1, dtype=torch.float64)
    w = torch.exp(-0.5 * (k / sigma) ** 2)
    return (w / w.sum()).to(dtype)


def _gaussian_blur_batch(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W) with replicated edges (scipy mode "nearest")."""
    n, c, h, w = x.shape
    k = gaussian_kernel1d(sigma, x.dtype).to(x.device)
    r = (k.numel() - 1) // 2
    y = x.reshape(n * c, 1, h, w)
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return y.reshape(n, c, h, w)


def _contrast(x: torch.Tensor, c: float) -> torch.Tensor:
    means = x.mean(dim=(-2, -1), keepdim=True)
    return (x - means) * c + means


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x.double() * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()


def _jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    def roundtrip(array: np.ndarray) -> np.ndarray:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, "JPEG", quality=int(quality))
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            return np.asarray(decoded.convert("RGB" if array.ndim == 3 else "L"))

    pixels = _to_uint8(x)
    if x.shape[0] == 3:
        out = roundtrip(np.ascontiguousarray(pixels.transpose(1, 2, 0))).transpose(2, 0, 1)
    else:
        out = np.stack([roundtrip(channel) for channel in pixels])
    return torch.from_numpy(np.ascontiguousarray(out)).to(x.dtype) / 255.0


def _pixelate(x: torch.Tensor, c: float) -> torch.Tensor:
    h, w = x.shape[-2:]
    small = (max(1, int(w * c)), max(1, int(h * c)))  # PIL sizes are (width, height)
    box, nearest = Image.Resampling.BOX, Image.Resampling.NEAREST
    channels = []
    for channel in x.to(torch.float32).numpy():
        image = Image.fromarray(np.ascontiguousarray(channel))  # mode "F": no 8-bit rounding
        channels.append(np.asarray(image.resize(small, box).resize((w, h), nearest)))
    return torch.from_numpy(np.stack(channels)).to(x.dtype)


_RANDOM_OPS = {
    "gaussian_noise": _gaussian_noise,
    "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise,
}

# ----------------------------------------------------------------------------- public API


def corrupt(
    images: torch.Tensor,
    name: str,
    severity: int,
    seed: int,
    index_offset: int = 0,
    *,
    table: str = "imagenet",
) -> torch.Tensor:
    """Corrupt a batch of images with ImageNet-C corruption ``name`` at ``severity`` (1..5).

    ``images`` is a float tensor ``(N, C, H, W)`` with values in [0, 1] (any C; JPEG encodes
    3-channel images as RGB and other channels one by one). Image ``i`` is corrupted with a
    generator seeded from ``(seed, index_offset + i, name, severity)``, so the result does not
    depend on how the images are batched. Returns a new tensor of the same shape, dtype and
    device with values in [0, 1]; ``images`` is not modified.
    """
    c = parameter(name, severity, table)
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"corrupt() needs a (N, C, H, W) tensor, got {shape}")
    if not images.is_floating_point():
        raise TypeError(f"corrupt() needs float images in [0, 1], got dtype {images.dtype}")
    if images.numel() == 0:
        return images.clone()
    lo, hi = float(images.min()), float(images.max())
    if lo < -_RANGE_TOLERANCE or hi > 1 + _RANGE_TOLERANCE or math.isnan(lo + hi):
        raise ValueError(
            f"corrupt() needs images in [0, 1], got values in [{lo:.4g}, {hi:.4g}] "
            "(undo the normalisation first, e.g. with CorruptedDataset(denormalize=(mean, std)))"
        )
    compute = torch.float64 if images.dtype == torch.float64 else torch.float32
    x = images.detach().to("cpu", compute).clamp(0.0, 1.0)
    if name == "gaussian_blur":
        out = _gaussian_blur_batch(x, float(c))
    elif name == "contrast":
        out = _contrast(x, float(c))
    else:
        rows = []
        for i, image in enumerate(x):
            if name in _RANDOM_OPS:
                g = torch.Generator()
                g.manual_seed(image_seed(seed, index_offset + i, name, severity))
                rows.append(_RANDOM_OPS[name](image, c, g))
            elif name == "jpeg_compression":
                rows.append(_jpeg(image, int(c)))
            else:
                rows.append(_pixelate(image, float(c)))
        out = torch.stack(rows)
    return out.clamp_(0.0, 1.0).to(images.device, images.dtype)


class CorruptedDataset(Dataset):
    """A dataset whose images are corrupted with :func:`corrupt` when read.

    ``dataset[i]`` is an image tensor ``(C, H, W)`` or a tuple / list whose first element is
    one (``(image, label, ...)``); the other elements pass through unchanged. With
    ``denormalize=(mean, std)`` the image is taken as normalised with those per-channel
    statistics: it is mapped back to [0, 1], corrupted, and normalised again. Item ``i`` is
    corrupted with seed index ``i``, so it is the same on every read and in every worker.
    Attributes the wrapper lacks (e.g. ``pids``, ``targets``) are read from ``dataset``.
    """

    def __init__(
        self,
        dataset: Dataset,
        name: str,
        severity: int,
        seed: int,
        denormalize: tuple[Sequence[float], Sequence[float]] | None = None,
        *,
        table: str = "imagenet",
    ) -> None:
        parameter(name, severity, table)  # validates all three
        self.dataset = dataset
        self.name = name
        self.severity = int(severity)
        self.seed = int(seed)
        self.table = table
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None
        if denormalize is not None:
            mean, std = denormalize
            self.mean = torch.as_tensor(mean, dtype=torch.float64).reshape(-1, 1, 1)
            self.std = torch.as_tensor(std, dtype=torch.float64).reshape(-1, 1, 1)
            if self.mean.shape != self.std.shape:
                raise ValueError(f"mean has {self.mean.numel()} values but std {self.std.numel()}")
            if (self.std <= 0).any():
                raise ValueError(f"std must be positive, got {list(std)}")

    def __len__(self) -> int:
        return len(self.dataset)

    def corrupt_image(self, image: torch.Tensor, index: int) -> torch.Tensor:
        """Item ``index``'s image (normalised if the dataset normalises) corrupted."""
        if not isinstance(image, torch.Tensor) or image.dim() != 3:
            raise TypeError(
                "CorruptedDataset needs (C, H, W) image tensors, got "
                f"{tuple(image.shape) if isinstance(image, torch.Tensor) else type(image)}"
            )
        x = image
        if self.mean is not None:
            mean, std = self.mean.to(image.device), self.std.to(image.device)
            if mean.shape[0] not in (1, image.shape[0]):
                raise ValueError(
                    f"denormalize has {mean.shape[0]} channels, the image {image.shape[0]}"
                )
            x = (image.double() * std + mean).clamp(0.0, 1.0).to(image.dtype)
        y = corrupt(x[None], self.name, self.severity, self.seed, index, table=self.table)[0]
        if self.mean is not None:
            y = ((y.double() - mean) / std).to(image.dtype)
        return y

    def __getitem__(self, index: int) -> Any:
        item = self.dataset[index]
        if isinstance(item, (tuple, list)):
            image = self.corrupt_image(item[0], int(index))
            return type(item)([image, *item[1:]]) if isinstance(item, list) else (image, *item[1:])
        return self.corrupt_image(item, int(index))

    def __getattr__(self, name: str) -> Any:
        # only called for attributes not found normally; "dataset" guards unpickling
        if name == "dataset" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __repr__(self) -> str:
        return (
            f"CorruptedDataset({self.name}, severity={self.severity}, seed={self.seed}, "
            f"table={self.table}, n={len(self)})"
        )
