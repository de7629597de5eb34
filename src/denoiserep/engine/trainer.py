"""The training loop every task shares: phases, AMP, DDP, checkpoints with resume, logging.

Determinism: each step reseeds the global RNG from (seed, epoch, step, rank) and the data
order comes from a sampler seeded by (seed, epoch), so a run resumed from any checkpoint,
even one written mid-epoch, replays exactly what an uninterrupted run would have done.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from tqdm.auto import tqdm

import denoiserep as dr
from denoiserep.core.batchnorm import batchnorm_layers, recalibrate_batchnorm
from denoiserep.core.closed_form import fit_denoisers
from denoiserep.data.augment import BatchRows
from denoiserep.models.grad_checkpointing import (
    disable_grad_checkpointing,
    enable_grad_checkpointing,
)

from . import dist
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .optim import build_optimizer, check_optimizer_names, cosine_with_warmup
from .phases import phase_for_epoch
from .throughput import Throughput


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


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
    weights (one label-free pass: ``core.batchnorm.recalibrate_batchnorm``); a label-free
    phase leaves them as the baseline's weights produced them.
    ``grad_checkpointing``: recompute activations in backward instead of keeping them (the
    model library's own switch: ``models.grad_checkpointing.enable_grad_checkpointing``; timm
    and ``hf:`` models); D trains as without it. It stays on in the model after training, until
    a fit with it off (checkpointing turned on otherwise is left as it is).
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

    def __post_init__(self) -> None:
        from denoiserep.core.config import coerce_fields

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
        }
        for name, low in at_least.items():
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")
        if self.denoiser_init not in ("zero", "closed_form"):
            raise ValueError(
                f"denoiser_init must be 'zero' or 'closed_form', got {self.denoiser_init!r}"
            )
        check_optimizer_names(self.optimizer, self.denoiser_optimizer)
        phase_for_epoch(self.phases, 0, self.denoiser_epochs, self.alternate_every)


class Task(Protocol):
    """What the loop needs from a task: move a batch, run the model, score the output."""

    def to_device(self, batch: Any, device: torch.device) -> Any: ...

    def augment(
        self, batch: Any, generator: torch.Generator, rows: BatchRows | None = None
    ) -> Any: ...

    def forward(self, model: nn.Module, batch: Any) -> Any: ...

    def loss(self, output: Any, batch: Any) -> tuple[torch.Tensor, dict[str, float]]: ...


def _mix(*values: int) -> int:
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (v + 0x632BE59BD9B4E019 + (h << 6) + (h >> 2))) & 0xFFFFFFFFFFFF
    return h


def _augment(task: Task, batch: Any, generator: torch.Generator, rows: BatchRows | None) -> Any:
    """The task's augmentation of ``batch``; ``rows``: this process's rows of the global batch
    under torchrun (tasks that never run distributed need not take the argument)."""
    return task.augment(batch, generator, rows) if rows else task.augment(batch, generator)


def plain_forward(task: Task, device: torch.device) -> Callable[[nn.Module, Any], Any]:
    """``forward(model, batch)`` for label-free passes (closed-form fit, range calibration):
    the batch moved to ``device`` and not augmented."""
    return lambda m, batch: task.forward(m, task.to_device(batch, device))


def _autocast(device: torch.device, enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if device.type == "cpu" or torch.cuda.is_bf16_supported() else None
    return torch.autocast(device.type, dtype=dtype or torch.float16)


def fit(
    model: nn.Module,
    dataset: Dataset,
    cfg: TrainConfig,
    task: Task,
    out_dir: str | Path,
    seed: int = 0,
    *,
    sampler: Sampler | None = None,
    collate_fn: Callable[[list], Any] | None = None,
    eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
    tag: str = "train",
    progress: bool = True,
    resume: bool = True,
) -> list[dict[str, Any]]:
    """Train ``model`` in place for ``cfg.epochs`` and return the per-epoch history.

    A converted model trains under the phase schedule of ``cfg`` with
    loss = task loss + lambda * noise-prediction loss (lambda: its DenoiseConfig's
    ``loss_weight``, the one place it is set); in phase ``denoiser`` the task loss is not
    computed and no label is read. Only rank 0 writes checkpoints and logs under ``out_dir``.
    """
    out_dir = Path(out_dir)
    device = next(model.parameters()).device
    converted = dr.is_converted(model)
    if cfg.phases != "none" and not converted:
        raise ValueError(f"{tag}: phases={cfg.phases!r} needs a model converted with DenoiseRep")
    lam = dr.config_of(model).loss_weight if converted else 0.0
    if cfg.grad_checkpointing:
        enable_grad_checkpointing(model)
    else:  # on from an earlier fit of this model (the baseline's): each fit follows its own
        disable_grad_checkpointing(model)
    world, rank = dist.world_size(), dist.rank()
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by {world} processes")
    if sampler is None:
        sampler = DistributedSampler(
            dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed
        )
    loader = DataLoader(
        dataset,
        batch_size=cfg.batch_size // world,
        sampler=sampler,
        drop_last=True,
        num_workers=cfg.workers,
        persistent_workers=cfg.workers > 0,
        pin_memory=device.type == "cuda",
        collate_fn=collate_fn,
    )
    steps_per_epoch = len(loader)
    # Under torchrun with the default sampler, rank r's j-th item is row j * world + r of the
    # 1-process batch: augmentation draws for the global batch and keeps those rows.
    rows = None
    if world > 1 and isinstance(sampler, DistributedSampler):
        local = cfg.batch_size // world
        rows = BatchRows(torch.arange(local) * world + rank, cfg.batch_size)
    if cfg.epochs and steps_per_epoch == 0:
        raise ValueError(f"{tag}: {len(dataset)} training items give no batch of {cfg.batch_size}")
    how = (cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum, cfg.denoiser_optimizer)
    optimizer = build_optimizer(model, *how, fused=cfg.fused_optimizer)
    total = cfg.epochs * steps_per_epoch
    scheduler = cosine_with_warmup(optimizer, total, round(cfg.warmup_epochs * steps_per_epoch))

    ckpt_dir = out_dir / "checkpoints"
    state: dict[str, Any] = {"epoch": 0, "step": 0, "global_step": 0, "history": [], "sums": {}}
    found = latest_checkpoint(ckpt_dir) if resume else None
    if found is not None:
        state = load_checkpoint(found, model, optimizer, scheduler)
    elif converted and cfg.denoiser_init == "closed_form":  # a fresh start
        fitted = fit_denoisers(
            model,
            tqdm(loader, desc=f"{tag}: closed-form D", disable=not progress, leave=False),
            forward=plain_forward(task, device),
        )
        if dist.is_main():
            floor = sum(r["min_loss"] for r in fitted.values())
            tqdm.write(f"{tag}: D of {len(fitted)} layers in closed form; summed loss {floor:.3f}")
    writer = None
    if dist.is_main():
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out_dir / "tb"))

    def checkpoint() -> None:
        if dist.is_main():
            keys = ("epoch", "step", "global_step", "history", "sums")
            saved = {k: state[k] for k in keys}
            saved.update(phase=dr.get_phase(model) if converted else None, config=asdict(cfg))
            save_checkpoint(ckpt_dir, model, optimizer, scheduler, saved)
        dist.barrier()

    bar = tqdm(
        total=total,
        initial=state["global_step"],
        desc=tag,
        unit="step",
        disable=not (progress and dist.is_main()),
        dynamic_ncols=True,
    )
    try:  # a failure closes the log writer first: its thread must not outlive the folder
        for epoch in range(state["epoch"], cfg.epochs):
            phase = phase_for_epoch(cfg.phases, epoch, cfg.denoiser_epochs, cfg.alternate_every)
            if converted:
                dr.set_phase(model, phase or "joint")
            runner = nn.parallel.DistributedDataParallel(model) if dist.is_distributed() else model
            if cfg.compile:
                runner = torch.compile(runner)
            if phase == "denoiser":
                dr.train_frozen_backbone(model)
            else:
                model.train()
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
            sums = state["sums"] if state["step"] else {}
            speed = Throughput(cfg.batch_size)
            for step, batch in enumerate(loader):
                if step < state["step"]:
                    continue
                speed.arrived()
                torch.manual_seed(_mix(seed, epoch, step, rank))
                generator = torch.Generator().manual_seed(_mix(seed, epoch, step, 1 << 20))
                batch = task.to_device(batch, device)
                batch = _augment(task, batch, generator, rows)
                with _autocast(device, cfg.amp):
                    output = task.forward(runner, batch)
                    if phase == "denoiser":
                        task_loss, logs = torch.zeros((), device=device), {}
                    else:
                        task_loss, logs = task.loss(output, batch)
                    ploss = dr.denoise_loss(model) if converted else torch.zeros((), device=device)
                    loss = task_loss + lam * ploss
                if not torch.isfinite(loss):
                    bar.close()
                    raise TrainingDiverged(
                        f"{tag}: loss is {loss.item()} at epoch {epoch + 1}, step {step + 1}; "
                        f"last good checkpoint: {latest_checkpoint(ckpt_dir) or 'none'}"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                scheduler.step()
                logs = dict(logs, loss=loss.item())
                if phase != "denoiser":
                    logs["task_loss"] = task_loss.item()
                if converted and phase != "backbone":
                    logs["ploss"] = ploss.item()
                for k, v in logs.items():
                    sums[k] = sums.get(k, 0.0) + v
                sums["n"] = sums.get("n", 0) + 1
                state.update(step=step + 1, global_step=state["global_step"] + 1, sums=sums)
                bar.update(1)
                speed.done()
                bar.set_postfix(
                    epoch=epoch + 1,
                    phase=phase or "-",
                    loss=f"{logs['loss']:.4f}",
                    **speed.postfix(),
                    refresh=False,
                )
                if cfg.ckpt_every and state["global_step"] % cfg.ckpt_every == 0:
                    checkpoint()
            if writer is not None and speed.steps:
                for k, v in speed.summary().items():  # timings: logged, kept out of the history
                    writer.add_scalar(f"{tag}/{k}", v, epoch + 1)
            n = sums.pop("n", 1)
            totals = dist.all_reduce_sum(
                torch.tensor([sums[k] for k in sorted(sums)] + [n], dtype=torch.float64)
            )
            record = {k: (totals[i] / totals[-1]).item() for i, k in enumerate(sorted(sums))}
            record.update(
                epoch=epoch + 1,
                phase=phase or "none",
                lr=optimizer.param_groups[0]["lr"],
                world_size=world,
                steps_all_ranks=int(totals[-1].item()),
            )
            if eval_fn is not None:
                record.update(eval_fn(model))
            state["history"].append(record)
            state.update(epoch=epoch + 1, step=0, sums={})
            if writer is not None:
                for k, v in record.items():
                    if isinstance(v, int | float) and math.isfinite(v) and k != "epoch":
                        writer.add_scalar(f"{tag}/{k}", v, epoch + 1)
            checkpoint()
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    augmentation = torch.Generator().manual_seed(_mix(seed, cfg.epochs, 1 << 21))

    def training_view(m: nn.Module, batch: Any) -> Any:  # what training normalised
        return task.forward(m, _augment(task, task.to_device(batch, device), augmentation, rows))

    _finish_batchnorm(model, cfg, loader, sampler, training_view, tag, progress)
    return state["history"]


def _finish_batchnorm(
    model: nn.Module,
    cfg: TrainConfig,
    loader: DataLoader,
    sampler: Any,
    forward: Callable[[nn.Module, Any], Any],
    tag: str,
    progress: bool,
) -> None:
    """``cfg.recalibrate_bn``: recompute BatchNorm statistics on the training images as
    training augments them (``forward``; epoch 0's order and a seeded draw, so a resumed run
    does the same); otherwise point out when a label-free phase (or a closed-form D with no
    epoch) ends the run and left them stale.

    Augmented, not clean: the layers after each BatchNorm were trained on features normalised
    with the augmented images' statistics, and recalibrating on clean images instead can cost
    clean accuracy (docs/results/robustness.md, "Two more CNNs", has a measurement)."""
    if not batchnorm_layers(model):
        if cfg.recalibrate_bn and dist.is_main():
            tqdm.write(f"{tag}: recalibrate_bn: the model has no BatchNorm statistics")
        return
    if not cfg.recalibrate_bn:
        last = phase_for_epoch(cfg.phases, cfg.epochs - 1, cfg.denoiser_epochs, cfg.alternate_every)
        label_free = last == "denoiser" if cfg.epochs else cfg.denoiser_init == "closed_form"
        if dr.is_converted(model) and label_free and dist.is_main():
            tqdm.write(
                f"{tag}: BatchNorm statistics are still the baseline's after the label-free "
                "phase; recalibrate_bn=true recomputes them without labels"
            )
        return
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(0)
    n = recalibrate_batchnorm(
        model,
        tqdm(loader, desc=f"{tag}: BatchNorm statistics", disable=not progress, leave=False),
        forward=forward,
    )
    if dist.is_main():
        tqdm.write(f"{tag}: BatchNorm statistics of {n} layers recomputed")
