"""What one ``denoiserep bench`` run measures, and the targets its results are held to."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import denoiserep as dr

VARIANTS = ("baseline", "fused", "explicit", "final_feature")
PHASES = ("denoiser", "backbone", "joint")  # the training phases whose step cost is measured
DEFAULT_MODELS = ("vit_small_patch16_224", "resnet50", "swin_tiny_patch4_window7_224")
LATENCY_TOLERANCE = 0.03  # target: fused / baseline inference latency within 1 +- this
# targets: DenoiseRep train step <= this x baseline, per phase (the denoiser phase does less
# work than plain training: no backbone gradients)
TRAIN_STEP_LIMIT = {"denoiser": 1.0, "backbone": 1.15, "joint": 1.3}
TRAIN_MEMORY_LIMIT = 1.3  # target: DenoiseRep training peak memory <= this x baseline
MB = 2**20


@dataclass
class TrainBenchConfig:
    """The training-cost measurement: one batch, ``warmup`` + ``steps`` steps per variant.

    ``compile``: every variant (the baseline too) runs under ``torch.compile``; FLOPs are
    counted on the eager step, and compilation happens in the warm-up.
    ``denoiser_optimizer``: as the trainer's (``same``: D in the AdamW of the backbone).
    ``fused_optimizer``: torch's fused AdamW kernel, as the GPU configs train (the trainer's
    default is off, for bit-for-bit reproduction of earlier figures).
    ``grad_checkpointing``: every variant (the baseline too) recomputes its activations in
    backward (timm's ``set_grad_checkpointing``).
    """

    enabled: bool = True
    batch_size: int = 32
    steps: int = 5
    warmup: int = 1
    phases: list[str] = field(default_factory=lambda: list(PHASES))
    lr: float = 1e-4
    weight_decay: float = 0.05
    denoiser_optimizer: str = "same"
    fused_optimizer: bool = True
    profile_top: int = 0
    compile: bool = False
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        from denoiserep.engine.optim import check_optimizer_names

        check_optimizer_names("adamw", self.denoiser_optimizer, "train.")
        bad = [p for p in self.phases if p not in PHASES]
        if bad:
            raise ValueError(f"train.phases must be among {PHASES}, got {bad}")
        if self.batch_size < 1 or self.steps < 1 or self.warmup < 1:
            raise ValueError(
                "train.batch_size, train.steps and train.warmup must be >= 1 (the first warm-up "
                f"step counts FLOPs), got {self.batch_size}, {self.steps}, {self.warmup}"
            )


@dataclass
class BenchConfig:
    """Everything one ``denoiserep bench`` run measures.

    ``model_kwargs`` maps a model name to keyword overrides for ``create_model``;
    ``final_feature_steps`` = 0 runs all ``denoise.timesteps`` steps; ``threads`` > 0 sets
    torch's intra-op threads for the run (0 leaves the default).
    """

    models: list[str] = field(default_factory=lambda: list(DEFAULT_MODELS))
    model_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    image_size: int = 224
    batch_sizes: list[int] = field(default_factory=lambda: [1, 32])
    repeats: int = 10
    warmup: int = 2
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    final_feature_steps: int = 0
    denoise: dr.DenoiseConfig = field(default_factory=lambda: dr.DenoiseConfig(loss_tokens=256))
    denoiser_strength: float = 0.1
    train: TrainBenchConfig = field(default_factory=TrainBenchConfig)
    device: str = "cpu"
    bf16: bool = False
    threads: int = 0
    memory: bool = True
    export: bool = False
    seed: int = 0
    output: str = "runs/bench"

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("models must name at least one model")
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad or "baseline" not in self.variants:
            raise ValueError(f"variants must include 'baseline' and be among {VARIANTS}")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError(f"batch_sizes must be positive, got {self.batch_sizes}")
        if self.repeats < 1 or self.warmup < 0:
            raise ValueError(f"need repeats >= 1, warmup >= 0; got {self.repeats}, {self.warmup}")
        if not 0 <= self.final_feature_steps <= self.denoise.timesteps:
            raise ValueError(
                f"final_feature_steps must be in 0..{self.denoise.timesteps} (0: all), "
                f"got {self.final_feature_steps}"
            )
        unknown = sorted(set(self.model_kwargs) - set(self.models))
        if unknown:
            raise ValueError(f"model_kwargs names model(s) not in models: {', '.join(unknown)}")
