"""Do fused denoisers help when features are quantized?

Results: docs/results/robustness.md, "Quantized features: the rounding error is feature noise
too" (``--static``: its "Static ranges, as post-training INT8 deployment quantizes").
Rerun, from the repository root, on the runs of ``robustness_denoisers.sh closed_form`` (the
commands that made them are on that page):

    .venv/bin/python scripts/studies/activation_quantization.py \\
        runs/robust_cf_cnns/resnet18 runs/robust_cf_cnns_345/resnet18 [--static]

Quantizing activations is feature noise a deployed model really meets: each layer's input is
rounded to a grid, an error of up to half a step per entry. A fused DenoiseRep layer computes
W·A_t·q(x) = W·(A_t x + A_t e), so its reverse step acts on that error e as it does on Gaussian
feature noise. This script scores the arms of ``denoiserep ablate`` runs (the models they saved,
fused for DenoiseRep arms; no training) with every target layer's input rounded to ``b`` bits
(``denoiserep.robustness.feature_noise.feature_quantization``: uniform, the range of each sample's
input, weights in float32; the pipelines' ``robustness.feature_bits``) on all test images, then
prints the paired differences over every seed of every run with the paired t-test's p: each
arm against the control, and the label-free arm against the baseline it was fitted to.
``--static`` quantizes as post-training INT8 deployment does instead: one range per layer, the
min and max of its input over the first ``--calibration`` training images, measured for each
arm on its own activations (``calibrate_ranges``), inputs outside it clipped.

    .venv/bin/python scripts/studies/activation_quantization.py RUN_DIR [RUN_DIR ...] [--bits 8 6 4]
        [--static [--calibration 1000]]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from seed_study import mean_table, paired_table, run_seeds, run_targets, saved_model
from torch.utils.data import DataLoader, Subset

from denoiserep.classification.step import evaluate
from denoiserep.robustness.feature_noise import calibrate_ranges, feature_quantization

ARMS = ("baseline", "control", "label_free_strong_closed_form", "joint_strong_closed_form")
COMPARISONS = (
    ("baseline", "control"),
    ("label_free_strong_closed_form", "control"),
    ("joint_strong_closed_form", "control"),
    ("label_free_strong_closed_form", "baseline"),
)


def run_seed(
    exp: dict, sets: object, seed_dir: Path, bits: list[int], calibration: int = 0
) -> dict[str, list[float]]:
    """Clean acc@1, then acc@1 at each of ``bits``, for every arm of one seed; ``calibration``
    > 0: static ranges from that many training images, else each sample's own range."""
    out = {}
    targets = None
    for arm in ARMS:
        model = saved_model(exp, sets, seed_dir / arm)
        targets = targets or run_targets(exp, sets, model)
        scores = [evaluate(model, sets.test, 500)["acc1"]]
        ranges = None
        if calibration:
            images = Subset(sets.train, range(min(calibration, len(sets.train))))
            ranges = calibrate_ranges(model, DataLoader(images, batch_size=250), targets=targets)
        for b in bits:
            with feature_quantization(model, b, targets=targets, ranges=ranges):
                scores.append(evaluate(model, sets.test, 500)["acc1"])
        out[arm] = scores
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--bits", nargs="+", type=int, default=[8, 6, 4, 3, 2])
    parser.add_argument("--static", action="store_true", help="calibrated per-layer ranges")
    parser.add_argument("--calibration", type=int, default=1000, help="images, with --static")
    args = parser.parse_args()
    if any(b < 2 or b > 16 for b in args.bits):
        parser.error(f"--bits must lie in 2..16, got {args.bits}")
    if args.calibration < 1:
        parser.error(f"--calibration must be at least 1 image, got {args.calibration}")
    calibration = args.calibration if args.static else 0
    torch.manual_seed(0)
    columns = ["clean"] + [f"{b} bits" for b in args.bits]
    results = []
    kind = f"static, ranges from {calibration} training images" if calibration else "per sample"
    print(f"quantization: {kind}; per seed, acc@1 {' / '.join(columns)} of: {', '.join(ARMS)}")
    for exp, sets, seed_dir in run_seeds(args.runs):
        r = run_seed(exp, sets, seed_dir, args.bits, calibration)
        results.append(r)
        row = " | ".join(" / ".join(f"{v:.2f}" for v in r[a]) for a in ARMS)
        print(f"{seed_dir.parent.name}/{seed_dir.name}: {row}", flush=True)
    print(f"\n{len(results)} seeds; mean acc@1 per arm\n")
    print(mean_table(results, ARMS, columns))
    print(f"\n{len(results)} seeds; paired difference (p)\n")
    print(paired_table(results, COMPARISONS, columns))


if __name__ == "__main__":
    main()
