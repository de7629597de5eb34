"""What detection and segmentation share: the canvas data, an experiment for the arms
runner, and the report tables.

The arms (baseline, control, DenoiseRep) and seeds run in :mod:`denoiserep.engine.arms`;
:class:`DenseExperiment` supplies a dense task's model, data and evaluation to it, and keeps
the first seed's models for the prediction figure.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.utils.data import Dataset

from denoiserep.data.constants import FASHION_MNIST_ROOT
from denoiserep.engine import dist
from denoiserep.engine.arms import ArmsConfig, start_run
from denoiserep.engine.config import to_dict
from denoiserep.engine.experiment import Experiment, RunPlan
from denoiserep.engine.report import (
    fusion_rows,
    metric_table,
    robustness_section,
    status_line,
    write_figures,
    write_json,
)

from .canvas import FashionCanvas, build_fashion_canvas

CANVAS_RECORD = "canvas.yaml"


@dataclass
class CanvasConfig:
    """A Fashion-MNIST canvas dataset (see ``build_fashion_canvas``), built on first use."""

    root: str = "data/fashion_canvas"
    fmnist_dir: str = FASHION_MNIST_ROOT
    num_train: int = 2000
    num_val: int = 500
    canvas_size: int = 96
    objects_per_image: list[int] = field(default_factory=lambda: [2, 5])
    seed: int = 0


def ensure_canvas(cfg: CanvasConfig) -> FashionCanvas:
    """The canvas at ``cfg.root``, built there (atomically) if missing.

    The build parameters are recorded in ``canvas.yaml``; a folder built with other
    parameters, or a non-empty folder without that record, is an error rather than a
    silent mix of datasets.
    """
    root = Path(cfg.root)
    params = {k: v for k, v in to_dict(cfg).items() if k not in ("root", "fmnist_dir")}
    record = root / CANVAS_RECORD
    if dist.is_main() and not record.is_file():
        if root.exists() and any(root.iterdir()):
            raise ValueError(
                f"data folder {root} is not empty but holds no {CANVAS_RECORD}; "
                "remove it or set canvas.root to another folder"
            )
        tmp = root.with_name(root.name + ".building")
        shutil.rmtree(tmp, ignore_errors=True)
        build_fashion_canvas(
            tmp,
            cfg.fmnist_dir,
            num_train=cfg.num_train,
            num_val=cfg.num_val,
            canvas_size=cfg.canvas_size,
            objects_per_image=tuple(cfg.objects_per_image),
            seed=cfg.seed,
        )
        (tmp / CANVAS_RECORD).write_text(yaml.safe_dump(params, sort_keys=True))
        if root.exists():
            root.rmdir()
        tmp.rename(root)
    dist.barrier()
    built = yaml.safe_load(record.read_text())
    if built != params:
        keys = sorted(k for k in params if built.get(k) != params[k])
        raise ValueError(
            f"{root} holds a canvas built with other parameters ({', '.join(keys)}); "
            "set canvas.root to another folder or delete it"
        )
    return FashionCanvas(root)


class DenseExperiment(Experiment):
    """A dense task for the arms engine: ``evaluate_on(model, dataset, max_images)`` scores a
    model on (the first ``max_images`` items of) a version of ``test_set``, clean or corrupted
    (images in [0, 1]; the models normalise them); ``features(model, probe)`` are the outputs
    compared by the fusion check; the first seed's evaluated models are kept for the figure."""

    def __init__(
        self,
        build_model: Callable[[], nn.Module],
        train_set: Dataset,
        train_step: Any,
        test_set: Dataset,
        evaluate_on: Callable[[nn.Module, Dataset, int | None], dict[str, float]],
        probe: torch.Tensor,
        features: Callable[[nn.Module, torch.Tensor], list[torch.Tensor]],
        device: torch.device,
        collate_fn: Callable[[list], Any] | None = None,
        robustness_metric: str = "",
    ) -> None:
        self._build, self._evaluate_on, self._features = build_model, evaluate_on, features
        self.train_set, self.train_step, self.probe = train_set, train_step, probe
        self.test_set, self.robustness_metric = test_set, robustness_metric
        self.device, self.collate_fn = device, collate_fn
        self.first_models: dict[str, nn.Module] = {}
        self._first_seed: int | None = None

    def build_model(self) -> nn.Module:
        return self._build()

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return self._evaluate_on(model, self.test_set, None)

    def evaluate_under(self, model: nn.Module, condition: Any) -> dict[str, float]:
        """The task's metrics on the test images as ``condition`` sees them (corrupted in
        [0, 1], or clean while feature noise acts on the layers), first ``max_images`` only."""
        dataset = condition(self.test_set, None, limit=False)
        return self._evaluate_on(model, dataset, condition.max_images)

    def features(self, model: nn.Module, probe: Any) -> list[torch.Tensor]:
        return self._features(model, probe)

    def fit_options(self, arm: str, train: Any, seed: int) -> dict[str, Any]:
        return {"collate_fn": self.collate_fn}

    def arm_done(self, seed: int, arm: str, model: nn.Module) -> None:
        if self._first_seed is None:
            self._first_seed = seed
        if seed == self._first_seed:
            self.first_models[arm] = model


def run_dense(
    cfg: ArmsConfig,
    experiment: DenseExperiment,
    header: dict[str, Any],
    write: Callable[[dict[str, Any], Path], None],
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Claim the output folder (after the experiment's data and model were built) and run
    the arms."""
    experiment.build_model()  # a wrong configuration fails here, before any folder
    plan = RunPlan(arms=cfg, header=header, write=write)
    return start_run(experiment, plan, overwrite=overwrite, progress=progress)


def probe_batch(dataset: Dataset, size: int = 2) -> torch.Tensor:
    """The first ``size`` images of ``dataset`` (items are (image, target)) that share the
    first one's shape, as one batch."""
    first = dataset[0][0]
    images = [first] + [dataset[i][0] for i in range(1, min(size, len(dataset)))]
    return torch.stack([im for im in images if im.shape == first.shape])


def markdown_table(report: dict[str, Any], columns: dict[str, str]) -> str:
    """Per arm, the metrics named by ``columns`` (key -> header), then the fusion checks."""
    lines = metric_table(report, columns)
    lines += ["", status_line(report), *fusion_rows(report, "feature")]
    lines += robustness_section(report, next(iter(columns)))  # if measured
    return "\n".join(lines) + "\n"


def write_results(report: dict[str, Any], out: Path, columns: dict[str, str]) -> None:
    """results.json (everything) and results.md (the table of ``markdown_table``)."""
    write_json(report, out)
    (out / "results.md").write_text(markdown_table(report, columns))
    write_figures(report, out, next(iter(columns)))
