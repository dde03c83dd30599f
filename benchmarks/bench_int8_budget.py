"""Top-1 drop and latency of every int8 row that keeps an accuracy budget, with and without it.

``python -m benchmarks.bench_int8_budget CHECKPOINT --val-data DIR --calib-data DIR --max-drop PTS
[--rows onnx-int8-dynamic,...] [--threads 2] [--rounds 5] --out benchmarks/results/int8_budget/NAME``

The checkpoint is exported twice by the product's own exporter, into ``<work>/default`` (no flags) and
``<work>/budget`` (``--max-drop PTS --val-data DIR``), with the fp32 row of each runtime beside (``torch``,
``onnx``, ``openvino``). Every artifact is then measured again by ``deploy.validate`` on ``--val-data`` (the
images the budget was fitted on: the drop it promises) and timed in one process, batch 1, all rows interleaved
round by round by the product's profiler (``deploy.profiler``, p50). Results: ``<out>.json`` and ``<out>.md``,
with the host's CPU class.

``--outlier activation`` first makes the checkpoint sensitive on purpose, as ``tests/test_budget.py`` does: one
channel of the final LayerNorm scaled x1000 and the heads' weights for it divided back (the same fp32 function;
the outlier pattern of trained ViTs' activations). ``--outlier weight`` does the reverse (the channel /1000, the
heads' weights for it x1000): an outlier column in the weights, which LiteRT's dynamic range int8 (per-row
activations, per-channel weights) cannot carry while it rides out the activation outlier.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import record

ROWS = ("onnx-int8-dynamic", "onnx-int8-static", "torch-int8", "openvino-int8", "tflite-int8")
FP32_OF = {
    "onnx-int8-dynamic": "onnx", "onnx-int8-static": "onnx", "torch-int8": "torch", "openvino-int8": "openvino",
    "tflite-int8": "tflite", "executorch-int8": "executorch",
}  # fmt: skip
OUTLIERS = {"activation": 1000.0, "weight": 1 / 1000.0}  # --outlier KIND: the LayerNorm channel's scale


def _export(checkpoint: str, out: Path, rows: list[str], args: argparse.Namespace, budget: bool) -> Any:
    from deploy.export import export_checkpoint

    fp32 = sorted({FP32_OF[r] for r in rows})
    extra = {"max_drop": args.max_drop, "val_data": args.val_data} if budget else {}
    return export_checkpoint(
        checkpoint, formats=",".join([*fp32, *rows]) if not budget else ",".join(rows), out=out,
        calib_data=args.calib_data, calib_size=args.calib_size, img_size=args.img_size, progress=True, **extra,
    )  # fmt: skip


def _with_outlier(checkpoint: str, work: Path, scale: float, channel: int = 7) -> str:
    """A copy of ``checkpoint`` whose head input channel ``channel`` is scaled by ``scale`` and the heads' weights
    for it divided back (same fp32 function)."""
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    weights = state["model"]
    weights["norm.weight"][channel] *= scale
    weights["norm.bias"][channel] *= scale
    for head in ("head", "head_dist"):  # a distilled student reads the norm with both heads
        if f"{head}.weight" in weights:
            weights[f"{head}.weight"][:, channel] /= scale
    state.pop("model_ema", None)  # the export reads the EMA weights when present
    path = work / "outlier.pth"
    work.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return str(path)


def _times(default: Path, budget_files: list[tuple[str, Path]], threads: int, rounds: int) -> dict[str, float]:
    """p50 ms at batch 1 of every artifact of the ``default`` export folder and of the budget files, all timed by
    the product's profiler in one run, interleaved round by round."""
    from deploy.base import FORMATS
    from deploy.profiler.run import ProfileConfig, profile_folder

    config = ProfileConfig(threads=threads, rounds=rounds, memory=False, time_unverified=True, verify=False)
    files = [(FORMATS[name], path) for name, path in budget_files]
    report = profile_folder(default, config, files=files, progress=False)
    out = {}
    for row in report.rows:
        budget = row.file is not None and Path(row.file).resolve() in {p.resolve() for _, p in budget_files}
        key = (
            f"{row.format} (budget)"
            if budget
            else (row.format if row.precision != "int8" else f"{row.format} (default)")
        )
        if row.latency.get("1"):
            out[key] = round(row.latency["1"]["p50_ms"], 3)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from deploy.validation import validate

    rows = [r for r in args.rows.split(",") if r]
    work = Path(args.work or tempfile.mkdtemp(prefix="t2t-budget-bench-"))
    checkpoint = _with_outlier(args.checkpoint, work, OUTLIERS[args.outlier]) if args.outlier else args.checkpoint
    default = _export(checkpoint, work / "default", rows, args, budget=False)
    fitted = _export(checkpoint, work / "budget", rows, args, budget=True)
    top1 = {}
    names = ",".join([*sorted({FP32_OF[r] for r in rows}), *rows])  # named: a default int8 that missed parity too
    for label, folder in (("default", default.folder), ("budget", fitted.folder)):
        for r in validate(folder, args.val_data, formats=names if label == "default" else None, progress=False).results:
            top1[(label, r.format)] = {"top1": r.top1, "drop": r.drop, "agreement": r.agreement}
    budget_files = [(e.format, fitted.folder / e.file) for e in fitted.manifest.artifacts if e.file]
    ms = _times(default.folder, budget_files, args.threads, args.rounds)
    out_rows = []
    for row in rows:
        entry = fitted.manifest.entry(row)
        budget = entry.details.get("accuracy_budget") or {}
        fp32 = ms.get(FP32_OF[row])
        out_rows.append({
            "row": row,
            "default": (top1.get(("default", row)) or {}) | {"ms": ms.get(f"{row} (default)")},
            "budget": (top1.get(("budget", row)) or {}) | {"ms": ms.get(f"{row} (budget)")},
            "fp32_row": FP32_OF[row], "fp32_ms": fp32,
            "kept_float": budget.get("kept_float"), "met": budget.get("met"), "fit_drop": budget.get("drop"),
            "export_status": entry.status, "export_reason": entry.reason, "export_seconds": entry.export_seconds,
        })  # fmt: skip
    return {
        "checkpoint": args.checkpoint, "outlier": args.outlier,
        "val_data": args.val_data, "calib_data": args.calib_data,
        "img_size": args.img_size, "max_drop": args.max_drop, "threads": args.threads, "rounds": args.rounds,
        "validation_images": fitted.manifest.data.get("validation", {}).get("images"),
        "reference_top1": top1.get(("default", FP32_OF[rows[0]]), {}).get("top1"),
        "rows": out_rows, "ms": ms,
    }  # fmt: skip


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}%"


def _markdown(res: dict[str, Any], host: str, cpu: str) -> str:
    lines = [
        f"# int8 with and without `--max-drop {res['max_drop']:g}`", "",
        f"Host: {cpu} ({host}); {res['threads']} threads, batch 1, "
        f"p50 of the profiler's {res['rounds']} interleaved rounds.",
        f"Checkpoint `{res['checkpoint']}`"
        + (f" made sensitive (`--outlier {res['outlier']}`)" if res["outlier"] else "")
        + (f", exported at {res['img_size']} px" if res["img_size"] else "")
        + f"; budget fitted and measured on `{res['val_data']}` "
        f"({res['validation_images']} images), calibration on `{res['calib_data']}`; fp32 top-1 "
        f"{res['reference_top1']:.2f}%.", "",
        "| row | default drop | budget drop | default agreement | budget agreement | kept float | default ms "
        "| budget ms | fp32 ms (row) | budget / fp32 |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]  # fmt: skip
    failed: list[str] = []
    for r in res["rows"]:
        d, b = r["default"], r["budget"]
        kept = ", ".join(r["kept_float"] or []) or "none"
        kept = kept if len(kept) < 60 else f"{len(r['kept_float'])} layers"
        ratio = f"{b['ms'] / r['fp32_ms']:.2f}" if b.get("ms") and r["fp32_ms"] else "-"
        if "drop" not in b:  # the budget's file was not written: the export says why
            failed.append(f"- `{r['row']}` with the budget: {r['export_status']}: {r['export_reason']}")
            fit = f"{r['fit_drop']:+.2f} in the search" if r.get("fit_drop") is not None else "none"
            b = b | {"drop": float("nan")}
            kept = f"{kept} (file {r['export_status']}; {fit})"
        lines.append(
            f"| {r['row']} | {d['drop']:+.2f} | {b['drop']:+.2f} | {_pct(d.get('agreement'))} | "
            f"{_pct(b.get('agreement'))} | {kept} | {d.get('ms') or float('nan'):.2f} | "
            f"{b.get('ms') or float('nan'):.2f} | {r['fp32_ms'] or float('nan'):.2f} ({r['fp32_row']}) | {ratio} |"
        )
    return "\n".join([*lines, *([""] + failed if failed else [])]) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--val-data", required=True)
    p.add_argument("--calib-data", required=True)
    p.add_argument("--calib-size", type=int, default=64)
    p.add_argument("--max-drop", type=float, default=1.0)
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--img-size", type=int, default=None, help="export at this size (default: the checkpoint's)")
    p.add_argument("--outlier", choices=sorted(OUTLIERS), default=None,
                   help="make the checkpoint sensitive first (an activation or a weight outlier)")  # fmt: skip
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5, help="the profiler's interleaved rounds")
    p.add_argument("--work", default=None, help="folder for the two exports (default: a temporary one)")
    p.add_argument("--out", required=True, help="results path without suffix")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    res = run(args) | record.host()
    record.save(args.out, res, _markdown(res, res["host_class"], res["cpu"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
