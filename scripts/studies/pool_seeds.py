"""What does a study show once the seeds of all its runs are pooled?

Results: docs/results/robustness.md, "Denoisers at their optimum: where denoising helps",
"Does the ViT fail to denoise?", "Quantized features: the rounding error is feature noise too"
and "Re-identification: the label-free optimum on retrieval" (each gives its runs). Rerun, from
the repository root, e.g.:

    .venv/bin/python scripts/studies/pool_seeds.py \\
        runs/robust_closed_form/resnet runs/robust_closed_form_345/resnet

Pools the seeds of several ``denoiserep ablate`` runs of one study (same config, disjoint
seeds, e.g. ``experiment.seeds=[3,4,5]`` on a second run) and prints, per arm and measure, the
paired difference to the control over all seeds with its paired t-test p. Any run whose
``results.json`` has ``per_seed`` works (``denoiserep reid`` too: ``--measures mAP,...``);
``--reference baseline`` compares with the baseline instead.

    .venv/bin/python scripts/studies/pool_seeds.py RUN_DIR [RUN_DIR ...] [--measures acc1,mFA,...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from seed_study import paired_cell

MEASURES = "acc1,mCA,mFA,feature_noise_0.2,feature_noise_0.5,gaussian_blur_mean,pixelate_mean"


def pooled(runs: list[Path]) -> dict[str, dict[str, dict[str, float]]]:
    """``per_seed`` of every run in one mapping; a seed in two runs is an error."""
    seeds: dict[str, dict[str, dict[str, float]]] = {}
    for run in runs:
        per_seed = json.loads((run / "results.json").read_text())["per_seed"]
        twice = set(per_seed) & set(seeds)
        if twice:
            raise SystemExit(f"seed(s) {sorted(twice)} in more than one run ({run})")
        seeds.update(per_seed)
    return seeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--measures", default=MEASURES)
    parser.add_argument("--reference", default="control", help="the arm compared with")
    args = parser.parse_args()
    seeds = pooled(args.runs)
    arms = [a for a in next(iter(seeds.values())) if all(a in s for s in seeds.values())]
    measures = args.measures.split(",")
    names = ", ".join(sorted(seeds, key=int))
    ref = args.reference
    if ref not in arms:
        raise SystemExit(f"no arm {ref!r} in every seed; arms: {', '.join(arms)}")
    print(f"{len(seeds)} seeds ({names}); paired difference to the {ref} (p)")
    print("| arm | " + " | ".join(measures) + " |")
    print("| --- " * (len(measures) + 1) + "|")
    cells = {arm: [] for arm in arms if arm != ref}
    order = sorted(seeds)
    for m in measures:
        reference = [seeds[s][ref][m] for s in order]
        for arm in cells:
            cells[arm].append(paired_cell([seeds[s][arm][m] for s in order], reference))
    for arm, row in cells.items():
        print(f"| {arm} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
