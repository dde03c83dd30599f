"""The phone runtimes' artifacts (the ``mobile`` group and the LiteRT rows): size, x86 latency, top-1 agreement.

``python -m benchmarks.bench_mobile_formats [--threads 2] [--duration 4] [--steps 300]
[--out benchmarks/results/mobile_formats_cpu]``

* **Size and latency** (T2T-ViT-7, 224 px, seeded random weights: neither depends on the weights): the
  ``mobile`` rows with ``torch`` and ``onnx`` beside them, exported by :func:`deploy.export_checkpoint` and
  profiled in one process, interleaved (``deploy.profiler``), batch 1. Size is a multiple of the fp32 eager
  file. Core ML runs only on macOS/iOS: its rows have a size, no latency. The LiteRT rows need litert-torch
  (``requirements-litert.txt``; skipped rows without it); beside them, the full-integer int8 recipe
  (:func:`static_tflite_row`) that ``tflite-int8``'s dynamic range was chosen over.
* **Accuracy** (a T2T-ViT-7 trained on the bundled digits at 32 px, ``--steps`` AdamW steps): the same rows
  built from it; top-1 agreement with the fp32 model on the digits' val images held out from calibration
  (the export's parity set). Core ML: built and checked structurally, not run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from deploy.manifest import Manifest

__all__ = ["main"]

TOOLS = ("torch", "onnxruntime", "ncnn", "pnnx", "coremltools", "litert-torch-nightly", "ai-edge-litert-nightly")
FORMATS = "torch,onnx,mobile,tflite,tflite-fp16,tflite-int8"  # tflite rows: skipped without litert-torch


def static_tflite_row() -> Any:
    """LiteRT full-integer int8 (int8 activations and input/output, calibrated): the recipe measured beside
    ``tflite-int8``'s dynamic range, a row outside the table (the profiler and the loaders take any row)."""
    import dataclasses

    from deploy.base import FORMATS as TABLE

    base = TABLE["tflite-int8"]
    return dataclasses.replace(
        base, name="tflite-int8-static", description="LiteRT full-integer int8", options={"quantize": "static"}
    )


def _variant(checkpoint: str | None, folder: Path, parity: int, calib: int) -> dict[str, Any] | None:
    """Build :func:`static_tflite_row` of the model exported into ``folder``, calibrated on the images the export
    calibrated on (the ``calib`` digits after its ``parity`` images), and measure its top-1 agreement on the
    export's parity images. None without litert-torch (requirements-litert.txt)."""
    import torch

    from compress.quantize import load_images
    from deploy import manifest as mf
    from deploy.base import ExportContext
    from deploy.export import reference_logits
    from t2tvit import create_model
    from t2tvit.data import dataset_split, eval_transform_for

    row = static_tflite_row()
    if row.missing():
        return None
    recorded = mf.read(folder)
    size = tuple(recorded.model["img_size"])
    if checkpoint is None:
        torch.manual_seed(0)  # the weights export_checkpoint made
    net = create_model(
        recorded.model_name, checkpoint=checkpoint, num_classes=recorded.num_classes, img_size=size
    ).eval()
    images, _ = load_images(dataset_split("digits", "val"), eval_transform_for(net, size), parity + calib)
    ctx = ExportContext(img_size=size, batch=(1, 1, 8), calib=images[parity:])
    path = folder / row.filename
    details = row.impl().export(net, path, row, ctx)
    logits = row.load(path)(images[:parity])
    ref = reference_logits(net, images[:parity])
    return {
        "row": row,
        "path": path,
        "bytes": row.size(path),
        "details": details,
        "top1_agreement": float((logits.argmax(1) == ref.argmax(1)).mean()),
        "max_abs_diff": float(np.abs(logits - ref).max()),
        "images": parity,
    }


def _export(checkpoint: str | None, img: int, out: Path, parity: int, calib: int) -> Manifest:
    from deploy.export import export_checkpoint

    kw = {"model": "t2t_vit_7", "num_classes": 10, "img_size": img} if checkpoint is None else {}
    exp = export_checkpoint(
        checkpoint, formats=FORMATS, out=out, batch=(1, 1, 8), parity_images=parity, calib_size=calib, **kw
    )
    return exp.manifest


def _speed(folder: Path, threads: int, duration: float, extra: list[tuple[Any, Path]]) -> dict[str, Any]:
    from deploy.profiler import ProfileConfig, profile_folder

    config = ProfileConfig(threads=threads, duration=duration, min_runs=10, rounds=4, memory=False, batch_sizes=(1,))
    report = profile_folder(folder, config, files=extra, command="bench_mobile_formats", progress=False)
    return {r.name: r for r in report.rows}


def _student(steps: int, folder: Path) -> str:
    import torch

    from benchmarks.export_sizes import train_digits

    model, acc = train_digits(steps=steps, img_size=32)
    ck = folder / "digits.pth"
    args = {"model": "t2t_vit_7", "num_classes": 10, "img_size": 32, "crop_pct": None, "interpolation": ""}
    torch.save({"model": model.state_dict(), "args": args, "epoch": 0, "val_acc": acc}, ck)
    print(f"digits student: val accuracy {acc:.3f} after {steps} steps", file=sys.stderr)
    return str(ck)


def _table(speed_manifest: Manifest, rows: dict[str, Any], acc_manifest: Manifest) -> list[dict[str, Any]]:
    fp32 = speed_manifest.entry("torch").bytes
    out = []
    for a in speed_manifest.artifacts:
        name = a.format
        r = rows.get(name)
        lat = r.latency.get("1") if r is not None and r.status == "ok" else None
        digits = acc_manifest.entry(name)
        parity = (digits.parity if digits is not None else None) or {}
        out.append(
            {
                "format": name,
                "precision": a.precision,
                "size_mb": round(a.bytes / 1e6, 2) if a.bytes else None,
                "size_x_fp32": round(a.bytes / fp32, 3) if a.bytes else None,
                "p50_ms_b1": round(lat["p50_ms"], 2) if lat else None,
                "latency_note": None if lat else (r.reason if r is not None else a.reason),
                "top1_agreement": parity.get("top1_agreement"),
                "max_abs_diff": parity.get("max_abs_diff"),
                "parity_images": parity.get("images"),
                "status_224": a.status,
                "status_digits": digits.status if digits is not None else None,
                "reason_digits": digits.reason if digits is not None else None,
                "details": {k: v for k, v in a.details.items() if k != "structure"},
            }
        )
    return out


def _markdown(table: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# Phone-runtime artifacts on x86 (T2T-ViT-7)",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']}; {meta['threads']} threads; load average at the end {meta['load_average']} "
        f"(1, 5, 15 min); tools: {meta['tools']}",
        "",
        "Size and batch-1 latency: 224 px, seeded random weights. Agreement: top-1 agreement with the fp32 model",
        f"of a T2T-ViT-7 trained on the digits at 32 px (val accuracy {meta['student_acc']}), on "
        f"{meta['parity_images']} val digits held out from calibration.",
        "",
        "| format | precision | size (MB) | × fp32 | p50 b1 (ms) | top-1 agreement | max \\|Δlogit\\| |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in table:
        lat = f"{r['p50_ms_b1']:.1f}" if r["p50_ms_b1"] else "-"
        agree = f"{r['top1_agreement']:.4f}" if r["top1_agreement"] is not None else "not run (needs macOS)"
        diff = f"{r['max_abs_diff']:.3g}" if r["max_abs_diff"] is not None else "-"
        lines.append(
            f"| {r['format']} | {r['precision']} | {r['size_mb']} | {r['size_x_fp32']} | {lat} | {agree} | {diff} |"
        )
    lines += ["", "Notes:", ""]
    lines += [f"- **{r['format']}**: {r['latency_note']}" for r in table if r["latency_note"]]
    lines += [
        f"- **{r['format']}** (digits): {r['reason_digits']}" for r in table if r["reason_digits"] and r["status_224"]
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import platform

    import torch

    from deploy.base import tool_versions
    from deploy.profiler import device_name

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--duration", type=float, default=4.0)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--out", default="benchmarks/results/mobile_formats_cpu")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        speed_manifest = _export(None, 224, t / "224", parity=16, calib=16)
        fast = _variant(None, t / "224", parity=16, calib=16)
        rows = _speed(t / "224", args.threads, args.duration, [(fast["row"], fast["path"])] if fast else [])
        ck = _student(args.steps, t)
        acc_manifest = _export(ck, 32, t / "digits", parity=300, calib=59)
        acc_variant = _variant(ck, t / "digits", parity=300, calib=59)
        for manifest, v in ((speed_manifest, fast), (acc_manifest, acc_variant)):
            if v is not None:  # the variant's entry, as export_checkpoint would have written it
                parity = {k: v[k] for k in ("top1_agreement", "max_abs_diff", "images")}
                from deploy.manifest import ArtifactEntry

                entry = ArtifactEntry(
                    v["row"].name, "int8", "ok", bytes=v["bytes"], details=v["details"], parity=parity
                )
                manifest.artifacts.append(entry)
        student_acc = torch.load(ck, weights_only=True)["val_acc"]
    table = _table(speed_manifest, rows, acc_manifest)
    meta = {
        "command": "python -m benchmarks.bench_mobile_formats " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{device_name('cpu')} ({platform.machine()})",
        "threads": args.threads,
        "tools": ", ".join(f"{k} {v}" for k, v in tool_versions(TOOLS).items()),
        "load_average": " ".join(f"{x:.1f}" for x in os.getloadavg()),  # a shared machine shows here
        "student_acc": round(float(student_acc), 3),
        "parity_images": 300,
    }
    (out / "mobile_formats_cpu.json").write_text(json.dumps({"meta": meta, "rows": table}, indent=2) + "\n")
    (out / "mobile_formats_cpu.md").write_text(_markdown(table, meta))
    print(_markdown(table, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
