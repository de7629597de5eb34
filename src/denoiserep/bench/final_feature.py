"""The paper's Figure 1(b) baseline: T denoising steps on the backbone's final feature.

Instead of folding one denoising step into every layer, this variant runs the full reverse
diffusion process after the backbone: a linear noise predictor eps(z) = P z on the pooled
feature and the DDPM posterior-mean step (z = 0)

    z_{t-1} = (z_t - k_t P z_t) / sqrt(alpha_t),   k_t = beta_t / sqrt(1 - abar_t),

for t = T, T-1, ..., 1. It costs T extra matrix-vector products per image at inference.
Unlike the authors' release, t really falls at every step and the caller's feature tensor
is never modified.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from denoiserep.core.schedule import NoiseSchedule


class FinalFeatureDenoiser(nn.Module):
    """``head(denoise(backbone(x)))`` with ``steps`` reverse steps on the pooled feature.

    Args:
        backbone: maps an input to a feature of shape ``(..., dim)``.
        head: the classifier (or identity) applied to the denoised feature.
        dim: feature width.
        schedule: the diffusion schedule (e.g. ``DenoiseConfig().build_schedule()``).
        steps: T, the number of reverse steps (timesteps T..1 of ``schedule``); default: all.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        dim: int,
        schedule: NoiseSchedule,
        steps: int | None = None,
    ) -> None:
        super().__init__()
        steps = schedule.num_timesteps if steps is None else steps
        if not 1 <= steps <= schedule.num_timesteps:
            raise ValueError(f"steps must be in 1..{schedule.num_timesteps}, got {steps}")
        self.backbone = backbone
        self.head = head
        self.predictor = nn.Linear(dim, dim, bias=False)
        nn.init.zeros_(self.predictor.weight)
        self.steps = steps
        betas = schedule.betas[:steps]
        abar = schedule.alphas_cumprod[:steps]
        self._k = (betas / (1 - abar).sqrt()).tolist()
        self._inv_sqrt_alpha = (1 - betas).rsqrt().tolist()

    @classmethod
    def from_timm(
        cls, model: nn.Module, schedule: NoiseSchedule, steps: int | None = None
    ) -> FinalFeatureDenoiser:
        """Split a timm classifier into pooled-feature backbone and head (copies, not views)."""
        backbone = copy.deepcopy(model)
        head = copy.deepcopy(model.get_classifier())
        backbone.reset_classifier(0)
        return cls(backbone, head, model.num_features, schedule, steps)

    def timesteps(self) -> list[int]:
        """The timesteps of the reverse process, in the order they run: T, ..., 1."""
        return list(range(self.steps, 0, -1))

    def strength(self, t: int) -> float:
        """k_t of the reverse step at timestep ``t``."""
        return self._k[t - 1]

    def step(self, z: torch.Tensor, t: int) -> torch.Tensor:
        """One posterior-mean step from timestep t to t - 1; returns a new tensor."""
        return (z - self._k[t - 1] * self.predictor(z)) * self._inv_sqrt_alpha[t - 1]

    def denoise(self, feature: torch.Tensor) -> torch.Tensor:
        """Run the steps t = T..1 on ``feature`` (left unchanged) and return the result."""
        z = feature
        for t in self.timesteps():
            z = self.step(z, t)
        return z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.denoise(self.backbone(x)))
