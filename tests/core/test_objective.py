"""The noise-prediction objective against an independent derivation (docs/method.md).

Derivation of the optimum. Let x be a zero-mean token (a column of C channels) with covariance
Sigma, eps ~ N(0, I) independent of x, and x_t = a x + b eps with a = sqrt(abar_t),
b = sqrt(1 - abar_t). A linear predictor eps_hat = M x_t has the per-token risk

    R(M) = E ||M x_t - eps||^2 = tr(M S M^T) - 2 tr(M E[x_t eps^T]) + C,

where S = E[x_t x_t^T] = a^2 Sigma + b^2 I and E[x_t eps^T] = b I (x and eps are independent
and zero-mean). Setting dR/dM = 2 M S - 2 b I to zero gives

    M* = b S^{-1} = b (a^2 Sigma + b^2 I)^{-1},

and the minimum R(M*) = C - b^2 tr(S^{-1}) = sum_k a^2 l_k / (a^2 l_k + b^2) over the
eigenvalues l_k of Sigma. The loss is a mean over elements (tokens x C), i.e. R / C.

Layout: ``DenoiseLayer`` predicts ``apply_channel_map(x_t, D)``, i.e. pred_j = sum_i D[j, i] x_i
(``F.linear(x_t, D)`` = x_t D^T with tokens as rows), so D plays the role of M above, not of
M^T. M* is symmetric (S is), so the optimum cannot tell the two apart: the layout is pinned by
the hand case below, whose D is not symmetric.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import denoiserep as dr
import denoiserep.core.layer as layer_module

# Two-step schedule: abar_1 = 0.8, abar_2 = 0.8 * 0.5 = 0.4, so at t = 2 a^2 = 0.4, b^2 = 0.6
# (a != b, neither tiny: swapping or dropping either coefficient changes the optimum).
SCHEDULE = dr.NoiseSchedule(torch.tensor([0.2, 0.5], dtype=torch.float64))
T = 2
A2, B2 = 0.4, 0.6
C = 4


def covariance() -> torch.Tensor:
    """A fixed, non-diagonal covariance with eigenvalues 4, 1, 1/2, 1/4."""
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(C, C, generator=g, dtype=torch.float64))
    return q @ torch.diag(torch.tensor([4.0, 1.0, 0.5, 0.25], dtype=torch.float64)) @ q.T


def optimal_denoiser(sigma: torch.Tensor) -> torch.Tensor:
    return math.sqrt(B2) * torch.linalg.inv(A2 * sigma + B2 * torch.eye(C, dtype=torch.float64))


def make_layer(kind: str, **kwargs) -> dr.DenoiseLayer:
    base = nn.Linear(C, 3) if kind == "linear" else nn.Conv2d(C, 3, 3, padding=1)
    layer = dr.DenoiseLayer(base, t=T, schedule=SCHEDULE, **kwargs)
    layer.phase = "denoiser"
    return layer.train()


def sample_inputs(kind: str, sigma: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """4096 tokens ~ N(0, Sigma): a (4096, C) Linear input or a (16, C, 16, 16) Conv input."""
    chol = torch.linalg.cholesky(sigma)
    x = (torch.randn(4096, C, generator=g, dtype=torch.float64) @ chol.T).float()
    if kind == "conv":
        x = x.reshape(16, 16, 16, C).permute(0, 3, 1, 2)  # channel vectors at every pixel
    return x


def test_schedule_coefficients_at_t():
    a, b = SCHEDULE.noise_coefficients(T)
    assert a == pytest.approx(math.sqrt(A2), abs=1e-12)
    assert b == pytest.approx(math.sqrt(B2), abs=1e-12)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_training_D_alone_converges_to_the_mse_optimal_denoiser(kind):
    sigma = covariance()
    d_star = optimal_denoiser(sigma)
    layer = make_layer(kind)
    g = torch.Generator().manual_seed(1)
    opt = torch.optim.Adam([layer.D], lr=0.05)
    steps = 400
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    for _ in range(steps):
        layer(sample_inputs(kind, sigma, g))
        opt.zero_grad()
        layer.last_loss.backward()
        opt.step()
        sched.step()
    err = (layer.D.detach().double() - d_star).abs().max().item()
    # measured error about 3e-3 (SGD noise with 4096 tokens a step); |D*| entries up to 1.1
    assert err < 0.02, f"max |D - D*| = {err:.4f}\nD = {layer.D}\nD* = {d_star}"

    # the loss at the optimum is the minimum risk sum_k a^2 l_k / (a^2 l_k + b^2) / C
    lam = torch.linalg.eigvalsh(sigma)
    minimum = (A2 * lam / (A2 * lam + B2)).sum().item() / C
    with torch.no_grad():
        layer.D.copy_(d_star)
        losses = [layer.noise_prediction_loss(sample_inputs(kind, sigma, g)) for _ in range(8)]
    # 8 x 16384 elements: the standard error of the mean is below 3e-3
    assert torch.stack(losses).mean().item() == pytest.approx(minimum, abs=0.015)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_losses_at_zero_denoiser(kind):
    # D = 0 predicts 0: the MSE is E[eps^2] = 1, the L1 E|eps| = sqrt(2 / pi), whatever x is
    g = torch.Generator().manual_seed(2)
    sigma = covariance()
    expected = {"mse": 1.0, "l1": math.sqrt(2 / math.pi), "l1+l2": 1.0 + math.sqrt(2 / math.pi)}
    for loss, value in expected.items():
        layer = make_layer(kind, loss=loss)
        x = torch.cat([sample_inputs(kind, sigma, g) for _ in range(6)])  # 98304 elements
        layer(x)
        # standard errors: MSE sqrt(2 / n) = 4.5e-3, L1 sqrt((1 - 2/pi) / n) = 1.9e-3
        assert layer.last_loss.item() == pytest.approx(value, abs=0.02), loss


# Hand case: two tokens of two channels, noise fixed, a non-symmetric D, abar = 0.64.
HAND_X = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
HAND_EPS = torch.tensor([[0.5, -1.0], [2.0, 0.0]])
HAND_D = torch.tensor([[0.1, 0.2], [0.3, -0.4]])
# a = 0.8, b = 0.6:
#   x_t = 0.8 x + 0.6 eps          = [[1.1, 1.0], [3.6, -0.8]]
#   pred_j = sum_i D[j, i] x_t[i]  = [[0.11 + 0.2, 0.33 - 0.4], [0.36 - 0.16, 1.08 + 0.32]]
#                                  = [[0.31, -0.07], [0.2, 1.4]]
#   pred - eps                     = [[-0.19, 0.93], [-1.8, 1.4]]
#   L1  = (0.19 + 0.93 + 1.8 + 1.4) / 4             = 1.08
#   MSE = (0.0361 + 0.8649 + 3.24 + 1.96) / 4       = 1.52525
# (with D^T instead of D, pred = [[0.41, -0.18], [0.67, 1.04]]: every value below changes)
HAND = {"mse": 1.52525, "l1": 1.08, "l1+l2": 1.08 + 1.52525}


@pytest.mark.parametrize("loss", sorted(HAND))
def test_loss_values_on_a_hand_case(loss, monkeypatch):
    seen = []

    def fixed_noise(x0, *args, **kwargs):
        seen.append(x0.clone())
        return HAND_EPS.clone()

    monkeypatch.setattr(layer_module.torch, "randn_like", fixed_noise)
    layer = dr.DenoiseLayer(
        nn.Linear(2, 1), t=1, schedule=dr.NoiseSchedule(torch.tensor([0.36])), loss=loss
    )
    with torch.no_grad():
        layer.D.copy_(HAND_D)
    layer.phase = "denoiser"
    layer.train()(HAND_X)
    assert len(seen) == 1 and torch.equal(seen[0], HAND_X)
    assert layer.last_loss.item() == pytest.approx(HAND[loss], rel=1e-6)


def _record_tokens(monkeypatch) -> list[torch.Tensor]:
    """Record the clean tokens x0 the loss is computed on (the argument of randn_like)."""
    seen: list[torch.Tensor] = []
    real = torch.randn_like

    def recording(x0, *args, **kwargs):
        seen.append(x0.clone())
        return real(x0, *args, **kwargs)

    monkeypatch.setattr(layer_module.torch, "randn_like", recording)
    return seen


def _rows_are_tokens(rows: torch.Tensor, tokens: torch.Tensor) -> bool:
    """Every row of ``rows`` is one of the rows of ``tokens`` (exactly)."""
    return bool((rows[:, None, :] == tokens[None, :, :]).all(-1).any(-1).all())


@pytest.mark.parametrize(("fraction", "count"), [(1.0, 40), (0.25, 10), (0.3, 12), (0.01, 1)])
def test_loss_fraction_counts_linear_tokens(fraction, count, monkeypatch):
    seen = _record_tokens(monkeypatch)
    layer = make_layer("linear", loss_fraction=fraction)
    x = torch.randn(4, 10, C)  # 40 tokens
    layer(x)
    (x0,) = seen
    assert x0.shape == (count, C)
    assert _rows_are_tokens(x0, x.reshape(-1, C))
    if fraction == 1.0:
        assert torch.equal(x0, x.reshape(-1, C))


@pytest.mark.parametrize(("fraction", "count"), [(1.0, 40), (0.25, 10), (0.3, 12)])
def test_loss_fraction_counts_conv_pixels(fraction, count, monkeypatch):
    seen = _record_tokens(monkeypatch)
    layer = make_layer("conv", loss_fraction=fraction)
    x = torch.randn(2, C, 4, 5)  # 2 x 20 = 40 pixels, each a C-channel vector
    layer(x)
    (x0,) = seen
    pixels = x.permute(0, 2, 3, 1).reshape(-1, C)
    assert x0.shape == (count, C)
    assert _rows_are_tokens(x0, pixels)  # whole pixel vectors, channels not mixed up
    if fraction == 1.0:
        assert torch.equal(x0, pixels)


def test_loss_fraction_samples_vary_and_cover_the_input(monkeypatch):
    # the subsample is random per forward: over many forwards every pixel is used
    seen = _record_tokens(monkeypatch)
    layer = make_layer("conv", loss_fraction=0.25)
    x = torch.randn(2, C, 4, 5)
    for _ in range(60):
        layer(x)
    pixels = x.permute(0, 2, 3, 1).reshape(-1, C)
    used = torch.cat(seen)
    hit = (pixels[:, None, :] == used[None, :, :]).all(-1).any(-1)
    assert hit.all(), f"{int((~hit).sum())} of 40 pixels never sampled in 600 draws"
