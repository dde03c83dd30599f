#!/usr/bin/env bash
# The committed latency reports:
#
# * benchmarks/results/profile_<model>_cpu/: T2T-ViT-7 and -12 at 224 px (ImageNet's 1000 classes),
#   batch 1 and 8, 2 threads, every CPU format plus the straightforward formulation, and the
#   project's own speed targets (benchmarks/targets.py). Latency,
#   memory and MAC rate do not depend on the weights, and no ImageNet weights can be downloaded
#   here, so these are random weights: accuracy and agreement are left out of these reports.
#   (Training the digits at 224 px does not fit a CPU budget: from scratch or fine-tuned from the
#   32 px model, one epoch at 224 px stayed at chance, 10-11%.)
# * benchmarks/results/compress_demo_cpu/: the report of `t2t compress --demo`, a distilled
#   T2T-ViT-7 trained on the digits at 32 px: there accuracy and int8 agreement are real;
#   benchmarks/results/compress_demo_reference_cpu/ adds the reference row (the official
#   formulation with the student's weights) to that export, with its agreement on the digits.
#
#   bash benchmarks/profile_digits.sh                 # both, ~25 minutes on 2 CPU cores
#   bash benchmarks/profile_digits.sh t2t_vit_7       # one model at 224 px only
#
# Run it on a quiet machine: the report measures every artifact interleaved, which cancels slow
# drift, but not a neighbour that takes the cores away.
set -euo pipefail
cd "$(dirname "$0")/.."
models=("${@:-t2t_vit_7 t2t_vit_12}")
for model in ${models[@]}; do
  export_dir=runs/profile_digits/$model
  [ -f "$export_dir/manifest.json" ] || t2t export --model "$model" --img-size 224 --formats cpu \
    --batch 1,1,8 --out "$export_dir"
  python -m benchmarks.targets "$export_dir" --batch-sizes 1,8 --threads 2 --duration 6 --rounds 6 \
    --out "benchmarks/results/profile_${model}_cpu"
done
if [ $# -eq 0 ]; then
  rm -rf runs/profile_digits/demo
  t2t compress --demo --threads 2 --out runs/profile_digits/demo
  rm -rf benchmarks/results/compress_demo_cpu
  cp -r runs/profile_digits/demo/report benchmarks/results/compress_demo_cpu
  rm -f benchmarks/results/compress_demo_cpu/stage.json
  # The trained student beside the official formula with the same weights (the reference row):
  # its agreement column is how often the two formulations give the same digit.
  python -m benchmarks.targets runs/profile_digits/demo/export --data digits --batch-sizes 1,8 --threads 2 \
    --duration 1 --rounds 4 --out benchmarks/results/compress_demo_reference_cpu
fi
