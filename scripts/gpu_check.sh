#!/usr/bin/env bash
# The GPU checks of the training-cost issue, as one script for a lent GPU machine:
#   1. the CUDA tests (fused == eval bit for bit, bf16 joint step, bf16 vs float32 training,
#      bf16 products, a bf16 step under a re-entrant activation checkpoint);
#   2. `denoiserep bench` in bf16 at batch 64 on ViT-B/16, ResNet-50 and Swin-T, one model per
#      run so that what finished survives a time limit;
#   3. the training phases of ViT-B/16 with `denoise.batch_loss=true` (the noise regression
#      scored in groups: fewer kernel launches), against the per-layer rows of step 2, then its
#      denoiser and joint steps with `train.denoiser_optimizer=adafactor` (less memory), then
#      with `denoise.loss_dtype=autocast` (D·x_t on the tensor cores in bf16 instead of float32),
#      then the joint step with torch's default (foreach) AdamW instead of the fused kernel that
#      the bench uses (last: what does not fit the step's limit is lost first), all in
#      bench_batch_loss.md;
#   4. the joint training step under torch.compile (ViT-B/16);
#   5. the structured denoisers (issue 40): the joint step of $LEVER_MODEL with each of
#      $STRUCTURES (`lowrank:64` = denoise.structure=lowrank denoise.rank=64; default
#      "lowrank:64 diagonal"; STRUCTURES="" skips the step), in bench_structure.md, beside the
#      baseline measured in the same run (last: it runs only where time is left; a layer
#      narrower than the rank, such as a ViT's 3-channel patch embedding, takes its width);
#   6. sharded training (issue 41), only with >= 2 GPUs: two joint training steps of
#      $LEVER_MODEL (converted, bf16, global batch $BATCH, random images) under
#      `torchrun --standalone --nproc_per_node=2` with strategy=ddp, then strategy=fsdp, each
#      rank's peak GPU memory over the steps in fsdp.md; with fewer GPUs one line in
#      progress.txt says it was skipped and why.
# Each step has its own time limit (580 s in all on one GPU, under a lent machine's 600 s per
# command; with 2 GPUs step 6 adds 90 s, and no step runs past $BUDGET = 590 s from the start:
# a step's limit is cut to what is left, one with nothing left is skipped) and writes to $OUT
# as it finishes: progress.txt (environment and a line per step), cuda_tests.txt,
# bench_<model>.md, bench_batch_loss.md, bench_compile.md, fsdp.md (2 GPUs), bench_structure.md
# and results_json.tar.gz (every results.json so far): 9 files (10 with 2 GPUs).
# `python3 scripts/bench_summary.py $OUT/results_json.tar.gz` puts every run in one table.
# Usage (repository root, no install needed): OUT=/some/dir bash scripts/gpu_check.sh
# A dry run of the script itself on a CPU before spending GPU time (2 min on 2 cores; the CUDA
# tests skip, every bench step runs on tiny models):
#   DEVICE=cpu MODELS="resnet10t vit_tiny_patch16_224" LEVER_MODEL=resnet10t BATCH=4 \
#     OUT=/tmp/gpu_dry PYTHON=.venv/bin/python bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_check}
WORK=${WORK:-runs/gpu_check_work} # full bench outputs (plots, configs); not copied to $OUT
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
MODELS=${MODELS:-vit_base_patch16_224 resnet50 swin_tiny_patch4_window7_224}
LEVER_MODEL=${LEVER_MODEL:-vit_base_patch16_224} # the model of the lever and compile runs
BATCH=${BATCH:-64}
STRUCTURES=${STRUCTURES-lowrank:64 diagonal} # structure[:rank] of step 5, space separated
BUDGET=${BUDGET:-590} # seconds from the start that no step runs past
mkdir -p "$OUT" "$WORK"
export PYTHONPATH=src PYTHONUNBUFFERED=1
log() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$OUT/progress.txt"; }
# run_step NAME SECONDS OUTFILE COMMAND...: the command's output to OUTFILE, its exit to progress
run_step() {
    local name=$1 limit=$2 out=$3 left=$((BUDGET - SECONDS))
    shift 3
    if [ "$left" -lt 10 ]; then
        log "$name: skipped, under 10 s left of the ${BUDGET} s budget"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    log "$name (limit ${limit} s)"
    timeout "$limit" "$@" > "$out" 2>&1
    log "$name: exit $? (124: stopped at the limit)"
}
pack_json() { (cd "$WORK" && tar czf - */results.json 2>/dev/null) > "$OUT/results_json.tar.gz"; }

{ [ "$DEVICE" = cuda ] && nvidia-smi; "$PY" -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)"; } \
    >> "$OUT/progress.txt" 2>&1
run_step "CUDA tests" 60 "$OUT/cuda_tests.txt" \
    "$PY" -m pytest -q -p no:cacheprovider tests/core/test_cuda.py -k "not cpu"
for model in $MODELS; do
    run_step "bench $model" 85 "$OUT/bench_$model.md" \
        "$PY" -m denoiserep bench --output "$WORK/bench_$model" device=$DEVICE bf16=true \
        "models=[$model]" "batch_sizes=[1,$BATCH]" repeats=20 warmup=5 train.batch_size=$BATCH \
        train.steps=10 train.warmup=2 train.profile_top=12 export=false --no-progress
    pack_json
done
# lever NAME OVERRIDES...: the training phases of $LEVER_MODEL alone (no inference bench), the
# bench's own settings plus OVERRIDES, into $WORK/bench_NAME
lever() {
    local name=$1
    shift
    "$PY" -m denoiserep bench --output "$WORK/bench_$name" device=$DEVICE bf16=true \
        "models=[$LEVER_MODEL]" "variants=[baseline]" "batch_sizes=[1]" repeats=2 \
        train.batch_size=$BATCH train.steps=10 train.warmup=2 "$@" export=false --no-progress
}
levers() {
    lever batch_loss train.profile_top=12 denoise.batch_loss=true
    lever adafactor "train.phases=[denoiser,joint]" train.denoiser_optimizer=adafactor
    lever loss_dtype "train.phases=[denoiser,joint]" denoise.loss_dtype=autocast
    lever unfused "train.phases=[joint]" train.fused_optimizer=false memory=false
}
export -f lever levers
export PY WORK DEVICE LEVER_MODEL BATCH
run_step "bench $LEVER_MODEL: batch_loss, D with Adafactor, D·x_t in bf16, unfused AdamW" 125 \
    "$OUT/bench_batch_loss.md" bash -c levers
pack_json
run_step "bench $LEVER_MODEL, joint step under torch.compile" 80 "$OUT/bench_compile.md" \
    bash -c 'lever "$@"' lever compile "train.phases=[joint]" train.compile=true memory=false
pack_json
# sharded: step 6, two joint steps under torchrun on 2 GPUs, ddp then fsdp (the script below)
sharded() {
    local strategy
    cat > "$WORK/fsdp_steps.py" <<'PYTHON'
import sys
import torch
from torch.utils.data import TensorDataset
import denoiserep as dr
from denoiserep.classification.step import ClassificationStep
from denoiserep.engine import dist
from denoiserep.engine.trainer import TrainConfig, TrainerHook, fit
from denoiserep.models import create_model

strategy, name, batch, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
size = int(sys.argv[5]) if len(sys.argv) > 5 else 224
device = dist.init_distributed()
cuda = device.type == "cuda"
torch.manual_seed(0)
model = create_model(name, num_classes=10, **({"img_size": size} if "vit" in name else {}))
example = torch.randn(1, 3, size, size, device=device)
model = dr.convert(model.to(device), dr.DenoiseConfig(), example)
g = torch.Generator().manual_seed(0)  # two steps of random images, the same on every rank
images = torch.randn(2 * batch, 3, size, size, generator=g)
data = TensorDataset(images, torch.randint(0, 10, (2 * batch,), generator=g))
peaks = []

class Peak(TrainerHook):  # the training steps' peak, not the checkpoint's or the unsharding's
    def after_step(self, trainer, step, logs):
        peaks.append(torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"))

if cuda:
    torch.cuda.reset_peak_memory_stats()
cfg = TrainConfig(epochs=1, batch_size=batch, amp=True, phases="joint", strategy=strategy)
history = fit(model, data, cfg, ClassificationStep(), out, progress=False, hooks=[Peak()])
print(f"| {strategy} | {dist.rank()} | {dist.world_size()} | {len(peaks)} | {max(peaks):.2f} "
      f"| {history[-1]['loss']:.4f} |", flush=True)
PYTHON
    echo "| strategy | rank | processes | steps | peak GPU memory (GiB) | loss |"
    echo "| --- | --- | --- | --- | --- | --- |"
    for strategy in ddp fsdp; do
        "$PY" -m torch.distributed.run --standalone --nproc_per_node=2 "$WORK/fsdp_steps.py" \
            "$strategy" "$LEVER_MODEL" "$BATCH" "$WORK/fsdp_$strategy" || echo "$strategy: exit $?"
    done
}
export -f sharded
gpus=0
[ "$DEVICE" = cuda ] && gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
if [ "$gpus" -ge 2 ]; then
    run_step "sharded training of $LEVER_MODEL on 2 GPUs: ddp, then fsdp" 90 "$OUT/fsdp.md" \
        bash -c sharded
else
    log "sharded training (fsdp vs ddp): skipped, it needs 2 GPUs and this machine has" \
        "$gpus (DEVICE=$DEVICE)"
fi
# structures: the joint step with each structured denoiser (a structure:rank word per lever)
structures() {
    local word structure rank
    for word in $STRUCTURES; do
        structure=${word%%:*}
        rank=${word#*:}
        if [ "$rank" = "$word" ]; then
            lever "structure_$structure" "train.phases=[joint]" "denoise.structure=$structure"
        else
            lever "structure_${structure}_$rank" "train.phases=[joint]" \
                "denoise.structure=$structure" "denoise.rank=$rank"
        fi
    done
}
export -f structures
export STRUCTURES
if [ -n "$STRUCTURES" ]; then
    run_step "bench $LEVER_MODEL, structured denoisers: $STRUCTURES" 60 \
        "$OUT/bench_structure.md" bash -c structures
    pack_json
fi
log "done"
