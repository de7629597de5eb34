#!/usr/bin/env bash
# The Fashion-MNIST benchmarks recorded in docs/results/classification.md (2 CPU cores; wall times there).
# Needs the Debian package dataset-fashion-mnist (IDX files under /usr/share/datasets/fashion-mnist).
set -euo pipefail
cd "$(dirname "$0")/.."
run() { echo "== $*"; /usr/bin/time -f "wall %e s" .venv/bin/denoiserep "$@" --no-progress; }
run classify --config fashion_vit.yaml
run ablate --config ablation_fashion.yaml
run classify --config fashion_resnet.yaml seeds=[0]
run classify --config fashion_vmamba.yaml seeds=[0]
