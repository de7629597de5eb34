#!/usr/bin/env bash
# The GPU checks of the training-cost issue, as one script for a lent GPU machine:
#   1. the CUDA tests (fused == eval bit for bit, bf16 joint step, bf16 vs float32 training,
#      bf16 products);
#   2. `denoiserep bench` in bf16 at batch 64 on ViT-B/16, ResNet-50 and Swin-T, one model per
#      run so that what finished survives a time limit;
#   3. the same training measurement under torch.compile (ViT-B/16).
# Every result is written to $OUT (default runs/gpu_check) as soon as it exists.
# Usage (repository root): OUT=/some/dir bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
export PYTHONPATH=src
log() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$OUT/progress.txt"; }

log "device"
{ nvidia-smi; python -c "import torch, timm; print(torch.__version__, timm.__version__)"; } \
    > "$OUT/environment.txt" 2>&1
log "CUDA tests"
python -m pytest -q -p no:cacheprovider tests/core/test_cuda.py > "$OUT/cuda_tests.txt" 2>&1
log "CUDA tests: exit $?"
for model in vit_base_patch16_224 resnet50 swin_tiny_patch4_window7_224; do
    log "bench $model"
    python -m denoiserep bench --output "$OUT/bench_$model" device=cuda bf16=true \
        "models=[$model]" "batch_sizes=[1,64]" repeats=20 warmup=5 train.batch_size=64 \
        train.steps=10 train.warmup=2 train.profile_top=12 export=false --no-progress \
        > "$OUT/bench_$model.txt" 2>&1
    log "bench $model: exit $?"
done
log "bench vit_base_patch16_224 under torch.compile"
python -m denoiserep bench --output "$OUT/bench_compile" device=cuda bf16=true \
    "models=[vit_base_patch16_224]" "variants=[baseline]" "batch_sizes=[1]" repeats=2 \
    train.batch_size=64 train.steps=10 train.warmup=2 train.compile=true export=false \
    --no-progress > "$OUT/bench_compile.txt" 2>&1
log "compile bench: exit $?"
