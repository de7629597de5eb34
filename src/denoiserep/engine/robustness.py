"""Robustness evaluation of one arm, and the comparison of arms (ImageNet-C's mCE), task-agnostic.

The task supplies one callable, ``evaluate(model, condition) -> {metric: value}``, that evaluates
``model`` on its test data under ``condition``; :func:`evaluate_robustness` calls it for the clean
data, every corruption x severity, and every feature-noise level. A :class:`Condition` is a
dataset transform: ``condition(dataset, denormalize=(mean, std))`` returns the dataset the task
should evaluate on (corrupted for a corruption, unchanged for clean data and feature noise, cut
to ``max_images`` when set). So

* classification: ``lambda model, cond: evaluate(model, cond(test_set, (mean, std)))``;
* re-ID: ``cond(query, stats)`` with the clean gallery, and, for "both corrupted",
  ``cond(gallery, stats, limit=False)`` as well, returned under prefixed keys (``both/mAP``);
  feature noise (``cond.kind == "feature_noise"``) needs no dataset change.

Feature noise is applied by :func:`evaluate_robustness` around the call, through
:func:`denoiserep.core.feature_noise.feature_noise` on ``layer_names`` (pass the same names to
every arm). Results are plain JSON (severity and sigma keys are strings).

:func:`summarize_robustness` compares arms on one metric: mean corrupted accuracy (mCA, over
corruptions and severities), corruption errors against the baseline arm as in ImageNet-C,
``CE_c = sum_s E_arm,c,s / sum_s E_base,c,s`` with ``E = scale - metric``, their mean (mCE, in %,
baseline = 100), the relative mCE (errors minus each arm's clean error), and the metric per
feature-noise level.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from torch import nn
from torch.utils.data import Dataset, Subset

from denoiserep.core.feature_noise import feature_noise
from denoiserep.data.corruptions import CORRUPTIONS, SEVERITIES, TABLES, CorruptedDataset

DEFAULT_SIGMAS = (0.05, 0.1, 0.2, 0.5)


@dataclass
class RobustnessConfig:
    """What :func:`evaluate_robustness` measures.

    ``enabled`` is for the engine (run it or not); ``table`` picks the corruption parameters
    (``"imagenet"``: ImageNet-C's, ``"cifar"``: CIFAR-10-C's, milder, made for 32 px images);
    ``max_images`` evaluates corruptions, feature noise and the clean reference on the first
    ``max_images`` test images only (None: all).
    """

    enabled: bool = False
    corruptions: list[str] = field(default_factory=lambda: list(CORRUPTIONS))
    severities: list[int] = field(default_factory=lambda: list(SEVERITIES))
    feature_sigmas: list[float] = field(default_factory=lambda: list(DEFAULT_SIGMAS))
    seed: int = 0
    max_images: int | None = None
    table: str = "imagenet"

    def __post_init__(self) -> None:
        self.corruptions = list(self.corruptions)
        self.severities = [int(s) for s in self.severities]
        self.feature_sigmas = [float(s) for s in self.feature_sigmas]
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
        ):
            if len(set(values)) != len(values):
                raise ValueError(f"{name} has duplicates: {values}")
        if self.max_images is not None and (
            isinstance(self.max_images, bool) or int(self.max_images) < 1
        ):
            raise ValueError(
                f"max_images must be a positive integer or None, got {self.max_images}"
            )
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

    ``kind`` is ``"clean"``, ``"corruption"`` (with ``corruption`` and ``severity``) or
    ``"feature_noise"`` (with ``sigma``; the noise itself is applied to the model's layers
    while the task evaluates).
    """

    kind: str
    corruption: str | None = None
    severity: int | None = None
    sigma: float | None = None
    seed: int = 0
    max_images: int | None = None
    table: str = "imagenet"

    @property
    def key(self) -> str:
        """A readable label: ``clean``, ``gaussian_noise/3``, ``feature_noise/0.1``."""
        if self.kind == "corruption":
            return f"{self.corruption}/{self.severity}"
        if self.kind == "feature_noise":
            return f"feature_noise/{_sigma_key(self.sigma or 0.0)}"
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


def evaluate_robustness(
    evaluate: Evaluate,
    model: nn.Module,
    cfg: RobustnessConfig,
    layer_names: Iterable[str] | None = None,
    *,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Evaluate one arm under every condition of ``cfg``; returns a JSON-ready dict::

        {"clean": {metric: v},
         "corruptions": {name: {"1": {metric: v}, ..., "5": {...}}},
         "feature_noise": {"0.05": {metric: v}, ...},
         "config": cfg.to_dict(), "layers": [names the feature noise went to]}

    ``layer_names``: the layers feature noise is added to (see ``feature_noise``); pass the
    same list for every arm (e.g. ``list(dr.denoise_layers(converted))``). ``progress`` is
    called with each condition's key before it runs.
    """

    def run(condition: Condition) -> dict[str, float]:
        if progress is not None:
            progress(condition.key)
        return _metrics(evaluate(model, condition), condition.key)

    common = {"seed": cfg.seed, "max_images": cfg.max_images, "table": cfg.table}
    result: dict[str, Any] = {"clean": run(Condition("clean", **common))}
    result["corruptions"] = {
        name: {
            str(s): run(Condition("corruption", corruption=name, severity=s, **common))
            for s in cfg.severities
        }
        for name in cfg.corruptions
    }
    result["feature_noise"] = {}
    layers: list[str] = []
    names = None if layer_names is None else list(layer_names)
    for sigma in cfg.feature_sigmas:
        with feature_noise(model, sigma, seed=cfg.seed, targets=names) as noise:
            metrics = run(Condition("feature_noise", sigma=sigma, **common))
        layers = noise.layers
        if sigma > 0 and not any(noise.calls.values()):
            raise RuntimeError(
                "feature noise reached none of its layers: does evaluate() run the model "
                "it is given?"
            )
        result["feature_noise"][_sigma_key(sigma)] = metrics
    result["config"] = cfg.to_dict()
    result["layers"] = layers
    return result


# ----------------------------------------------------------------------------- comparison


def _mean(values: Iterable[float | None]) -> float | None:
    vals = list(values)
    if not vals or any(v is None for v in vals):
        return None
    return sum(vals) / len(vals)


def _get(metrics: dict[str, float], metric: str, where: str) -> float:
    if metric not in metrics:
        raise KeyError(f"metric {metric!r} missing in {where} (has {', '.join(metrics)})")
    return float(metrics[metric])


def summarize_robustness(
    per_arm: dict[str, dict[str, Any]],
    metric: str,
    baseline: str = "baseline",
    scale: float = 100.0,
) -> dict[str, Any]:
    """Compare arms (results of :func:`evaluate_robustness`) on ``metric`` (higher is better,
    at most ``scale``: 100 for % accuracy / mAP, 1 for fractions).

    Per arm: ``clean``; ``mCA`` (mean over corruptions and severities); ``corruption_acc``
    (per corruption, mean over severities); ``severity_acc`` (per severity, mean over
    corruptions); ``CE`` / ``mCE`` and ``relative_CE`` / ``relative_mCE`` in % against the
    ``baseline`` arm as in ImageNet-C (None without a baseline arm, or where the baseline's
    summed error is 0); ``feature_noise`` (per sigma) and ``mFA`` (their mean). Every arm
    must have the same corruptions, severities and sigmas.
    """
    if not per_arm:
        raise ValueError("summarize_robustness: no arms")
    first = next(iter(per_arm))
    ref = per_arm[first]
    corruptions = list(ref.get("corruptions", {}))
    severities = {c: list(ref["corruptions"][c]) for c in corruptions}
    sigmas = list(ref.get("feature_noise", {}))
    for arm, res in per_arm.items():
        got = (
            list(res.get("corruptions", {})),
            {c: list(v) for c, v in res.get("corruptions", {}).items()},
            list(res.get("feature_noise", {})),
        )
        if got != (corruptions, severities, sigmas):
            raise ValueError(
                f"arm {arm!r} was evaluated under other conditions than arm {first!r}: "
                "rerun with the same RobustnessConfig"
            )

    def error(arm: str, c: str, s: str) -> float:
        return scale - _get(per_arm[arm]["corruptions"][c][s], metric, f"{arm}/{c}/{s}")

    arms: dict[str, Any] = {}
    for arm, res in per_arm.items():
        clean = _get(res["clean"], metric, f"{arm}/clean")
        acc = {
            c: {s: _get(res["corruptions"][c][s], metric, f"{arm}/{c}/{s}") for s in severities[c]}
            for c in corruptions
        }
        row: dict[str, Any] = {
            "clean": clean,
            "mCA": _mean(v for c in corruptions for v in acc[c].values()),
            "corruption_acc": {c: _mean(acc[c].values()) for c in corruptions},
            "severity_acc": {},
            "CE": {},
            "relative_CE": {},
            "mCE": None,
            "relative_mCE": None,
            "feature_noise": {
                k: _get(res["feature_noise"][k], metric, f"{arm}/feature_noise/{k}") for k in sigmas
            },
        }
        all_sev = sorted({s for c in corruptions for s in severities[c]}, key=float)
        row["severity_acc"] = {
            s: _mean(acc[c][s] for c in corruptions if s in acc[c]) for s in all_sev
        }
        row["mFA"] = _mean(row["feature_noise"].values())
        if baseline in per_arm:
            base_clean = scale - _get(per_arm[baseline]["clean"], metric, f"{baseline}/clean")
            for c in corruptions:
                base = sum(error(baseline, c, s) for s in severities[c])
                mine = sum(error(arm, c, s) for s in severities[c])
                n = len(severities[c])
                rel_base = base - n * base_clean
                rel_mine = mine - n * (scale - clean)
                row["CE"][c] = 100.0 * mine / base if base > 0 else None
                row["relative_CE"][c] = 100.0 * rel_mine / rel_base if rel_base > 0 else None
            row["mCE"] = _mean(row["CE"].values())
            row["relative_mCE"] = _mean(row["relative_CE"].values())
        arms[arm] = row
    return {
        "metric": metric,
        "baseline": baseline if baseline in per_arm else None,
        "scale": scale,
        "corruptions": corruptions,
        "severities": severities,
        "sigmas": sigmas,
        "arms": arms,
    }


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def robustness_table(summary: dict[str, Any]) -> str:
    """Markdown: one table of clean / mCA / mCE / relative mCE / feature-noise levels per arm,
    and one of the metric per corruption (mean over severities, CE in parentheses)."""
    metric = summary["metric"]
    sigmas = summary["sigmas"]
    head = ["arm", f"clean {metric}", "mCA", "mCE (%)", "rel. mCE (%)"]
    head += [f"σ={s}" for s in sigmas] + (["mean σ"] if sigmas else [])
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for arm, row in summary["arms"].items():
        cells = [
            arm,
            _fmt(row["clean"]),
            _fmt(row["mCA"]),
            _fmt(row["mCE"], 1),
            _fmt(row["relative_mCE"], 1),
        ]
        cells += [_fmt(row["feature_noise"][s]) for s in sigmas]
        cells += [_fmt(row["mFA"])] if sigmas else []
        lines.append("| " + " | ".join(cells) + " |")
    corruptions = summary["corruptions"]
    if corruptions:
        lines += [
            "",
            f"{metric} per corruption (mean over severities; corruption error vs "
            f"{summary['baseline'] or 'no baseline'} in %, in parentheses):",
            "",
        ]
        head = ["arm", *corruptions]
        lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        for arm, row in summary["arms"].items():
            cells = [arm]
            for c in corruptions:
                ce = row["CE"].get(c)
                cells.append(
                    _fmt(row["corruption_acc"][c]) + ("" if ce is None else f" ({ce:.0f})")
                )
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_robustness(
    per_arm: dict[str, dict[str, Any]],
    path: str,
    metric: str | None = None,
    title: str | None = None,
) -> None:
    """The metric against severity (0 = clean), one line per arm, one panel per corruption,
    and one panel against the feature-noise sigma (0 = clean). ``metric`` defaults to the
    first metric of the first arm's clean results."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not per_arm:
        raise ValueError("plot_robustness: no arms")
    first = next(iter(per_arm.values()))
    metric = metric or next(iter(first["clean"]))
    corruptions = list(first.get("corruptions", {}))
    panels = [*corruptions, "feature_noise"] if first.get("feature_noise") else corruptions
    cols = min(4, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.4 * cols, 2.9 * nrows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, panel in zip(list(axes.flat)[: len(panels)], panels, strict=True):
        for arm, res in per_arm.items():
            clean = res["clean"].get(metric)
            if panel == "feature_noise":
                items = sorted(res["feature_noise"].items(), key=lambda kv: float(kv[0]))
                xs = [0.0] + [float(k) for k, _ in items]
            else:
                items = sorted(res["corruptions"][panel].items(), key=lambda kv: int(kv[0]))
                xs = [0] + [int(k) for k, _ in items]
            ys = [clean] + [m.get(metric) for _, m in items]
            ax.plot(xs, [math.nan if y is None else y for y in ys], "o-", ms=3, label=arm)
        if panel == "feature_noise":
            ax.set_xlabel("feature noise σ (× input std)")
        else:
            ax.set_xlabel("severity (0 = clean)")
            ax.set_xticks(range(0, 6))
        ax.set_title(panel.replace("_", " "), fontsize=10)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
