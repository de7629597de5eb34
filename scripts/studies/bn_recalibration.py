"""Do label-free closed-form denoisers still help once BatchNorm is recalibrated?

Results: docs/results/robustness.md, "Denoisers at their optimum: where denoising helps",
the "Two more CNNs" item. Rerun, from the repository root, on the runs of
``robustness_denoisers.sh closed_form`` (the commands that made them are on that page):

    .venv/bin/python scripts/studies/bn_recalibration.py \\
        runs/robust_cf_cnns/mobilenetv3_large_100 runs/robust_cf_cnns_345/mobilenetv3_large_100

For every seed's baseline of ``denoiserep ablate`` runs on in-memory data:

* ``baseline`` and ``baseline + BN``: the baseline, and the same with its BatchNorm statistics
  recomputed on the training images augmented as in training (pad-crop-flip, one seeded draw;
  ``dr.recalibrate_batchnorm``: no labels), as ``finetune.recalibrate_bn`` does;
* ``baseline + BN (clean images)``: the same recalibration on the images as they are;
* ``closed form`` and ``closed form + BN``: the baseline converted with the strong schedule
  (robustness_denoisers.sh's), every D fitted in closed form (``dr.fit_denoisers``), fused,
  and the same with recalibrated BatchNorm statistics (augmented images).

Each is scored clean and under Gaussian feature noise (σ 0.2, 0.5, seed 0, same noise for every
model) on all test images; then the paired differences over seeds, with the paired t-test's p.

    .venv/bin/python scripts/studies/bn_recalibration.py RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
from seed_study import paired_table, run_seeds, saved_model
from torch.utils.data import DataLoader

import denoiserep as dr
from denoiserep.classification.step import evaluate
from denoiserep.data.augment import pad_crop_flip
from denoiserep.robustness.feature_noise import feature_noise

STRONG = {"timesteps": 100, "beta_start": 1.0e-3, "beta_end": 0.2}
SIGMAS = (0.2, 0.5)
MODELS = (
    "baseline",
    "baseline + BN",
    "baseline + BN (clean images)",
    "closed form",
    "closed form + BN",
)
COMPARISONS = (
    ("closed form", "baseline"),
    ("closed form + BN", "baseline + BN"),
    ("baseline + BN", "baseline"),
    ("baseline + BN (clean images)", "baseline"),
)


def scores(model: torch.nn.Module, test: object, targets: list[str]) -> list[float]:
    """Clean acc@1, then acc@1 under feature noise at each of SIGMAS."""
    out = [evaluate(model, test, 500)["acc1"]]
    for sigma in SIGMAS:
        with feature_noise(model, sigma=sigma, seed=0, targets=targets):
            out.append(evaluate(model, test, 500)["acc1"])
    return out


def run_seed(exp: dict, sets: object, baseline: Path) -> dict[str, list[float]]:
    """The five models of one seed's baseline (its arm folder), scored."""
    train, test = sets.train, sets.test
    model = saved_model(exp, sets, baseline)
    images = list(DataLoader(train.tensors[0], batch_size=500))
    generator = torch.Generator().manual_seed(0)
    augmented = [
        pad_crop_flip(x, generator, exp["data"].get("pad", 0), bool(exp["data"].get("flip")))
        for x in images
    ]
    config = dr.DenoiseConfig(**{**exp["denoise"], **STRONG})
    converted = dr.convert(copy.deepcopy(model), config, example_input=train.tensors[0][:2])
    targets = list(dr.denoise_layers(converted))
    dr.fit_denoisers(converted, images)
    fused = dr.fuse(converted).eval()
    models = {"baseline": model, "closed form": fused}
    for name, batches in [
        ("baseline", augmented),
        ("closed form", augmented),
        ("baseline", images),
    ]:
        recalibrated = copy.deepcopy(models[name])
        dr.recalibrate_batchnorm(recalibrated, batches)
        suffix = " + BN" if batches is augmented else " + BN (clean images)"
        models[name + suffix] = recalibrated
    return {name: scores(models[name], test, targets) for name in MODELS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    columns = ["clean"] + [f"σ={s}" for s in SIGMAS]
    results = []
    print(f"per seed, {' / '.join(columns)} of: {', '.join(MODELS)}")
    for exp, sets, seed_dir in run_seeds(args.runs):
        r = run_seed(exp, sets, seed_dir / "baseline")
        results.append(r)
        row = " | ".join(" / ".join(f"{v:.2f}" for v in r[m]) for m in MODELS)
        print(f"{seed_dir.parent.name}/{seed_dir.name}: {row}", flush=True)
    print(f"\n{len(results)} seeds; paired difference (p)\n")
    print(paired_table(results, COMPARISONS, columns))


if __name__ == "__main__":
    main()
