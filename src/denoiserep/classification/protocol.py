"""The paper's classification protocol with a control arm.

1. train (or load) a baseline; 2. fine-tune a converted copy with DenoiseRep under a phase
schedule; 3. fuse and evaluate the plain fused model; 4. CONTROL: fine-tune another copy of
the baseline for the same epochs with the same optimizer, data order and augmentation,
without DenoiseRep. Repeated over seeds; reports mean and std.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import denoiserep as dr
from denoiserep.bench.latency import measure_latency
from denoiserep.engine import dist
from denoiserep.engine.config import to_dict
from denoiserep.engine.report import ARMS, aggregate_seeds
from denoiserep.engine.runs import prepare_run_folder
from denoiserep.engine.trainer import TrainConfig, fit
from denoiserep.models.factory import create_model, num_parameters

from .datasets import ArrayImageDataset, build_classification_data
from .task import ClassificationTask, evaluate


@dataclass
class DataConfig:
    """Dataset by name (see ``build_classification_data``), reader options, augmentation."""

    name: str = "digits"
    root: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    pad: int = 0
    flip: bool = False
    eval_batch_size: int = 256


@dataclass
class ModelConfig:
    """A timm model name (or ``tv:<torchvision name>``) and its keyword overrides."""

    name: str = "vit_tiny_patch16_224"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class ClassifyConfig:
    """Everything one ``denoiserep classify`` run does."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    baseline: TrainConfig = field(default_factory=TrainConfig)
    finetune: TrainConfig = field(
        default_factory=lambda: TrainConfig(phases="alternating", denoiser_epochs=1)
    )
    denoise: dr.DenoiseConfig = field(default_factory=dr.DenoiseConfig)
    label_smoothing: float = 0.1
    seeds: list[int] = field(default_factory=lambda: [0])
    arms: list[str] = field(default_factory=lambda: ["control", "denoiserep"])
    baseline_weights: str | None = None
    output: str = "runs/classify"
    device: str = "auto"

    def __post_init__(self) -> None:
        bad = [a for a in self.arms if a not in ARMS[1:]]
        if bad:
            raise ValueError(f"arms must be among {ARMS[1:]}, got {bad}")
        if "denoiserep" in self.arms and self.finetune.phases == "none":
            raise ValueError("finetune.phases must name a DenoiseRep schedule, not 'none'")
        if not self.seeds:
            raise ValueError("seeds must list at least one seed")


def materialize(dataset: Dataset) -> Dataset:
    """In-memory datasets become one tensor pair (fast epochs); folder datasets stay lazy."""
    if not isinstance(dataset, ArrayImageDataset):
        return dataset
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    return TensorDataset(torch.stack(xs), torch.tensor(ys))


def resolve_device(name: str) -> torch.device:
    device = dist.init_distributed()
    if name == "auto":
        return device
    return torch.device(name)


def denoising_strength(model: nn.Module) -> list[dict[str, Any]]:
    """Per layer in execution order: t, k_t and ||k_t D||_F / sqrt(C_in) (0 = identity step)."""
    rows = []
    for name, layer in dr.denoise_layers(model).items():
        d = layer.D.detach().double()
        rows.append(
            {
                "layer": name,
                "t": layer.t,
                "k_t": layer.strength,
                "strength": (layer.strength * d.norm() / d.shape[0] ** 0.5).item(),
            }
        )
    return rows


@torch.no_grad()
def fused_vs_unfused(converted: nn.Module, fused: nn.Module, x: torch.Tensor) -> float:
    """max |fused(x) - unfused(x)|, where unfused denoises each layer's input explicitly."""
    layers = dr.denoise_layers(converted).values()
    converted.eval()
    fused.eval()
    for layer in layers:
        layer.explicit = True
    try:
        return (fused(x).float() - converted(x).float()).abs().max().item()
    finally:
        for layer in layers:
            layer.explicit = False


class Experiment:
    """The pieces every arm shares: data, task, device, evaluation, and the three arms."""

    def __init__(self, cfg: ClassifyConfig, progress: bool = True) -> None:
        self.cfg = cfg
        self.progress = progress
        self.device = resolve_device(cfg.device)
        data = build_classification_data(cfg.data.name, cfg.data.root, **cfg.data.options)
        self.train_set, self.test_set = materialize(data.train), materialize(data.test)
        self.task = ClassificationTask(cfg.label_smoothing, cfg.data.pad, cfg.data.flip)
        self.model_kwargs = dict(
            cfg.model.kwargs, num_classes=data.num_classes, in_chans=data.in_chans
        )
        n = min(64, len(self.test_set))
        self.example = next(iter(DataLoader(self.test_set, batch_size=n)))[0].to(self.device)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return evaluate(model, self.test_set, self.cfg.data.eval_batch_size)

    def _eval_fn(self, model: nn.Module) -> dict[str, float]:
        return {f"test_{k}": v for k, v in self.evaluate(model).items()}

    def _fit(self, model: nn.Module, cfg: TrainConfig, out: Path, seed: int, tag: str) -> list:
        return fit(
            model,
            self.train_set,
            cfg,
            self.task,
            out,
            seed,
            eval_fn=self._eval_fn,
            tag=tag,
            progress=self.progress,
        )

    def baseline(self, seed: int, out: Path) -> tuple[nn.Module, list]:
        """A freshly initialised model trained for ``baseline.epochs`` (or loaded)."""
        torch.manual_seed(seed)
        model = create_model(self.cfg.model.name, **self.model_kwargs).to(self.device)
        if self.cfg.baseline_weights:
            missing, unexpected = load_model(model, self.cfg.baseline_weights, strict=False)
            if missing or unexpected:
                raise ValueError(
                    f"baseline_weights {self.cfg.baseline_weights} does not match "
                    f"{self.cfg.model.name}: missing {sorted(missing)[:3]}, "
                    f"unexpected {sorted(unexpected)[:3]}"
                )
            return model, []
        return model, self._fit(model, self.cfg.baseline, out, seed, f"seed {seed} baseline")

    def control(self, baseline: nn.Module, seed: int, out: Path) -> tuple[nn.Module, list]:
        """The baseline fine-tuned like the DenoiseRep arm, without DenoiseRep."""
        model = copy.deepcopy(baseline)
        plain = dataclasses.replace(self.cfg.finetune, phases="none", denoiser_epochs=0)
        return model, self._fit(model, plain, out, seed, f"seed {seed} control")

    def denoiserep(
        self,
        baseline: nn.Module,
        seed: int,
        out: Path,
        denoise: dr.DenoiseConfig | None = None,
        finetune: TrainConfig | None = None,
        tag: str = "denoiserep",
    ) -> tuple[nn.Module, nn.Module, list]:
        """Convert a copy of the baseline, fine-tune it, fuse: (converted, fused, history)."""
        denoise = denoise or self.cfg.denoise
        model = dr.convert(copy.deepcopy(baseline), denoise, example_input=self.example[:2])
        history = self._fit(model, finetune or self.cfg.finetune, out, seed, f"seed {seed} {tag}")
        fused = dr.fuse(model).to(self.device)
        if dist.is_main():
            save_model(fused, str(out / "fused.safetensors"))
        return model, fused, history

    def fused_results(self, model: nn.Module, fused: nn.Module) -> dict[str, float]:
        results = self.evaluate(fused)
        results["max_abs_diff_fused_unfused"] = fused_vs_unfused(model, fused, self.example)
        return results


def run_classification(
    cfg: ClassifyConfig, overwrite: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Run the protocol of ``cfg``; write results.json / results.md / curves.png; return results."""
    exp = Experiment(cfg, progress)
    out = prepare_run_folder(cfg.output, to_dict(cfg), overwrite)
    per_seed: dict[int, dict[str, dict[str, float]]] = {}
    histories: dict[int, dict[str, list]] = {}
    extras: dict[str, Any] = {}
    for seed in cfg.seeds:
        seed_dir = out / f"seed{seed}"
        baseline, hist_base = exp.baseline(seed, seed_dir / "baseline")
        hist = {"baseline": hist_base} if hist_base else {}
        results = {"baseline": exp.evaluate(baseline)}
        if "control" in cfg.arms:
            control, hist["control"] = exp.control(baseline, seed, seed_dir / "control")
            results["control"] = exp.evaluate(control)
        if "denoiserep" in cfg.arms:
            model, fused, hist["denoiserep"] = exp.denoiserep(
                baseline, seed, seed_dir / "denoiserep"
            )
            results["denoiserep"] = exp.fused_results(model, fused)
            if seed == cfg.seeds[0]:
                latency = measure_latency({"baseline": baseline, "fused": fused}, exp.example)
                extras = {
                    "params_baseline": num_parameters(baseline),
                    "params_fused": num_parameters(fused),
                    "latency_ms_baseline": 1e3 * latency["baseline"],
                    "latency_ms_fused": 1e3 * latency["fused"],
                    "latency_ratio_fused_over_baseline": latency["fused"] / latency["baseline"],
                    "latency_batch": int(exp.example.shape[0]),
                    "strength": denoising_strength(model),
                }
        per_seed[seed] = results
        histories[seed] = hist
    report = {
        "config": to_dict(cfg),
        "device": str(exp.device),
        "per_seed": {str(s): r for s, r in per_seed.items()},
        "summary": aggregate_seeds(per_seed),
        "histories": {str(s): h for s, h in histories.items()},
        **extras,
    }
    if dist.is_main():
        from .report import write_reports

        write_reports(report, Path(out))
    return report


# -- the command-line contract (see denoiserep.cli) ------------------------------------------
Config = ClassifyConfig
run = run_classification
DEFAULT_CONFIG = "digits_demo.yaml"


def summarize(report: dict[str, Any]) -> str:
    """The Markdown table printed at the end of a run, and where the files are."""
    from .report import markdown_table

    out = Path(report["config"]["output"])
    files = ", ".join(str(out / f) for f in ("results.json", "results.md", "curves.png"))
    return markdown_table(report) + f"\nresults: {files}"
