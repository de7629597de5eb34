"""Noise schedules against their closed forms, computed here in plain Python floats.

linear:  beta_t = beta_start + (t - 1) / (T - 1) * (beta_end - beta_start)   (linspace)
cosine:  Nichol & Dhariwal (2021), abar(t) = f(t) / f(0),
         f(t) = cos^2(((t / T) + s) / (1 + s) * pi / 2), s = 0.008,
         beta_t = min(1 - abar(t) / abar(t - 1), 0.999)
both:    abar_t = prod_{u <= t} (1 - beta_u) with the closed-form betas above (not the module's).
"""

from __future__ import annotations

import math

import pytest
import torch

import denoiserep as dr


def linear_beta(t: int, T: int, start: float, end: float) -> float:
    return start + (t - 1) / (T - 1) * (end - start)


def cosine_f(t: int, T: int, s: float = 0.008) -> float:
    return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2


def cosine_beta(t: int, T: int, max_beta: float = 0.999) -> float:
    return min(1 - cosine_f(t, T) / cosine_f(t - 1, T), max_beta)


def cumulative(betas: list[float]) -> list[float]:
    out, prod = [], 1.0
    for beta in betas:
        prod *= 1 - beta
        out.append(prod)
    return out


TS = [1, 2, 3, 10, 100, 250, 500, 750, 900, 990, 998, 999, 1000]


@pytest.mark.parametrize(
    ("T", "start", "end"), [(1000, 1e-4, 2e-3), (1000, 1e-4, 0.02), (7, 0.1, 0.4)]
)
def test_linear_schedule_is_linspace(T, start, end):
    sched = dr.linear_schedule(T, start, end)
    assert sched.betas.dtype == torch.float64 and sched.num_timesteps == T
    betas = [linear_beta(t, T, start, end) for t in range(1, T + 1)]
    abar = cumulative(betas)
    for t in [t for t in TS if t <= T] + [T]:
        assert sched.betas[t - 1].item() == pytest.approx(betas[t - 1], rel=1e-12, abs=1e-15)
        assert sched.alphas_cumprod[t - 1].item() == pytest.approx(abar[t - 1], rel=1e-10)
        assert sched.alphas[t - 1].item() == pytest.approx(1 - betas[t - 1], rel=1e-12)


def test_linear_schedule_from_config_is_the_authors_default():
    sched = dr.DenoiseConfig().build_schedule()
    assert sched.betas[0].item() == pytest.approx(1e-4, rel=1e-12)
    assert sched.betas[-1].item() == pytest.approx(2e-3, rel=1e-12)
    assert sched.betas[499].item() == pytest.approx(linear_beta(500, 1000, 1e-4, 2e-3), rel=1e-12)


@pytest.mark.parametrize("T", [1000, 50, 10])
def test_cosine_schedule_closed_form(T):
    sched = dr.cosine_schedule(T)
    assert sched.num_timesteps == T
    betas = [cosine_beta(t, T) for t in range(1, T + 1)]
    abar = cumulative(betas)
    for t in [t for t in TS if t <= T] + [T // 2, T - 1, T]:
        assert sched.betas[t - 1].item() == pytest.approx(betas[t - 1], rel=1e-9, abs=1e-15)
        assert sched.alphas_cumprod[t - 1].item() == pytest.approx(abar[t - 1], rel=1e-9)
    # before any clipping the product telescopes to abar(t) = f(t) / f(0)
    for t in [t for t in TS if t < T] + [T // 2]:
        assert sched.alphas_cumprod[t - 1].item() == pytest.approx(
            cosine_f(t, T) / cosine_f(0, T), rel=1e-9
        )
    # f(T) = cos^2(pi / 2) = 0, so beta_T would be 1: it is clipped to 0.999 and only it
    assert sched.betas[-1].item() == 0.999
    assert sched.betas[:-1].max().item() < 0.999
    assert sched.alphas_cumprod[-1].item() == pytest.approx(
        0.001 * cosine_f(T - 1, T) / cosine_f(0, T), rel=1e-9
    )


def test_cosine_schedule_with_a_lower_clip():
    # with max_beta = 0.1 many late steps clip, and abar is the product of the clipped betas
    T = 100
    sched = dr.cosine_schedule(T, max_beta=0.1)
    betas = [cosine_beta(t, T, 0.1) for t in range(1, T + 1)]
    assert sum(b == 0.1 for b in betas) > 10
    torch.testing.assert_close(sched.betas, torch.tensor(betas, dtype=torch.float64))
    torch.testing.assert_close(
        sched.alphas_cumprod, torch.tensor(cumulative(betas), dtype=torch.float64)
    )


def test_cosine_schedule_from_config():
    sched = dr.DenoiseConfig(schedule="cosine", timesteps=200).build_schedule()
    assert sched.alphas_cumprod[99].item() == pytest.approx(
        cosine_f(100, 200) / cosine_f(0, 200), rel=1e-9
    )


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_coefficients_of_the_forward_and_reverse_steps(schedule):
    T = 1000
    if schedule == "linear":
        sched = dr.linear_schedule(T, 1e-4, 2e-3)
        betas = [linear_beta(t, T, 1e-4, 2e-3) for t in range(1, T + 1)]
    else:
        sched = dr.cosine_schedule(T)
        betas = [cosine_beta(t, T) for t in range(1, T + 1)]
    abar = cumulative(betas)
    for t in (1, 17, 500, 999):
        a, b = sched.noise_coefficients(t)
        assert a == pytest.approx(math.sqrt(abar[t - 1]), rel=1e-9)
        assert b == pytest.approx(math.sqrt(1 - abar[t - 1]), rel=1e-9)
        k, inv_sqrt_alpha = sched.reverse_coefficients(t)
        assert k == pytest.approx(betas[t - 1] / math.sqrt(1 - abar[t - 1]), rel=1e-9)
        assert inv_sqrt_alpha == pytest.approx(1 / math.sqrt(1 - betas[t - 1]), rel=1e-9)
    with pytest.raises(ValueError, match="outside"):
        sched.noise_coefficients(T + 1)
    with pytest.raises(ValueError, match="outside"):
        sched.reverse_coefficients(0)
