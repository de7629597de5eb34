"""``fit_denoisers``: D set to the minimiser of the expected noise-prediction loss, in one pass."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import denoiserep as dr
from denoiserep.core.closed_form import fit_denoisers

# one layer at t = 1 of a schedule with beta_1 = 0.6: a² = 0.4, b² = 0.6 (neither tiny)
STRONG = dr.DenoiseConfig(timesteps=1, beta_start=0.6, beta_end=0.6)
A2, B2 = 0.4, 0.6


def optimum(tokens: torch.Tensor) -> torch.Tensor:
    """b (a² M + b² I)⁻¹ from the tokens' uncentred second moment M, in float64."""
    x = tokens.double()
    eye = torch.eye(x.shape[1], dtype=torch.float64)
    return math.sqrt(B2) * torch.linalg.inv(A2 * (x.T @ x / x.shape[0]) + B2 * eye)


def one_layer(base: nn.Module, x: torch.Tensor) -> nn.Module:
    model = dr.convert(nn.Sequential(base), STRONG, x)
    assert model[0].noise_coefficients == pytest.approx((math.sqrt(A2), math.sqrt(B2)))
    return model


def test_linear_layer_gets_the_optimum_of_its_inputs_over_batches():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 6, generator=g) @ torch.randn(6, 6, generator=g) + 0.5  # not centred
    model = one_layer(nn.Linear(6, 3), x)
    report = fit_denoisers(model, [x[:100], (x[100:], torch.zeros(200))])  # tensors, tuples
    torch.testing.assert_close(model[0].D.double(), optimum(x), rtol=1e-5, atol=1e-6)
    s = A2 * (x.double().T @ x.double() / 300) + B2 * torch.eye(6, dtype=torch.float64)
    expected = 1 - B2 * torch.linalg.inv(s).trace().item() / 6
    assert report["0"] == {"tokens": 300, "min_loss": pytest.approx(expected, rel=1e-9)}


def test_the_minimum_loss_is_what_the_layer_scores_at_the_optimum():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4096, 4, generator=g) @ torch.diag(torch.tensor([2.0, 1.0, 0.3, 0.05]))
    model = one_layer(nn.Linear(4, 2), x)
    layer = model[0]
    report = fit_denoisers(model, x)
    layer.phase = "denoiser"
    layer.train()
    torch.manual_seed(2)
    scored = torch.stack([layer.noise_prediction_loss(x) for _ in range(16)]).mean()
    # 16 x 16384 elements: the noise's standard error is about 3e-3
    assert scored.item() == pytest.approx(report["0"]["min_loss"], abs=0.01)
    assert report["0"]["min_loss"] < 0.8  # well below D = 0's loss of 1


@pytest.mark.parametrize("groups", [1, 2, 8])
def test_conv_layers_fit_their_pixels_block_by_block(groups):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 8, 6, 6, generator=g) + torch.arange(8.0).reshape(1, 8, 1, 1) / 4
    model = one_layer(nn.Conv2d(8, 8, 3, padding=1, groups=groups), x)
    fit_denoisers(model, x)
    layer = model[0]
    pixels = x.movedim(1, -1).reshape(-1, 8)
    cg = 8 // groups
    for k in range(groups):
        block = layer.D[k * cg : (k + 1) * cg].double()
        torch.testing.assert_close(
            block, optimum(pixels[:, k * cg : (k + 1) * cg]), atol=1e-6, rtol=1e-5
        )


def test_inputs_are_the_baselines_and_the_model_state_is_restored():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 7), nn.Dropout(0.5), nn.ReLU(), nn.Linear(7, 3))
    x = torch.randn(64, 5)
    hidden = torch.relu(net[0](x)).detach()  # the second layer's input under the original weights
    model = dr.convert(net, dr.DenoiseConfig(timesteps=10, beta_start=0.05, beta_end=0.2), x)
    with torch.no_grad():
        model[0].D.normal_()  # a first denoiser that would change the second layer's input
    dr.set_phase(model, "joint")
    model.train()
    torch.manual_seed(5)
    expected_next = torch.rand(3)
    torch.manual_seed(5)
    fit_denoisers(model, x)
    assert torch.equal(torch.rand(3), expected_next)  # the caller's random stream is untouched
    a, b = model[3].noise_coefficients
    m = hidden.double().T @ hidden.double() / 64
    d = b * torch.linalg.inv(a * a * m + b * b * torch.eye(7, dtype=torch.float64))
    torch.testing.assert_close(model[3].D.double(), d, rtol=1e-5, atol=1e-6)
    assert all(m.training for m in model.modules()) and dr.get_phase(model) == "joint"
    assert {layer.phase for layer in dr.denoise_layers(model).values()} == {"joint"}
    assert dr.denoise_loss(model).item() == 0.0  # no loss left behind from the fitting pass


def test_a_fit_model_fuses_exactly_and_needs_no_training():
    x = torch.randn(32, 6)
    model = dr.convert(nn.Sequential(nn.Linear(6, 6), nn.GELU(), nn.Linear(6, 2)), example_input=x)
    fit_denoisers(model, x)
    fused = dr.fuse(model)
    model.eval()
    assert dr.fused_vs_unfused(model, fused, x) < 1e-5
    assert dr.denoising_strength(model)[0]["strength"] > 0


def test_errors():
    x = torch.randn(8, 4)
    with pytest.raises(ValueError, match="not a DenoiseRep model"):
        fit_denoisers(nn.Linear(4, 2), x)
    l1 = dr.convert(nn.Sequential(nn.Linear(4, 2)), dr.DenoiseConfig(loss="l1"), x)
    with pytest.raises(ValueError, match="needs loss 'mse', got \\['l1'\\]"):
        fit_denoisers(l1, x)
    model = dr.convert(nn.Sequential(nn.Linear(4, 2)), example_input=x)
    with pytest.raises(ValueError, match="layer 0 saw no input"):
        fit_denoisers(model, [])
