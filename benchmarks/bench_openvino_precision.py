"""What ``auto`` should mean on this CPU: OpenVINO f32 against bf16 (and f16 where the CPU has it), dynamic against
static batch, on our ONNX of T2T-ViT-7, interleaved in one process.

``python -m benchmarks.bench_openvino_precision [--model t2t_vit_7] [--threads 2] [--rounds 8]``

Prints and saves ``benchmarks/results/openvino_precision/<host class>.{json,md}``: p50 at batch 1 (224 px, random
weights) of every (precision, batch shape) pair as a multiple of f32 with a dynamic batch (our previous default),
beside what OpenVINO reports (``OPTIMIZATION_CAPABILITIES``, its default ``INFERENCE_PRECISION_HINT``) and what
``deploy.openvino.auto_inference_precision`` picks. ``deploy/openvino.py``'s ``auto`` follows OpenVINO's default
where this measurement says it pays.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_openvino_precision")
    p.add_argument("--model", default="t2t_vit_7")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--runs", type=int, default=8, help="timed runs per pair per round")
    p.add_argument("--work", type=Path, default=Path("runs/bench_openvino_precision"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/openvino_precision"))
    args = p.parse_args(argv)
    import torch

    import t2tvit
    from benchmarks.bench_cpu_formats import cpu_flags, host_class
    from deploy.base import ExportContext
    from deploy.onnx import export_fp32
    from deploy.openvino import _core, auto_inference_precision, cpu_inference_precisions, precision_name

    t0 = time.perf_counter()
    onnx = args.work / f"{args.model}.onnx"
    if not onnx.is_file():
        args.work.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        net = t2tvit.build_model(args.model, img_size=224).eval()
        export_fp32(net, onnx, ExportContext(img_size=(224, 224), batch=(1, 1, 32)))
    core = _core()
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    requests, used = {}, {}
    for precision in cpu_inference_precisions(core):
        for shape in ("dynamic", "static"):
            model = core.read_model(str(onnx))
            if shape == "static":
                model.reshape([1, 3, 224, 224])
            config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY",
                      "INFERENCE_NUM_THREADS": args.threads}  # fmt: skip
            compiled = core.compile_model(model, "CPU", config)
            key = f"{precision}/{shape}"
            used[key] = precision_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
            requests[key] = compiled.create_infer_request()
    times: dict[str, list[float]] = {k: [] for k in requests}
    keys = list(requests)
    for r in range(args.rounds):
        for k in keys[r % len(keys) :] + keys[: r % len(keys)]:
            req = requests[k]
            req.infer({0: x})
            for _ in range(args.runs):
                s = time.perf_counter()
                req.infer({0: x})
                times[k].append((time.perf_counter() - s) * 1e3)
    base = float(np.median(times["f32/dynamic"]))
    flags = cpu_flags()
    doc = {
        "command": " ".join(["python -m benchmarks.bench_openvino_precision", *(argv or sys.argv[1:])]),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - t0),
        "host_class": host_class(flags),
        "flags": flags,
        "openvino_capabilities": list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")),
        "openvino_default_hint": precision_name(core.get_property("CPU", "INFERENCE_PRECISION_HINT")),
        "auto": auto_inference_precision(core),
        "rows": {
            k: {
                "p50_ms": float(np.median(v)),
                "x_f32_dynamic": float(np.median(v)) / base,
                "runs": len(v),
                "read_back": used[k],
            }
            for k, v in times.items()
        },  # fmt: skip
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / doc["host_class"]
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    md = render(doc, args.model, args.threads, args.rounds)
    stem.with_suffix(".md").write_text(md)
    print(md)
    return 0


def render(doc: dict, model: str, threads: int, rounds: int) -> str:
    """The results as markdown, fastest first."""
    lines = [
        f"# OpenVINO inference precision on {doc['host_class']} ({model}, 224 px, batch 1, {threads} thr)",
        "",
        f"- command: `{doc['command']}` ({doc['seconds']} s, {doc['created']}), interleaved, {rounds} rounds; "
        "the machine was shared with other jobs: read the ratios",
        f"- OpenVINO reports {', '.join(doc['openvino_capabilities'])}; its default hint: "
        f"{doc['openvino_default_hint']}; our `auto`: **{doc['auto']}**",
        "",
        "| precision / batch shape | read back | p50 ms | × f32 dynamic |",
        "|---|---|---:|---:|",
    ]
    for k, r in sorted(doc["rows"].items(), key=lambda kv: kv[1]["p50_ms"]):
        lines.append(f"| {k} | {r['read_back']} | {r['p50_ms']:.2f} | {r['x_f32_dynamic']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
