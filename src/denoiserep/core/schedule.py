"""Diffusion noise schedules (DDPM conventions: timesteps t = 1..T, arrays indexed t - 1)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """The betas of a diffusion process and the quantities derived from them, in float64.

    ``betas[t - 1]`` is beta_t; ``alphas_cumprod[t - 1]`` is abar_t = prod_{s <= t} (1 - beta_s).
    """

    betas: torch.Tensor

    @property
    def num_timesteps(self) -> int:
        return self.betas.numel()

    @property
    def alphas(self) -> torch.Tensor:
        return 1.0 - self.betas

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return torch.cumprod(self.alphas, dim=0)

    def _check(self, t: int) -> None:
        if not 1 <= t <= self.num_timesteps:
            raise ValueError(f"timestep t={t} is outside 1..{self.num_timesteps}")

    def noise_coefficients(self, t: int) -> tuple[float, float]:
        """(sqrt(abar_t), sqrt(1 - abar_t)): forward noising x_t = a x + b eps."""
        self._check(t)
        abar = float(self.alphas_cumprod[t - 1])
        return math.sqrt(abar), math.sqrt(1.0 - abar)

    def reverse_coefficients(self, t: int) -> tuple[float, float]:
        """(k_t, 1 / sqrt(alpha_t)) of the posterior-mean step"""
        self._check(t)
        beta = float(self.betas[t - 1])
        abar = float(self.alphas_cumprod[t - 1])
        return beta / math.sqrt(1.0 - abar), 1.0 / math.sqrt(1.0 - beta)


def linear_schedule(num_timesteps: int, beta_start: float, beta_end: float) -> NoiseSchedule:
    """DDPM's linear schedule: betas = linspace(beta_start, beta_end, T)."""
    betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
    return NoiseSchedule(betas)


def cosine_schedule(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> NoiseSchedule:
    """Nichol & Dhariwal's cosine schedule: abar(t) = cos^2(((t/T + s) / (1 + s)) * pi / 2)."""
    steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    abar = f / f[0]
    betas = (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)
    return NoiseSchedule(betas)
