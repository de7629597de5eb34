"""The eigenvalues of the learned steps k_t D and their effect on each layer's input."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import denoiserep as dr
from denoiserep.core.spectrum import denoiser_spectrum, step_eigenvalues
from denoiserep.engine.report import plot_spectrum
from tests.conftest import randomize_denoisers, reference_reverse_matrix


def convert(model: nn.Module, x: torch.Tensor) -> nn.Module:
    cfg = dr.DenoiseConfig(targets="all", beta_end=0.02)  # a strong schedule: k_t not tiny
    return dr.convert(model, cfg, example_input=x).eval()


def set_D(layer: dr.DenoiseLayer, D: torch.Tensor) -> None:
    with torch.no_grad():
        layer.D.copy_(D)


def test_scaled_identity_gives_k_t_c_everywhere_and_the_predicted_shares():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    x = torch.randn(50, 6)
    model = convert(model, x)
    cs = {"0": 0.75, "2": -1.25}  # exact in float32
    for name, layer in dr.denoise_layers(model).items():
        set_D(layer, cs[name] * torch.eye(layer.D.shape[0]))
    rows = denoiser_spectrum(model, [x[:20], x[20:]])
    assert [r["name"] for r in rows] == ["0", "2"] and [r["depth"] for r in rows] == [0, 1]
    assert rows[0]["t"] > rows[1]["t"]  # execution order: t falls
    for row in rows:
        k, c, alpha = row["k_t"], cs[row["name"]], row["alpha_t"]
        assert k > 1e-3
        assert row["eig_real"] == pytest.approx([k * c] * row["channels"], rel=1e-9)
        assert max(map(abs, row["eig_imag"])) < 1e-12
        assert row["eig_min"] == pytest.approx(k * c) and row["eig_max"] == pytest.approx(k * c)
        assert row["eig_mean_real"] == pytest.approx(k * c)
        scale = (1 - k * c) / math.sqrt(alpha)  # A_t = scale * I
        assert row["tokens"] == 50
        assert row["relative_change"] == pytest.approx(abs(scale - 1), rel=1e-9)
        assert row["variance_removed"] == pytest.approx(1 - scale**2, rel=1e-9)
        assert row["denoiser_relative_change"] == pytest.approx(abs(k * c), rel=1e-9)
        assert row["denoiser_variance_removed"] == pytest.approx(1 - (1 - k * c) ** 2, rel=1e-9)
    json.dumps(rows)  # results.json material


def test_grouped_layer_eigenvalues_are_those_of_each_block():
    conv = nn.Sequential(nn.Conv2d(4, 6, 3, groups=2))
    model = convert(conv, torch.randn(1, 4, 5, 5))
    layer = dr.denoise_layers(model)["0"]
    assert layer.D.shape == (4, 2)
    # block 0 upper triangular (eigenvalues 2 and -1); block 1 a rotation (eigenvalues +-i)
    set_D(layer, torch.tensor([[2.0, 5.0], [0.0, -1.0], [0.0, -1.0], [1.0, 0.0]]))
    eig = step_eigenvalues(layer) / layer.strength
    got = sorted((round(e.real, 9), round(e.imag, 9)) for e in eig.tolist())
    assert got == [(-1.0, 0.0), (0.0, -1.0), (0.0, 1.0), (2.0, 0.0)]
    # reading the compact (C_in, C_in / g) layout as one dense matrix would give other values
    (row,) = denoiser_spectrum(model)
    assert row["groups"] == 2
    assert row["eig_min"] == pytest.approx(-layer.strength)
    assert row["eig_max"] == pytest.approx(2 * layer.strength)
    assert row["eig_imag_abs_max"] == pytest.approx(layer.strength)
    assert row["variance_removed"] is None  # no data given


def test_depthwise_eigenvalues_are_the_diagonal():
    model = convert(nn.Sequential(nn.Conv2d(5, 5, 3, groups=5)), torch.randn(1, 5, 6, 6))
    layer = dr.denoise_layers(model)["0"]
    diag = torch.tensor([[0.5], [-2.0], [3.0], [0.0], [1.0]])
    set_D(layer, diag)
    (row,) = denoiser_spectrum(model, keep_eigenvalues=True)
    assert row["eig_real"] == pytest.approx(
        (layer.strength * diag[:, 0].double()).tolist(), rel=1e-9
    )
    assert row["eig_min"] == pytest.approx(-2.0 * layer.strength)


def test_data_shares_match_a_dense_reference_on_a_conv_net():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=4), nn.Flatten()
    )
    x = torch.randn(4, 3, 7, 7)
    model = convert(model, x)
    randomize_denoisers(model, strength=0.3)
    inputs = {}
    hooks = [
        layer.register_forward_pre_hook(lambda m, a, n=name: inputs.__setitem__(n, a[0]))
        for name, layer in dr.denoise_layers(model).items()
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    rows = denoiser_spectrum(model, x)
    for row in rows:
        layer = dr.denoise_layers(model)[row["name"]]
        tokens = inputs[row["name"]].movedim(1, -1).reshape(-1, layer.D.shape[0]).double()
        A = reference_reverse_matrix(layer)
        y = tokens @ A.T
        tr = lambda z: z.var(dim=0, correction=0).sum().item()  # noqa: E731
        assert row["relative_change"] == pytest.approx(
            ((y - tokens).norm() / tokens.norm()).item(), rel=1e-7
        )
        assert row["variance_removed"] == pytest.approx(1 - tr(y) / tr(tokens), rel=1e-7)
        assert row["relative_change"] > 0.05  # the denoisers really act
    assert model.training is False


def test_plot_spectrum_writes_a_png(tmp_path):
    model = convert(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)), torch.randn(3, 4))
    randomize_denoisers(model)
    path = tmp_path / "spectrum.png"
    plot_spectrum(denoiser_spectrum(model, torch.randn(8, 4)), str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plot_spectrum(denoiser_spectrum(model), str(tmp_path / "no_data.png"))
    assert (tmp_path / "no_data.png").stat().st_size > 1000
