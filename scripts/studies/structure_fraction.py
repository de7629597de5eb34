"""How much of the full D's noise-prediction loss reduction does each structure reach, per layer?

Results: docs/results/structured-denoisers.md, "Quality". Rerun, from the
repository root, on the runs of ``robustness_denoisers.sh structures`` (its baselines):

    .venv/bin/python scripts/studies/structure_fraction.py runs/robust_structures/vit
    .venv/bin/python scripts/studies/structure_fraction.py runs/robust_structures/resnet

For every target layer of each seed's baseline, each structure's D is fitted in closed form
(``dr.fit_denoisers``, strong schedule, as the study's label-free arms use) on the training
images; its loss is then the exact expectation over the noise on the *test* images' second
moment M: L(D) = (a² tr(D M Dᵀ) + b² tr(D Dᵀ) − 2b tr(D)) / C + 1 (per element; 1 at D = 0).
Printed: 1 − L of each structure over 1 − L of the full D (the fraction of full's reduction),
per layer and summarised. Grouped layers are compared block by block as their D is stored.

    .venv/bin/python scripts/studies/structure_fraction.py RUN_DIR [--rank 16] [--seeds 0 1]

With ``--paired``: each structured arm of the run minus its full-D arm (clean top-1, mCA,
mFA; paired over seeds), from ``results.json`` alone.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch
from seed_study import paired_table, run_seeds, saved_model

import denoiserep as dr
from denoiserep.core.closed_form import SecondMoment
from denoiserep.core.diagnostics import layer_inputs

STRONG = {"timesteps": 100, "beta_start": 1.0e-3, "beta_end": 0.2}


@torch.no_grad()
def test_losses(model: torch.nn.Module, exp: dict, sets: object, structure: dict) -> dict:
    """layer name -> (t, expected loss per element on the test images) of the closed-form D."""
    train = list(sets.train.tensors[0].split(500))
    test = list(sets.test.tensors[0].split(500))
    config = dr.DenoiseConfig(**{**exp["denoise"], **STRONG, **structure})
    converted = dr.convert(copy.deepcopy(model), config, example_input=train[0][:2])
    dr.fit_denoisers(converted, train)
    layers = dr.denoise_layers(converted)
    moments = {name: SecondMoment(layer) for name, layer in layers.items()}
    # the test inputs as the fit saw the training ones: the baseline's forward (phase denoiser,
    # layers in training mode, everything else in eval)
    with layer_inputs(converted, lambda name, x: moments[name].add(x)):
        converted.eval()
        for layer in layers.values():
            layer.phase = "denoiser"
            layer.train()
        for batch in test:
            converted(batch)
    out = {}
    for name, layer in layers.items():
        a, b = layer.noise_coefficients
        m = moments[name].sum / moments[name].tokens  # (groups, cg, cg)
        d = layer.D.detach().to(torch.float64).unflatten(0, (m.shape[0], -1))
        quad = torch.einsum("gij,gjk,gik->", d, m, d)
        c = d.shape[0] * d.shape[1]
        loss = (a * a * quad + b * b * d.square().sum() - 2 * b * torch.einsum("gii->", d)) / c
        out[name] = (layer.t, float(loss) + 1.0)
    return out


def paired_against_full(run: Path) -> str:
    """Each structured arm minus its full-D arm (same variant, same seed): clean top-1, mCA and
    mFA (mean accuracy under feature noise), mean over seeds with the paired t-test's p."""
    per_seed = json.loads((run / "results.json").read_text())["per_seed"]
    columns = ["acc1", "mCA", "mFA"]
    results = [
        {arm: [scores[c] for c in columns] for arm, scores in arms.items()}
        for arms in per_seed.values()
    ]
    arms = list(next(iter(per_seed.values())))
    pairs = [
        (arm, base)
        for base in ("label_free_strong", "joint")
        for arm in arms
        if arm.startswith(base + "_") and arm[len(base) + 1 :] in ("diagonal", "lowrank16")
    ]
    return f"{run}: {len(results)} seeds\n" + paired_table(results, pairs, columns)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--seeds", type=int, nargs="*", help="only these seeds (default: all)")
    parser.add_argument(
        "--paired", action="store_true", help="only the arms' paired differences to full D"
    )
    args = parser.parse_args()
    if args.paired:
        for run in args.runs:
            print(paired_against_full(run))
        return
    structures = {
        "diagonal": {"structure": "diagonal"},
        f"lowrank{args.rank}": {"structure": "lowrank", "rank": args.rank},
    }
    for exp, sets, seed_dir in run_seeds(args.runs):
        if args.seeds is not None and int(seed_dir.name.removeprefix("seed")) not in args.seeds:
            continue
        model = saved_model(exp, sets, seed_dir / "baseline")
        full = test_losses(model, exp, sets, {"structure": "full"})
        fractions = {s: test_losses(model, exp, sets, cfg) for s, cfg in structures.items()}
        print(f"\n{seed_dir.parent.name}/{seed_dir.name}: fraction of full D's loss reduction")
        print(f"  {'t':>3}  {'full 1-L':>8}  " + "  ".join(f"{s:>10}" for s in structures))
        summary: dict[str, list[float]] = {s: [] for s in structures}
        for name, (t, lf) in sorted(full.items(), key=lambda kv: -kv[1][0]):
            cells = []
            for s in structures:
                frac = (1.0 - fractions[s][name][1]) / (1.0 - lf)
                summary[s].append(frac)
                cells.append(f"{frac:10.3f}")
            print(f"  {t:3d}  {1.0 - lf:8.4f}  " + "  ".join(cells) + f"  {name}")
        for s, vals in summary.items():
            vals.sort()
            mean = sum(vals) / len(vals)
            print(f"  {s}: min {vals[0]:.3f}, median {vals[len(vals) // 2]:.3f}, mean {mean:.3f}")


if __name__ == "__main__":
    main()
