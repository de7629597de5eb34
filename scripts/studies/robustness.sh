#!/usr/bin/env bash
# At the authors' settings, does DenoiseRep make a model more robust to corrupted images or
# noisy features?
# Results: docs/results/robustness.md, "The first study: the authors' settings" (2 CPU cores,
# one thread per job).
# Rerun, from the repository root: bash scripts/studies/robustness.sh
# Needs the Debian package dataset-fashion-mnist (IDX files under /usr/share/datasets/fashion-mnist).
set -euo pipefail
cd "$(dirname "$0")/../.."
run() { echo "== $*"; OMP_NUM_THREADS=1 /usr/bin/time -f "wall %e s" .venv/bin/denoiserep "$@" --no-progress; }
run ablate --config robust_fashion_vit.yaml &
run ablate --config robust_fashion_resnet.yaml &
wait
run reid --config reid_fashion.yaml --output runs/robust_reid robustness.enabled=true \
    robustness.severities=[1,3,5] finetune.phases=joint
run reid --config reid_fashion.yaml --output runs/robust_reid_label_free_strong \
    robustness.enabled=true robustness.severities=[1,3,5] protocol=label_free \
    finetune.phases=denoiser denoise.timesteps=100 denoise.beta_start=1e-3 denoise.beta_end=0.2 \
    baseline_weights=runs/robust_reid/seed0/baseline/model.safetensors baseline.epochs=0 \
    "arms=[denoiserep]"
