"""Which T2T-module form each runtime should convert: the deploy graph's forms side by side.

T2T-ViT-7 (random weights, seed 0: latency does not depend on them), 224 px, batch 1, 2 threads. For
every runtime the graph of :func:`deploy.graph.deploy_graph` is built in each form it could take and
converted the way the exporter converts it: OpenVINO (``ov.convert_model``, static batch 1) in f32 and,
where the CPU runs it, bf16; ONNX Runtime fp32 (``torch.onnx.export(dynamo=True)``); LiteRT fp32 (XNNPACK)
when litert-torch is installed. Forms: ``plain`` (the model as is: what ``ov.convert_model`` got before the
deploy graph), ``one_hot`` (the soft splits as one-hot convolutions: the old ONNX branch and the phone
converters' copy) and ``channel_major``. Every artifact is checked against the model, then all are timed
interleaved in one process (:func:`deploy.profiler.timing.run_interleaved`), so machine load hits every
form alike: the result is a ratio per runtime against its current form, not an absolute time.

OpenVINO's per-node profile (``PERF_COUNT``) of each IR says where the T2T module's time goes and lists
any of its nodes run by a reference kernel (exec type ``ref*``/``unknown*``): a rewrite is trusted only
once its profile is clean.

Usage: ``python -m benchmarks.bench_deploy_graph [--threads 2] [--seconds 10] [--rounds 6]``.
Writes ``benchmarks/results/deploy_graph/<host class>.{md,json}``; ``deploy.graph.T2T_FORM`` cites it.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "deploy_graph"
# runtime -> its current form (the ratio's unit) and the forms compared
CURRENT = {"openvino": "plain", "onnxruntime": "one_hot", "litert": "one_hot"}
FORMS = {"openvino": ("plain", "one_hot", "channel_major"), "onnx": ("one_hot", "channel_major"),
         "litert": ("one_hot", "channel_major")}  # fmt: skip


def host_class() -> tuple[str, str]:
    """(file-name tag, description) of this CPU: its vector and matrix extensions and core count."""
    flags, name = set(), platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            elif line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
    except OSError:
        pass
    tags = [t for t, f in (("avx2", "avx2"), ("avx512", "avx512f"), ("vnni", "avx512_vnni"),
                           ("bf16", "avx512_bf16"), ("amx", "amx_tile")) if f in flags]  # fmt: skip
    cores = os.cpu_count() or 0
    tag = f"{cores}core-" + "-".join(tags or ["generic"])
    return tag, f"{cores}-core {name}; {', '.join(tags) or 'no AVX2'}" + ("" if "amx" in tags else ", no AMX")


def build_model(size: int) -> torch.nn.Module:
    import t2tvit

    torch.manual_seed(0)
    return t2tvit.create_model("t2t_vit_7", img_size=size).eval()


def graph_of(model: torch.nn.Module, runtime: str, form: str, size: int) -> torch.nn.Module:
    from deploy.graph import deploy_graph

    if form == "plain":
        return model
    return deploy_graph(model, "openvino" if runtime == "openvino" else runtime, size, t2t=form)


def openvino_steps(model, size, x, threads, precisions, tmp) -> tuple[dict, dict, dict]:
    import openvino as ov

    core = ov.Core()
    steps, outs, profiles = {}, {}, {}
    for form in FORMS["openvino"]:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ir = ov.convert_model(graph_of(model, "openvino", form, size), example_input=torch.from_numpy(x),
                                  input=[ov.PartialShape([1, 3, size, size])])  # fmt: skip
        for prec in precisions:
            cfg = {"INFERENCE_PRECISION_HINT": prec, "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
            req = core.compile_model(ir, "CPU", cfg).create_infer_request()
            name = f"openvino {prec} | {form}"
            steps[name] = _timer(lambda r=req: r.infer({0: x}))
            outs[name] = req.infer({0: x})[0].copy()
            prof = core.compile_model(ir, "CPU", {**cfg, "PERF_COUNT": True}).create_infer_request()
            for _ in range(5):
                prof.infer({0: x})
            profiles[name] = summarize_profile(prof.get_profiling_info())
    return steps, outs, profiles


def summarize_profile(info: list[Any]) -> dict[str, Any]:
    """Per-node time of one inference: total, the T2T module's share, and its nodes on reference kernels."""
    total = t2t = 0.0
    slow: dict[str, float] = collections.Counter()
    for node in info:
        if str(node.status).endswith("NOT_RUN"):
            continue
        ms = node.real_time.total_seconds() * 1e3
        total += ms
        if "tokens_to_token" in node.node_name:
            t2t += ms
            if node.exec_type.startswith(("ref", "unknown")):
                slow[f"{node.node_type}:{node.exec_type}"] += ms
    return {"total_ms": round(total, 3), "t2t_ms": round(t2t, 3), "t2t_share": round(t2t / max(total, 1e-9), 3),
            "t2t_reference_kernels_ms": {k: round(v, 3) for k, v in slow.items()}}  # fmt: skip


def onnx_steps(model, size, x, threads, tmp) -> tuple[dict, dict]:
    import onnxruntime as ort

    steps, outs = {}, {}
    for form in FORMS["onnx"]:
        path = tmp / f"{form}.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(graph_of(model, "onnx", form, size), (torch.from_numpy(x),), str(path), dynamo=True,
                              external_data=False, opset_version=18)  # fmt: skip
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        iname = sess.get_inputs()[0].name
        name = f"onnxruntime fp32 | {form}"
        steps[name] = _timer(lambda s=sess, i=iname: s.run(None, {i: x}))
        outs[name] = sess.run(None, {iname: x})[0]
    return steps, outs


def litert_steps(model, size, x, threads, tmp) -> tuple[dict, dict]:
    import litert_torch
    from ai_edge_litert.interpreter import Interpreter

    steps, outs = {}, {}
    for form in FORMS["litert"]:
        path = tmp / f"{form}.tflite"
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            litert_torch.convert(graph_of(model, "litert", form, size), (torch.from_numpy(x),)).export(str(path))
        it = Interpreter(model_path=str(path), num_threads=threads)
        it.allocate_tensors()
        i, o = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]

        def run(it=it, i=i, o=o) -> np.ndarray:
            it.set_tensor(i, x)
            it.invoke()
            return it.get_tensor(o)

        name = f"litert fp32 | {form}"
        steps[name] = _timer(run)
        outs[name] = run().copy()
    return steps, outs


def _timer(call: Callable[[], Any]) -> Callable[[], float]:
    import time

    def step() -> float:
        t0 = time.perf_counter()
        call()
        return (time.perf_counter() - t0) * 1e3

    return step


def write(result: dict[str, Any], out: Path) -> None:
    """``<host class>.json`` and a Markdown table of the ratios under ``out``; prints the table."""
    tag, host, rows = result["host_class"], result["host"], result["rows"]
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{tag}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Deploy-graph forms per runtime: {host}",
        "",
        f"`{result['command']}` ({result['created']}). T2T-ViT-7, {result['img_size']} px, batch 1, "
        f"{result['threads']} threads; "
        "all variants timed interleaved in one process on a machine shared with other jobs, so read the ratio "
        "against the runtime's current form (`plain` for OpenVINO, `one_hot` for ONNX Runtime and LiteRT), "
        "not the milliseconds. |Δ| is the largest |Δlogit| against the PyTorch model over its largest |logit|.",
        "",
        "| runtime | form | median ms | × current | |Δ| | T2T share (OpenVINO profile) | T2T on reference kernels |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        prof = r.get("profile") or {}
        refs = ", ".join(f"{k} {v} ms" for k, v in prof.get("t2t_reference_kernels_ms", {}).items())
        share = f"{prof['t2t_share']:.0%}" if prof else ""
        lines.append(
            f"| {r['runtime']} | {r['form']} | {r['median_ms']:.2f} | {r['ratio_vs_current']} | "
            f"{r['max_abs_diff_rel']:.1e} | {share} | {refs or ('none' if prof else '')} |"
        )
    lines += [f"\nSkipped: {k}: {v}" for k, v in result["skipped"].items()]
    (out / f"{tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--seconds", type=float, default=10.0, help="timed seconds per variant, over all rounds")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    torch.set_num_threads(a.threads)
    from deploy.openvino import cpu_inference_precisions
    from deploy.profiler.timing import run_interleaved

    tag, host = host_class()
    model = build_model(a.size)
    x = np.random.default_rng(0).standard_normal((1, 3, a.size, a.size), dtype=np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    precisions = [q for q in ("f32", "bf16") if q in cpu_inference_precisions()]
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        steps, outs, profiles = openvino_steps(model, a.size, x, a.threads, precisions, tmp)
        s, o = onnx_steps(model, a.size, x, a.threads, tmp)
        steps.update(s)
        outs.update(o)
        try:
            s, o = litert_steps(model, a.size, x, a.threads, tmp)
            steps.update(s)
            outs.update(o)
        except ImportError as e:
            skipped["litert"] = f"not installed ({e}); pip install --no-deps -r requirements-litert.txt"
        scale = max(1.0, float(np.abs(ref).max()))
        diffs = {n: float(np.abs(out - ref).max()) / scale for n, out in outs.items()}
        print(f"{len(steps)} variants, interleaved: {a.rounds} rounds, {a.seconds:g} s each", flush=True)
        samples, errors = run_interleaved(steps, rounds=a.rounds, min_runs=3 * a.rounds, duration=a.seconds, warmup=3)
    med = {n: statistics.median(v) for n, v in samples.items() if v}
    rows = []
    for n in steps:
        runtime, form = n.split(" | ")
        unit = f"{runtime} | {CURRENT[runtime.split()[0]]}"
        rows.append({
            "runtime": runtime, "form": form, "median_ms": round(med.get(n, float("nan")), 3), "runs": len(samples[n]),
            "ratio_vs_current": round(med[n] / med[unit], 3) if n in med and unit in med else None,
            "max_abs_diff_rel": diffs[n], **({"profile": profiles[n]} if n in profiles else {}),
            **({"error": errors[n]} if n in errors else {}),
        })  # fmt: skip
    result = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.bench_deploy_graph " + shlex.join(argv or sys.argv[1:]),
        "host": host,
        "host_class": tag,
        "model": "t2t_vit_7 (random weights, seed 0)",
        "img_size": a.size,
        "batch": 1,
        "threads": a.threads,
        "note": "one process, forms interleaved; machine shared with other jobs: ratios, not absolute times",
        "skipped": skipped,
        "rows": rows,
    }
    write(result, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
