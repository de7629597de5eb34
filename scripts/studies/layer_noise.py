"""Where does feature noise hurt, and do the fused steps remove it there?

Results: docs/results/robustness.md, "Does the ViT fail to denoise?" ("Where the noise hurts,
one layer at a time", and the Swin, ResNet-18-D and hybrid-ViT tests). Rerun, from the
repository root, on the runs of ``robustness_denoisers.sh closed_form`` (commands on that page):

    .venv/bin/python scripts/studies/layer_noise.py runs/robust_cf_bits/vit
    .venv/bin/python scripts/studies/layer_noise.py runs/robust_cf_bits/resnet

For every seed of ``denoiserep ablate`` runs with a label-free closed-form arm: Gaussian feature
noise (σ relative to the input's std, ``denoiserep.robustness.feature_noise``) at the input of one
target layer at a time, the same noise for both models, scored on the first ``--images`` test
images for the baseline and for the label-free strong closed-form arm (that baseline with its
fitted steps fused, no training). Per layer, pooled over seeds: the SNR gain of the layer's own
step under isotropic noise (``denoising_snr.py``), the baseline's loss to noise at that layer
alone, and what the fused steps recover of it (arm − baseline under that noise, less their clean
difference), with the paired t-test's p. The last row puts the noise at every layer at once.

    .venv/bin/python scripts/studies/layer_noise.py RUN_DIR [RUN_DIR ...] \\
        [--sigma 0.5] [--images 1000]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from denoising_snr import snr_gains
from seed_study import paired_cell, run_seeds, run_targets, saved_model
from torch.utils.data import Subset

from denoiserep.classification.step import evaluate
from denoiserep.robustness.feature_noise import feature_noise

ARMS = ("baseline", "label_free_strong_closed_form")
ALL = "(every layer at once)"


def run_seed(
    exp: dict, sets: object, seed_dir: Path, sigma: float, images: int
) -> dict[str, dict[str, float]]:
    """Per layer (and ALL): the SNR gain, then acc@1 clean and with noise at that layer only,
    for the baseline and the label-free arm."""
    test = Subset(sets.test, range(min(images, len(sets.test))))
    rows: dict[str, dict[str, float]] = {}
    for name, _, gain in snr_gains(exp, sets, seed_dir / "baseline"):
        rows[name] = {"snr_gain": gain}
    for arm in ARMS:
        model = saved_model(exp, sets, seed_dir / arm)
        targets = run_targets(exp, sets, model)
        clean = evaluate(model, test, 500)["acc1"]
        for layer in [*targets, ALL]:
            chosen = targets if layer == ALL else [layer]
            with feature_noise(model, sigma, seed=0, targets=chosen):
                noisy = evaluate(model, test, 500)["acc1"]
            rows.setdefault(layer, {}).update({f"{arm}/clean": clean, f"{arm}/noisy": noisy})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument("--images", type=int, default=1000)
    args = parser.parse_args()
    if not args.sigma > 0 or args.images < 1:
        parser.error("--sigma must be > 0 and --images at least 1")
    torch.manual_seed(0)
    seeds = []
    for exp, sets, seed_dir in run_seeds(args.runs):
        seeds.append(run_seed(exp, sets, seed_dir, args.sigma, args.images))
        print(f"{seed_dir.parent.name}/{seed_dir.name} done", flush=True)
    base, arm = ARMS
    print(f"\n{len(seeds)} seeds; σ = {args.sigma} at one target layer's input at a time\n")
    print(
        "| layer (execution order) | SNR gain of its step | baseline: clean − noisy | "
        "label-free − baseline under that noise, less their clean difference |"
    )
    print("| --- | --- | --- | --- |")
    for layer, first in seeds[0].items():
        if f"{base}/noisy" not in first:
            continue
        snr = [s[layer].get("snr_gain") for s in seeds]  # none for grouped layers and ALL
        snr_text = "–" if None in snr else f"{sum(snr) / len(snr):.2f}"
        drop = [s[layer][f"{base}/clean"] - s[layer][f"{base}/noisy"] for s in seeds]
        gained = [s[layer][f"{arm}/noisy"] - s[layer][f"{arm}/clean"] for s in seeds]
        lost = [s[layer][f"{base}/noisy"] - s[layer][f"{base}/clean"] for s in seeds]
        print(
            f"| {layer} | {snr_text} | {sum(drop) / len(drop):.2f} | {paired_cell(gained, lost)} |"
        )


if __name__ == "__main__":
    main()
