"""The training loop every task shares: phases, AMP, DDP, checkpoints with resume, logging.

:func:`fit` runs a :class:`Trainer` (``engine.loop``), whose stages are short methods called
in this order (the maths of each lives in ``engine.stages``, a function testable alone):

- ``prepare_model``: phase check, lambda, gradient checkpointing on or off;
- ``build_loader``: DataLoader (of micro-batches with ``accumulate`` > 1), sampler, this
  process's rows of the global batch (DDP) and each micro-batch's rows;
- ``shard_model``: with ``strategy: fsdp`` on several processes, ``fully_shard`` each
  DenoiseRep layer, block and the root once (``engine.sharding``);
- ``build_optimization``: optimizer and cosine schedule;
- ``restore_or_initialise``: resume from the newest checkpoint that reads, or on a fresh
  start fit every D in closed form (``denoiser_init=closed_form``);
- ``run_epoch`` (per epoch): phase, ``wrap_model`` (DDP, ``torch.compile``), train mode,
  then ``run_step`` per optimizer step: for each of its ``accumulate`` micro-batches
  (``micro_step``) reseed, augment, ``forward_loss``, divergence check, ``backward`` (loss / N,
  DDP's ``no_sync`` on all but the last); then gradient clipping and ``optimizer_step`` once;
- ``end_epoch``: all-reduce of the epoch's sums, history record, evaluation, checkpoint;
- ``finish``: BatchNorm recalibration (or the note that the statistics are stale).

Hooks (``engine.hooks.TrainerHook``) are called at ``on_fit_start``, ``on_epoch_start``,
``before_step``, ``after_backward``, ``after_step``, ``on_epoch_end`` and ``on_fit_end``
(always, also after an error); the throughput meter, the TensorBoard log and the progress bar
are hooks. Gradient accumulation and sharded training (checkpoints written per rank with
``torch.distributed.checkpoint``, the full model gathered back at the end of ``fit``):
docs/guide/extending-training.md.

Determinism: each step reseeds the global RNG from (seed, epoch, step, rank) and the data
order comes from a sampler seeded by (seed, epoch), so a run resumed from any checkpoint,
even one written mid-epoch, replays exactly what an uninterrupted run would have done.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset, Sampler

from .hooks import TrainerHook, default_hooks
from .loop import Trainer, TrainingDiverged
from .stages import TrainStep, mix_seed, plain_forward
from .train_config import TrainConfig

__all__ = [
    "Task",
    "TrainConfig",
    "TrainStep",
    "Trainer",
    "TrainerHook",
    "TrainingDiverged",
    "fit",
    "plain_forward",
]

Task = TrainStep  # deprecated: "task" now means a CLI task; removed in the next release
_mix = mix_seed  # the per-step seed (tests rebuild the BatchNorm pass's draw with it)


def fit(
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
) -> list[dict[str, Any]]:
    """Train ``model`` in place for ``cfg.epochs`` and return the per-epoch history.

    ``train_step`` moves, augments and scores batches (:class:`TrainStep`). A converted model
    trains under the phase schedule of ``cfg`` with loss = task loss + lambda *
    noise-prediction loss (lambda: its DenoiseConfig's ``loss_weight``, the one place it is
    set); in phase ``denoiser`` the task loss is not computed and no label is read. Only rank 0
    writes checkpoints and logs under ``out_dir``. ``hooks`` run after the default ones
    (throughput, TensorBoard, progress bar: ``engine.hooks``).
    """
    trainer = Trainer(
        model,
        dataset,
        cfg,
        train_step,
        out_dir,
        seed,
        sampler=sampler,
        collate_fn=collate_fn,
        eval_fn=eval_fn,
        tag=tag,
        progress=progress,
        resume=resume,
        hooks=[*default_hooks(cfg.batch_size, progress), *hooks],
    )
    return trainer.fit()
