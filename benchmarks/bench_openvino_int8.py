"""Which NNCF int8 recipe the ``openvino-int8`` row should use on this CPU, measured on the deploy graph OpenVINO
converts (the channel-major T2T module: its soft splits are convolutions NNCF can quantize).

``python -m benchmarks.bench_openvino_int8 [--models t2t_vit_7] [--threads 2] [--rounds 8] [--work DIR]``

Every recipe of :data:`RECIPES` is written by the product's own exporter (``deploy.openvino.export`` with the
``openvino-int8`` row's options replaced) and loaded by its own Predictor in each inference precision this CPU
runs natively (what int8 leaves in floating point runs in it: ``f32``, and ``bf16`` where the CPU has it), beside
the float ``openvino`` row in the same precisions. Speed: 224 px, batch 1, seeded random weights (latency does
not depend on the weights; NNCF calibrated on 32 digits), all rows interleaved in one process, p50 as a multiple
of the float row in ``auto`` precision (the ``openvino`` default). Agreement: the same recipes built from a
T2T-ViT-7 trained on the bundled digits (32 px, as ``benchmarks.bench_cpu_formats``; 300 calibration digits of
the train split), top-1 agreement with its fp32 eager model on all val digits. OpenVINO's ``PERF_COUNT``
profile says where each row's time goes: the share run in int8, bf16 and f32 kernels, and in the T2T module.
Results: ``benchmarks/results/openvino_int8/<host class>.{json,md}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["RECIPES", "main"]

# name -> the openvino-int8 row's options (deploy.openvino._quantize).
RECIPES: dict[str, dict[str, Any]] = {
    "t2t-float": {"keep_float": ("tokens_to_token",)},  # the row before: the T2T module's activations float
    "all": {"keep_float": ()},  # everything NNCF quantizes, the T2T module's convolutions and MatMuls included
    "all-sq0.5": {"keep_float": (), "smooth_quant": 0.5},
    "all-nosq": {"keep_float": (), "smooth_quant": -1.0},
    "all-per-tensor": {"keep_float": (), "per_channel": False},
}


def _export(model: Any, path: Path, options: dict[str, Any] | None, ctx: Any) -> None:
    from deploy.base import FORMATS
    from deploy.openvino import export

    if path.is_file():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = FORMATS["openvino"]
    if options is not None:  # the row's own options (its deploy graph form) with the recipe's on top
        row = FORMATS["openvino-int8"]
        fmt = dataclasses.replace(row, options={**row.options, **options})
    export(model, path, fmt, ctx)


def build(net: Any, hw: tuple[int, int], calib: np.ndarray, folder: Path, threads: int) -> dict[str, Any]:
    """Every recipe and the float row, written into ``folder`` (reused when there) and loaded in each precision."""
    from deploy.base import FORMATS, ExportContext
    from deploy.openvino import cpu_inference_precisions, load

    ctx = ExportContext(img_size=hw, batch=(1, 1, 32), calib=calib)
    files = {"float": folder / "float.xml", **{f"int8-{n}": folder / f"int8-{n}.xml" for n in RECIPES}}
    t0 = time.perf_counter()
    for name, path in files.items():
        _export(net, path, None if name == "float" else RECIPES[name[5:]], ctx)
    print(f"  {folder}: {len(files)} IRs ready in {time.perf_counter() - t0:.0f} s", flush=True)
    rows = {}
    for name, path in files.items():
        fmt = FORMATS["openvino" if name == "float" else "openvino-int8"]
        for precision in ["auto", *cpu_inference_precisions()]:
            if precision == "auto" and name != "float":
                continue
            rows[f"{name}/{precision}"] = load(path, fmt, threads=threads, inference_precision=precision)
    return rows


def profile(predictor: Any, x: np.ndarray, runs: int = 10) -> dict[str, Any]:
    """``PERF_COUNT`` of the Predictor's compiled model (a copy with the profiler on): the share of the time run
    in int8, bf16 and f32 kernels (OpenVINO's ``exec_type`` suffix) and in the T2T module's nodes."""
    from benchmarks.ov_profile import profile as ov_profile

    prof = ov_profile(predictor.core, predictor.model, predictor.config, x, runs)
    return {**prof["precision"], "t2t_module": prof["t2t_module"]}


def agreement(student: Path, work: Path, threads: int) -> dict[str, Any]:
    """Top-1 agreement of every row built from the trained digits ``student`` with its fp32 eager model."""
    import torch

    import t2tvit
    from compress.quantize import load_images
    from deploy.export import reference_logits
    from t2tvit.data import dataset_split, eval_transform_for

    cached = work / "agreement.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    size = int(torch.load(student, map_location="cpu", weights_only=True)["args"]["img_size"])  # 32: as trained
    net = t2tvit.build_model("t2t_vit_7", checkpoint=str(student), img_size=size).eval()
    hw = (size, size)
    tf = eval_transform_for(net, hw)
    calib, _ = load_images(dataset_split("digits", "train"), tf, 300)
    val, _ = load_images(dataset_split("digits", "val"), tf, None, what="validation")
    rows = build(net, hw, calib, work / "student", threads)
    torch.set_num_threads(1)
    ref = reference_logits(net, val, 8)
    out: dict[str, Any] = {"images": len(val), "rows": {}}
    for name, r in rows.items():
        logits = np.concatenate([r(val[i : i + 8]) for i in range(0, len(val), 8)])
        out["rows"][name] = {
            "agreement": float((logits.argmax(1) == ref.argmax(1)).mean()),
            "max_abs_diff": float(np.abs(logits - ref).max()),
        }
    torch.set_num_threads(threads)
    cached.write_text(json.dumps(out, indent=2) + "\n")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_openvino_int8", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="t2t_vit_7")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--duration", type=float, default=1.0, help="seconds per row, over all rounds")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--student", type=Path, default=None, help="trained digits checkpoint (default: train one)")
    p.add_argument("--work", type=Path, default=Path("runs/bench_openvino_int8"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/openvino_int8"))
    args = p.parse_args(argv)
    import torch

    import t2tvit
    from benchmarks.bench_cpu_formats import cpu_flags, host_class, time_rows, train_student
    from compress.quantize import load_images
    from t2tvit.data import dataset_split, eval_transform_for

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    student = args.student or train_student(args.work / "student.pth")
    acc = agreement(student, args.work, args.threads)
    rows: dict[str, Any] = {}
    for model in [m for m in args.models.split(",") if m]:
        torch.manual_seed(0)
        net = t2tvit.build_model(model, img_size=224).eval()
        calib, _ = load_images(dataset_split("digits", "train"), eval_transform_for(net, (224, 224)), 32)
        for name, r in build(net, (224, 224), calib, args.work / model, args.threads).items():
            rows[f"{model}/{name}"] = r
    print(f"[speed] timing {len(rows)} rows, interleaved", flush=True)
    load = [os.getloadavg()[0]]
    lat = time_rows(rows, (224, 224), args.duration, args.rounds)
    load.append(os.getloadavg()[0])
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    models: dict[str, Any] = {}
    for key, r in rows.items():
        model, name = key.split("/", 1)
        m = models.setdefault(model, {})
        m[name] = {
            "read_back": r.inference_precision,
            "p50_ms": lat[key]["p50_ms"],
            "agreement": acc["rows"].get(name, {}).get("agreement"),
            "max_abs_diff": acc["rows"].get(name, {}).get("max_abs_diff"),
            "profile": profile(r, x),
        }
    for m in models.values():
        unit = m["float/auto"]["p50_ms"]
        for r in m.values():
            r["x_openvino"] = r["p50_ms"] / unit
    flags = cpu_flags()
    doc = {
        "command": " ".join(["python -m benchmarks.bench_openvino_int8", *(sys.argv[1:] if argv is None else argv)]),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - t0),
        "host_class": host_class(flags),
        "flags": flags,
        "recipes": {k: {kk: list(v) if isinstance(v, tuple) else v for kk, v in o.items()} for k, o in RECIPES.items()},
        "agreement_images": acc["images"],
        "settings": {"threads": args.threads, "rounds": args.rounds, "duration_s": args.duration},
        "load": load,
        "models": models,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / doc["host_class"]
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    md = render(doc)
    stem.with_suffix(".md").write_text(md)
    print(md)
    return 0


def render(doc: dict[str, Any]) -> str:
    lines = [
        f"# openvino-int8 recipes on {doc['host_class']} (`benchmarks/bench_openvino_int8.py`)",
        "",
        f"- command: `{doc['command']}` ({doc['seconds']} s, {doc['created']}); {doc['settings']['threads']} threads, "
        f"batch 1, 224 px, random weights, every row interleaved ({doc['settings']['rounds']} rounds); "
        "× openvino = ÷ the float `openvino` row in `auto` precision, same run; load average while timing "
        f"{doc['load'][0]:.1f} -> {doc['load'][1]:.1f} on {os.cpu_count()} logical CPUs",
        f"- agreement: top-1 with the fp32 eager model on all {doc['agreement_images']} val digits of a T2T-ViT-7 "
        "trained on the digits (32 px), the same recipe and precision",
        "- recipes: " + "; ".join(f"`{k}` {json.dumps(v)}" for k, v in doc["recipes"].items()),
        "- row = `<file>/<inference precision>`: what int8 leaves float runs in that precision; profile = share of "
        "OpenVINO's PERF_COUNT time in int8 / bf16 / f32 kernels and in the T2T module",
    ]
    for model, m in doc["models"].items():
        lines += ["", f"## {model}", "", "| row | read back | × openvino | p50 ms | agreement | max abs diff | "
                  "int8 / bf16 / f32 time | T2T module time |", "|---|---|---:|---:|---:|---:|---|---:|"]  # fmt: skip
        for name, r in sorted(m.items(), key=lambda kv: kv[1]["p50_ms"]):
            pr = r["profile"]
            shares = " / ".join(f"{pr.get(k, 0.0):.0%}" for k in ("int8", "bf16", "f32"))
            agree = "-" if r["agreement"] is None else f"{r['agreement']:.4f}"
            diff = "-" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.3f}"
            lines.append(f"| {name} | {r['read_back']} | {r['x_openvino']:.3f} | {r['p50_ms']:.2f} | {agree} | "
                         f"{diff} | {shares} | {pr['t2t_module']:.0%} |")  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
