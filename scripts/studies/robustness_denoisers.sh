#!/usr/bin/env bash
# Does denoising help once the denoisers are trained further, or set to their optimum?
# Results: docs/results/robustness.md, "Denoisers at their optimum: where denoising helps"
# (adafactor, closed_form) and "Does the ViT fail to denoise?" (main_path); each table there gives
# the exact command, e.g. (from the repository root):
#   bash scripts/studies/robustness_denoisers.sh closed_form
# Denoisers trained further than robustness.sh's, on the same data, seeds,
# baselines and controls (robust_fashion_{vit,resnet}.yaml; the two backbones side by side, one
# thread each, about 15 min on 2 cores per study).
#   bash scripts/studies/robustness_denoisers.sh adafactor [OUT [OVERRIDE ...]]    # D with its own Adafactor
#   bash scripts/studies/robustness_denoisers.sh closed_form [OUT [OVERRIDE ...]]  # D at its optimum
#   MODELS="resnet10t resnet18" bash scripts/studies/robustness_denoisers.sh main_path [OUT [OVERRIDE ...]]
#     # D at its optimum on all layers, or on a ResNet's main path only (stem, shortcuts, fc;
#     # t stride 2 so its steps span the timesteps all layers have), then joint epochs
#   bash scripts/studies/robustness_denoisers.sh structures [OUT [OVERRIDE ...]]
#     # full D against diagonal and low-rank 16 (docs/results/training-cost.md, "Structured
#     # denoisers"), label-free (strong schedule) and joint
# OVERRIDEs go to both runs, e.g. "experiment.seeds=[3,4,5]" for more seeds.
# MODELS="resnet18 mobilenetv3_large_100" runs robust_fashion_resnet.yaml's study with each of these timm
# models instead of the two backbones (side by side, one thread each; outputs OUT/<model>).
set -euo pipefail
cd "$(dirname "$0")/../.."
study=${1:?usage: robustness_denoisers.sh adafactor|closed_form|main_path|structures [OUT]}
out=${2:-runs/robust_$study}
shift $(($# < 2 ? $# : 2))
strong="denoise: {timesteps: 100, beta_start: 1.0e-3, beta_end: 0.2}"
case $study in
adafactor) variants="variants={
  label_free_strong: {finetune: {phases: denoiser}, $strong},
  label_free_strong_adafactor: {finetune: {phases: denoiser, denoiser_optimizer: adafactor}, $strong},
  joint_strong_adafactor: {finetune: {phases: joint, denoiser_optimizer: adafactor}, $strong}}" ;;
closed_form) variants="variants={
  label_free_closed_form: {finetune: {phases: denoiser, epochs: 0, denoiser_init: closed_form}},
  label_free_strong_closed_form: {finetune: {phases: denoiser, epochs: 0, denoiser_init: closed_form}, $strong},
  joint_strong_closed_form: {finetune: {phases: joint, denoiser_init: closed_form}, $strong}}" ;;
main_path) main="timestep_stride: 2, targets: main_path"
  variants="variants={
  joint_strong_closed_form: {finetune: {phases: joint, denoiser_init: closed_form}, $strong},
  label_free_main_closed_form: {finetune: {phases: denoiser, epochs: 0, denoiser_init: closed_form},
    denoise: {timesteps: 100, beta_start: 1.0e-3, beta_end: 0.2, $main}},
  joint_main_closed_form: {finetune: {phases: joint, denoiser_init: closed_form},
    denoise: {timesteps: 100, beta_start: 1.0e-3, beta_end: 0.2, $main}}}" ;;
structures) variants="variants={
  label_free_strong: {finetune: {phases: denoiser}, $strong},
  label_free_strong_diagonal: {finetune: {phases: denoiser},
    denoise: {timesteps: 100, beta_start: 1.0e-3, beta_end: 0.2, structure: diagonal}},
  label_free_strong_lowrank16: {finetune: {phases: denoiser},
    denoise: {timesteps: 100, beta_start: 1.0e-3, beta_end: 0.2, structure: lowrank, rank: 16}},
  joint: {finetune: {phases: joint}},
  joint_diagonal: {finetune: {phases: joint}, denoise: {structure: diagonal}},
  joint_lowrank16: {finetune: {phases: joint}, denoise: {structure: lowrank, rank: 16}}}" ;;
*) echo "unknown study $study: adafactor, closed_form, main_path or structures" >&2; exit 2 ;;
esac
mkdir -p "$out"
run() { # NAME CONFIG [OVERRIDE ...]
  OMP_NUM_THREADS=1 /usr/bin/time -f "$1: wall %e s" .venv/bin/denoiserep ablate --no-progress \
    --config "robust_fashion_$2.yaml" --output "$out/$1" "$variants" "${@:3}"; }
if [[ -n ${MODELS:-} ]]; then
  for m in $MODELS; do run "$m" resnet "experiment.model.name=$m" "$@" > "$out/$m.log" 2>&1 & done
else
  run vit vit "$@" > "$out/vit.log" 2>&1 &
  run resnet resnet "$@" > "$out/resnet.log" 2>&1 &
fi
wait
for log in "$out"/*.log; do tail -n 1 "$log"; done
