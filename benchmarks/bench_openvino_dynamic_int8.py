"""Does an OpenVINO IR answer the same compiled with its dynamic batch and compiled for a static one?

``python -m benchmarks.bench_openvino_dynamic_int8 EXPORT_FOLDER [--data digits] [--formats openvino,openvino-int8]
--out benchmarks/results/openvino_dynamic_int8/NAME``

Each IR of the export folder is read by OpenVINO and compiled four ways (dynamic batch as written, or reshaped
to a static batch of 1 and of 32; in each inference precision this CPU runs natively), and run on every image
of the labelled folder preprocessed as the artifact records; top-1 and top-1 agreement with the static batch-1
compile are printed and saved with the host's CPU class. ``deploy.open`` compiles the static way.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_cpu_formats import cpu_flags, host_class


def _images(folder: Path, fmt: str, data: str) -> tuple[np.ndarray, np.ndarray, Path]:
    from deploy.predict import open_predictor
    from deploy.validation import labelled_files, read_labelled
    from t2tvit.data import eval_transform_for

    art = open_predictor(folder, fmt, verify=False).artifact
    _, files, _, _ = labelled_files(data, art.classes, None)
    x, y = read_labelled(files, eval_transform_for(art.model, art.img_size, **art.preprocessing), [])
    return x, y, Path(art.path)


def _run(path: Path, x: np.ndarray, y: np.ndarray, precision: str, batch: int | None) -> np.ndarray:
    from deploy.openvino import _core
    from t2tvit.data import in_batches

    model = _core().read_model(str(path))
    if batch is not None:
        shape = model.input(0).get_partial_shape()
        shape[0] = batch
        model.reshape({model.input(0): shape})
    compiled = _core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": precision})
    return in_batches(lambda a: compiled(a)[0], x, batch or 32, min_batch=batch or 1).argmax(1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder")
    p.add_argument("--data", default="digits")
    p.add_argument("--formats", default="openvino,openvino-int8")
    p.add_argument("--out", required=True, help="results path without suffix")
    args = p.parse_args(argv)
    from deploy.openvino import cpu_inference_precisions

    rows: list[dict[str, Any]] = []
    for fmt in args.formats.split(","):
        x, y, path = _images(Path(args.folder), fmt, args.data)
        for precision in cpu_inference_precisions():
            static1 = _run(path, x, y, precision, 1)
            for label, batch in (("static 1", 1), ("static 32", 32), ("dynamic, batches of 32", None)):
                pred = static1 if batch == 1 else _run(path, x, y, precision, batch)
                rows.append({"format": fmt, "precision": precision, "compiled": label, "images": len(y),
                             "top1": float((pred == y).mean() * 100),
                             "agreement_with_static_1": float((pred == static1).mean() * 100)})  # fmt: skip
    import openvino as ov

    res = {"folder": args.folder, "data": args.data, "openvino": ov.__version__, "host_class": host_class(cpu_flags()),
           "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "rows": rows}  # fmt: skip
    lines = [f"# OpenVINO {res['openvino']}: static against dynamic batch ({res['host_class']})", "",
             f"`{args.folder}`, {len(y)} images of `{args.data}`.", "",
             "| format | precision | compiled | top-1 | agreement with static 1 |",
             "|---|---|---|---:|---:|"]  # fmt: skip
    lines += [f"| {r['format']} | {r['precision']} | {r['compiled']} | {r['top1']:.2f} | "
              f"{r['agreement_with_static_1']:.2f} |" for r in rows]  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
