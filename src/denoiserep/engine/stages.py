"""The trainer's stages as plain functions, each testable without a training run.

:class:`~denoiserep.engine.trainer.Trainer` calls them in order (see its module docstring):
build the loader, build the optimizer and scheduler, then per step ``forward_loss``,
``backward``, ``optimizer_step`` and ``step_logs``; per epoch ``reduce_epoch``; at the end
``finish_batchnorm``. They hold the training maths; the trainer holds the order, the state
and the hook calls.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from tqdm.auto import tqdm

import denoiserep as dr
from denoiserep.data.augment import BatchRows
from denoiserep.util.batchnorm import batchnorm_layers, recalibrate_batchnorm

from . import dist
from .optim import build_optimizer, cosine_with_warmup


class TrainStep(Protocol):
    """What the loop needs from a model's training: move a batch, augment it, run the model,
    score the output (e.g. ``classification.step.ClassificationStep``)."""

    def to_device(self, batch: Any, device: torch.device) -> Any: ...

    def augment(
        self, batch: Any, generator: torch.Generator, rows: BatchRows | None = None
    ) -> Any: ...

    def forward(self, model: nn.Module, batch: Any) -> Any: ...

    def loss(self, output: Any, batch: Any) -> tuple[torch.Tensor, dict[str, float]]: ...


def mix_seed(*values: int) -> int:
    """A 48-bit seed mixed from ``values`` (seed, epoch, step, rank): the per-step reseeding
    that makes a resumed run replay an uninterrupted one."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (v + 0x632BE59BD9B4E019 + (h << 6) + (h >> 2))) & 0xFFFFFFFFFFFF
    return h


def augment_batch(
    train_step: TrainStep, batch: Any, generator: torch.Generator, rows: BatchRows | None
) -> Any:
    """The train step's augmentation of ``batch``; ``rows``: this process's rows of the global
    batch under torchrun (train steps that never run distributed need not take the argument)."""
    if rows:
        return train_step.augment(batch, generator, rows)
    return train_step.augment(batch, generator)


def plain_forward(train_step: TrainStep, device: torch.device) -> Callable[[nn.Module, Any], Any]:
    """``forward(model, batch)`` for label-free passes (closed-form fit, range calibration):
    the batch moved to ``device`` and not augmented."""
    return lambda m, batch: train_step.forward(m, train_step.to_device(batch, device))


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward pass (bfloat16 where the device has it)."""
    if not enabled:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if device.type == "cpu" or torch.cuda.is_bf16_supported() else None
    return torch.autocast(device.type, dtype=dtype or torch.float16)


def build_loader(
    dataset: Dataset,
    batch_size: int,
    workers: int,
    device: torch.device,
    seed: int,
    sampler: Sampler | None = None,
    collate_fn: Callable[[list], Any] | None = None,
    *,
    accumulate: int = 1,
) -> tuple[DataLoader, Sampler, BatchRows | None]:
    """This process's loader of ``batch_size // world`` items (a seeded ``DistributedSampler``
    unless ``sampler`` is given), the sampler, and the rows this process holds of the global
    batch (None in one process or under a custom sampler).

    Under torchrun with the default sampler, rank r's j-th item is row j * world + r of the
    1-process batch: augmentation draws for the global batch and keeps those rows.
    ``accumulate`` > 1: the loader yields micro-batches of ``batch_size // (world *
    accumulate)`` items; ``accumulate`` consecutive ones (``micro_groups``) are exactly this
    process's batch without accumulation, split in order (``micro_rows`` gives their rows)."""
    world, rank = dist.world_size(), dist.rank()
    if batch_size % world:
        raise ValueError(f"batch_size {batch_size} is not divisible by {world} processes")
    if batch_size % (world * accumulate):
        raise ValueError(
            f"batch_size {batch_size} is not divisible into {accumulate} micro-batches on each "
            f"of {world} processes"
        )
    if sampler is None:
        sampler = DistributedSampler(
            dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed
        )
    loader = DataLoader(
        dataset,
        batch_size=batch_size // (world * accumulate),
        sampler=sampler,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
        collate_fn=collate_fn,
    )
    rows = None
    if world > 1 and isinstance(sampler, DistributedSampler):
        local = batch_size // world
        rows = BatchRows(torch.arange(local) * world + rank, batch_size)
    return loader, sampler, rows


def micro_rows(rows: BatchRows | None, local: int, accumulate: int) -> list[BatchRows | None]:
    """The rows of each of the ``accumulate`` micro-batches that split this process's batch
    of ``local`` items (``rows``: its rows of the global batch, None: it is the whole batch).

    Each micro-batch draws the augmentation of the whole batch and keeps its rows, so the
    images are augmented as without accumulation. ``accumulate`` 1: ``[rows]`` unchanged."""
    if accumulate == 1:
        return [rows]
    base = rows if rows is not None else BatchRows(torch.arange(local), local)
    m = local // accumulate
    return [BatchRows(base.index[k * m : (k + 1) * m], base.total) for k in range(accumulate)]


def micro_groups(loader: Iterable[Any], accumulate: int) -> Iterator[Any]:
    """The loader's batches, in lists of ``accumulate`` consecutive micro-batches (an
    incomplete last group is dropped); ``accumulate`` 1: the batches themselves."""
    if accumulate == 1:
        yield from loader
        return
    batches = iter(loader)
    while len(group := list(itertools.islice(batches, accumulate))) == accumulate:
        yield group


def build_optimization(model: nn.Module, cfg: Any, steps_per_epoch: int) -> tuple[Any, Any]:
    """The optimizer of ``cfg`` (a ``TrainConfig``) and its cosine schedule with warm-up over
    ``cfg.epochs * steps_per_epoch`` steps."""
    how = (cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum, cfg.denoiser_optimizer)
    optimizer = build_optimizer(model, *how, fused=cfg.fused_optimizer)
    total = cfg.epochs * steps_per_epoch
    scheduler = cosine_with_warmup(optimizer, total, round(cfg.warmup_epochs * steps_per_epoch))
    return optimizer, scheduler


@dataclass
class StepLoss:
    """One step's losses: ``loss`` = ``task_loss`` + lambda * ``ploss``; ``logs`` the task's."""

    loss: torch.Tensor
    task_loss: torch.Tensor
    ploss: torch.Tensor
    logs: dict[str, float]


def forward_loss(
    train_step: TrainStep,
    runner: nn.Module,
    model: nn.Module,
    batch: Any,
    *,
    phase: str | None,
    converted: bool,
    lam: float,
    amp: bool,
) -> StepLoss:
    """Forward ``batch`` through ``runner`` (the model, or its DDP / compiled wrapper) and
    score it. In phase ``denoiser`` the task loss is not computed and no label is read; a
    ``converted`` model adds ``lam`` times its noise-prediction loss."""
    device = next(model.parameters()).device
    with autocast(device, amp):
        output = train_step.forward(runner, batch)
        if phase == "denoiser":
            task_loss, logs = torch.zeros((), device=device), {}
        else:
            task_loss, logs = train_step.loss(output, batch)
        ploss = dr.denoise_loss(model) if converted else torch.zeros((), device=device)
        loss = task_loss + lam * ploss
    return StepLoss(loss, task_loss, ploss, logs)


def mean_losses(parts: list[StepLoss]) -> StepLoss:
    """One optimizer step's losses from its micro-batches' (equal sizes): the mean of each,
    detached, and of each logged value; one part is returned as it is."""
    if len(parts) == 1:
        return parts[0]
    n = len(parts)

    def mean(name: str) -> torch.Tensor:
        return torch.stack([getattr(p, name).detach().float() for p in parts]).mean()

    logs = {k: sum(p.logs[k] for p in parts) / n for k in parts[0].logs}
    return StepLoss(mean("loss"), mean("task_loss"), mean("ploss"), logs)


def backward(loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
    """Clear the gradients and back-propagate ``loss``."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()


def optimizer_step(model: nn.Module, optimizer: Any, scheduler: Any, grad_clip: float) -> None:
    """Clip the gradient norm to ``grad_clip`` (0: no clipping), step the optimizer and the
    learning-rate schedule."""
    if grad_clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()


def step_logs(losses: StepLoss, phase: str | None, converted: bool) -> dict[str, float]:
    """What one step records: the task's logs, ``loss``, ``task_loss`` (not in phase
    ``denoiser``) and ``ploss`` (converted models, not in phase ``backbone``)."""
    logs = dict(losses.logs, loss=losses.loss.item())
    if phase != "denoiser":
        logs["task_loss"] = losses.task_loss.item()
    if converted and phase != "backbone":
        logs["ploss"] = losses.ploss.item()
    return logs


def add_logs(sums: dict[str, float], logs: dict[str, float]) -> dict[str, float]:
    """Add one step's ``logs`` to the epoch's running ``sums`` (``n`` counts the steps)."""
    for k, v in logs.items():
        sums[k] = sums.get(k, 0.0) + v
    sums["n"] = sums.get("n", 0) + 1
    return sums


def reduce_epoch(sums: dict[str, float]) -> tuple[dict[str, float], int]:
    """The epoch's mean of every logged value over all processes' steps, and that step count
    (``sums`` loses its ``n``)."""
    n = sums.pop("n", 1)
    totals = dist.all_reduce_sum(
        torch.tensor([sums[k] for k in sorted(sums)] + [n], dtype=torch.float64)
    )
    means = {k: (totals[i] / totals[-1]).item() for i, k in enumerate(sorted(sums))}
    return means, int(totals[-1].item())


def finish_batchnorm(
    model: nn.Module,
    loader: DataLoader,
    sampler: Any,
    forward: Callable[[nn.Module, Any], Any],
    *,
    recalibrate: bool,
    label_free: bool,
    tag: str,
    progress: bool,
) -> None:
    """``recalibrate``: recompute BatchNorm statistics on the training images as training
    augments them (``forward``; epoch 0's order and a seeded draw, so a resumed run does the
    same); otherwise point out when a label-free phase (``label_free``: or a closed-form D with
    no epoch) ends the run and left them stale.

    Augmented, not clean: the layers after each BatchNorm were trained on features normalised
    with the augmented images' statistics, and recalibrating on clean images instead can cost
    clean accuracy (docs/results/robustness.md, "Two more CNNs", has a measurement)."""
    if not batchnorm_layers(model):
        if recalibrate and dist.is_main():
            tqdm.write(f"{tag}: recalibrate_bn: the model has no BatchNorm statistics")
        return
    if not recalibrate:
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
