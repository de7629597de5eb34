"""What a task brings to the arms runner: an :class:`Experiment`, a :class:`RunPlan`, and
optionally DenoiseRep :class:`Variant` arms.

An experiment holds the data, the model builder, the train step (the trainer's protocol:
``to_device`` / ``augment`` / ``forward`` / ``loss``) and the evaluation;
:func:`denoiserep.engine.arms.start_run` runs the arms of a plan for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from denoiserep.core.config import DenoiseConfig
from denoiserep.core.diagnostics import tensor_outputs
from denoiserep.robustness.corruptions import CORRUPTIONS

from .trainer import TrainConfig


@dataclass
class Variant:
    """One DenoiseRep arm: its name, DenoiseRep config and fine-tuning schedule.

    ``train_corruption`` (``{name: gaussian_noise, severity: 3}``): the arm trains on training
    images carrying that ImageNet-C corruption (e.g. denoisers learning label-free from noisy
    inputs); evaluation data is unchanged.
    """

    name: str
    denoise: DenoiseConfig
    finetune: TrainConfig
    train_corruption: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.train_corruption is not None:
            c = self.train_corruption
            if set(c) - {"name", "severity"} or c.get("name") not in CORRUPTIONS:
                raise ValueError(
                    f"variant {self.name}: train_corruption needs name (one of "
                    f"{', '.join(CORRUPTIONS)}) and severity (1-5), got {c}"
                )
            if int(c.get("severity", 3)) not in range(1, 6):
                raise ValueError(f"variant {self.name}: severity must be 1-5, got {c}")


class Experiment:
    """What a task brings to :func:`~denoiserep.engine.arms.start_run`; subclasses set the
    attributes in ``__init__``.

    ``probe`` is a small batch the model accepts (``model(probe)``, or ``model(**probe)`` for
    a dict): it orders the layers for ``dr.convert`` (``convert_input``, default ``probe``),
    checks fused against unfused outputs and measures latency.
    """

    train_set: Dataset
    train_step: Any  # the trainer protocol: to_device / augment / forward / loss
    probe: Any
    device: torch.device
    image_stats: tuple[Any, Any] | None = None  # (mean, std) the images are normalised with
    robustness_metric: str = ""  # the metric robustness summaries compare (e.g. "acc1")
    collate_fn: Callable[[list], Any] | None = None  # how train_set items batch (None: default)

    @property
    def convert_input(self) -> Any:
        return self.probe

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        """The task's metrics (floats; lists such as a CMC curve are kept apart as curves)."""
        raise NotImplementedError

    def features(self, model: nn.Module, probe: Any) -> list[torch.Tensor]:
        """Outputs compared by the fusion check (default: the model's tensor outputs)."""
        return tensor_outputs(model, probe)

    def fit_options(self, arm: str, train: TrainConfig, seed: int) -> dict[str, Any]:
        """Keyword arguments of :func:`~denoiserep.engine.trainer.fit` for one arm: e.g.
        ``dataset`` (default ``train_set``), ``sampler``, ``collate_fn``, ``eval_fn``."""
        return {}

    def compare_to_baseline(self, model: nn.Module, baseline: nn.Module) -> dict[str, float]:
        """Extra metrics of an arm against its baseline (e.g. changed predictions)."""
        return {}

    def arm_done(self, seed: int, arm: str, model: nn.Module) -> None:
        """Called with each evaluated model (the fused one for DenoiseRep arms)."""

    def evaluate_under(self, model: nn.Module, condition: Any) -> dict[str, float]:
        """Metrics under a robustness condition (see ``engine.robustness.Condition``)."""
        raise ValueError(f"{type(self).__name__}: robustness evaluation is not available")


@dataclass
class RunPlan:
    """What :func:`~denoiserep.engine.arms.start_run` runs besides the experiment.

    ``arms``: the arms, training and seeds; ``config``: the run's whole config, saved in the
    folder (its ``output`` is the folder; default ``arms``); ``header``: the report's first
    keys (``task``, ``config``, ...); ``write(report, out)`` writes the report after each
    arm; ``variants``: DenoiseRep arms (default: one, from ``arms.denoise`` /
    ``arms.finetune``); ``has_weights``: the model loads weights (an untrained baseline is
    then fine).
    """

    arms: Any
    header: dict[str, Any]
    write: Callable[[dict[str, Any], Path], None]
    config: Any = None
    variants: list[Variant] | None = None
    has_weights: bool = False

    def __post_init__(self) -> None:
        if self.config is None:
            self.config = self.arms
