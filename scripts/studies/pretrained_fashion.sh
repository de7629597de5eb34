#!/usr/bin/env bash
# Does the offline route (model.checkpoint, a head of another class count re-initialised) work
# end to end, and does DenoiseRep beat the control when the baseline starts from pretrained weights?
# Results: docs/results/pretrained-fashion.md (the whole page).
# Rerun, from the repository root: bash scripts/studies/pretrained_fashion.sh
# Pretrain a small ViT on Fashion-MNIST classes 0-5,
# then fine-tune it on classes 6-9 from that checkpoint (head re-initialised: 6 -> 4 classes),
# with the control arm. Needs the Debian package dataset-fashion-mnist.
set -euo pipefail
cd "$(dirname "$0")/../.."
run() { echo "== $*"; OMP_NUM_THREADS=1 /usr/bin/time -f "wall %e s" .venv/bin/denoiserep "$@" --no-progress; }
run classify --config fashion_vit.yaml --output runs/pretrain_fashion_0to5 \
    "data.options.subset=[0,1,2,3,4,5]" "arms=[]" "seeds=[0]"
run classify --config fashion_vit.yaml --output runs/finetune_fashion_6to9 \
    "data.options.subset=[6,7,8,9]" \
    model.checkpoint=runs/pretrain_fashion_0to5/seed0/baseline/model.safetensors \
    baseline.epochs=2 "seeds=[0,1,2]"
