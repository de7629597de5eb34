"""``dr.adapt`` fits each denoiser to the analytic optimum D* = b (a² Σ + b² I)⁻¹ of the data
it is given: on Gaussian inputs with a known covariance the fitted D and the fused weight
match that formula, computed here from the schedule, to sampling tolerance."""

from __future__ import annotations

import math

import torch
from torch import nn

import denoiserep as dr

CFG = dr.DenoiseConfig(targets="linear", timesteps=100, beta_start=1e-3, beta_end=0.2)
D_IN = 4


def covariance(seed: int, scale: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(D_IN, D_IN, generator=g, dtype=torch.float64))
    return scale * q @ torch.diag(torch.tensor([3.0, 1.0, 0.5, 0.1], dtype=torch.float64)) @ q.T


def gaussian(cov: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, D_IN, generator=g, dtype=torch.float64)
    return (z @ torch.linalg.cholesky(cov).T).float()


def analytic(cov: torch.Tensor, t: int) -> tuple[torch.Tensor, float, float]:
    """D*, k_t and alpha_t from the linear schedule, independently of the package."""
    betas = torch.linspace(CFG.beta_start, CFG.beta_end, CFG.timesteps, dtype=torch.float64)
    abar = torch.prod(1 - betas[:t]).item()
    a, b = math.sqrt(abar), math.sqrt(1 - abar)
    d_star = b * torch.linalg.inv(a * a * cov + b * b * torch.eye(D_IN, dtype=torch.float64))
    return d_star, betas[t - 1].item() / b, 1 - betas[t - 1].item()


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D_IN, 3))


def test_fitted_denoiser_is_the_analytic_optimum_of_the_target_covariance():
    source, target = covariance(1, 1.0), covariance(2, 4.0)
    x_target = gaussian(target, 200_000, seed=3)
    plain = model()
    converted = dr.convert(model(), CFG, example_input=x_target[:2])
    dr.fit_denoisers(converted, x_target.split(10_000))
    layer = dr.denoise_layers(converted)["0"]
    d_target, k, alpha = analytic(target, layer.t)
    d_source, _, _ = analytic(source, layer.t)
    fitted = layer.D.detach().double()
    assert torch.allclose(fitted, d_target, atol=0.02 * float(d_target.abs().max()))
    # the target fit is not the source one: the shift is far above the sampling error
    assert (fitted - d_source).abs().max() > 10 * (fitted - d_target).abs().max()

    adapted = dr.adapt(plain, x_target.split(10_000), CFG)
    a_t = (torch.eye(D_IN, dtype=torch.float64) - k * d_target) / math.sqrt(alpha)
    expected = plain[0].weight.detach().double() @ a_t
    assert torch.allclose(
        adapted[0].weight.detach().double(), expected, atol=0.02 * float(expected.abs().max())
    )
    assert torch.equal(adapted[0].bias, plain[0].bias)
