"""Typed run configs: nested dataclasses built from YAML plus ``key.sub=value`` overrides.

Every value goes through one conversion (``denoiserep.core.config.convert_value``) before any
dataclass validates it: ``1e-3`` (text to YAML) is a number wherever a number is expected,
a single string where a list is expected is a list of one, a nested section set by one key
keeps the defaults of its field, and NaN, booleans given for numbers and fractional counts
are one-line errors naming the key.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

import yaml

from denoiserep.util.config import dataclass_from_dict, yaml_error_line

from .phases import schedule_problem

T = TypeVar("T")
MAX_SEED = 2**32 - 1  # what every RNG a run seeds (torch, samplers, numpy) accepts


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, recursively; unknown keys name the valid ones."""
    return dataclass_from_dict(cls, data, where)


def to_dict(obj: Any) -> Any:
    """Dataclass (possibly nested, or with ``to_dict``) -> plain dict for YAML / JSON."""
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not of the form key.sub=value")
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            if node.get(part) is None:  # absent, or an empty section in the YAML file
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part} is not a section")
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ValueError(
                f"override {item!r}: {yaml_error_line(e)} (quote the value if it is text)"
            ) from None
    return data


def check_training_plan(
    baseline: Any = None,
    finetune: Any = None,
    has_weights: bool = False,
    *,
    denoiserep_arm: bool = True,
) -> None:
    """Refuse a plan that would report something other than what was asked for.

    ``baseline`` and ``finetune`` are the arms' ``TrainConfig`` s (either may be None),
    ``has_weights`` says whether the baseline starts from weights (pretrained or a file).
    Errors (one line each):

    - a phase schedule that leaves one of its phases without an epoch (e.g.
      ``phases=joint, epochs=2, denoiser_epochs=2``: the joint phase never runs, so the
      "joint" arm is the baseline plus label-free epochs) - checked for ``finetune`` only when
      a DenoiseRep arm runs (``denoiserep_arm``);
    - nothing trained at all: ``baseline.epochs=0`` and ``finetune.epochs=0`` without weights
      would report an untrained model as every arm.
    """
    for where, cfg in (("baseline", baseline), ("finetune", finetune)):
        if cfg is None or (where == "finetune" and not denoiserep_arm):
            continue
        problem = schedule_problem(
            cfg.phases, cfg.epochs, cfg.denoiser_epochs, cfg.alternate_every, where
        )
        if problem:
            raise ValueError(problem)
    trained = [c for c in (baseline, finetune) if c is not None and c.epochs > 0]
    if (baseline is not None or finetune is not None) and not trained and not has_weights:
        raise ValueError(
            "nothing would be trained: baseline.epochs=0 and finetune.epochs=0 without "
            "weights report an untrained model as every arm; set baseline.epochs, "
            "finetune.epochs, model.checkpoint / model.pretrained or baseline_weights"
        )


def check_arms_trained(arms: list[str], finetune: Any, variants: dict[str, Any]) -> None:
    """Refuse ``finetune.epochs=0`` for arms that fine-tune (control, DenoiseRep, or the
    ``variants``' own schedules): each would be reported, untrained, as equal to the baseline."""
    untrained = ["control"] if "control" in arms and finetune.epochs == 0 else []
    if variants:
        untrained += [name for name, train in variants.items() if train.epochs == 0]
    elif "denoiserep" in arms and finetune.epochs == 0:
        untrained.append("denoiserep")
    if untrained:
        raise ValueError(
            f"finetune.epochs=0 would leave the {' and '.join(untrained)} arm(s) untrained, "
            "reported as equal to the baseline; set finetune.epochs >= 1, or arms=[] to "
            "evaluate the baseline alone"
        )


def check_seeds(seeds: list[int]) -> None:
    """At least one seed, all distinct, each one every RNG of a run accepts."""
    if not seeds:
        raise ValueError("seeds must list at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds}")
    bad = [s for s in seeds if not 0 <= s <= MAX_SEED]
    if bad:
        raise ValueError(f"seeds must be integers from 0 to {MAX_SEED} (32 bits), got {bad}")


def check_eval_batch(data: Any) -> None:
    """A task's ``data.eval_batch_size``, when it has one, is at least 1 (checked before the
    run folder is touched, not at the first evaluation)."""
    size = getattr(data, "eval_batch_size", 1)
    if size < 1:
        raise ValueError(f"data.eval_batch_size must be >= 1, got {size}")
