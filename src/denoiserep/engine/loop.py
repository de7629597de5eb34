"""The :class:`Trainer`: the training loop as named stages with a hook list.

``engine.trainer`` documents the order of the stages, the hook points and where gradient
accumulation and sharded training plug in; ``engine.stages`` holds the maths of each stage.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, Sampler
from tqdm.auto import tqdm

import denoiserep as dr
from denoiserep.core.closed_form import fit_denoisers
from denoiserep.models.grad_checkpointing import (
    disable_grad_checkpointing,
    enable_grad_checkpointing,
)

from . import dist, sharding, stages
from .checkpoint import (
    gather_rank_sums,
    is_sharded_checkpoint,
    latest_checkpoint,
    load_sharded_state,
    load_training_state,
    own_rank_sums,
    save_sharded_state,
    save_training_state,
)
from .hooks import HookList, TrainerHook
from .phases import phase_for_epoch
from .stages import TrainStep, augment_batch, mix_seed, plain_forward
from .train_config import TrainConfig


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class Trainer:
    """One training run of ``model`` on ``dataset`` under ``cfg``: the stages of
    ``engine.trainer.fit`` as methods (its module docstring gives the order), with ``hooks``
    called at the named points. ``fit()`` runs them all. Only the ``hooks`` given run
    (``engine.trainer.fit`` adds ``hooks.default_hooks``: throughput, TensorBoard, progress)."""

    def __init__(
        self,
        model: nn.Module,
        dataset: Dataset,
        cfg: TrainConfig,
        train_step: TrainStep,
        out_dir: str | Path,
        seed: int = 0,
        *,
        sampler: Sampler | None = None,
        collate_fn: Callable[[list], Any] | None = None,
        eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
        tag: str = "train",
        progress: bool = True,
        resume: bool = True,
        hooks: Iterable[TrainerHook] = (),
    ) -> None:
        self.model, self.dataset, self.cfg, self.train_step = model, dataset, cfg, train_step
        self.out_dir = Path(out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.seed, self.sampler, self.collate_fn, self.eval_fn = seed, sampler, collate_fn, eval_fn
        self.tag, self.progress, self.resume = tag, progress, resume
        self.hooks = HookList(hooks)
        self.device = next(model.parameters()).device
        self.converted = dr.is_converted(model)
        self.world, self.rank = dist.world_size(), dist.rank()
        self.state: dict[str, Any] = {"epoch": 0, "step": 0, "global_step": 0}
        self.state.update(history=[], sums={})  # what a checkpoint saves and a resume restores
        self.lam, self.epoch, self.phase, self.runner = 0.0, 0, None, model
        self.loader: Any = None
        self.rows, self.optimizer, self.scheduler, self.steps_per_epoch = None, None, None, 0
        self.micro_rows: list = [None]  # each micro-batch's rows of the global batch
        self.ddp: nn.parallel.DistributedDataParallel | None = None  # for no_sync
        self.sharded: dict | None = None  # under fsdp: what sharding.unshard_model undoes

    def fit(self) -> list[dict[str, Any]]:
        """Run every stage; return the per-epoch history."""
        self.prepare_model()
        self.build_loader()
        self.shard_model()
        self.build_optimization()
        self.restore_or_initialise()
        self.announce_batch()
        error = None
        try:  # a failure ends the hooks first: the log writer's thread must not outlive the folder
            self.hooks.on_fit_start(self)
            for epoch in range(self.state["epoch"], self.cfg.epochs):
                self.run_epoch(epoch)
        except BaseException as e:
            error = e
            raise
        finally:
            self.hooks.on_fit_end(self, error)
        if self.sharded is not None:  # the caller gets a plain module with full parameters
            sharding.unshard_model(self.model, self.sharded)
            self.sharded = None
        self.finish()
        return self.state["history"]

    def prepare_model(self) -> None:
        """Check the phase schedule against the model; set lambda and gradient checkpointing."""
        cfg = self.cfg
        if cfg.phases != "none" and not self.converted:
            raise ValueError(
                f"{self.tag}: phases={cfg.phases!r} needs a model converted with DenoiseRep"
            )
        self.lam = dr.config_of(self.model).loss_weight if self.converted else 0.0
        if cfg.grad_checkpointing:
            enable_grad_checkpointing(self.model)
        else:  # on from an earlier fit of this model (the baseline's): each fit follows its own
            disable_grad_checkpointing(self.model)

    def build_loader(self) -> None:
        """This process's DataLoader, its sampler and rows (``stages.build_loader``)."""
        cfg = self.cfg
        self.loader, self.sampler, self.rows = stages.build_loader(
            self.dataset,
            cfg.batch_size,
            cfg.workers,
            self.device,
            self.seed,
            self.sampler,
            self.collate_fn,
            accumulate=cfg.accumulate,
        )
        local = cfg.batch_size // self.world
        self.micro_rows = stages.micro_rows(self.rows, local, cfg.accumulate)
        self.steps_per_epoch = len(self.loader) // cfg.accumulate
        if cfg.epochs and self.steps_per_epoch == 0:
            raise ValueError(
                f"{self.tag}: {len(self.dataset)} training items give no batch of {cfg.batch_size}"
            )

    def build_optimization(self) -> None:
        """Optimizer and learning-rate schedule (``stages.build_optimization``)."""
        self.optimizer, self.scheduler = stages.build_optimization(
            self.model, self.cfg, self.steps_per_epoch
        )

    def effective_batch(self) -> dict[str, int]:
        """What one optimizer step sees: the global ``batch_size`` = ``micro_batch`` items
        per process x ``accumulate`` micro-batches x ``world_size`` processes."""
        cfg = self.cfg
        micro = cfg.batch_size // (self.world * cfg.accumulate)
        return dict(
            batch_size=cfg.batch_size,
            micro_batch=micro,
            accumulate=cfg.accumulate,
            world_size=self.world,
        )

    def announce_batch(self) -> None:
        """Print the effective batch once (rank 0) when it is split, over micro-batches or
        processes (one process without accumulation prints nothing: its stdout is unchanged)."""
        split = self.cfg.accumulate > 1 or self.world > 1
        if dist.is_main() and self.cfg.epochs and split:
            b = self.effective_batch()
            tqdm.write(
                f"{self.tag}: effective batch {b['batch_size']} = {b['micro_batch']} per "
                f"micro-batch x {b['accumulate']} accumulated x {b['world_size']} processes"
            )

    def restore_or_initialise(self) -> None:
        """Resume from the newest checkpoint that reads; on a fresh start of a converted model
        with ``denoiser_init=closed_form``, fit every D in closed form."""
        found = latest_checkpoint(self.ckpt_dir) if self.resume else None
        fsdp = self.cfg.strategy == "fsdp"
        if found is not None and fsdp != is_sharded_checkpoint(found):
            written = "ddp" if fsdp else "fsdp"
            raise ValueError(f"{self.tag}: {found} was written by a {written} run; resume as one")
        if found is not None:
            load = load_sharded_state if fsdp else load_training_state
            self.state = load(found, self.model, self.optimizer, self.scheduler)
            if "rank_sums" in self.state:  # older checkpoints: rank 0's sums on every rank
                self.state["sums"] = own_rank_sums(self.state.pop("rank_sums"))
        elif self.converted and self.cfg.denoiser_init == "closed_form":
            self.initialise_denoisers()

    def initialise_denoisers(self) -> None:
        """Set every D to the minimiser of its noise-prediction loss on the training images
        (one label-free pass, no augmentation: ``core.closed_form.fit_denoisers``)."""
        batches = tqdm(
            self.loader, desc=f"{self.tag}: closed-form D", disable=not self.progress, leave=False
        )
        fitted = fit_denoisers(
            self.model, batches, forward=plain_forward(self.train_step, self.device)
        )
        if dist.is_main():
            floor = sum(r["min_loss"] for r in fitted.values())
            tqdm.write(
                f"{self.tag}: D of {len(fitted)} layers in closed form; summed loss {floor:.3f}"
            )

    def shard_model(self) -> None:
        """``strategy=fsdp`` under torchrun with more than one process: ``fully_shard`` each
        DenoiseLayer / block and the root, once per fit (``engine.sharding``), before the
        optimizer is built on the sharded parameters. One process trains as ``ddp`` (with the
        same refusals and sharded checkpoints, so that a run may resume on more processes)."""
        if self.cfg.strategy != "fsdp":
            return
        sharding.check_supported(self.model, self.cfg, self.tag)
        if self.world == 1:
            if dist.is_main():
                tqdm.write(f"{self.tag}: strategy fsdp on one process: training as ddp")
            return
        self.sharded = sharding.shard_model(self.model, amp=self.cfg.amp)

    def wrap_model(self) -> nn.Module:
        """What the forward pass runs: the model under DDP when distributed, compiled with
        ``cfg.compile``; a sharded model (``shard_model``) runs as it is."""
        model = self.model
        if self.sharded is not None:
            return model
        self.ddp = nn.parallel.DistributedDataParallel(model) if dist.is_distributed() else None
        runner = self.ddp or model
        if self.cfg.compile:
            runner = torch.compile(runner)
        return runner

    def run_epoch(self, epoch: int) -> None:
        """Train epoch ``epoch`` (0-based) from ``state["step"]`` on, then end it."""
        cfg, state = self.cfg, self.state
        phase = phase_for_epoch(cfg.phases, epoch, cfg.denoiser_epochs, cfg.alternate_every)
        self.epoch, self.phase = epoch, phase
        if self.converted:
            dr.set_phase(self.model, phase or "joint")
        self.runner = self.wrap_model()
        if phase == "denoiser":
            dr.train_frozen_backbone(self.model)
        else:
            self.model.train()
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        sums = state["sums"] if state["step"] else {}
        self.hooks.on_epoch_start(self, epoch)
        for step, batch in enumerate(stages.micro_groups(self.loader, cfg.accumulate)):
            if step < state["step"]:
                continue
            self.hooks.before_step(self, step)
            logs = self.run_step(epoch, step, batch)
            stages.add_logs(sums, logs)
            state.update(step=step + 1, global_step=state["global_step"] + 1, sums=sums)
            self.hooks.after_step(self, step, logs)
            if cfg.ckpt_every and state["global_step"] % cfg.ckpt_every == 0:
                self.checkpoint()
        self.end_epoch(epoch, sums)

    def run_step(self, epoch: int, step: int, batch: Any) -> dict[str, float]:
        """One optimizer step on ``batch`` (with ``cfg.accumulate`` > 1: the list of its
        micro-batches); returns the step's logs (means over the micro-batches)."""
        micro = batch if self.cfg.accumulate > 1 else [batch]
        if len(micro) != self.cfg.accumulate:
            raise ValueError(f"{len(micro)} micro-batches for accumulate={self.cfg.accumulate}")
        parts = [self.micro_step(epoch, step, k, part) for k, part in enumerate(micro)]
        losses = stages.mean_losses(parts)
        self.hooks.after_backward(self, step, losses.loss)
        self.optimizer_step()
        return stages.step_logs(losses, self.phase, self.converted)

    def micro_step(self, epoch: int, step: int, k: int, batch: Any) -> stages.StepLoss:
        """Forward and backward of micro-batch ``k`` of a step: the global RNG reseeded from
        (seed, epoch, step, rank[, k]) (the noise draws), the augmentation drawn for the
        global batch from (seed, epoch, step) and this micro-batch's rows kept."""
        extra = (k,) if k else ()  # micro-batch 0 draws as a step without accumulation
        torch.manual_seed(mix_seed(self.seed, epoch, step, self.rank, *extra))
        generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch, step, 1 << 20))
        batch = self.train_step.to_device(batch, self.device)
        batch = augment_batch(self.train_step, batch, generator, self.micro_rows[k])
        last = k == self.cfg.accumulate - 1
        if self.sharded is not None:  # FSDP's no_sync: no reduce-scatter before the last
            sharding.set_gradient_sync(self.model, last)
        with contextlib.nullcontext() if last or self.ddp is None else self.ddp.no_sync():
            losses = stages.forward_loss(
                self.train_step,
                self.runner,
                self.model,
                batch,
                phase=self.phase,
                converted=self.converted,
                lam=self.lam,
                amp=self.cfg.amp,
            )
            self.check_finite(losses.loss, epoch, step)
            self.backward(losses.loss, k)
        return losses

    def check_finite(self, loss: torch.Tensor, epoch: int, step: int) -> None:
        """Stop with :class:`TrainingDiverged` on a NaN or infinite loss."""
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"{self.tag}: loss is {loss.item()} at epoch {epoch + 1}, step {step + 1}; "
                f"last good checkpoint: {latest_checkpoint(self.ckpt_dir) or 'none'}"
            )

    def backward(self, loss: torch.Tensor, micro: int = 0) -> None:
        """Gradients of micro-batch ``micro``'s ``loss``: the first clears the gradients, each
        adds those of ``loss / cfg.accumulate`` (DDP's ``no_sync`` is around all but the last:
        ``micro_step``)."""
        n = self.cfg.accumulate
        if n == 1:
            stages.backward(loss, self.optimizer)
            return
        if micro == 0:
            self.optimizer.zero_grad(set_to_none=True)
        (loss / n).backward()

    def optimizer_step(self) -> None:
        """Clip, step the optimizer and the schedule: once per step, after all its
        micro-batches."""
        stages.optimizer_step(self.model, self.optimizer, self.scheduler, self.cfg.grad_clip)

    def end_epoch(self, epoch: int, sums: dict[str, float]) -> None:
        """All-reduce the epoch's sums into its history record, evaluate, call the hooks,
        write the checkpoint."""
        means, steps = stages.reduce_epoch(sums)
        record: dict[str, Any] = dict(means)
        record.update(
            epoch=epoch + 1,
            phase=self.phase or "none",
            lr=self.optimizer.param_groups[0]["lr"],
            world_size=self.world,
            steps_all_ranks=steps,
        )
        record.update(self.effective_batch())  # world_size keeps its place
        if self.eval_fn is not None:
            record.update(self.eval_fn(self.model))
        self.state["history"].append(record)
        self.state.update(epoch=epoch + 1, step=0, sums={})
        self.hooks.on_epoch_end(self, epoch, record)
        self.checkpoint()

    def checkpoint(self) -> None:
        """Rank 0 writes the training state (``checkpoint.save_training_state``); all wait.
        ``strategy=fsdp`` (also on one process): every rank writes its shards through
        ``torch.distributed.checkpoint`` (``checkpoint.save_sharded_state``)."""
        keys = ("epoch", "step", "global_step", "history", "sums")
        saved = {k: self.state[k] for k in keys}
        phase = dr.get_phase(self.model) if self.converted else None
        saved.update(phase=phase, config=asdict(self.cfg))
        saved["rank_sums"] = gather_rank_sums(self.state["sums"])  # every rank's, all ranks call
        how = (self.ckpt_dir, self.model, self.optimizer, self.scheduler, saved)
        if self.cfg.strategy == "fsdp":
            save_sharded_state(*how)
            return
        if dist.is_main():
            save_training_state(*how)
        dist.barrier()

    def finish(self) -> None:
        """BatchNorm statistics after the last epoch (``stages.finish_batchnorm``), on the
        training images augmented as in training by a draw seeded from (seed, epochs)."""
        cfg, step_fn, device, rows = self.cfg, self.train_step, self.device, self.micro_rows[0]
        augmentation = torch.Generator().manual_seed(mix_seed(self.seed, cfg.epochs, 1 << 21))

        def training_view(m: nn.Module, batch: Any) -> Any:  # what training normalised
            return step_fn.forward(
                m, augment_batch(step_fn, step_fn.to_device(batch, device), augmentation, rows)
            )

        if cfg.epochs:
            last = phase_for_epoch(
                cfg.phases, cfg.epochs - 1, cfg.denoiser_epochs, cfg.alternate_every
            )
            label_free = last == "denoiser"
        else:
            label_free = cfg.denoiser_init == "closed_form"
        stages.finish_batchnorm(
            self.model,
            self.loader,
            self.sampler,
            training_view,
            recalibrate=cfg.recalibrate_bn,
            label_free=label_free,
            tag=self.tag,
            progress=self.progress,
        )
