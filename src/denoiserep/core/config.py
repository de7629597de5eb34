"""DenoiseConfig: what to convert and how to train the denoisers; round-trips through YAML."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .schedule import NoiseSchedule, cosine_schedule, linear_schedule

TARGET_KINDS = ("linear", "conv", "all")
SCHEDULES = ("linear", "cosine")
LOSSES = ("mse", "l1", "l1+l2")


@dataclass
class DenoiseConfig:
    """Configuration of a DenoiseRep conversion.

    Args:
        targets: ``"linear"``, ``"conv"``, ``"all"``, or a list of module-name glob patterns
            (e.g. ``["blocks.*.mlp.fc*"]``) selecting the layers to wrap.
        exclude: module-name glob patterns removed from the targets (e.g. ``["head"]``).
        timesteps: T, the length of the diffusion process.
        schedule: ``"linear"`` (betas = linspace(beta_start, beta_end, T)) or ``"cosine"``.
        beta_start, beta_end: ends of the linear schedule (ignored by ``"cosine"``).
        timestep_stride: the k-th target layer from the end of the forward gets t = stride * k.
        loss: noise-prediction loss, ``"mse"``, ``"l1"`` or ``"l1+l2"``.
        loss_weight: lambda in total loss = task loss + lambda * sum of noise-prediction losses.
        loss_fraction: fraction of tokens / pixels the noise-prediction loss is computed on.
    """

    targets: str | list[str] = "all"
    exclude: list[str] = field(default_factory=list)
    timesteps: int = 1000
    schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 2e-3
    timestep_stride: int = 1
    loss: str = "mse"
    loss_weight: float = 0.01
    loss_fraction: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.targets, tuple):
            self.targets = list(self.targets)
        if isinstance(self.targets, str):
            if not self.targets:
                raise ValueError("targets must not be empty")
        elif not (
            isinstance(self.targets, list)
            and self.targets
            and all(isinstance(p, str) and p for p in self.targets)
        ):
            raise ValueError(
                f"targets must be one of {TARGET_KINDS} or a non-empty list of glob patterns, "
                f"got {self.targets!r}"
            )
        self.exclude = list(self.exclude)
        if not isinstance(self.timesteps, int) or self.timesteps < 1:
            raise ValueError(f"timesteps must be a positive int, got {self.timesteps!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not 0.0 < self.beta_start <= self.beta_end < 1.0:
            raise ValueError(
                f"need 0 < beta_start <= beta_end < 1, got {self.beta_start}, {self.beta_end}"
            )
        if not isinstance(self.timestep_stride, int) or self.timestep_stride < 1:
            raise ValueError(
                f"timestep_stride must be a positive int, got {self.timestep_stride!r}"
            )
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.loss_weight < 0:
            raise ValueError(f"loss_weight must be >= 0, got {self.loss_weight}")
        if not 0.0 < self.loss_fraction <= 1.0:
            raise ValueError(f"loss_fraction must be in (0, 1], got {self.loss_fraction}")

    def build_schedule(self) -> NoiseSchedule:
        """The noise schedule this config describes."""
        if self.schedule == "cosine":
            return cosine_schedule(self.timesteps)
        return linear_schedule(self.timesteps, self.beta_start, self.beta_end)

    # -- serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DenoiseConfig:
        """Build from a mapping; unknown keys are an error that lists the valid ones."""
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise ValueError(
                f"unknown DenoiseConfig key(s) {unknown}; valid keys are: {', '.join(valid)}"
            )
        return cls(**data)

    def to_yaml(self, path: str | Path | None = None) -> str:
        """Serialise to YAML text, and write it to ``path`` if given."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_yaml(cls, source: str | Path) -> DenoiseConfig:
        """Load from a YAML file path or from YAML text."""
        text = source
        if isinstance(source, Path) or (
            isinstance(source, str) and "\n" not in source and Path(source).is_file()
        ):
            text = Path(source).read_text()
        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ValueError(f"a DenoiseConfig YAML must be a mapping, got {type(data).__name__}")
        return cls.from_dict(data)
