"""How one arm trains: :class:`TrainConfig`, the ``train`` / ``baseline`` / ``finetune``
section of every task's config, checked when it is built."""

from __future__ import annotations

from dataclasses import dataclass

from .optim import check_optimizer_names
from .phases import phase_for_epoch


@dataclass
class TrainConfig:
    """How one arm trains. ``phases`` is the DenoiseRep schedule (``none`` for plain models).

    ``compile``: the training forward runs through ``torch.compile`` (the first step of each
    phase compiles; inductor draws the noise from its own generator, so a compiled run is
    reproducible but not equal to an eager one). Evaluation stays eager.
    ``denoiser_optimizer``: ``same`` (D in the backbone's optimizer) or ``adafactor`` (D in its
    own factored-moment optimizer: 2·C_in² fewer floats of state per layer with AdamW).
    ``fused_optimizer``: torch's fused AdamW / SGD kernel (``engine.optim.build_optimizer``:
    fewer passes over D's C_in² entries per layer). Off by default so that the recorded
    results (docs/results), all measured without it, reproduce bit for bit; the GPU configs
    turn it on.
    ``denoiser_init``: ``zero`` (D as converted) or ``closed_form``: before the first epoch
    every D is set to the minimiser of its expected noise-prediction loss on the training
    images (one label-free pass, no augmentation: ``core.closed_form.fit_denoisers``).
    ``recalibrate_bn``: after the last epoch, every BatchNorm layer's running statistics are
    recomputed on the training images, augmented as in training, under the final (fused)
    weights (one label-free pass: ``util.batchnorm.recalibrate_batchnorm``); a label-free
    phase leaves them as the baseline's weights produced them.
    ``grad_checkpointing``: recompute activations in backward instead of keeping them (the
    model library's own switch: ``models.grad_checkpointing.enable_grad_checkpointing``; timm
    and ``hf:`` models); D trains as without it. It stays on in the model after training, until
    a fit with it off (checkpointing turned on otherwise is left as it is).
    ``accumulate``: gradient accumulation. Each optimizer step runs ``accumulate``
    micro-batches of ``batch_size / (accumulate * processes)`` items per process, the loss
    scaled by 1 / ``accumulate`` (DDP synchronises only the last one). ``batch_size`` stays the
    effective (global) batch per optimizer step, so a config means the same whatever the number
    of GPUs and micro-batches; the steps, the schedule and ``ckpt_every`` count optimizer steps.
    ``strategy``: ``ddp`` (a full copy per process) or ``fsdp`` (FSDP2 ``fully_shard`` on each
    DenoiseLayer / block and the root, ``engine.sharding``; only under torchrun with more than
    one process, one process trains as ``ddp``). docs/guide/extending-training.md, "Sharded
    training", says what ``fsdp`` supports yet.
    """

    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "adamw"
    denoiser_optimizer: str = "same"
    fused_optimizer: bool = False
    denoiser_init: str = "zero"
    recalibrate_bn: bool = False
    lr: float = 1e-3
    weight_decay: float = 0.05
    momentum: float = 0.9
    warmup_epochs: float = 0.0
    amp: bool = False
    grad_clip: float = 0.0
    phases: str = "none"
    denoiser_epochs: int = 0
    alternate_every: int = 1
    ckpt_every: int = 0
    workers: int = 0
    compile: bool = False
    grad_checkpointing: bool = False
    accumulate: int = 1
    strategy: str = "ddp"

    def __post_init__(self) -> None:
        from denoiserep.util.config import coerce_fields

        coerce_fields(self)  # "1e-3" -> 0.001; NaN, True for an int, 1.5 epochs: errors
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(
                f"need epochs >= 0, batch_size >= 1, lr > 0; got {self.epochs}, "
                f"{self.batch_size}, {self.lr}"
            )
        at_least = {
            "weight_decay": 0,
            "momentum": 0,
            "warmup_epochs": 0,
            "grad_clip": 0,
            "denoiser_epochs": 0,
            "alternate_every": 1,
            "ckpt_every": 0,
            "workers": 0,
            "accumulate": 1,
        }
        for name, low in at_least.items():
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")
        if self.batch_size % self.accumulate:
            raise ValueError(
                f"batch_size {self.batch_size} is not divisible into accumulate="
                f"{self.accumulate} micro-batches"
            )
        if self.strategy not in ("ddp", "fsdp"):
            raise ValueError(f"strategy must be 'ddp' or 'fsdp', got {self.strategy!r}")
        if self.denoiser_init not in ("zero", "closed_form"):
            raise ValueError(
                f"denoiser_init must be 'zero' or 'closed_form', got {self.denoiser_init!r}"
            )
        check_optimizer_names(self.optimizer, self.denoiser_optimizer)
        phase_for_epoch(self.phases, 0, self.denoiser_epochs, self.alternate_every)
