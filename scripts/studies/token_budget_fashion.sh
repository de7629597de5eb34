#!/usr/bin/env bash
# How much does a per-layer token budget (denoise.loss_tokens) cost the denoiser on real features?
# Results: docs/results/training-cost.md, "The full record", the items "A token budget for the
# noise regression" and (with finetune.denoiser_optimizer=adafactor) "The denoisers' own
# optimizer". Rerun, from the repository root: bash scripts/studies/token_budget_fashion.sh
# One Fashion-MNIST ViT baseline (fashion_vit.yaml, seed 0), then 4 label-free
# epochs of the denoisers (strong schedule, so that D learns visibly) with all tokens (0) and with
# budgets of 256, 64 and 16 tokens per layer and step; compare the `ploss` of the last epoch in
# each run's results.json (histories -> "0" -> denoiserep). Last, the same denoisers set to the
# optimum of their expected loss in one pass (finetune.denoiser_init=closed_form, no epochs): the
# loss that training approaches. Needs dataset-fashion-mnist.
#
#   bash scripts/studies/token_budget_fashion.sh [OUT [OVERRIDE ...]]
# OVERRIDEs go to every denoiser run, e.g. finetune.denoiser_optimizer=adafactor.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-runs/token_budget}
shift || true
run() { OMP_NUM_THREADS=1 .venv/bin/denoiserep classify --config fashion_vit.yaml --no-progress "$@"; }
run --output "$out/base" "seeds=[0]" "arms=[control]"
for tokens in 0 256 64 16; do
    run --output "$out/tokens$tokens" "seeds=[0]" "arms=[denoiserep]" \
        baseline_weights="$out/base/seed0/baseline/model.safetensors" baseline.epochs=0 \
        finetune.phases=denoiser finetune.epochs=4 finetune.lr=1e-3 \
        denoise.timesteps=100 denoise.beta_start=1e-3 denoise.beta_end=0.2 \
        denoise.loss_tokens=$tokens "$@"
done
run --output "$out/closed_form" "seeds=[0]" "arms=[denoiserep]" \
    baseline_weights="$out/base/seed0/baseline/model.safetensors" baseline.epochs=0 \
    finetune.phases=denoiser finetune.epochs=0 finetune.denoiser_init=closed_form \
    denoise.timesteps=100 denoise.beta_start=1e-3 denoise.beta_end=0.2 2>&1 | grep "closed form"
.venv/bin/python - "$out" <<'PY'
import json, sys
for tokens in (0, 256, 64, 16):
    r = json.load(open(f"{sys.argv[1]}/tokens{tokens}/results.json"))
    last = r["histories"]["0"]["denoiserep"][-1]["ploss"]
    print(f"loss_tokens {tokens:4d}: last-epoch summed noise-prediction loss {last:.3f}")
PY
