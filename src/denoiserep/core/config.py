"""DenoiseConfig: what to convert and how to train the denoisers; round-trips through YAML."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from denoiserep.util.config import coerce_fields, load_yaml, yaml_error_line

from .schedule import NoiseSchedule, cosine_schedule, linear_schedule

TARGET_KINDS = ("linear", "conv", "all", "main_path")
SCHEDULES = ("linear", "cosine")
LOSSES = ("mse", "l1", "l1+l2")
LOSS_DTYPES = ("float32", "autocast")
STRUCTURES = ("full", "diagonal", "lowrank")


# -- DenoiseConfig ---------------------------------------------------------------------------
@dataclass
class DenoiseConfig:
    """Configuration of a DenoiseRep conversion.

    Args:
        targets: ``"linear"``, ``"conv"``, ``"all"``, ``"main_path"`` (the layers on the route
            from input to output that crosses the fewest layers: a ResNet's stem, downsampling
            shortcuts and head, no residual branch; found on the example input's forward), or
            a list of module-name glob patterns (e.g. ``["blocks.*.mlp.fc*"]``).
        exclude: module-name glob patterns removed from the targets (e.g. ``["head"]``; a
            single pattern may be given as a string).
        timesteps: T, the length of the diffusion process.
        schedule: ``"linear"`` (betas = linspace(beta_start, beta_end, T)) or ``"cosine"``.
        beta_start, beta_end: ends of the linear schedule (ignored by ``"cosine"``).
        timestep_stride: the k-th target layer from the end of the forward gets t = stride * k.
        loss: noise-prediction loss, ``"mse"``, ``"l1"`` or ``"l1+l2"``.
        loss_weight: lambda in total loss = task loss + lambda * sum of noise-prediction losses.
        loss_fraction: fraction of tokens / pixels the noise-prediction loss is computed on.
        loss_tokens: at most this many tokens / pixels per layer and step (0: no cap). The
            loss is an average, so a sample estimates it without bias; its cost is
            tokens x C_in^2 per layer, which at large batches rivals the layer's own forward.
        batch_loss: compute the noise-prediction losses in :func:`denoiserep.denoise_loss`,
            all layers with equal input width and token count together (one noise draw, one
            x_t and one loss reduction per group, one D·x_t per layer, instead of about ten
            small operators per layer: fewer kernel launches on a GPU). The losses then exist
            only once ``denoise_loss`` / ``denoise_losses`` is called (with gradients enabled,
            outside a compiled forward); the noise draws differ from the per-layer path (same
            distribution). Use it with ``loss_tokens``: each layer's sampled input waits until
            that call. Layers that sample equally many of equally many tokens share one
            token-index draw per step.
        loss_dtype: the precision of the noise regression's product D·x_t under autocast:
            ``"float32"`` (autocast switched off for it) or ``"autocast"`` (the autocast
            dtype; bf16 matmuls accumulate in float32). Without autocast both are float32.
            In the autocast dtype the product runs on a GPU's tensor cores instead of the
            float32 path; x_t = a x + b eps and the loss stay float32 either way.
        structure: the form of each denoiser D (per group of a grouped conv): ``"full"`` (a
            dense ``C_in x C_in/g`` matrix, parameter ``D``: the paper's method),
            ``"diagonal"`` (D = diag(d), parameter ``d``) or ``"lowrank"``
            (D = diag(d) + U Vᵀ, parameters ``d``, ``U``, ``V`` with U, V of shape
            ``C_in x rank``). Every structure fuses exactly into the plain layer; training
            uses the factors, so its cost scales with ``rank``, not with C_in.
        rank: r of ``"lowrank"`` (required there, at most every target's C_in/groups; not
            allowed for the other structures).

    Values are converted as YAML gives them: ``loss_weight="1e-3"`` is the number 0.001.
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
    loss_tokens: int = 0
    batch_loss: bool = False
    loss_dtype: str = "float32"
    structure: str = "full"
    rank: int | None = None

    def __post_init__(self) -> None:
        coerce_fields(self)
        if isinstance(self.targets, str):
            if not self.targets:
                raise ValueError("targets must not be empty")
        elif not (self.targets and all(self.targets)):
            raise ValueError(
                f"targets must be one of {TARGET_KINDS} or a non-empty list of glob patterns, "
                f"got {self.targets!r}"
            )
        if not all(self.exclude):
            raise ValueError(f"exclude patterns must not be empty, got {self.exclude!r}")
        if self.timesteps < 1:
            raise ValueError(f"timesteps must be a positive int, got {self.timesteps!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not 0.0 < self.beta_start <= self.beta_end < 1.0:
            raise ValueError(
                f"need 0 < beta_start <= beta_end < 1, got {self.beta_start}, {self.beta_end}"
            )
        if self.timestep_stride < 1:
            raise ValueError(
                f"timestep_stride must be a positive int, got {self.timestep_stride!r}"
            )
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.loss_weight < 0:
            raise ValueError(f"loss_weight must be >= 0, got {self.loss_weight}")
        if not 0.0 < self.loss_fraction <= 1.0:
            raise ValueError(f"loss_fraction must be in (0, 1], got {self.loss_fraction}")
        if self.loss_tokens < 0:
            raise ValueError(f"loss_tokens must be >= 0 (0: no cap), got {self.loss_tokens}")
        if self.loss_dtype not in LOSS_DTYPES:
            raise ValueError(f"loss_dtype must be one of {LOSS_DTYPES}, got {self.loss_dtype!r}")
        self._check_structure()

    def _check_structure(self) -> None:
        if self.structure not in STRUCTURES:
            raise ValueError(f"structure must be one of {STRUCTURES}, got {self.structure!r}")
        if self.structure == "lowrank":
            if self.rank is None or isinstance(self.rank, bool) or self.rank < 1:
                raise ValueError(
                    f"structure 'lowrank' needs rank >= 1 (denoise.rank), got {self.rank!r}"
                )
        elif self.rank is not None:
            raise ValueError(
                f"rank is only for structure 'lowrank', got rank={self.rank!r} with "
                f"structure {self.structure!r}"
            )

    def build_schedule(self) -> NoiseSchedule:
        """The noise schedule this config describes."""
        if self.schedule == "cosine":
            return cosine_schedule(self.timesteps)
        return linear_schedule(self.timesteps, self.beta_start, self.beta_end)

    # -- serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DenoiseConfig:
        """Build from a mapping; unknown keys are an error that lists the valid ones."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a DenoiseConfig needs a mapping of keys, got {data!r}")
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
        text, name = source, "DenoiseConfig YAML"
        if isinstance(source, Path) or (
            isinstance(source, str) and "\n" not in source and Path(source).is_file()
        ):
            text, name = Path(source).read_text(), str(source)
        try:
            data = load_yaml(text) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{name}: {yaml_error_line(e)}") from None
        if not isinstance(data, dict):
            raise ValueError(f"a DenoiseConfig YAML must be a mapping, got {type(data).__name__}")
        return cls.from_dict(data)
