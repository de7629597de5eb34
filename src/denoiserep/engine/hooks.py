"""Trainer hooks: behaviour added to training without editing the loop.

A hook subclasses :class:`TrainerHook` and overrides the points it needs; the trainer calls
every hook at each point, in list order, with itself as first argument (read ``trainer.cfg``,
``.tag``, ``.out_dir``, ``.model``, ``.optimizer``, ``.state``, ``.epoch``, ``.phase``,
``.steps_per_epoch``; do not change ``.state`` or a ``record``: the history and the
checkpoints are built from them). The progress bar, the throughput meter and the TensorBoard
log are hooks (below); ``engine.trainer`` documents the order, gradient accumulation and
where sharded training plugs in.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from tqdm.auto import tqdm

from . import dist
from .throughput import Throughput


class TrainerHook:
    """No-op methods at the trainer's named points; override the ones you need."""

    def on_fit_start(self, trainer: Any) -> None:
        """Loader, optimizer and state are ready (a resumed run's state already restored)."""

    def on_epoch_start(self, trainer: Any, epoch: int) -> None:
        """Epoch ``epoch`` (0-based) begins; ``trainer.phase`` and ``trainer.runner`` are set."""

    def before_step(self, trainer: Any, step: int) -> None:
        """Step ``step`` of the epoch has its batch (all its micro-batches with ``accumulate``
        > 1; steps a resumed epoch skips get no call)."""

    def after_backward(self, trainer: Any, step: int, loss: torch.Tensor) -> None:
        """Gradients of ``loss`` are in place; the optimizer has not stepped yet. With
        ``accumulate`` > 1: once per optimizer step, after its last micro-batch, with the
        micro-batches' mean loss (detached) and the accumulated gradients."""

    def after_step(self, trainer: Any, step: int, logs: dict[str, float]) -> None:
        """The optimizer stepped; ``logs`` holds the step's ``loss`` and the task's values."""

    def on_epoch_end(self, trainer: Any, epoch: int, record: dict[str, Any]) -> None:
        """``record`` (the epoch's history entry, evaluation included) is final; the epoch's
        checkpoint is written right after."""

    def on_fit_end(self, trainer: Any, error: BaseException | None) -> None:
        """The epochs are over or one raised (``error``); called always, so release resources
        here. The BatchNorm finish comes after."""


class HookList(TrainerHook):
    """Hooks called in order at each point. At ``on_fit_end`` every hook is called even when
    one raises; the first hook error is raised after them, unless training itself failed."""

    def __init__(self, hooks: Iterable[TrainerHook] = ()) -> None:
        self.hooks = list(hooks)

    def on_fit_start(self, trainer: Any) -> None:
        for hook in self.hooks:
            hook.on_fit_start(trainer)

    def on_epoch_start(self, trainer: Any, epoch: int) -> None:
        for hook in self.hooks:
            hook.on_epoch_start(trainer, epoch)

    def before_step(self, trainer: Any, step: int) -> None:
        for hook in self.hooks:
            hook.before_step(trainer, step)

    def after_backward(self, trainer: Any, step: int, loss: torch.Tensor) -> None:
        for hook in self.hooks:
            hook.after_backward(trainer, step, loss)

    def after_step(self, trainer: Any, step: int, logs: dict[str, float]) -> None:
        for hook in self.hooks:
            hook.after_step(trainer, step, logs)

    def on_epoch_end(self, trainer: Any, epoch: int, record: dict[str, Any]) -> None:
        for hook in self.hooks:
            hook.on_epoch_end(trainer, epoch, record)

    def on_fit_end(self, trainer: Any, error: BaseException | None) -> None:
        failures = []
        for hook in self.hooks:
            try:
                hook.on_fit_end(trainer, error)
            except Exception as e:  # noqa: BLE001 - the others must still release theirs
                failures.append(e)
        if failures and error is None:
            raise failures[0]


class ThroughputHook(TrainerHook):
    """Images per second and the loader's share of the time, measured afresh each epoch
    (``engine.throughput.Throughput``); the progress bar and TensorBoard read it."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.meter = Throughput(batch_size)

    def on_epoch_start(self, trainer: Any, epoch: int) -> None:
        self.meter = Throughput(self.batch_size)

    def before_step(self, trainer: Any, step: int) -> None:
        self.meter.arrived()

    def after_step(self, trainer: Any, step: int, logs: dict[str, float]) -> None:
        self.meter.done()


class ProgressHook(TrainerHook):
    """A tqdm bar over all steps of the run (rank 0 only), with epoch, phase, loss and the
    throughput of ``speed``."""

    def __init__(self, enabled: bool = True, speed: ThroughputHook | None = None) -> None:
        self.enabled, self.speed, self.bar = enabled, speed, None

    def on_fit_start(self, trainer: Any) -> None:
        self.bar = tqdm(
            total=trainer.cfg.epochs * trainer.steps_per_epoch,
            initial=trainer.state["global_step"],
            desc=trainer.tag,
            unit="step",
            disable=not (self.enabled and dist.is_main()),
            dynamic_ncols=True,
        )

    def after_step(self, trainer: Any, step: int, logs: dict[str, float]) -> None:
        self.bar.update(1)
        self.bar.set_postfix(
            epoch=trainer.epoch + 1,
            phase=trainer.phase or "-",
            loss=f"{logs['loss']:.4f}",
            **(self.speed.meter.postfix() if self.speed else {}),
            refresh=False,
        )

    def on_fit_end(self, trainer: Any, error: BaseException | None) -> None:
        if self.bar is not None:
            self.bar.close()


class TensorBoardHook(TrainerHook):
    """Scalars under ``<out_dir>/tb`` (rank 0 only): each epoch's throughput (logged, kept out
    of the history) and every finite number of its history record, at step ``epoch + 1``."""

    def __init__(self, speed: ThroughputHook | None = None) -> None:
        self.speed, self.writer = speed, None

    def on_fit_start(self, trainer: Any) -> None:
        if dist.is_main():
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(trainer.out_dir / "tb"))

    def on_epoch_end(self, trainer: Any, epoch: int, record: dict[str, Any]) -> None:
        if self.writer is None:
            return
        if self.speed is not None and self.speed.meter.steps:
            for k, v in self.speed.meter.summary().items():
                self.writer.add_scalar(f"{trainer.tag}/{k}", v, epoch + 1)
        for k, v in record.items():
            if isinstance(v, int | float) and math.isfinite(v) and k != "epoch":
                self.writer.add_scalar(f"{trainer.tag}/{k}", v, epoch + 1)

    def on_fit_end(self, trainer: Any, error: BaseException | None) -> None:
        if self.writer is not None:  # its thread must not outlive the folder
            self.writer.close()
            self.writer = None


def default_hooks(batch_size: int, progress: bool) -> list[TrainerHook]:
    """What every run has: throughput meter, TensorBoard log, progress bar (in that order)."""
    speed = ThroughputHook(batch_size)
    return [speed, TensorBoardHook(speed), ProgressHook(progress, speed)]
