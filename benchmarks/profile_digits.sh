#!/usr/bin/env bash
# The committed latency reports (benchmarks/results/profile_<model>_cpu/): T2T-ViT-7 and -12 at 224 px,
# batch 1 and 8, 2 threads, every CPU format, with accuracy measured on the bundled digits.
#
# Accuracy needs a model that has learnt something, and training at 224 px does not fit a CPU:
# each model is trained on the digits at 32 px (the bundled recipe, 12 epochs), then fine-tuned
# for one epoch at 224 px (the position table is regenerated for the new size). Latency does not
# depend on the weights.
#
#   bash benchmarks/profile_digits.sh                 # both models, ~40 minutes on 2 CPU cores
#   bash benchmarks/profile_digits.sh t2t_vit_7       # one
#
# Run it on a quiet machine: the report measures every artifact interleaved, which cancels slow
# drift, but not a neighbour that takes the cores away.
set -euo pipefail
cd "$(dirname "$0")/.."
models=("${@:-t2t_vit_7 t2t_vit_12}")
for model in ${models[@]}; do
  runs=runs/profile_digits/$model
  [ -f "$runs/32/best.pth" ] || t2t train digits --config digits --model "$model" --output "$runs/32"
  [ -f "$runs/224/best.pth" ] || t2t train digits --config digits --model "$model" --img-size 224 \
    --finetune "$runs/32/best.pth" --backbone-lr-scale 1.0 --lr 2e-4 --warmup-epochs 0 --epochs 1 \
    -b 32 --output "$runs/224"
  [ -f "$runs/export/manifest.json" ] || t2t export --checkpoint "$runs/224/best.pth" --formats cpu \
    --batch 1,1,8 --out "$runs/export"
  t2t bench "$runs/export" --reference --data digits --batch-sizes 1,8 --threads 2 --duration 6 --rounds 6 \
    --out "benchmarks/results/profile_${model}_cpu"
done
