"""ImageNet-C corruptions: severity grows the change, per-image seeding, shapes and ranges kept."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import scipy.ndimage
import torch

from denoiserep.data.idx import read_idx
from denoiserep.robustness.corruptions import (
    CORRUPTIONS,
    PARAMETERS,
    CorruptedDataset,
    corrupt,
    parameter,
)

FASHION = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"
RANDOM = ("gaussian_noise", "shot_noise", "impulse_noise")


def smooth_rgb(n: int = 16, size: int = 32) -> torch.Tensor:
    """Natural-looking RGB test images: smooth colour gradients plus a bright object with edges."""
    g = torch.Generator().manual_seed(1234)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    images = []
    for _ in range(n):
        f, phase = torch.rand(3, 2, generator=g) * 6 + 1, torch.rand(3, generator=g) * 6
        base = torch.stack(
            [0.5 + 0.3 * torch.sin(f[c, 0] * xx + f[c, 1] * yy + phase[c]) for c in range(3)]
        )
        top, left = (torch.rand(2, generator=g) * size / 2).long().tolist()
        side = size // 3
        colour = torch.rand(3, 1, 1, generator=g)
        base[:, top : top + side, left : left + side] = 0.2 + 0.8 * colour
        images.append(base)
    return torch.stack(images).clamp(0, 1)


@pytest.fixture(scope="module")
def fashion() -> torch.Tensor:
    """The first 16 Fashion-MNIST test images, (16, 1, 28, 28) in [0, 1]."""
    if not os.path.isfile(FASHION):
        pytest.skip("Fashion-MNIST (Debian package dataset-fashion-mnist) not installed")
    return torch.from_numpy(read_idx(FASHION)[:16].copy()).float().div(255)[:, None]


def images_for(kind: str, request) -> torch.Tensor:
    return request.getfixturevalue("fashion") if kind == "gray28" else smooth_rgb()


def mean_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).flatten(1).norm(dim=1).mean())


CASES = [
    pytest.param(table, name, kind, id=f"{table}-{name}-{kind}")
    for table in PARAMETERS
    for name in CORRUPTIONS
    for kind in ("gray28", "rgb32")
]


@pytest.mark.parametrize(("table", "name", "kind"), CASES)
def test_each_severity_moves_the_images_further(table, name, kind, request):
    x = images_for(kind, request)
    d = [mean_distance(corrupt(x, name, s, seed=0, table=table), x) for s in range(1, 6)]
    assert d[0] > 1e-3, f"severity 1 leaves the images unchanged: {d}"
    assert all(b > a for a, b in zip(d, d[1:], strict=False)), d


@pytest.mark.parametrize("name", CORRUPTIONS)
@pytest.mark.parametrize(
    ("shape", "dtype"),
    [
        ((3, 1, 28, 28), torch.float32),
        ((2, 3, 32, 32), torch.float64),
        ((2, 2, 12, 10), torch.float32),
    ],
)
def test_shape_dtype_and_range_kept_input_untouched(name, shape, dtype):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
    before = x.clone()
    for severity in (1, 5):
        y = corrupt(x, name, severity, seed=3)
        assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
        assert y.min() >= 0 and y.max() <= 1
        assert not torch.equal(y, x)
    assert torch.equal(x, before)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_same_seed_same_output_other_seed_differs_for_random_ones(name):
    x = smooth_rgb(4)
    a, b = corrupt(x, name, 3, seed=7), corrupt(x, name, 3, seed=7)
    assert torch.equal(a, b)
    other = corrupt(x, name, 3, seed=8)
    if name in RANDOM:
        assert not torch.equal(a, other)
        # every image gets its own noise: no two images share a noise pattern
        noise = (a - x).flatten(1)
        assert not torch.allclose(noise[0], noise[1])
    else:
        assert torch.equal(a, other)


@pytest.mark.parametrize("name", RANDOM)
def test_an_image_is_corrupted_the_same_in_any_batch(name):
    x = smooth_rgb(6)
    whole = corrupt(x, name, 2, seed=1)
    for i in range(6):
        alone = corrupt(x[i : i + 1], name, 2, seed=1, index_offset=i)
        assert torch.equal(alone[0], whole[i])
    shifted = corrupt(x[2:4], name, 2, seed=1, index_offset=2)
    assert torch.equal(shifted, whole[2:4])
    assert not torch.equal(corrupt(x[2:4], name, 2, seed=1), whole[2:4])


def test_gaussian_noise_has_the_table_std():
    x = torch.full((4, 3, 64, 64), 0.5)
    for severity in (1, 3):
        c = parameter("gaussian_noise", severity)
        noise = corrupt(x, "gaussian_noise", severity, seed=0) - x
        assert abs(noise.mean().item()) < 0.01
        assert noise.std().item() == pytest.approx(c, rel=0.03)


def test_shot_noise_is_poisson_with_the_table_rate():
    x = torch.full((4, 3, 64, 64), 0.5)
    c = parameter("shot_noise", 2)  # 25 photons at full intensity
    y = corrupt(x, "shot_noise", 2, seed=0)
    counts = y * c
    assert torch.allclose(counts, counts.round(), atol=1e-4)  # whole photon counts
    assert counts.mean().item() == pytest.approx(0.5 * c, rel=0.03)
    assert counts.var().item() == pytest.approx(0.5 * c, rel=0.06)  # Poisson: var = mean


def test_impulse_noise_flips_the_table_share_half_salt_half_pepper():
    x = torch.full((4, 3, 64, 64), 0.5)
    c = parameter("impulse_noise", 4)
    y = corrupt(x, "impulse_noise", 4, seed=0)
    changed = y != 0.5
    assert changed.float().mean().item() == pytest.approx(c, rel=0.05)
    assert set(y[changed].unique().tolist()) == {0.0, 1.0}
    assert (y == 1).float().mean().item() == pytest.approx(c / 2, rel=0.08)


@pytest.mark.parametrize("table", list(PARAMETERS))
def test_gaussian_blur_matches_scipy_nearest_mode(table):
    """ImageNet-C blurs with skimage.filters.gaussian = scipy's filter, mode nearest, truncate 4."""
    x = smooth_rgb(2).double()
    for severity in (1, 5):
        sigma = parameter("gaussian_blur", severity, table)
        ref = scipy.ndimage.gaussian_filter(
            x.numpy(), sigma=(0, 0, sigma, sigma), mode="nearest", truncate=4.0
        )
        out = corrupt(x, "gaussian_blur", severity, seed=0, table=table)
        np.testing.assert_allclose(out.numpy(), np.clip(ref, 0, 1), atol=1e-12)


def test_gaussian_blur_on_images_smaller_than_the_kernel():
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    out = corrupt(x, "gaussian_blur", 5, seed=0)  # sigma 6: radius 24 > 8 pixels
    ref = scipy.ndimage.gaussian_filter(x.double().numpy(), (0, 0, 6, 6), mode="nearest")
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-6)


def test_contrast_shrinks_towards_each_channels_mean():
    x = smooth_rgb(3)
    c = parameter("contrast", 2)
    y = corrupt(x, "contrast", 2, seed=0)
    m = x.mean(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(y, (x - m) * c + m)
    torch.testing.assert_close(y.mean(dim=(2, 3)), x.mean(dim=(2, 3)))


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_pixelate_is_blocky_at_the_table_resolution(severity):
    x = smooth_rgb(2)
    c = parameter("pixelate", severity)
    kept = int(32 * c)
    y = corrupt(x, "pixelate", severity, seed=0)
    for row in y[:, :, 5]:  # a row of every channel of every image
        for channel in row:
            runs = 1 + int((channel[1:] != channel[:-1]).sum())
            assert runs <= kept  # piecewise constant with at most `kept` pieces


def test_jpeg_output_is_8_bit_and_stronger_at_lower_quality():
    x = smooth_rgb(2)
    y1, y5 = corrupt(x, "jpeg_compression", 1, 0), corrupt(x, "jpeg_compression", 5, 0)
    torch.testing.assert_close(y1 * 255, (y1 * 255).round(), atol=1e-4, rtol=0)
    assert mean_distance(y5, x) > mean_distance(y1, x)


def test_bad_arguments_are_errors_that_say_what_is_valid():
    x = torch.rand(1, 1, 8, 8)
    with pytest.raises(ValueError, match="gaussian_noise"):
        corrupt(x, "fog", 1, 0)
    for severity in (0, 6, True):
        with pytest.raises(ValueError, match="1..5"):
            corrupt(x, "contrast", severity, 0)
    with pytest.raises(ValueError, match="undo the normalisation"):
        corrupt((x - 0.5) / 0.2, "contrast", 1, 0)
    with pytest.raises(ValueError, match="N, C, H, W"):
        corrupt(x[0], "contrast", 1, 0)
    with pytest.raises(TypeError, match="float"):
        corrupt((x * 255).to(torch.uint8), "contrast", 1, 0)
    with pytest.raises(ValueError, match="table"):
        corrupt(x, "contrast", 1, 0, table="tiny")


class NormalisedImages(torch.utils.data.Dataset):
    """(normalised image, label, camid) items, like the classification / re-ID datasets."""

    def __init__(self, images, mean, std):
        self.images, self.mean, self.std = images, torch.tensor(mean), torch.tensor(std)
        self.targets = list(range(len(images)))

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        x = (self.images[i] - self.mean[:, None, None]) / self.std[:, None, None]
        return x, i % 3, 7


def test_corrupted_dataset_undoes_and_redoes_the_normalisation():
    images = smooth_rgb(5)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    base = NormalisedImages(images, mean, std)
    data = CorruptedDataset(base, "gaussian_noise", 3, seed=4, denormalize=(mean, std))
    assert len(data) == 5 and data.targets == base.targets  # attributes pass through
    for i in range(5):
        x, label, camid = data[i]
        assert (label, camid) == (i % 3, 7)
        expected = corrupt(images[i : i + 1], "gaussian_noise", 3, seed=4, index_offset=i)[0]
        m, s = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]
        torch.testing.assert_close(x * s + m, expected, atol=1e-5, rtol=0)
        assert torch.equal(data[i][0], x)  # the same on every read
    copy = pickle.loads(pickle.dumps(data))  # DataLoader workers pickle the dataset
    assert torch.equal(copy[2][0], data[2][0])


def test_corrupted_dataset_without_normalisation_and_bare_tensors():
    images = smooth_rgb(3)
    data = CorruptedDataset(torch.utils.data.TensorDataset(images), "contrast", 5, seed=0)
    (x,) = data[1]
    torch.testing.assert_close(x, corrupt(images[1:2], "contrast", 5, 0)[0])
    with pytest.raises(ValueError, match="1..5"):
        CorruptedDataset(data, "contrast", 9, seed=0)
