"""Which layers' steps do the denoising?

Results: docs/results/robustness.md, "Does the ViT fail to denoise?" ("Which steps do the
work", and the Swin, ResNet-18-D and hybrid-ViT tests). Rerun, from the repository root, on the
runs of ``robustness_denoisers.sh closed_form`` (commands on that page):

    .venv/bin/python scripts/studies/target_subsets.py runs/robust_cf_bits/resnet \\
        --subset "main path=conv1*,*downsample*,fc" --subset "branches=layer*.conv*"

``layer_noise.py`` found feature noise harmful where it enters a network's main path, not inside
residual branches. This script tests what that predicts for the steps themselves, with no
training: for every seed's baseline of ``denoiserep ablate`` runs it fits the closed-form
strong-schedule denoisers (``dr.fit_denoisers``) on all target layers and on each named subset
of them, each layer at the timestep it has with all targets (so a subset keeps those steps
unchanged and drops the others), fuses each, and scores them on the first ``--images`` test
images: clean, with Gaussian noise at the first target layer's input (σ = 0.5, relative to its
std), with that noise at every target layer's input, and with every target layer's input
rounded to 3 and 2 bits (per sample). The same noise for every model. It also prints what each
subset's steps add to a training step (denoiser weights, multiply-adds of W·A_t).

    .venv/bin/python scripts/studies/target_subsets.py RUN_DIR [RUN_DIR ...] \\
        --subset "main path=conv1*,*downsample*,fc" --subset "branches=layer*.conv*"

A subset given as ``main_path`` alone is the ``targets="main_path"`` preset.
"""

from __future__ import annotations

import argparse
import copy
from contextlib import nullcontext
from pathlib import Path

import torch
from denoising_snr import STRONG
from seed_study import mean_table, paired_table, run_seeds, saved_model
from torch.utils.data import Subset

import denoiserep as dr
from denoiserep.classification.step import evaluate
from denoiserep.core.convert import select_targets
from denoiserep.robustness.feature_noise import feature_noise, feature_quantization

COLUMNS = ["clean", "first layer σ=0.5", "every layer σ=0.5", "3 bits", "2 bits"]


def parse_subset(text: str) -> tuple[str, list[str]]:
    """``"name=pattern,pattern"`` -> (name, patterns)."""
    name, sep, patterns = text.partition("=")
    if not sep or not name.strip() or not patterns.strip():
        raise argparse.ArgumentTypeError(f"--subset wants NAME=PATTERN[,PATTERN...], got {text!r}")
    return name.strip(), [p.strip() for p in patterns.split(",") if p.strip()]


def fused_subset(
    baseline: torch.nn.Module, exp: dict, images: list, t_all: dict[str, int], patterns: list[str]
) -> tuple[torch.nn.Module, tuple[int, int, int]]:
    """The baseline with closed-form steps on the run's targets that ``patterns`` name, each
    at its all-targets timestep, fused; and their :func:`training_cost`."""
    preset = patterns == ["main_path"]  # the preset, found on a forward of two images
    targets = "main_path" if preset else patterns
    config = dr.DenoiseConfig(**{**exp["denoise"], **STRONG, "targets": targets})
    chosen = [name for name in select_targets(baseline, config, images[0][:2]) if name in t_all]
    if not chosen:
        raise SystemExit(f"subset {patterns} names none of the run's target layers")
    config = dr.DenoiseConfig(**{**exp["denoise"], **STRONG, "targets": chosen})
    converted = dr.convert(copy.deepcopy(baseline), config, timesteps={n: t_all[n] for n in chosen})
    dr.fit_denoisers(converted, images)
    return dr.fuse(converted).eval(), training_cost(converted)


def training_cost(converted: torch.nn.Module) -> tuple[int, int, int]:
    """(steps, denoiser weights, multiply-adds of W·A_t per forward): what the steps add to
    a training step whatever the batch (C_out·C_in²·k² per group of each layer)."""
    layers = dr.denoise_layers(converted).values()
    weights = sum(layer.D.numel() for layer in layers)
    macs = sum(layer.base_layer.weight.numel() * layer.D.shape[1] for layer in layers)
    return len(layers), weights, macs


@torch.no_grad()
def run_seed(
    exp: dict, sets: object, seed_dir: Path, subsets: dict[str, list[str]], images: int
) -> tuple[dict[str, list[float]], dict[str, tuple[int, int, int]]]:
    """Acc@1 under each condition of COLUMNS per model, and each fused subset's cost."""
    baseline = saved_model(exp, sets, seed_dir / "baseline")
    train = list(sets.train.tensors[0].split(500))
    config = dr.DenoiseConfig(**{**exp["denoise"], **STRONG})
    every = dr.convert(copy.deepcopy(baseline), config, example_input=train[0][:2])
    t_all = {name: layer.t for name, layer in dr.denoise_layers(every).items()}
    targets = sorted(t_all, key=lambda name: -t_all[name])  # execution order
    models, costs = {"baseline": baseline}, {}
    for name, patterns in {"all": targets, **subsets}.items():
        models[name], costs[name] = fused_subset(baseline, exp, train, t_all, patterns)
    test = Subset(sets.test, range(min(images, len(sets.test))))
    conditions = [
        lambda m: nullcontext(),
        lambda m: feature_noise(m, 0.5, seed=0, targets=targets[:1]),
        lambda m: feature_noise(m, 0.5, seed=0, targets=targets),
        lambda m: feature_quantization(m, 3, targets=targets),
        lambda m: feature_quantization(m, 2, targets=targets),
    ]
    out = {}
    for name, model in models.items():
        scores = []
        for condition in conditions:
            with condition(model):
                scores.append(evaluate(model, test, 500)["acc1"])
        out[name] = scores
    return out, costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--subset", type=parse_subset, action="append", required=True)
    parser.add_argument("--images", type=int, default=1000)
    args = parser.parse_args()
    if args.images < 1:
        parser.error("--images must be at least 1")
    subsets = dict(args.subset)
    if len(subsets) != len(args.subset) or {"baseline", "all"} & set(subsets):
        parser.error("subset names must be distinct and not 'baseline' or 'all'")
    torch.manual_seed(0)
    names = ["baseline", "all", *subsets]
    results = []
    for exp, sets, seed_dir in run_seeds(args.runs):
        scores, costs = run_seed(exp, sets, seed_dir, subsets, args.images)
        results.append(scores)
        if len(results) == 1:
            for name, (steps, weights, macs) in costs.items():
                print(
                    f"{name}: {steps} steps, {weights / 1e6:.3f} M denoiser weights, "
                    f"W·A_t {macs / 1e9:.3f} G multiply-adds per forward"
                )
        row = " | ".join(" / ".join(f"{v:.2f}" for v in results[-1][n]) for n in names)
        print(f"{seed_dir.parent.name}/{seed_dir.name}: {row}", flush=True)
    print(f"\n{len(results)} seeds; mean acc@1\n")
    print(mean_table(results, names, COLUMNS))
    print(f"\n{len(results)} seeds; paired difference (p)\n")
    pairs = [(n, "baseline") for n in names[1:]] + [(n, "all") for n in subsets]
    print(paired_table(results, pairs, COLUMNS))


if __name__ == "__main__":
    main()
