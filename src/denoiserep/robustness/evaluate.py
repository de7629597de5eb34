"""Robustness evaluation of one arm under corruptions, feature noise and quantized features.

The task supplies one callable, ``evaluate(model, condition) -> {metric: value}``, that evaluates
``model`` on its test data under ``condition``; :func:`evaluate_robustness` calls it for the clean
data, every corruption x severity, every feature-noise level and every quantization width. A
:class:`Condition` is a dataset transform: ``condition(dataset, denormalize=(mean, std))``
returns the dataset the task should evaluate on (corrupted for a corruption, unchanged for clean
data, feature noise and quantized features, cut to ``max_images`` when set). So

* classification: ``lambda model, cond: evaluate(model, cond(test_set, (mean, std)))``;
* re-ID: ``cond(query, stats)`` with the clean gallery, and, with ``corrupt_gallery: true``
  ("both corrupted"), ``cond(gallery, stats, limit=False)`` as well, returned under prefixed
  keys (``both/mAP``); feature noise and quantized features need no dataset change.

Feature noise is applied by :func:`evaluate_robustness` around the call, through
:func:`~denoiserep.robustness.feature_noise.feature_noise` on ``layer_names`` (pass the same
names to every arm), and so are quantized features (``feature_bits``: each of those layers'
inputs rounded to that many bits,
:func:`~denoiserep.robustness.feature_noise.feature_quantization`; over each sample's range,
or with ``feature_ranges: static`` over one range per layer that
:func:`~denoiserep.robustness.feature_noise.calibrate_ranges` measures on the
``calibration`` data the task passes, each arm on its own activations).
Results are plain JSON (severity, sigma and bits keys are strings); the comparison of arms
(mCA, mCE, tables and plots) is in :mod:`denoiserep.robustness.summary`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from torch import nn
from torch.utils.data import Dataset, Subset

from denoiserep.robustness.corruptions import CORRUPTIONS, SEVERITIES, TABLES, CorruptedDataset
from denoiserep.robustness.feature_noise import (
    calibrate_ranges,
    feature_noise,
    feature_quantization,
)

# the comparison of arms lived here before it had its own module; still importable from here
from .summary import plot_robustness, robustness_table, summarize_robustness

DEFAULT_SIGMAS = (0.05, 0.1, 0.2, 0.5)
FEATURE_RANGES = ("per_sample", "static")


@dataclass
class RobustnessConfig:
    """What :func:`evaluate_robustness` measures.

    ``enabled`` is for the engine (run it or not); ``table`` picks the corruption parameters
    (``"imagenet"``: ImageNet-C's, ``"cifar"``: CIFAR-10-C's, milder, made for 32 px images);
    ``max_images`` evaluates corruptions, feature noise and the clean reference on the first
    ``max_images`` test images only (None: all; re-ID: the first queries, against the whole
    gallery). ``feature_bits`` (off by default): the bit widths each target layer's input is
    rounded to, one evaluation per width; over each sample's own range (``feature_ranges:
    per_sample``, as dynamic quantization does) or over one calibrated range per layer, clipped
    (``static``, as post-training INT8 quantization does; the min and max over the first
    ``calibration_images`` training images). ``corrupt_gallery`` (re-ID) also scores every
    corruption with the gallery corrupted the same way, under ``both/`` keys; off by default, as
    it re-embeds the whole gallery per corruption x severity, queries-only re-embeds the queries.
    """

    enabled: bool = False
    corruptions: list[str] = field(default_factory=lambda: list(CORRUPTIONS))
    severities: list[int] = field(default_factory=lambda: list(SEVERITIES))
    feature_sigmas: list[float] = field(default_factory=lambda: list(DEFAULT_SIGMAS))
    feature_bits: list[int] = field(default_factory=list)
    feature_ranges: str = "per_sample"
    calibration_images: int = 1000
    seed: int = 0
    max_images: int | None = None
    table: str = "imagenet"
    corrupt_gallery: bool = False

    def __post_init__(self) -> None:
        self.corruptions = list(self.corruptions)
        self.severities = [int(s) for s in self.severities]
        self.feature_sigmas = [float(s) for s in self.feature_sigmas]
        self.feature_bits = list(self.feature_bits)
        if any(
            isinstance(b, bool) or not isinstance(b, int) or not 2 <= b <= 16
            for b in self.feature_bits
        ):
            raise ValueError(f"feature_bits must be integers in 2..16, got {self.feature_bits}")
        if self.feature_ranges not in FEATURE_RANGES:
            raise ValueError(
                f"feature_ranges must be one of {', '.join(FEATURE_RANGES)}, "
                f"got {self.feature_ranges!r}"
            )
        n = self.calibration_images
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"calibration_images must be a positive integer, got {n!r}")
        unknown = [c for c in self.corruptions if c not in CORRUPTIONS]
        if unknown:
            raise ValueError(f"unknown corruptions {unknown}; valid: {', '.join(CORRUPTIONS)}")
        bad = [s for s in self.severities if s not in SEVERITIES]
        if bad:
            raise ValueError(f"severities must lie in 1..5, got {bad}")
        if any(not math.isfinite(s) or s < 0 for s in self.feature_sigmas):
            raise ValueError(f"feature_sigmas must be finite and >= 0, got {self.feature_sigmas}")
        for name, values in (
            ("corruptions", self.corruptions),
            ("severities", self.severities),
            ("feature_sigmas", self.feature_sigmas),
            ("feature_bits", self.feature_bits),
        ):
            if len(set(values)) != len(values):
                raise ValueError(f"{name} has duplicates: {values}")
        if self.max_images is not None and (
            isinstance(self.max_images, bool) or int(self.max_images) < 1
        ):
            raise ValueError(
                f"max_images must be a positive integer or None, got {self.max_images}"
            )
        if not isinstance(self.corrupt_gallery, bool):
            raise ValueError(f"corrupt_gallery must be true or false, got {self.corrupt_gallery!r}")
        if self.table not in TABLES:
            raise ValueError(f"table must be one of {', '.join(TABLES)}, got {self.table!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> RobustnessConfig:
        """Build from a mapping (e.g. a YAML section); unknown keys are an error listing the
        valid ones."""
        values = dict(values or {})
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(valid))
        if unknown:
            raise ValueError(f"unknown robustness keys {unknown}; valid: {', '.join(valid)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Condition:
    """One evaluation condition; calling it transforms the task's test dataset.

    ``kind`` is ``"clean"``, ``"corruption"`` (with ``corruption`` and ``severity``),
    ``"feature_noise"`` (with ``sigma``) or ``"feature_bits"`` (with ``bits``); noise and
    quantization are applied to the model's layers while the task evaluates.
    """

    kind: str
    corruption: str | None = None
    severity: int | None = None
    sigma: float | None = None
    bits: int | None = None
    seed: int = 0
    max_images: int | None = None
    table: str = "imagenet"

    @property
    def key(self) -> str:
        """A readable label: ``clean``, ``gaussian_noise/3``, ``feature_noise/0.1``,
        ``feature_bits/4``."""
        if self.kind == "corruption":
            return f"{self.corruption}/{self.severity}"
        if self.kind == "feature_noise":
            return f"feature_noise/{_sigma_key(self.sigma or 0.0)}"
        if self.kind == "feature_bits":
            return f"feature_bits/{self.bits}"
        return self.kind

    def __call__(
        self,
        dataset: Dataset,
        denormalize: tuple[Sequence[float], Sequence[float]] | None = None,
        *,
        limit: bool = True,
    ) -> Dataset:
        """``dataset`` as this condition sees it: corrupted for a corruption (items
        ``(image, ...)``, images normalised with ``denormalize=(mean, std)`` if given), then
        cut to its first ``max_images`` items unless ``limit=False``."""
        out: Dataset = dataset
        if self.kind == "corruption":
            assert self.corruption is not None and self.severity is not None
            out = CorruptedDataset(
                dataset, self.corruption, self.severity, self.seed, denormalize, table=self.table
            )
        if limit and self.max_images is not None and self.max_images < len(out):
            out = Subset(out, range(self.max_images))
        return out


Evaluate = Callable[[nn.Module, Condition], dict[str, float]]


def _sigma_key(sigma: float) -> str:
    return f"{float(sigma):g}"


def _metrics(result: Any, where: str) -> dict[str, float]:
    if not isinstance(result, dict):
        raise TypeError(f"evaluate() must return a dict of metrics, got {type(result).__name__}")
    out = {}
    for k, v in result.items():
        try:
            out[str(k)] = float(v)
        except (TypeError, ValueError):
            continue  # non-scalar extras (curves, counts arrays) are not robustness metrics
    if not out:
        raise ValueError(f"evaluate() returned no scalar metric for {where}")
    return out


class _ConditionRunner:
    """Runs ``evaluate`` under one condition at a time; remembers which layers the last
    perturbation reached."""

    def __init__(
        self, evaluate: Evaluate, model: nn.Module, progress: Callable[[str], None] | None
    ) -> None:
        self.evaluate, self.model, self.progress = evaluate, model, progress
        self.layers: list[str] = []

    def run(self, condition: Condition) -> dict[str, float]:
        if self.progress is not None:
            self.progress(condition.key)
        return _metrics(self.evaluate(self.model, condition), condition.key)

    def run_perturbed(
        self, perturbation: Any, condition: Condition, what: str, check: bool
    ) -> dict:
        """``run`` with the layers' inputs perturbed; an error if no layer was reached."""
        with perturbation as record:
            metrics = self.run(condition)
        self.layers = record.layers
        if check and not any(record.calls.values()):
            raise RuntimeError(
                f"{what} reached none of its layers: does evaluate() run the model it is given?"
            )
        return metrics


def evaluate_robustness(
    evaluate: Evaluate,
    model: nn.Module,
    cfg: RobustnessConfig,
    layer_names: Iterable[str] | None = None,
    *,
    progress: Callable[[str], None] | None = None,
    calibration: Any = None,
    forward: Callable[[nn.Module, Any], Any] | None = None,
) -> dict[str, Any]:
    """Evaluate one arm under every condition of ``cfg``; returns a JSON-ready dict::

        {"clean": {metric: v},
         "corruptions": {name: {"1": {metric: v}, ..., "5": {...}}},
         "feature_noise": {"0.05": {metric: v}, ...},
         "feature_bits": {"8": {metric: v}, ...},
         "feature_ranges": {layer: [min, max]},  # feature_ranges: static only
         "config": cfg.to_dict(), "layers": [names the feature noise went to]}

    ``layer_names``: the layers feature noise is added to and whose inputs are quantized (see
    ``feature_noise``); pass the same list for every arm (e.g.
    ``list(dr.denoise_layers(converted))``). ``progress`` is called with each condition's key
    before it runs. ``calibration`` (batches, with ``forward`` for models that take other
    inputs, as :func:`~denoiserep.robustness.feature_noise.calibrate_ranges` reads them) is needed
    with ``feature_ranges: static``; the calibrated ranges are returned under
    ``"feature_ranges"``.
    """

    runner = _ConditionRunner(evaluate, model, progress)
    run = runner.run
    common = {"seed": cfg.seed, "max_images": cfg.max_images, "table": cfg.table}
    result: dict[str, Any] = {"clean": run(Condition("clean", **common))}
    result["corruptions"] = {
        name: {
            str(s): run(Condition("corruption", corruption=name, severity=s, **common))
            for s in cfg.severities
        }
        for name in cfg.corruptions
    }
    names = None if layer_names is None else list(layer_names)
    result["feature_noise"] = {
        _sigma_key(sigma): runner.run_perturbed(
            feature_noise(model, sigma, seed=cfg.seed, targets=names),
            Condition("feature_noise", sigma=sigma, **common),
            "feature noise",
            check=sigma > 0,
        )
        for sigma in cfg.feature_sigmas
    }
    ranges = None
    if cfg.feature_bits and cfg.feature_ranges == "static":
        if calibration is None:
            raise ValueError("feature_ranges: static needs calibration data to measure ranges on")
        ranges = calibrate_ranges(model, calibration, targets=names, forward=forward)
        result["feature_ranges"] = {name: list(r) for name, r in ranges.items()}
    result["feature_bits"] = {
        str(bits): runner.run_perturbed(
            feature_quantization(model, bits, targets=names, ranges=ranges),
            Condition("feature_bits", bits=bits, **common),
            "feature quantization",
            check=True,
        )
        for bits in cfg.feature_bits
    }
    result["config"] = cfg.to_dict()
    result["layers"] = runner.layers
    return result


__all__ = [
    "Condition",
    "RobustnessConfig",
    "evaluate_robustness",
    "plot_robustness",
    "robustness_table",
    "summarize_robustness",
]
