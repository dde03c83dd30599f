#!/usr/bin/env bash
# Every check that needs a CUDA GPU with TensorRT, in one go. Nothing here has been run yet: no
# machine of this project has had TensorRT (see the README's TensorRT section for what has been).
#
#   bash benchmarks/gpu_check.sh                      # the TensorRT already installed
#   TRT_SPECS="tensorrt-cu13==11.4.0.106 tensorrt-cu13==10.16.1.11" bash benchmarks/gpu_check.sh
#                                                     # pip-installs each in turn and checks it
#
# Needs: an NVIDIA GPU and driver for CUDA 13 (torch 2.15's runtime; `nvidia-smi` works), the
# project installed (`pip install -e ".[test,tensorrt]"`), and for TRT_SPECS NVIDIA's package index
# reachable (TensorRT's libraries download from it). About 10 minutes per TensorRT version on a
# data-centre GPU. For each version, under benchmarks/results/gpu_check/trt<version>/:
#
# 1. pytest.txt: tests/test_tensorrt.py with nothing skipped: the real build of every precision
#    (fp32, fp16, int8) at a dynamic batch range and at a static batch 1, each engine run against
#    PyTorch (parity thresholds of `t2t export`), short chunks padded, the timing cache written and
#    read back; plus every check that also runs without a GPU.
# 2. export.json / export-b1.json: `t2t export` of the digits model trained here (the `digits`
#    recipe, 32 px) to onnx, onnx-int8-static and the three engines, batch 1,8,32 and 1,1,1, each
#    artifact verified (status, parity, layer precisions, TensorRT version, GPU).
# 3. inspector-<format>.json: the engine inspector's JSON of each engine as this TensorRT writes it
#    (the schema tests/test_tensorrt.py builds its fixtures from; compare them).
# 4. bench/: `t2t bench` of the engines and PyTorch eager on the GPU, batch 1, 8 and 32, with
#    digits accuracy and agreement: latency (CUDA events), memory, MAC rate.
# 5. summary.md: one table of the above. The script's exit status is 1 if any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
root=benchmarks/results/gpu_check
runs=runs/gpu_check
status=0
step() {  # step NAME CMD...: run, log, remember a failure and go on with the next step
  local name=$1
  shift
  echo "== $name: $*"
  if ! "$@"; then
    echo "!! $name failed"
    status=1
    return 1
  fi
}

nvidia-smi >/dev/null 2>&1 || { echo "no working nvidia-smi: this script needs an NVIDIA GPU"; exit 2; }
python -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'" || exit 2
mkdir -p "$root" "$runs"
nvidia-smi >"$root/nvidia-smi.txt" 2>&1

ckpt=$runs/digits/best.pth
[ -f "$ckpt" ] || step train t2t train digits --config digits --output "$runs/digits"

check_installed() {
  local ver out
  ver=$(python -c "import tensorrt; print(tensorrt.__version__)") || { echo "tensorrt is not importable"; return 1; }
  out=$root/trt$ver
  rm -rf "$out" "$runs/trt$ver"
  mkdir -p "$out"
  echo "== TensorRT $ver -> $out"
  step "pytest ($ver)" bash -c "python -m pytest -q -rs tests/test_tensorrt.py 2>&1 | tee '$out/pytest.txt'; \
    exit \${PIPESTATUS[0]}"
  if grep -q "SKIPPED" "$out/pytest.txt"; then
    echo "!! pytest skipped tests on a GPU machine with TensorRT (see $out/pytest.txt)"
    status=1
  fi
  step "export ($ver)" t2t export --checkpoint "$ckpt" --formats onnx,onnx-int8-static,tensorrt,tensorrt-fp16,tensorrt-int8 \
    --batch 1,8,32 --out "$runs/trt$ver/export" --json
  step "export batch 1 ($ver)" t2t export --checkpoint "$ckpt" --formats tensorrt,tensorrt-fp16,tensorrt-int8 \
    --batch 1,1,1 --out "$runs/trt$ver/export-b1" --json
  cp "$runs/trt$ver/export/manifest.json" "$out/export.json" 2>/dev/null
  cp "$runs/trt$ver/export-b1/manifest.json" "$out/export-b1.json" 2>/dev/null
  step "inspector JSON ($ver)" python - "$runs/trt$ver/export" "$out" <<'EOF'
import json, sys
from pathlib import Path

import tensorrt as trt

from deploy.tensorrt import io_tensors, layer_precisions

folder, out = Path(sys.argv[1]), Path(sys.argv[2])
for engine_file in sorted(folder.glob("*.engine")):
    logger = trt.Logger(trt.Logger.WARNING)
    engine = trt.Runtime(logger).deserialize_cuda_engine(engine_file.read_bytes())
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
  step "bench ($ver)" t2t bench "$runs/trt$ver/export" --files "$runs/trt$ver/export-b1/model-tensorrt.engine" \
    --formats torch,tensorrt,tensorrt-fp16,tensorrt-int8 --device cuda --batch-sizes 1,8,32 --data digits \
    --duration 3 --out "$out/bench"
  python - "$out" <<'EOF' || status=1
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
lines = [f"# GPU check: {out.name}", "", "| export | format | status | parity | layer precisions | reason |"]
lines.append("|---|---|---|---|---|---|")
for manifest in ("export.json", "export-b1.json"):
    path = out / manifest
    if not path.is_file():
        lines.append(f"| {manifest} | – | missing | | | |")
        continue
    for a in json.loads(path.read_text())["artifacts"]:
        p = a.get("parity") or {}
        parity = f"agree {p.get('top1_agreement')}, max abs Δ {p.get('max_abs_diff')}" if p else ""
        precisions = (a.get("details") or {}).get("layer_precisions", "")
        reason = a.get("reason") or ""
        lines.append(f"| {manifest} | {a['format']} | {a['status']} | {parity} | {precisions} | {reason} |")
tests = (out / "pytest.txt").read_text().strip().splitlines()[-1:] if (out / "pytest.txt").is_file() else ["missing"]
lines += ["", f"pytest: {tests[0]}", "", f"latency: [bench/report.md](bench/report.md)"]
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
}

if [ -n "${TRT_SPECS:-}" ]; then
  for spec in $TRT_SPECS; do
    step "install $spec" pip install --quiet "$spec" && check_installed
  done
else
  check_installed || status=1
fi
echo "gpu_check: exit status $status (results under $root)"
exit $status
