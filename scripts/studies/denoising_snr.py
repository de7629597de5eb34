"""How much isotropic feature noise do the closed-form strong-schedule steps remove, per layer?

Results: docs/results/robustness.md, "Does the ViT fail to denoise?". Rerun, from the
repository root, on the runs of ``robustness_denoisers.sh closed_form`` (commands on that page):

    .venv/bin/python scripts/studies/denoising_snr.py runs/robust_cf_bits/resnet
    .venv/bin/python scripts/studies/denoising_snr.py runs/robust_cf_bits/vit

For every target layer of each seed's baseline: the second moment M of the layer's input over
the training images, the closed-form denoiser of the strong schedule
(``dr.fit_denoisers``, as ``robustness_denoisers.sh closed_form`` fits it) and its reverse step
A_t. Isotropic noise n added to the input (what the feature-noise evaluation adds) leaves the
step with signal power tr(A M Aᵀ) and noise power σ² tr(A Aᵀ); the printed gain is the
signal-to-noise ratio after the step over the one before, tr(A M Aᵀ) / tr(A Aᵀ) / (tr(M) / C),
whatever σ. Grouped layers are skipped.

    .venv/bin/python scripts/studies/denoising_snr.py RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
from seed_study import run_seeds, saved_model

import denoiserep as dr
from denoiserep.core.closed_form import SecondMoment
from denoiserep.core.diagnostics import layer_inputs

STRONG = {"timesteps": 100, "beta_start": 1.0e-3, "beta_end": 0.2}


@torch.no_grad()
def snr_gains(exp: dict, sets: object, baseline: Path) -> list[tuple[str, int, float]]:
    """(layer, t, SNR gain of its fitted step under isotropic noise) in execution order, for
    the baseline saved in the arm folder ``baseline``."""
    model = saved_model(exp, sets, baseline)
    images = list(sets.train.tensors[0].split(500))
    config = dr.DenoiseConfig(**{**exp["denoise"], **STRONG})
    converted = dr.convert(copy.deepcopy(model), config, example_input=images[0][:2])
    layers = dr.denoise_layers(converted)
    moments = {name: SecondMoment(layer) for name, layer in layers.items()}
    # M from the inputs fit_denoisers itself sees (its pass runs the baseline's weights)
    with layer_inputs(converted, lambda name, x: moments[name].add(x)):
        dr.fit_denoisers(converted, images)
    out = []
    for name, layer in sorted(layers.items(), key=lambda kv: -kv[1].t):
        if layer.D.shape[0] != layer.D.shape[1]:
            continue
        m = moments[name].sum[0] / moments[name].tokens
        a = layer.reverse_matrix(torch.float64)
        before = torch.trace(m) / m.shape[0]
        after = torch.trace(a @ m @ a.T) / torch.trace(a @ a.T)
        out.append((name, layer.t, float(after / before)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    for exp, sets, seed_dir in run_seeds(args.runs):
        gains = snr_gains(exp, sets, seed_dir / "baseline")
        values = sorted(g for _, _, g in gains)
        print(f"\n{seed_dir.parent.name}/{seed_dir.name}: SNR gain per layer (execution order)")
        for name, t, gain in gains:
            print(f"  t={t:3d}  {gain:6.3f}  {name}")
        print(f"  min {values[0]:.3f}, median {values[len(values) // 2]:.3f}, max {values[-1]:.3f}")


if __name__ == "__main__":
    main()
