"""The ONNX files TensorRT engines are built from, checked where no GPU is: in ONNX Runtime on CPU.

    python -m benchmarks.tensorrt_onnx [--steps 300] [--out benchmarks/results]

``deploy.tensorrt`` builds strongly typed engines, so the ONNX tensor types *are* the engine's
precision: the fp16 copy (:func:`deploy.tensorrt.convert_onnx_fp16`, LayerNorm / softmax / token
Performer kept fp32) and the TensorRT-bound QDQ model (float biases). This script trains
``t2t_vit_7`` on the bundled digits at the ``digits`` recipe's 32 px, writes both files the way
``t2t export`` does, and compares them with the fp32 PyTorch model on every held-out validation
digit not used for calibration:

* fp16 with the fp32 islands, and, for comparison, every float tensor fp16 (no islands);
* the TensorRT-bound int8 QDQ model and ONNX Runtime's own (INT32 bias) one.

ONNX Runtime's CPU kernels run some fp16 ops by casting to fp32 inside the op, so this shows the
rounding of every fp16 tensor between ops, not TensorRT's fp16 kernels: that needs
``benchmarks/gpu_check.sh``. Writes ``tensorrt_onnx_cpu.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from benchmarks.export_sizes import train_digits
from compress.quantize import int32_dequantize_inputs, load_images, quantize_onnx_static
from deploy.base import ExportContext
from deploy.export import PARITY, check_parity, reference_logits, tool_versions
from deploy.onnx import export_fp32
from deploy.tensorrt import convert_onnx_fp16, fp32_island, performer_core
from t2tvit.data import bundled_dataset_path, eval_transform_for

IMG = 32


class _Session:
    """ONNX Runtime with graph optimisations off, so no Cast pair is folded away."""

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"images": images})[0]


def _row(name: str, path: Path, parity: np.ndarray, reference: np.ndarray, precision: str) -> dict[str, Any]:
    record = check_parity(_Session(path), parity, reference, PARITY[precision])
    return {
        "file": name,
        "bytes": path.stat().st_size,
        "max_abs_diff": record["max_abs_diff"],
        "mean_abs_diff": record["mean_abs_diff"],
        "top1_agreement": record["top1_agreement"],
        "passes_export_threshold": record["passed"],
        "int32_dequantize_inputs": len(int32_dequantize_inputs(path)),
    }


def _markdown(result: dict) -> list[str]:
    """The report's markdown lines."""
    rows, acc, nodes = result["rows"], result["val_accuracy"], result["fp32_graph_nodes"]
    n_parity, n_calib = result["parity_images"], result["calibration_images"]
    casts, convert_seconds = result["casts_added"], result["fp16_convert_seconds"]
    return [
        "# The ONNX files TensorRT engines are built from, in ONNX Runtime (CPU)",
        "",
        "`python -m benchmarks.tensorrt_onnx` (2-core CPU machine; "
        + ", ".join(f"{k} {v}" for k, v in result["tool_versions"].items())
        + "). No TensorRT here: this checks the files, not the engines (`benchmarks/gpu_check.sh` does).",
        "",
        f"{result['model']}: validation accuracy {acc:.3f}. Compared with the fp32 PyTorch model on "
        f"{n_parity} held-out validation digits; int8 calibrated on {n_calib} others.",
        f"The fp16 copy keeps {result['fp32_island_nodes']} of {nodes} nodes in fp32 "
        f"({result['performer_nodes']} of them the token Performers' own arithmetic) and adds "
        f"{casts} Casts (converted in {convert_seconds:.2f} s).",
        "",
        "| file | bytes | max \\|Δlogit\\| | mean \\|Δlogit\\| | top-1 agreement | passes `t2t export`'s threshold "
        "| INT32 DequantizeLinear inputs |",
        "|---|---:|---:|---:|---:|---|---:|",
        *[
            f"| {r['file']} | {r['bytes']:,} | {r['max_abs_diff']:.2e} | {r['mean_abs_diff']:.2e} "
            f"| {r['top1_agreement']:.4f} | {'yes' if r['passes_export_threshold'] else 'no'} "
            f"| {r['int32_dequantize_inputs']} |"
            for r in rows
        ],
        "",
        "TensorRT's dequantize layer takes INT8/FP8/INT4/FP4 inputs only, so a file with INT32",
        "DequantizeLinear inputs does not parse there; the TensorRT engines use the float-bias one.",
        "",
        "The fp32 islands change little here: ONNX Runtime's CPU kernels compute inside an fp16 op in",
        "fp32 and only round between ops, and the Performer's softmax form is stable in range. The",
        "islands are for TensorRT's strongly typed fp16 layers, which this does not exercise.",
        "",
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=300, help="training steps on the digits (batch 32)")
    ap.add_argument("--calib-size", type=int, default=64)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    model, acc = train_digits(args.steps, img_size=IMG)
    train_seconds = time.perf_counter() - t0
    images, _ = load_images(bundled_dataset_path() / "val", eval_transform_for(model))
    calib, parity = images[: args.calib_size], images[args.calib_size :]
    reference = reference_logits(model, parity)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fp32 = tmp / "model-fp32.onnx"
        export_fp32(model, fp32, ExportContext(img_size=(IMG, IMG), batch=(1, 8, 32)))
        graph = onnx.load(str(fp32))
        nodes = list(graph.graph.node)
        files = {"fp32": fp32}
        t0 = time.perf_counter()
        files["fp16 (LayerNorm, softmax, Performer fp32)"] = tmp / "fp16.onnx"
        onnx.save(convert_onnx_fp16(graph), str(files["fp16 (LayerNorm, softmax, Performer fp32)"]))
        convert_seconds = time.perf_counter() - t0
        files["fp16, no fp32 islands (for comparison)"] = tmp / "fp16-all.onnx"
        onnx.save(
            convert_onnx_fp16(graph, keep_fp32=lambda n: False), str(files["fp16, no fp32 islands (for comparison)"])
        )
        files["int8 QDQ, TensorRT-bound (float bias)"] = tmp / "int8-trt.onnx"
        quantize_onnx_static(fp32, files["int8 QDQ, TensorRT-bound (float bias)"], calib, for_tensorrt=True)
        files["int8 QDQ, ONNX Runtime's (INT32 bias)"] = tmp / "int8-ort.onnx"
        quantize_onnx_static(fp32, files["int8 QDQ, ONNX Runtime's (INT32 bias)"], calib)
        precisions = ["fp32", "fp16", "fp16", "int8", "int8"]
        rows = [
            _row(name, path, parity, reference, p) for (name, path), p in zip(files.items(), precisions, strict=True)
        ]
        m16 = onnx.load(str(files["fp16 (LayerNorm, softmax, Performer fp32)"]))
        casts = sum(n.op_type == "Cast" for n in m16.graph.node) - sum(n.op_type == "Cast" for n in nodes)

    result = {
        "benchmark": "tensorrt_onnx",
        "command": "python -m benchmarks.tensorrt_onnx " + " ".join(argv or []),
        "tool_versions": tool_versions(),
        "model": f"t2t_vit_7, 10 classes, {IMG}x{IMG}, trained {args.steps} steps on the bundled digits",
        "val_accuracy": acc,
        "train_seconds": round(train_seconds, 1),
        "parity_images": len(parity),
        "calibration_images": len(calib),
        "thresholds": {"fp16": "top-1 agreement >= 0.99", "int8": "top-1 agreement >= 0.95"},
        "fp32_graph_nodes": len(nodes),
        "fp32_island_nodes": sum(fp32_island(n) for n in nodes),
        "performer_nodes": sum(performer_core(n) for n in nodes),
        "casts_added": casts,
        "fp16_convert_seconds": round(convert_seconds, 2),
        "rows": rows,
    }
    (out_dir / "tensorrt_onnx_cpu.json").write_text(json.dumps(result, indent=2) + "\n")
    md = _markdown(result)
    (out_dir / "tensorrt_onnx_cpu.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    torch.set_num_threads(2)
    raise SystemExit(main())
