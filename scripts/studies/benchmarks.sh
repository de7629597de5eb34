#!/usr/bin/env bash
# At the authors' settings, does DenoiseRep beat the baseline and a control fine-tuned for the
# same extra epochs, on Fashion-MNIST (small ViT, small ResNet, VMamba; and the ablation)?
# Results: docs/results/classification.md, every section ("Small ViT", "Small ResNet", "VMamba";
# 2 CPU cores, wall times there); the ablation run's table is in docs/results/ablation.md.
# Rerun, from the repository root: bash scripts/studies/benchmarks.sh
# Needs the Debian package dataset-fashion-mnist (IDX files under /usr/share/datasets/fashion-mnist).
set -euo pipefail
cd "$(dirname "$0")/../.."
run() { echo "== $*"; /usr/bin/time -f "wall %e s" .venv/bin/denoiserep "$@" --no-progress; }
run classify --config fashion_vit.yaml
run ablate --config ablation_fashion.yaml
run classify --config fashion_resnet.yaml seeds=[0]
run classify --config fashion_vmamba.yaml seeds=[0]
