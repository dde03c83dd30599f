"""The soft split per runtime: one-hot grouped convolution vs the window gather, and where the time goes.

PyTorch runs the soft split as a strided gather (``t2tvit.models.layers._windows_nchw`` /
``_windows_nhwc``). Exported to ONNX, that gather becomes 5-D and 6-D Transposes with inner
dimensions of 3 or 7, which ONNX Runtime runs slowly; the ONNX export therefore takes the deploy graph's
``one_hot`` form (:mod:`deploy.graph`: grouped convolutions with one-hot kernels), the same tokens bit
for bit, and the other runtimes keep the gather. This script measures that choice on whole models: for
each model (random weights, seed 0: latency does not depend on them) it builds every runtime's
artifact both ways -- ONNX fp32 and dynamic int8, PyTorch eager, frozen TorchScript, ExecuTorch
fp32 when installed -- through the formats' own export and load, checks the two forms agree, and
times all of them interleaved at batch 1 with the profiler's own ``run_interleaved``.

It then profiles T2T-ViT-7 by operator: ONNX Runtime's profiler on both int8 ONNX files (share of
Transpose and DynamicQuantizeMatMul) and ``torch.profiler`` on the eager model (share of the matrix
products and of attention), the numbers docs/performance.md's notes on the latency targets quote.

Usage: ``python -m benchmarks.bench_onnx_soft_split [--models t2t_vit_7 t2t_vit_12] [--threads 2]``.
Writes ``benchmarks/results/bench_onnx_soft_split.{md,json}``.
"""

from __future__ import annotations

import argparse
import collections
import copy
import datetime
import json
import shlex
import sys
import tempfile
import types
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FORMS = ("gather", "conv")


def with_soft_split(model: Any, form: str) -> Any:
    """A copy of ``model`` whose soft splits always run as ``form`` ("gather" or "conv"), in every
    runtime it is exported to (the instance's forward replaces the class's runtime switch)."""
    from t2tvit.models import layers

    def forward(self: Any, x: Any) -> Any:
        k, s, p = self.kernel_size, self.stride, self.padding
        if form == "conv":
            return layers.windows_conv(x, k, s, p, self.channels_last)
        return (layers._windows_nhwc if self.channels_last else layers._windows_nchw)(x, k, s, p)

    out = copy.deepcopy(model)
    for module in out.modules():
        if isinstance(module, layers.SoftSplit):
            module.forward = types.MethodType(forward, module)
    return out


def _artifacts(model: Any, img_size: int, tmp: Path) -> dict[tuple[str, str], Any]:
    """(runtime, form) -> a loaded Predictor, every runtime built through its format's own export."""
    from compress.quantize import quantize_onnx_dynamic
    from deploy.base import ExportContext, get_format
    from deploy.onnx import export_fp32
    from deploy.torch_eager import TorchPredictor

    ctx = ExportContext(img_size=(img_size, img_size), batch=(1, 1, 8))
    out = {}
    for form in FORMS:
        m = with_soft_split(model, form).eval()
        out[("torch eager", form)] = TorchPredictor(m, get_format("torch"), tmp / "in-memory")
        built = {"onnx": tmp / f"{form}-fp32.onnx", "torchscript": tmp / f"{form}.pt"}
        if not get_format("executorch").missing():
            built["executorch"] = tmp / f"{form}.pte"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name, path in built.items():
                fmt = get_format(name)
                if name == "onnx":  # the deploy graph in this form (the exporter would pick ONNX's own)
                    export_fp32(m, path, ctx, t2t="one_hot" if form == "conv" else "gather")
                else:
                    fmt.impl().export(m, path, fmt, ctx)
        quantize_onnx_dynamic(built["onnx"], tmp / f"{form}-int8.onnx")
        built["onnx-int8-dynamic"] = tmp / f"{form}-int8.onnx"
        for name in ("onnx", "onnx-int8-dynamic", "torchscript", "executorch"):
            if name in built:
                out[(name, form)] = get_format(name).impl().load(built[name], get_format(name))
    return out


def measure(model_name: str, img_size: int, threads: int, duration: float, rounds: int, tmp: Path) -> dict[str, Any]:
    import torch

    import t2tvit
    from deploy.executorch import _set_threads
    from deploy.profiler import latency_stats, make_timer, run_interleaved

    torch.manual_seed(0)
    model = t2tvit.create_model(model_name, img_size=img_size).eval()
    _set_threads(threads)
    predictors = _artifacts(model, img_size, tmp)
    x = np.random.default_rng(0).standard_normal((1, 3, img_size, img_size), dtype=np.float32)
    runtimes = list(dict.fromkeys(r for r, _ in predictors))
    outs = {key: p(x) for key, p in predictors.items()}
    diff = {r: float(np.abs(outs[(r, "conv")] - outs[(r, "gather")]).max()) for r in runtimes}
    steps = {f"{r} {f}": make_timer(predictors[(r, f)], x, "cpu") for r, f in predictors}
    samples, errors = run_interleaved(steps, rounds=rounds, min_runs=20, duration=duration, warmup=5)
    if errors:
        raise RuntimeError(f"timing failed: {errors}")
    stats = {name: latency_stats(v) for name, v in samples.items()}
    rows = []
    for r in runtimes:
        g, c = stats[f"{r} gather"]["p50_ms"], stats[f"{r} conv"]["p50_ms"]
        rows.append(
            {"runtime": r, "gather_p50_ms": g, "conv_p50_ms": c, "conv_over_gather": c / g, "max_abs_diff": diff[r]}
        )
    return {"model": model_name, "rows": rows, "stats": stats}


def _ort_op_shares(path: Path, x: np.ndarray, threads: int, runs: int = 30) -> dict[str, float]:
    """Share of ONNX Runtime's kernel time per operator type over ``runs`` calls."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.enable_profiling, options.log_severity_level = threads, True, 3
    options.profile_file_prefix = str(path.with_suffix(""))
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for _ in range(runs):
        session.run(None, {name: x})
    events = json.loads(Path(session.end_profiling()).read_text())
    per_op: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"]
    total = sum(per_op.values())
    return {op: d / total for op, d in per_op.most_common()}


def _torch_op_shares(model: Any, x: Any, runs: int = 20) -> dict[str, float]:
    """Share of ``torch.profiler``'s self CPU time per aten op over ``runs`` eager forwards."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        for _ in range(5):
            model(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(runs):
                model(x)
    per_op = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
    total = sum(per_op.values())
    return {k: v / total for k, v in sorted(per_op.items(), key=lambda kv: -kv[1])}


def op_profile(model_name: str, img_size: int, threads: int, tmp: Path) -> dict[str, Any]:
    import torch

    import t2tvit
    from compress.quantize import quantize_onnx_dynamic
    from deploy.base import ExportContext, get_format

    torch.manual_seed(0)
    model = t2tvit.create_model(model_name, img_size=img_size).eval()
    ctx = ExportContext(img_size=(img_size, img_size), batch=(1, 1, 8))
    x = np.random.default_rng(0).standard_normal((1, 3, img_size, img_size), dtype=np.float32)
    onnx = {}
    for form in FORMS:
        fp32, int8 = tmp / f"ops-{form}.onnx", tmp / f"ops-{form}-int8.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            get_format("onnx").impl().export(with_soft_split(model, form), fp32, get_format("onnx"), ctx)
        quantize_onnx_dynamic(fp32, int8)
        onnx[f"onnx fp32 {form}"] = _ort_op_shares(fp32, x, threads)
        onnx[f"onnx int8-dynamic {form}"] = _ort_op_shares(int8, x, threads)
    eager = _torch_op_shares(model, torch.from_numpy(x))
    return {"model": model_name, "onnx": onnx, "torch_eager": eager}


_SHARE_OPS = {
    "ONNX Runtime": ("Transpose", "DynamicQuantizeMatMul", "MatMul", "Conv", "LayerNormalization"),
    "torch eager": ("aten::addmm", "aten::mm", "aten::_scaled_dot_product_flash_attention_for_cpu", "aten::copy_"),
}


def render(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        "# Soft split per runtime: one-hot grouped convolution vs window gather",
        "",
        f"- command: `{result['command']}`",
        f"- {result['versions']}, {result['cpu']}, {s['threads']} threads, {s['img_size']} px, batch 1, "
        f"{result['created']}",
        f"- every artifact built through its format's own export and load, timed interleaved ({s['rounds']} "
        f"rounds, order rotated, >= {s['duration']} s each); random weights (seed 0)",
        "- what ships: the convolution in ONNX (and so in TensorRT engines built from it), the gather elsewhere",
        "",
        "| model | runtime | gather p50 (ms) | conv p50 (ms) | conv / gather | max abs diff of logits |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for m in result["models"]:
        for r in m["rows"]:
            lines.append(
                f"| {m['model']} | {r['runtime']} | {r['gather_p50_ms']:.2f} | {r['conv_p50_ms']:.2f} | "
                f"{r['conv_over_gather']:.3f} | {r['max_abs_diff']:.1e} |"
            )
    ops = result.get("op_profile")
    if ops:
        lines += [
            "",
            f"## Where the time goes: {ops['model']}, share of kernel time by operator",
            "",
            "ONNX Runtime's profiler (30 runs per file):",
            "",
            "| file | " + " | ".join(_SHARE_OPS["ONNX Runtime"]) + " |",
            "|---|" + "---:|" * len(_SHARE_OPS["ONNX Runtime"]),
        ]
        for name, shares in ops["onnx"].items():
            cells = " | ".join(f"{shares.get(op, 0.0) * 100:.1f}%" for op in _SHARE_OPS["ONNX Runtime"])
            lines.append(f"| {name} | {cells} |")
        eager = ops["torch_eager"]
        cells = ", ".join(f"`{op}` {eager.get(op, 0.0) * 100:.1f}%" for op in _SHARE_OPS["torch eager"])
        lines += ["", f"`torch.profiler` on the eager model (20 forwards, self CPU time): {cells}."]
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["t2t_vit_7", "t2t_vit_12"])
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--duration", type=float, default=6.0, help="timed seconds per artifact, at least")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--no-op-profile", action="store_true", help="skip the per-operator profile of the first model")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_onnx_soft_split"))
    args = p.parse_args(argv)

    from deploy.export import tool_versions
    from deploy.profiler import device_name

    torch.set_num_threads(args.threads)
    models, ops = [], None
    with tempfile.TemporaryDirectory(prefix="t2t-split-") as tmp:
        for name in args.models:
            print(f"{name}: building every runtime both ways and timing ...", file=sys.stderr, flush=True)
            models.append(measure(name, args.img_size, args.threads, args.duration, args.rounds, Path(tmp)))
        if not args.no_op_profile:
            print(f"{args.models[0]}: profiling by operator ...", file=sys.stderr, flush=True)
            ops = op_profile(args.models[0], args.img_size, args.threads, Path(tmp))
    versions = tool_versions(("torch", "onnxruntime", "onnx", "executorch"))
    result = {
        "command": shlex.join(["python", "-m", "benchmarks.bench_onnx_soft_split", *(argv or sys.argv[1:])]),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": device_name(torch.device("cpu")),
        "versions": ", ".join(f"{k} {v}" for k, v in versions.items()),
        "settings": {k: getattr(args, k) for k in ("img_size", "threads", "duration", "rounds")},
        "models": models,
        "op_profile": ops,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    text = render(result)
    out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
