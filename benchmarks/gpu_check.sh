#!/usr/bin/env bash
# The first run on a GPU: proves the trainer, then the CUDA and TensorRT deploy paths, in this order.
# Nothing here has run on a GPU yet. On CPU (`--device cpu`, 2 shared cores) the script ran steps 1 (fp32 and
# bf16 only), 2 (alone), and 3-7 (STEPS="3 4 5 6 7 8": every step passed, exit status 0).
#
#   bash benchmarks/gpu_check.sh                 # on one CUDA GPU; results under benchmarks/results/gpu/
#   TRT_SPECS="tensorrt-cu13==10.16.1.11" bash benchmarks/gpu_check.sh   # pip-install TensorRT first (step 8)
#   bash benchmarks/gpu_check.sh --device cpu    # dry run: tiny sizes, results under runs/gpu_check_cpu/results
#
# Needs the project installed (`pip install -e ".[test]"`, plus `.[tensorrt]` for step 8). Budget: about
# 10 minutes on one H100 (an estimate from step counts, not yet measured). Steps, each a result file under
# benchmarks/results/gpu/<step>/ holding the command that made it (all commands: commands.txt):
#
# 1. precision matrix on the digits, 2 epochs each: fp32 (TF32), bf16, fp16, bf16 + --compile, for t2t_vit_7
#    and t2t_vit_t_14 (the smallest variant with the transformer T2T module; there is no t2t_vit_t_7):
#    finite loss, top-1 at least the CPU figure less MARGIN points, 0 non-finite steps, overflow count,
#    img/s, peak memory, recompiles (TORCH_LOGS=recompiles);
# 2. numerics at 224: t2t_vit_14, batch 64, fp16/bf16 autocast logits against float64 (at most twice the
#    CPU figures 1.3e-3 / 9.4e-3), gradients finite, the GradScaler's scale over 200 fp16 steps;
# 3. the fp16 NaN guard stopping an injected divergence (gradients inf at every scale);
# 4. distillation from a resnet18 teacher trained here, --amp, hard and soft: the teacher's state (BN
#    buffers included) unchanged, the teacher's share of the training time;
# 5. resume in fp16 with EMA and drop path: 3 epochs straight vs 2 + 1, with --deterministic (must be
#    bit-exact) and without (the difference is recorded);
# 6. training throughput: benchmarks/bench_train.py --device cuda --official (ours vs the official code);
# 7. DDP mechanics on one GPU: two torchrun processes sharing it over gloo (plus --sync-bn on a CNN);
# 8. TensorRT: tests/test_tensorrt.py with nothing skipped, `t2t export` of torch, onnx and the three
#    engines (and tensorrt-int8 with --max-drop 1), the engine inspector's JSON, `t2t bench` on CUDA (torch
#    eager and the engines).
#
# A step whose prerequisite is missing fails and says which; every step runs even when an earlier one
# failed. Exit status 1 if any step failed (2: no GPU), listing the failed steps.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

device=cuda
if [ "${1:-}" = "--device" ]; then
  device=${2:?--device needs cpu or cuda}
fi
MARGIN=${MARGIN:-3}             # top-1 points a GPU run may fall short of the CPU figure (not bit-identical)
# The CPU figures: top-1 after 2 epochs of `t2t train digits --config digits`, measured on CPU, with the command.
cpu_figures=${CPU_FIGURES:-benchmarks/results/digits_2_epochs_cpu.json}
declare -A cpu_top1=()
for m in t2t_vit_7 t2t_vit_t_14; do  # a missing figure fails that model's verdicts in step 1
  cpu_top1[$m]=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]]['top1'])" \
    "$cpu_figures" "$m" 2>/dev/null) || cpu_top1[$m]=""
done

if [ "$device" = cuda ]; then
  res=benchmarks/results/gpu
  runs=runs/gpu_check
  quick=()                      # the real sizes
  precisions="fp32 bf16 fp16 bf16-compile"
  if ! nvidia-smi >/dev/null 2>&1 || ! python -c "import torch; assert torch.cuda.is_available()"; then
    echo "gpu_check: no working CUDA GPU (nvidia-smi and torch.cuda); run with --device cpu for a dry run"
    exit 2
  fi
else
  res=runs/gpu_check_cpu/results
  runs=runs/gpu_check_cpu
  quick=(--steps-per-epoch 3 -b 16)  # enough to pass through every code path
  precisions="fp32 bf16 fp16"   # --compile on 2 shared cores takes minutes: GPU only
  MARGIN=100
fi
STEPS=${STEPS:-1 2 3 4 5 6 7 8}  # e.g. STEPS="5 8" reruns steps 5 and 8 (a later step reuses step 1's model)
want() { [[ " $STEPS " == *" $1 "* ]]; }
if [ "$STEPS" = "1 2 3 4 5 6 7 8" ]; then rm -rf "$res" "$runs"; fi
mkdir -p "$res" "$runs"
if [ "$device" = cuda ]; then nvidia-smi >"$res/nvidia-smi.txt" 2>&1; fi
status=0
failed=()

step() {  # step NAME CMD...: log the command, run it, remember a failure and go on
  local name=$1
  shift
  echo "== $name: $*"
  printf '%s\t%s\n' "$name" "$*" >>"$res/commands.txt"
  "$@"
  local rc=$?
  if [ $rc -ne 0 ]; then
    echo "!! $name failed (exit status $rc)"
    status=1
    failed+=("$name")
    return 1
  fi
}

need() {  # need NAME FILE...: a step's prerequisite files, or a failure naming the missing one
  local name=$1 f
  shift
  for f in "$@"; do
    if [ ! -e "$f" ]; then
      echo "!! $name failed: its prerequisite $f is missing (an earlier step failed)"
      status=1
      failed+=("$name")
      return 1
    fi
  done
}

# shellcheck disable=SC2317  # called through step
logged() {  # logged LOG CMD...: run with the console in LOG (its last lines shown), keep the exit status
  local log=$1
  shift
  "$@" >"$log" 2>&1
  local rc=$?
  tail -n 2 "$log"
  return "$rc"
}

# ---------------------------------------------------------------- 1. precision matrix
if want 1; then
  for model in t2t_vit_7 t2t_vit_t_14; do
    for prec in $precisions; do
      name=$model-$prec
      case $prec in
        fp32) flags=() ;;
        bf16) flags=(--amp --amp-dtype bf16) ;;
        fp16) flags=(--amp --amp-dtype fp16) ;;
        bf16-compile) flags=(--amp --amp-dtype bf16 --compile) ;;
      esac
      rm -rf "$runs/matrix/$name"
    cmd=(t2t train digits --config digits --model "$model" --epochs 2 --device "$device" "${quick[@]}"
        "${flags[@]}" --output "$runs/matrix/$name")
      if ! step "1 train $name" logged "$runs/matrix-$name.log" env TORCH_LOGS=recompiles "${cmd[@]}"; then
        continue
      fi
      if [ -z "${cpu_top1[$model]}" ]; then
        echo "!! 1 verdict $name failed: no CPU top-1 figure for $model in $cpu_figures"
        status=1
        failed+=("1 verdict $name")
      else
        step "1 verdict $name" python -m benchmarks.gpu_check run-summary "$name" "$runs/matrix/$name" \
          --console "$runs/matrix-$name.log" --train-command "${cmd[*]}" \
          --min-top1 "$(python -c "print(max(0.0, ${cpu_top1[$model]} - $MARGIN))")" --out "$res/1-precision"
      fi
    done
  done
fi

# ---------------------------------------------------------------- 2. numerics at 224
if want 2; then
  if [ "$device" = cuda ]; then
    step "2 numerics" python -m benchmarks.gpu_check numerics --device cuda --out "$res/2-numerics"
  else
    step "2 numerics" python -m benchmarks.gpu_check numerics --device cpu --img-size 32 --batch 2 --steps 3 \
      --out "$res/2-numerics"
  fi
fi

# ---------------------------------------------------------------- 3. the fp16 NaN guard
if want 3; then
  step "3 nan guard" python -m benchmarks.gpu_check nan-guard --device "$device" --out "$res/3-nan-guard"
fi

# ---------------------------------------------------------------- 4. distillation
if want 4; then
  teacher=$runs/teacher/best.pth
  rm -rf "$runs/teacher" "$runs"/distill-*
  step "4 teacher" logged "$runs/teacher.log" t2t train digits --config digits --model resnet18 --epochs 3 \
    --device "$device" "${quick[@]}" --output "$runs/teacher"
  for kind in hard soft; do
    if need "4 distill $kind" "$teacher"; then
      step "4 distill $kind" python -m benchmarks.gpu_check distill --out "$res/4-distill" digits "$teacher" \
        "$runs/distill-$kind" --amp --distillation-type "$kind" --epochs 2 --device "$device" "${quick[@]}"
    fi
  done
fi

# ---------------------------------------------------------------- 5. resume in fp16
if want 5; then
  for det in plain deterministic; do
    extra=()
    exact=()
    if [ "$det" = deterministic ] || [ "$device" = cpu ]; then exact=(--exact); fi  # CPU is always exact
    if [ "$det" = deterministic ]; then extra=(--deterministic); fi
    rm -rf "$runs/resume-$det"
    base=(t2t train digits --config digits --epochs 3 --amp --amp-dtype fp16 --model-ema --model-ema-decay 0.9
      --drop-path 0.1 --device "$device" "${quick[@]}" "${extra[@]}")
    step "5 resume $det: 3 epochs" logged "$runs/resume-$det-straight.log" "${base[@]}" \
      --output "$runs/resume-$det/straight"
    if need "5 resume $det: 2 + 1" "$runs/resume-$det/straight/checkpoint-1.pth"; then
      step "5 resume $det: 2 + 1" logged "$runs/resume-$det-resumed.log" "${base[@]}" \
        --output "$runs/resume-$det/resumed" --resume "$runs/resume-$det/straight/checkpoint-1.pth"
    fi
    if need "5 resume $det: compare" "$runs/resume-$det/straight/last.pth" "$runs/resume-$det/resumed/last.pth"; then
      step "5 resume $det: compare" python -m benchmarks.gpu_check compare "fp16-$det" \
        "$runs/resume-$det/straight/last.pth" "$runs/resume-$det/resumed/last.pth" "${exact[@]}" --out "$res/5-resume"
    fi
  done

  if [ "$device" = cuda ]; then  # the trainer's GPU tests (RNG per rank, fp16 guard, deterministic resume)
    mkdir -p "$res/5-resume"
    step "5 gpu tests" logged "$res/5-resume/pytest-gpu.txt" python -m pytest -q -rs -m gpu tests/test_train.py \
      tests/test_distill.py
    if grep -q "SKIPPED" "$res/5-resume/pytest-gpu.txt"; then
      echo "!! 5 gpu tests: skipped on a GPU machine (see $res/5-resume/pytest-gpu.txt)"
      status=1
      failed+=("5 gpu test skips")
    fi
  fi
fi

# ---------------------------------------------------------------- 6. training throughput
if want 6; then
  if [ "$device" = cuda ]; then
    step "6 bench_train" python -m benchmarks.bench_train --device cuda --models t2t_vit_14 --official --rounds 3 \
      --block-s 1 --out "$res/6-bench-train/bench_train_cuda"
  else
    step "6 bench_train" python -m benchmarks.bench_train --device cpu --models t2t_vit_7 --img-size 32 --batch 4 \
      --official --no-compile --rounds 1 --block-s 0.2 --out "$res/6-bench-train/bench_train_cpu"
  fi
fi

# ---------------------------------------------------------------- 7. DDP on one GPU
if want 7; then
  rm -rf "$runs/ddp" "$runs/ddp-syncbn"
  ddp=(torchrun --standalone --nproc-per-node 2 -m t2tvit.train digits --config digits --epochs 1 --device "$device"
    --dist-backend gloo "${quick[@]}" --output "$runs/ddp")
  if step "7 ddp" logged "$runs/ddp.log" "${ddp[@]}"; then
    step "7 ddp verdict" python -m benchmarks.gpu_check ddp "$runs/ddp" --train-command "${ddp[*]}" --out "$res/7-ddp"
  fi
  if [ "$device" = cuda ]; then  # torch's SyncBatchNorm runs on GPUs only
    step "7 ddp --sync-bn" logged "$runs/ddp-syncbn.log" torchrun --standalone --nproc-per-node 2 -m t2tvit.train \
      digits --config digits --model resnet18 --epochs 1 --device cuda --dist-backend gloo --sync-bn \
      --output "$runs/ddp-syncbn"
  fi
fi

# ---------------------------------------------------------------- 8. CUDA latency and TensorRT
if want 8; then
  ckpt=$runs/matrix/t2t_vit_7-fp32/best.pth
  check_tensorrt() {  # the TensorRT installed now: tests, export, inspector JSON, bench
    local ver out
    if ! ver=$(python -c "import tensorrt; print(tensorrt.__version__)"); then
      echo "!! 8 tensorrt failed: tensorrt is not importable (pip install -e '.[tensorrt]' or set TRT_SPECS)"
      status=1
      failed+=("8 tensorrt import")
      return 1
    fi
    out=$res/8-tensorrt-$ver
    rm -rf "$out" "$runs/trt$ver"
    mkdir -p "$out"
    step "8 pytest ($ver)" logged "$out/pytest.txt" python -m pytest -q -rs tests/test_tensorrt.py
    if grep -q "SKIPPED" "$out/pytest.txt"; then
      echo "!! 8 pytest ($ver): tests were skipped on a GPU machine with TensorRT (see $out/pytest.txt)"
      status=1
      failed+=("8 pytest skips ($ver)")
    fi
    need "8 export ($ver)" "$ckpt" || return 1
    step "8 export ($ver)" t2t export --checkpoint "$ckpt" --formats torch,onnx,onnx-int8-static,tensorrt,tensorrt-fp16,tensorrt-int8 \
      --batch 1,8,32 --out "$runs/trt$ver/export" --json
    step "8 export batch 1 ($ver)" t2t export --checkpoint "$ckpt" --formats tensorrt,tensorrt-fp16,tensorrt-int8 \
      --batch 1,1,1 --out "$runs/trt$ver/export-b1" --json
    # the accuracy budget: fitted on the QDQ ONNX in ONNX Runtime, then the engine's own parity check on the GPU
    train_split=$(python -c "from t2tvit.data import dataset_split; print(dataset_split('digits', 'train'))")
    step "8 export budget ($ver)" t2t export --checkpoint "$ckpt" --formats tensorrt-int8 --calib-data "$train_split" \
      --val-data digits --max-drop 1 --sensitivity --out "$runs/trt$ver/export-budget" --json
    if need "8 manifests ($ver)" "$runs/trt$ver/export/manifest.json" "$runs/trt$ver/export-b1/manifest.json" \
        "$runs/trt$ver/export-budget/manifest.json"; then
      cp "$runs/trt$ver/export/manifest.json" "$out/export.json"
      cp "$runs/trt$ver/export-b1/manifest.json" "$out/export-b1.json"
      cp "$runs/trt$ver/export-budget/manifest.json" "$out/export-budget.json"
    fi
    step "8 inspector JSON ($ver)" python - "$runs/trt$ver/export" "$out" <<'EOF'
import sys
from pathlib import Path

import tensorrt as trt

from deploy.tensorrt import io_tensors, layer_precisions

folder, out = Path(sys.argv[1]), Path(sys.argv[2])
engines = sorted(folder.glob("*.engine"))
if not engines:
    sys.exit(f"no engine in {folder}: the export step wrote none")
for engine_file in engines:
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(engine_file.read_bytes())
    context = engine.create_execution_context()
    opt = tuple(engine.get_tensor_profile_shape("images", 0)[1])
    assert context.set_input_shape("images", opt), opt
    inspector = engine.create_engine_inspector()
    inspector.execution_context = context
    info = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    name = engine_file.stem.removeprefix("model-")
    (out / f"inspector-{name}.json").write_text(info)
    print(name, layer_precisions(info), io_tensors(info))
EOF
    if need "8 bench ($ver)" "$runs/trt$ver/export/manifest.json" "$runs/trt$ver/export-b1/model-tensorrt.engine"; then
      step "8 bench ($ver)" t2t bench "$runs/trt$ver/export" --files "$runs/trt$ver/export-b1/model-tensorrt.engine" \
        --formats torch,tensorrt,tensorrt-fp16,tensorrt-int8 --device cuda --batch-sizes 1,8,32 --data digits \
        --duration 3 --out "$out/bench"
    fi
  }

  if [ "$device" = cuda ]; then
    if [ -n "${TRT_SPECS:-}" ]; then
      for spec in $TRT_SPECS; do
        if step "8 install $spec" pip install --quiet "$spec"; then
          check_tensorrt
        fi
      done
    else
      check_tensorrt
    fi
  else
    echo "== 8 tensorrt: not in a CPU dry run (needs CUDA and TensorRT)"
  fi
fi

step "summary" python -m benchmarks.gpu_check summary --out "$res"
if [ $status -ne 0 ]; then
  echo "gpu_check: FAILED steps: ${failed[*]} (results under $res)"
else
  echo "gpu_check: every step passed (results under $res)"
fi
exit $status
