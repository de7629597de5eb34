"""Arms over seeds, once for every task: baseline -> control -> DenoiseRep variant(s).

Per seed: build (and train, or load) a baseline; CONTROL fine-tunes a copy for the same epochs,
optimizer, data order and augmentation without DenoiseRep; each DenoiseRep VARIANT converts a
copy, fine-tunes it under its phase schedule, fuses it and is evaluated as the plain fused model.
A task (classification, re-ID, detection, segmentation) plugs in through :class:`ArmsTask`:
data, model, trainer task, evaluation. Results are written after every arm (``partial`` until
the run ends), so an interrupted run keeps what it finished; rerunning resumes each arm from
its checkpoints.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_model
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

import denoiserep as dr
from denoiserep.bench.latency import measure_latency
from denoiserep.core.config import DenoiseConfig
from denoiserep.core.convert import select_targets
from denoiserep.core.diagnostics import (
    change_from_baseline,
    denoising_strength,
    fused_vs_unfused,
    tensor_outputs,
)
from denoiserep.core.io import load_state_checked
from denoiserep.core.spectrum import denoiser_spectrum
from denoiserep.data.corruptions import CORRUPTIONS, CorruptedDataset
from denoiserep.models.factory import num_parameters
from denoiserep.models.grad_checkpointing import enable_grad_checkpointing

from . import dist
from .config import check_arms_trained, check_eval_batch, check_seeds, check_training_plan, to_dict
from .report import aggregate_seeds
from .robustness import RobustnessConfig, evaluate_robustness
from .robustness_summary import summarize_robustness
from .runs import open_run_folder
from .trainer import TrainConfig, fit, plain_forward

ARMS = ("baseline", "control", "denoiserep")


@dataclass
class ArmsConfig:
    """What every task's run shares: the arms, their training, the seeds, where results go.

    ``baseline.epochs: 0`` evaluates the model as built (pretrained or ``baseline_weights``)
    as the baseline; ``baseline_weights`` loads a safetensors file of an earlier run's baseline.
    """

    baseline: TrainConfig = field(default_factory=TrainConfig)
    finetune: TrainConfig = field(
        default_factory=lambda: TrainConfig(phases="alternating", denoiser_epochs=1)
    )
    denoise: DenoiseConfig = field(default_factory=DenoiseConfig)
    seeds: list[int] = field(default_factory=lambda: [0])
    arms: list[str] = field(default_factory=lambda: ["control", "denoiserep"])
    baseline_weights: str | None = None
    latency_repeats: int = 10
    robustness: RobustnessConfig = field(default_factory=RobustnessConfig)
    output: str = "runs/run"
    device: str = "auto"

    def __post_init__(self) -> None:
        bad = [a for a in self.arms if a not in ARMS[1:]]
        if bad:
            raise ValueError(f"arms must be among {ARMS[1:]}, got {bad}")
        if "denoiserep" in self.arms and self.finetune.phases == "none":
            raise ValueError("finetune.phases must name a DenoiseRep schedule, not 'none'")
        check_seeds(self.seeds)
        check_eval_batch(getattr(self, "data", None))
        if self.latency_repeats < 1:
            raise ValueError(f"latency_repeats must be >= 1, got {self.latency_repeats}")


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


class ArmsTask:
    """What a task brings to :func:`start_run`. Subclasses set the attributes in ``__init__``.

    ``probe`` is a small batch the model accepts (``model(probe)``, or ``model(**probe)`` for
    a dict): it orders the layers for ``dr.convert`` (``convert_input``, default ``probe``),
    checks fused against unfused outputs and measures latency.
    """

    train_set: Dataset
    trainer_task: Any
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


def load_baseline_weights(model: nn.Module, path: str) -> None:
    """Load an earlier run's baseline (safetensors or torch file) with a one-line error."""
    load_state_checked(model, path)


def start_run(
    cfg: ArmsConfig,
    task: ArmsTask,
    run_config: Any,
    header: dict[str, Any],
    write: Callable[[dict[str, Any], Path], None],
    overwrite: bool = False,
    progress: bool = True,
    variants: list[Variant] | None = None,
    has_weights: bool = False,
) -> dict[str, Any]:
    """Check the plan, open the output folder, run the arms; return the final report.

    Call it once the task's data and model were built (bad input fails before any folder
    exists). The folder is claimed at the first checkpoint (or an untrained baseline's save);
    a failure before leaves it as it was, and puts back byte for byte what --overwrite replaced.
    """
    has_weights = has_weights or bool(cfg.baseline_weights)
    schedules = [v.finetune for v in variants] if variants is not None else [cfg.finetune]
    denoising = variants is not None or "denoiserep" in cfg.arms
    for finetune in schedules:
        check_training_plan(cfg.baseline, finetune, has_weights, denoiserep_arm=denoising)
    named = {v.name: v.finetune for v in variants} if variants is not None else {}
    check_arms_trained(cfg.arms, cfg.finetune, named)
    run = open_run_folder(run_config.output, to_dict(run_config), overwrite, type(run_config))
    out = run.path
    runner = ArmRunner(
        cfg, task, out, lambda r: write(r, out), header, variants, progress, run.started
    )
    try:
        return runner.run()
    except BaseException:
        run.failed()  # a no-op once the run has started
        raise


class ArmRunner:
    """Runs the arms of ``cfg`` for ``task`` and keeps the report up to date on disk."""

    def __init__(
        self,
        cfg: ArmsConfig,
        task: ArmsTask,
        out: Path,
        write: Callable[[dict[str, Any]], None],
        header: dict[str, Any] | None = None,
        variants: list[Variant] | None = None,
        progress: bool = True,
        on_start: Callable[[], None] | None = None,
    ) -> None:
        self.cfg, self.task, self.out, self.progress = cfg, task, out, progress
        self.on_start = on_start or (lambda: None)
        self.write = write if dist.is_main() else (lambda report: None)
        self.header = dict(header or {})
        if variants is None:
            variants = [Variant("denoiserep", cfg.denoise, cfg.finetune)]
            variants = variants if "denoiserep" in cfg.arms else []
        self.variants = variants
        self.per_seed: dict[str, dict[str, dict[str, float]]] = {}
        self.curves: dict[str, dict[str, dict[str, list]]] = {}
        self.histories: dict[str, dict[str, list]] = {}
        self.extras: dict[str, Any] = {}
        self.robustness: dict[str, dict[str, Any]] = {}
        self.spectrum: dict[str, list] = {}
        self.noise_layers: list[str] | None = None

    # -- one arm ---------------------------------------------------------------------------------
    def _fit(
        self, model: nn.Module, train: TrainConfig, seed: int, arm: str, corruption: Any = None
    ) -> list:
        options = {"dataset": self.task.train_set, **self.task.fit_options(arm, train, seed)}
        dataset = options.pop("dataset")
        if corruption:
            severity = int(corruption.get("severity", 3))
            stats = self.task.image_stats
            dataset = CorruptedDataset(dataset, corruption["name"], severity, seed, stats)
        return fit(
            model,
            dataset,
            train,
            self.task.trainer_task,
            self.out / f"seed{seed}" / arm,
            seed,
            tag=f"seed {seed} {arm}",
            progress=self.progress,
            **options,
        )

    def _save(self, model: nn.Module, seed: int, arm: str, name: str) -> None:
        if dist.is_main():
            folder = self.out / f"seed{seed}" / arm
            folder.mkdir(parents=True, exist_ok=True)
            save_model(dr.unwrap(model), str(folder / name))

    def baseline(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        model = self.task.build_model()
        if self.cfg.finetune.grad_checkpointing:  # refused now, not after the baseline trained
            enable_grad_checkpointing(copy.deepcopy(model))
        model = model.to(self.task.device)
        if self.cfg.baseline_weights:
            load_baseline_weights(model, self.cfg.baseline_weights)
        if self.cfg.baseline.epochs > 0:  # its first checkpoint claims the run folder
            self.histories[str(seed)]["baseline"] = self._fit(
                model, self.cfg.baseline, seed, "baseline"
            )
        self._save(model, seed, "baseline", "model.safetensors")
        self.on_start()  # a baseline is in place (trained, or loaded untrained): claimed
        return model

    def control(self, baseline: nn.Module, seed: int) -> nn.Module:
        model = copy.deepcopy(baseline)
        plain = dataclasses.replace(self.cfg.finetune, phases="none", denoiser_epochs=0)
        self.histories[str(seed)]["control"] = self._fit(model, plain, seed, "control")
        self._save(model, seed, "control", "model.safetensors")
        return model

    def denoiserep(self, baseline: nn.Module, seed: int, v: Variant) -> tuple[nn.Module, ...]:
        """Convert a copy of the baseline, fine-tune it, fuse it: (converted, fused)."""
        model = dr.convert(
            copy.deepcopy(baseline), v.denoise, example_input=self.task.convert_input
        )
        self.histories[str(seed)][v.name] = self._fit(
            model, v.finetune, seed, v.name, v.train_corruption
        )
        fused = dr.fuse(model).to(self.task.device)
        self._save(fused, seed, v.name, "fused.safetensors")
        return model, fused

    def _fusion_results(
        self, converted: nn.Module, fused: nn.Module, baseline: nn.Module
    ) -> dict[str, float]:
        strength = denoising_strength(converted)
        return {
            "max_abs_diff_fused_unfused": fused_vs_unfused(
                converted, fused, self.task.probe, self.task.features
            ),
            "max_abs_change_from_baseline": change_from_baseline(converted, baseline),
            "mean_strength": sum(r["strength"] for r in strength) / max(1, len(strength)),
        }

    def _cost(self, baseline: nn.Module, converted: nn.Module, fused: nn.Module) -> None:
        """Parameters, latency and per-layer strength, from the first DenoiseRep arm."""
        latency = measure_latency(
            {"baseline": baseline, "fused": fused},
            self.task.probe,
            repeats=self.cfg.latency_repeats,
        )
        probe = self.task.probe
        batch = next(iter(probe.values())) if isinstance(probe, dict) else probe
        self.extras.update(
            denoised_layers=len(dr.denoise_layers(converted)),
            params_baseline=num_parameters(baseline),
            params_fused=num_parameters(fused),
            latency_ms_baseline=1e3 * latency["baseline"],
            latency_ms_fused=1e3 * latency["fused"],
            latency_ratio_fused_over_baseline=latency["fused"] / latency["baseline"],
            latency_batch=int(len(batch)),
            strength=denoising_strength(converted),
        )

    def _robustness(self, seed: int, arm: str, model: nn.Module) -> dict[str, float]:
        """Corrupted, feature-noise and quantized-feature metrics of one arm; headline numbers
        as scalars."""
        cfg = self.cfg.robustness
        if not cfg.enabled:
            return {}
        if self.noise_layers is None:  # the run's target layers, the same for every arm
            plain = dr.unwrap(model)
            targets = select_targets(plain, self.cfg.denoise, self.task.convert_input)
            self.noise_layers = list(targets)
        per_arm = self.robustness.setdefault(str(seed), {})
        task = self.task
        # static quantization ranges come from the first training images, unaugmented
        first = Subset(task.train_set, range(min(cfg.calibration_images, len(task.train_set))))
        calibration = DataLoader(first, self.cfg.finetune.batch_size, collate_fn=task.collate_fn)
        per_arm[arm] = evaluate_robustness(
            task.evaluate_under,
            model,
            cfg,
            self.noise_layers,
            calibration=calibration,
            forward=plain_forward(task.trainer_task, task.device),
        )
        row = summarize_robustness(per_arm, self.task.robustness_metric)["arms"][arm]
        scalars = {"mCA": row["mCA"], "mFA": row["mFA"]}
        if row["mCE"] is not None:
            scalars["mCE"] = row["mCE"]
        scalars.update({f"{c}_mean": v for c, v in row["corruption_acc"].items()})
        scalars.update({f"feature_noise_{k}": v for k, v in row["feature_noise"].items()})
        scalars.update({f"feature_bits_{k}": v for k, v in row["feature_bits"].items()})
        return {k: v for k, v in scalars.items() if v is not None}

    def _spectrum(self, seed: int, name: str, converted: nn.Module) -> None:
        """Eigenvalues of k_t D and the input variance each step removes (first seed)."""
        if name in self.spectrum:
            return
        data = self.task.probe
        forward = (lambda m, x: m(**x)) if isinstance(data, dict) else None
        self.spectrum[name] = denoiser_spectrum(converted, data, forward=forward)

    # -- bookkeeping -----------------------------------------------------------------------------
    def record(self, seed: int, arm: str, metrics: dict[str, Any], model: nn.Module) -> None:
        """Keep an arm's metrics (lists go to ``curves``) and rewrite the report."""
        scalars = {k: v for k, v in metrics.items() if not isinstance(v, list | tuple)}
        curves = {k: list(v) for k, v in metrics.items() if isinstance(v, list | tuple)}
        self.per_seed.setdefault(str(seed), {})[arm] = scalars
        if curves:
            self.curves.setdefault(str(seed), {})[arm] = curves
        self.task.arm_done(seed, arm, model)
        self.write(self.report(partial=True))

    def report(self, partial: bool) -> dict[str, Any]:
        return {
            **self.header,
            "partial": partial,
            "device": str(self.task.device),
            "arms": ["baseline"]
            + (["control"] if "control" in self.cfg.arms else [])
            + [v.name for v in self.variants],
            "per_seed": self.per_seed,
            "summary": aggregate_seeds(self.per_seed),
            "curves": self.curves,
            "histories": self.histories,
            "robustness": self.robustness,
            "spectrum": self.spectrum,
            **self.extras,
        }

    # -- the run ---------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        for seed in self.cfg.seeds:
            self.histories[str(seed)] = {}
            baseline = self.baseline(seed)
            metrics = self.task.evaluate(baseline)
            metrics.update(self._robustness(seed, "baseline", baseline))
            self.record(seed, "baseline", metrics, baseline)
            if "control" in self.cfg.arms:
                control = self.control(baseline, seed)
                metrics = self.task.evaluate(control)
                metrics.update(self.task.compare_to_baseline(control, baseline))
                metrics.update(self._robustness(seed, "control", control))
                self.record(seed, "control", metrics, control)
            for v in self.variants:
                converted, fused = self.denoiserep(baseline, seed, v)
                metrics = self.task.evaluate(fused)
                metrics.update(self._fusion_results(converted, fused, baseline))
                metrics.update(self.task.compare_to_baseline(fused, baseline))
                metrics.update(self._robustness(seed, v.name, fused))
                if "params_fused" not in self.extras:
                    self._cost(baseline, converted, fused)
                self._spectrum(seed, v.name, converted)
                self.record(seed, v.name, metrics, fused)
        final = self.report(partial=False)
        self.write(final)
        return final
