"""Arms over seeds, once for every task: baseline -> control -> DenoiseRep variant(s).

Per seed: build (and train, or load) a baseline; CONTROL fine-tunes a copy for the same epochs,
optimizer, data order and augmentation without DenoiseRep; each DenoiseRep VARIANT converts a
copy, fine-tunes it under its phase schedule, fuses it and is evaluated as the plain fused model.
A task (classification, re-ID, detection, segmentation) plugs in through an
:class:`~denoiserep.engine.experiment.Experiment` (data, model, train step, evaluation) and a
:class:`~denoiserep.engine.experiment.RunPlan`. Results are written after every arm
(``partial`` until the run ends), so an interrupted run keeps what it finished; rerunning
resumes each arm from its checkpoints.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_model
from torch import nn
from torch.utils.data import DataLoader, Subset

import denoiserep as dr
from denoiserep.core.config import DenoiseConfig
from denoiserep.core.convert import select_targets
from denoiserep.core.diagnostics import (
    change_from_baseline,
    denoising_strength,
    fused_vs_unfused,
)
from denoiserep.core.spectrum import denoiser_spectrum
from denoiserep.engine.latency import measure_latency
from denoiserep.models.factory import num_parameters
from denoiserep.models.grad_checkpointing import enable_grad_checkpointing
from denoiserep.models.weights import load_plain_state
from denoiserep.robustness.corruptions import CorruptedDataset
from denoiserep.robustness.evaluate import RobustnessConfig, evaluate_robustness
from denoiserep.robustness.summary import summarize_robustness
from denoiserep.util.state_dict import load_state_checked, read_weights

from . import dist
from .config import check_arms_trained, check_eval_batch, check_seeds, check_training_plan, to_dict
from .experiment import Experiment, RunPlan, Variant
from .report import aggregate_seeds
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


def load_baseline_weights(model: nn.Module, path: str, reinit_head: bool = False) -> None:
    """Load an earlier run's baseline (safetensors or torch file) with a one-line error.

    With ``reinit_head`` (label-free use of weights trained on another class or identity
    set) a classifier head of another size is left freshly initialised and one logged line
    says so (as ``model.checkpoint`` does); every other key must still match. Without it a
    head of another size is refused, as any other mismatch is.
    """
    if reinit_head:
        load_plain_state(dr.unwrap(model), read_weights(path), source=path)
        return
    load_state_checked(model, path)


def start_run(
    experiment: Experiment, plan: RunPlan, *, overwrite: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Check the plan, open the output folder, run the arms; return the final report.

    Call it once the experiment's data and model were built (bad input fails before any
    folder exists). The folder is claimed at the first checkpoint (or an untrained baseline's
    save); a failure before leaves it as it was, and puts back byte for byte what
    ``overwrite`` replaced.
    """
    cfg, variants = plan.arms, plan.variants
    has_weights = plan.has_weights or bool(cfg.baseline_weights)
    schedules = [v.finetune for v in variants] if variants is not None else [cfg.finetune]
    denoising = variants is not None or "denoiserep" in cfg.arms
    for finetune in schedules:
        check_training_plan(cfg.baseline, finetune, has_weights, denoiserep_arm=denoising)
    named = {v.name: v.finetune for v in variants} if variants is not None else {}
    check_arms_trained(cfg.arms, cfg.finetune, named)
    config = plan.config
    run = open_run_folder(config.output, to_dict(config), overwrite, type(config))
    out = run.path
    runner = ArmRunner(
        cfg,
        experiment,
        out,
        lambda r: plan.write(r, out),
        plan.header,
        variants,
        progress,
        run.started,
    )
    try:
        return runner.run()
    except BaseException:
        run.failed()  # a no-op once the run has started
        raise


class ArmRunner:
    """Runs the arms of ``cfg`` for ``experiment`` and keeps the report up to date on disk."""

    def __init__(
        self,
        cfg: ArmsConfig,
        experiment: Experiment,
        out: Path,
        write: Callable[[dict[str, Any]], None],
        header: dict[str, Any] | None = None,
        variants: list[Variant] | None = None,
        progress: bool = True,
        on_start: Callable[[], None] | None = None,
    ) -> None:
        self.cfg, self.experiment, self.out = cfg, experiment, out
        self.progress = progress
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
        options = {
            "dataset": self.experiment.train_set,
            **self.experiment.fit_options(arm, train, seed),
        }
        dataset = options.pop("dataset")
        if corruption:
            severity = int(corruption.get("severity", 3))
            stats = self.experiment.image_stats
            dataset = CorruptedDataset(dataset, corruption["name"], severity, seed, stats)
        return fit(
            model,
            dataset,
            train,
            self.experiment.train_step,
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
        model = self.experiment.build_model()
        if self.cfg.finetune.grad_checkpointing:  # refused now, not after the baseline trained
            enable_grad_checkpointing(copy.deepcopy(model))
        model = model.to(self.experiment.device)
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
            copy.deepcopy(baseline), v.denoise, example_input=self.experiment.convert_input
        )
        self.histories[str(seed)][v.name] = self._fit(
            model, v.finetune, seed, v.name, v.train_corruption
        )
        fused = dr.fuse(model).to(self.experiment.device)
        self._save(fused, seed, v.name, "fused.safetensors")
        return model, fused

    def _fusion_results(
        self, converted: nn.Module, fused: nn.Module, baseline: nn.Module
    ) -> dict[str, float]:
        strength = denoising_strength(converted)
        return {
            "max_abs_diff_fused_unfused": fused_vs_unfused(
                converted, fused, self.experiment.probe, self.experiment.features
            ),
            "max_abs_change_from_baseline": change_from_baseline(converted, baseline),
            "mean_strength": sum(r["strength"] for r in strength) / max(1, len(strength)),
        }

    def _cost(self, baseline: nn.Module, converted: nn.Module, fused: nn.Module) -> None:
        """Parameters, latency and per-layer strength, from the first DenoiseRep arm."""
        latency = measure_latency(
            {"baseline": baseline, "fused": fused},
            self.experiment.probe,
            repeats=self.cfg.latency_repeats,
        )
        probe = self.experiment.probe
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
            targets = select_targets(plain, self.cfg.denoise, self.experiment.convert_input)
            self.noise_layers = list(targets)
        per_arm = self.robustness.setdefault(str(seed), {})
        task = self.experiment  # its data, evaluation and train step
        # static quantization ranges come from the first training images, unaugmented
        first = Subset(task.train_set, range(min(cfg.calibration_images, len(task.train_set))))
        calibration = DataLoader(first, self.cfg.finetune.batch_size, collate_fn=task.collate_fn)
        per_arm[arm] = evaluate_robustness(
            task.evaluate_under,
            model,
            cfg,
            self.noise_layers,
            calibration=calibration,
            forward=plain_forward(task.train_step, task.device),
        )
        row = summarize_robustness(per_arm, self.experiment.robustness_metric)["arms"][arm]
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
        data = self.experiment.probe
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
        self.experiment.arm_done(seed, arm, model)
        self.write(self.report(partial=True))

    def report(self, partial: bool) -> dict[str, Any]:
        return {
            **self.header,
            "partial": partial,
            "device": str(self.experiment.device),
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
            metrics = self.experiment.evaluate(baseline)
            metrics.update(self._robustness(seed, "baseline", baseline))
            self.record(seed, "baseline", metrics, baseline)
            if "control" in self.cfg.arms:
                control = self.control(baseline, seed)
                metrics = self.experiment.evaluate(control)
                metrics.update(self.experiment.compare_to_baseline(control, baseline))
                metrics.update(self._robustness(seed, "control", control))
                self.record(seed, "control", metrics, control)
            for v in self.variants:
                converted, fused = self.denoiserep(baseline, seed, v)
                metrics = self.experiment.evaluate(fused)
                metrics.update(self._fusion_results(converted, fused, baseline))
                metrics.update(self.experiment.compare_to_baseline(fused, baseline))
                metrics.update(self._robustness(seed, v.name, fused))
                if "params_fused" not in self.extras:
                    self._cost(baseline, converted, fused)
                self._spectrum(seed, v.name, converted)
                self.record(seed, v.name, metrics, fused)
        final = self.report(partial=False)
        self.write(final)
        return final


def __getattr__(name: str) -> Any:
    """``ArmsTask``: the former name of :class:`~denoiserep.engine.experiment.Experiment`."""
    if name == "ArmsTask":
        warnings.warn(
            "denoiserep.engine.arms.ArmsTask is deprecated: use "
            "denoiserep.engine.experiment.Experiment",
            DeprecationWarning,
            stacklevel=2,
        )
        return Experiment
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
