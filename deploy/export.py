"""Export one model to many formats, verify every artifact, and write the manifest.

:func:`export_all` walks the requested rows of :data:`~deploy.base.FORMATS` in table order. For
each one it either records why it cannot be built here (``skipped``: the reason names what to
install), or exports it, loads the file back through the format's own runtime and compares the
logits with the fp32 PyTorch model on the same real images (``ok`` or ``failed``). A format whose
export or load raises is ``failed`` with the message, and the others still run. Nothing is left
out of the manifest, and nothing in it is unverified.

Parity thresholds (:data:`PARITY`), per precision, and why:

* fp32: max |Δlogit| ≤ 1e-3 × the largest |logit| of the reference (at least 1e-3). The same
  arithmetic in another runtime differs only by float rounding and operator order, which grows
  with the logits' magnitude (measured: ~3e-6 for ONNX Runtime, ~1e-3 for XNNPACK kernels on
  logits of ~10); any changed weight moves them far more.
* fp16: top-1 agreement ≥ 0.99 (rounding of every activation to 11 bits moves logits by ~1e-2).
* bf16 (an fp32 artifact computed in bf16, e.g. OpenVINO on an AMX CPU): top-1 agreement ≥ 0.99.
* int8: top-1 agreement ≥ 0.95 with fp32 on held-out real images. Quantization moves every
  logit, so only the decision can be compared; max |Δlogit| is recorded for information.

A format row may override them with ``options={"parity_max_abs": ..., "parity_min_agreement": ...}``.

The output folder is built next to the target and swapped in at the end: an old export is
replaced as a whole (never mixed into the new manifest) and survives a crashed run.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from t2tvit.errors import ConfigError
from t2tvit.progress import Progress

from .base import (
    ExportContext,
    Format,
    Predictor,
    first_line,
    get_format,
    resolve_formats,
    sha256_file,
    tool_versions,
)

__all__ = [
    "DEFAULT_MODEL",
    "MANIFEST",
    "Export",
    "PARITY",
    "PARITY_RANDOM_WEIGHTS",
    "PREPROCESSING_KEYS",
    "ParityThreshold",
    "check_parity",
    "export_all",
    "export_checkpoint",
    "manifest_preprocessing",
    "prepare_out_dir",
    "read_manifest",
    "reference_logits",
    "sha256_file",
    "tool_versions",
    "verify_artifacts",
    "verify_export",
]

DEFAULT_MODEL = "t2t_vit_7"  # exported when neither a checkpoint nor a model name says which
MANIFEST = "manifest.json"
SCHEMA = "t2t-export/1"


@dataclass(frozen=True)
class ParityThreshold:
    """What an artifact must reach against the fp32 PyTorch model (None: not checked)."""

    max_abs: float | None = None  # max |Δlogit| allowed
    min_agreement: float | None = None  # top-1 agreement required (0..1)
    relative: bool = False  # max_abs is a fraction of the reference's largest |logit| (if above 1)

    def limit(self, reference: np.ndarray) -> float | None:
        if self.max_abs is None:
            return None
        return self.max_abs * max(1.0, float(np.abs(reference).max())) if self.relative else self.max_abs


PARITY: dict[str, ParityThreshold] = {
    "fp32": ParityThreshold(max_abs=1e-3, relative=True),
    "fp16": ParityThreshold(min_agreement=0.99),
    "bf16": ParityThreshold(min_agreement=0.99),
    "int8": ParityThreshold(min_agreement=0.95),
}
# For random weights (no checkpoint): an untrained model's logits are nearly tied (top-1 margin
# ~0.05 at 224 px), so which class wins flips under any rounding and top-1 agreement measures
# nothing (0.34 to 1.0 between two random inits of T2T-ViT-7). Reduced precision is then
# checked by how far its logits move instead, relative to the largest logit (at least 1);
# a broken artifact moves them by about their own size.
PARITY_RANDOM_WEIGHTS: dict[str, ParityThreshold] = {
    "fp16": ParityThreshold(max_abs=0.05, relative=True),
    "bf16": ParityThreshold(max_abs=0.1, relative=True),  # 8 mantissa bits against fp16's 11
    "int8": ParityThreshold(max_abs=0.1, relative=True),
}


def _batches(n: int, size: int) -> Iterable[slice]:
    for i in range(0, n, max(1, size)):
        yield slice(i, min(i + size, n))


def reference_logits(model: Any, images: np.ndarray, batch: int = 32) -> np.ndarray:
    """fp32 logits of the eval-mode PyTorch ``model`` (a distilled one averages its two heads)."""
    import torch

    model.eval()
    with torch.no_grad():
        outs = [model(torch.from_numpy(images[s])).float().numpy() for s in _batches(len(images), batch)]
    return np.concatenate(outs)


def threshold_for(
    fmt: Format, thresholds: dict[str, ParityThreshold] | None = None, precision: str | None = None
) -> ParityThreshold:
    """The parity threshold of ``fmt`` at ``precision`` (default the row's; an export may compute in another)."""
    precision = precision or fmt.precision
    base = (thresholds or PARITY).get(precision, PARITY.get(precision, ParityThreshold()))
    return ParityThreshold(
        fmt.options.get("parity_max_abs", base.max_abs),
        fmt.options.get("parity_min_agreement", base.min_agreement),
        fmt.options.get("parity_relative", base.relative),
    )


def check_parity(
    predictor: Predictor, images: np.ndarray, reference: np.ndarray, threshold: ParityThreshold, batch: int = 32
) -> dict[str, Any]:
    """Run ``predictor`` on ``images`` and compare with the fp32 ``reference`` logits.

    Returns the parity record of the manifest: max and mean |Δlogit|, top-1 agreement, the
    threshold and whether it ``passed`` (plus ``problem``, one sentence, when it did not).
    """
    out = np.concatenate([predictor(images[s]) for s in _batches(len(images), batch)])
    record: dict[str, Any] = {"images": len(images)}
    if out.shape != reference.shape:
        record.update(passed=False, problem=f"output shape {out.shape} differs from the reference {reference.shape}")
        return record
    diff = np.abs(out.astype(np.float64) - reference.astype(np.float64))
    finite = bool(np.isfinite(out).all())
    agreement = float((out.argmax(1) == reference.argmax(1)).mean())
    record.update(
        max_abs_diff=float(diff.max()) if finite else float("inf"),
        mean_abs_diff=float(diff.mean()) if finite else float("inf"),
        top1_agreement=agreement,
        threshold={k: v for k, v in asdict(threshold).items() if v is not None},
    )
    limit = threshold.limit(reference)
    if limit is not None:
        record["max_abs_limit"] = limit
    problems = []
    if not finite:
        problems.append("the artifact returned NaN or infinite logits")
    if limit is not None and not record["max_abs_diff"] <= limit:
        problems.append(f"max |Δlogit| {record['max_abs_diff']:.3g} > {limit:.3g}")
    if threshold.min_agreement is not None and agreement < threshold.min_agreement:
        problems.append(f"top-1 agreement {agreement:.3f} < {threshold.min_agreement:g}")
    record["passed"] = not problems
    if problems:
        record["problem"] = "; ".join(problems)
    return record


def prepare_out_dir(out_dir: Path) -> None:
    """Refuse an output folder that is not an earlier export (it would be replaced as a whole)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"output path {out_dir} is a file; pass a folder to --out")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MANIFEST).is_file():
        raise ConfigError(
            f"output folder {out_dir} is not empty and has no {MANIFEST}, so it is not an export folder "
            "and will not be replaced; pass another --out or empty it"
        )


def export_all(
    model: Any,
    formats: str | Sequence[str] | Sequence[Format],
    out_dir: str | Path,
    ctx: ExportContext,
    parity_images: np.ndarray,
    *,
    source_checkpoint: str | Path | None = None,
    meta: dict[str, Any] | None = None,
    thresholds: dict[str, ParityThreshold] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Export ``model`` to every format in ``formats`` under ``out_dir``; returns the manifest.

    ``parity_images``: normalised float32 ``(N, 3, H, W)`` real images, held out from calibration.
    ``meta``: extra top-level manifest fields (data folders, preprocessing, ...).
    ``out_dir`` is replaced as a whole (see :func:`prepare_out_dir`).
    """
    from .torch_eager import model_spec

    names = formats if isinstance(formats, str) else [f.name if isinstance(f, Format) else f for f in formats]
    fmts = resolve_formats(names)
    out_dir = Path(out_dir).resolve()
    prepare_out_dir(out_dir)
    if parity_images is None or len(parity_images) == 0:
        raise ConfigError("parity needs at least one real image; pass a folder of images")
    model = model.eval()
    spec = model_spec(model)
    for fmt in fmts:  # a setting a requested format cannot honour here fails before anything is written
        hook = None if fmt.missing() else getattr(fmt.impl(), "check_context", None)
        if hook is not None:
            hook(ctx)
    reference = reference_logits(model, parity_images, ctx.batch[2])
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    own_scratch = ctx.scratch is None
    if own_scratch:
        ctx.scratch = Path(tempfile.mkdtemp(prefix="t2t-export-scratch-"))
    ck = str(source_checkpoint) if source_checkpoint else None
    entries: list[dict[str, Any]] = []
    try:
        with Progress(len(fmts), "export", enabled=progress, prefix="export") as bar:
            for fmt in fmts:
                bar.step(f"{fmt.name}: exporting", 0)
                entries.append(_one(model, fmt, staging, ctx, parity_images, reference, ck, thresholds, bar))
                bar.step(f"{fmt.name}: {entries[-1]['status']}")
        manifest = {
            "schema": SCHEMA,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model": spec,
            "source_checkpoint": ck,
            "input": _input(ctx),
            "parity": {
                "images": len(parity_images),
                "reference": "fp32 PyTorch eager model, eval mode",
                "thresholds": {p: {k: v for k, v in asdict(t).items() if v is not None} for p, t in PARITY.items()}
                | {p: {k: v for k, v in asdict(t).items() if v is not None} for p, t in (thresholds or {}).items()},
            },
            "tool_versions": tool_versions(),
            **(meta or {}),
            "artifacts": entries,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        _swap_in(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if own_scratch and ctx.scratch is not None:
            shutil.rmtree(ctx.scratch, ignore_errors=True)
            ctx.scratch = None
        ctx.built.clear()  # those paths were in the staging folder
    return manifest


def _input(ctx: ExportContext) -> dict[str, Any]:
    return {
        "name": "images",
        "shape": ["batch", 3, *ctx.img_size],
        "dtype": "float32",
        "layout": "NCHW, normalised with the model's mean/std",
        "batch": {"min": ctx.batch[0], "opt": ctx.batch[1], "max": ctx.batch[2]},
    }


def _one(
    model: Any,
    fmt: Format,
    folder: Path,
    ctx: ExportContext,
    images: np.ndarray,
    reference: np.ndarray,
    checkpoint: str | None,
    thresholds: dict[str, ParityThreshold] | None,
    bar: Progress,
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "format": fmt.name,
        "precision": fmt.precision,
        "status": "skipped",
        "reason": None,
        "file": None,
        "bytes": None,
        "sha256": None,
        "input_shape": ["batch", 3, *ctx.img_size],
        "batch": list(ctx.batch),
        "source_checkpoint": checkpoint,
        "tool_versions": tool_versions(fmt.tools),
        "description": fmt.description,
        "parity": None,
    }
    why = fmt.missing()
    if why:
        entry["reason"] = why
        return entry
    path = folder / fmt.filename
    t0 = time.perf_counter()
    try:
        extra = fmt.impl().export(model, path, fmt, ctx) or {}
    except Exception as e:  # noqa: BLE001 - one format's failure must not stop the others
        entry.update(status="failed", reason=f"export failed: {first_line(e)}")
        path.unlink(missing_ok=True)
        return entry
    entry["export_seconds"] = round(time.perf_counter() - t0, 2)
    if not fmt.exists(path):
        entry.update(status="failed", reason=f"export reported success but wrote no {fmt.filename}")
        return entry
    ctx.built[fmt.name] = path
    # an export may compute in another precision than its row's (OpenVINO fp32 weights run in bf16)
    precision = extra.pop("precision", fmt.precision)
    entry.update(precision=precision, file=fmt.filename, bytes=fmt.size(path), sha256=fmt.digest(path), details=extra)
    elsewhere = fmt.not_here()
    if elsewhere:  # written and checked as far as this machine can, but parity was not checked: never "ok"
        checked = extra.get("checked_structurally")
        entry["reason"] = f"parity skipped: {elsewhere}" + (f"; checked structurally: {checked}" if checked else "")
        return entry
    bar.step(f"{fmt.name}: checking parity", 0)
    try:
        predictor = fmt.load(path)
        # what the loaded runtime says it computes in (OpenVINO's `auto` resolves on this CPU), not what was asked
        entry["precision"] = precision = getattr(predictor, "precision", None) or precision
        _runtime_details(extra, predictor)
        threshold = threshold_for(fmt, thresholds, precision)
        parity = check_parity(predictor, images, reference, threshold, ctx.batch[2])
        fallback = getattr(fmt.impl(), "parity_fallback", None)
        second = fallback(path, fmt, predictor) if fallback is not None and not parity["passed"] else None
        if second is not None:  # e.g. an `auto` OpenVINO file whose bf16 missed parity: recorded f32, checked again
            note, predictor = second
            extra["fallback"] = f"{note} ({parity['problem']})"
            entry["precision"] = precision = predictor.precision
            _runtime_details(extra, predictor)
            parity = check_parity(predictor, images, reference, threshold_for(fmt, thresholds, precision), ctx.batch[2])
            entry.update(bytes=fmt.size(path), sha256=fmt.digest(path))
    except Exception as e:  # noqa: BLE001 - a file that does not load back is a failed artifact
        entry.update(status="failed", reason=f"written but could not be loaded and run: {first_line(e)}")
        return entry
    entry["parity"] = parity
    entry["status"] = "ok" if parity["passed"] else "failed"
    if not parity["passed"]:
        entry["reason"] = f"parity check failed: {parity['problem']}"
    return entry


def _runtime_details(extra: dict[str, Any], predictor: Predictor) -> None:
    """What the loaded runtime reports about itself, beside what the export asked for (OpenVINO's inference
    precision as its compiled model reads it back)."""
    used = getattr(predictor, "inference_precision", None)
    if isinstance(used, str):
        extra["inference_precision_used"] = used


def _swap_in(staging: Path, out_dir: Path) -> None:
    old = None
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        os.replace(out_dir, old)
    os.replace(staging, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# The eval preprocessing a manifest records (``t2tvit.data.eval_transform_for``'s keyword overrides).
PREPROCESSING_KEYS = ("mean", "std", "crop_pct", "interpolation")


def manifest_preprocessing(manifest: dict[str, Any] | None) -> dict[str, Any]:
    """The preprocessing ``manifest`` recorded, as ``eval_transform_for`` keywords (unset ones left out)."""
    recorded = (manifest or {}).get("preprocessing") or {}
    return {k: recorded[k] for k in PREPROCESSING_KEYS if recorded.get(k) is not None}


def read_manifest(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ConfigError(f"{folder} has no {MANIFEST}; run `t2t export --out {folder}` first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON ({e}); export again") from None


def verify_artifacts(
    folder: str | Path,
    model: Any = None,
    images: np.ndarray | None = None,
    thresholds: dict[str, ParityThreshold] | None = None,
) -> list[dict[str, Any]]:
    """Re-check the ``ok`` artifacts of an export folder: file present, sha256 unchanged, loads and
    runs; with ``model`` and ``images``, parity again. One record per artifact checked:
    ``{"format", "ok", "problems", "parity"}``."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    reference = reference_logits(model, images) if model is not None and images is not None else None
    results = []
    for entry in manifest.get("artifacts", []):
        if entry.get("status") != "ok":
            continue
        fmt = get_format(entry["format"])
        path = folder / entry["file"]
        rec: dict[str, Any] = {"format": fmt.name, "problems": [], "parity": None}
        if not fmt.exists(path):
            rec["problems"].append(f"{entry['file']} is missing")
        else:
            if fmt.digest(path) != entry.get("sha256"):
                rec["problems"].append("sha256 differs from the manifest: the file changed after export")
            try:
                predictor = fmt.load(path)
                if reference is not None:
                    # in the export's own batches (its max batch): dynamic int8 quantizes activations per batch
                    same = {"batch": entry["batch"][2]} if len(entry.get("batch") or ()) == 3 else {}
                    # the precision it runs in here (a file recorded bf16 runs f32 on a CPU without bf16)
                    threshold = threshold_for(fmt, thresholds, getattr(predictor, "precision", entry.get("precision")))
                    rec["parity"] = check_parity(predictor, images, reference, threshold, **same)
                    if not rec["parity"]["passed"]:
                        rec["problems"].append(f"parity check failed: {rec['parity']['problem']}")
                else:
                    h, w = manifest["input"]["shape"][2:]
                    out = predictor(np.zeros((1, 3, h, w), np.float32))
                    if out.shape != (1, manifest["model"]["num_classes"]):
                        rec["problems"].append(f"output shape {out.shape} is not (1, num_classes)")
            except Exception as e:  # noqa: BLE001 - report, do not crash the check of the others
                rec["problems"].append(f"could not be loaded and run: {first_line(e)}")
        rec["ok"] = not rec["problems"]
        results.append(rec)
    return results


@dataclass
class Export:
    """What :func:`export_checkpoint` wrote: the folder and its manifest."""

    folder: Path
    manifest: dict[str, Any]

    @property
    def failed(self) -> list[str]:
        """The formats that failed to build or to pass parity (skipped ones are not failures)."""
        return [a["format"] for a in self.manifest["artifacts"] if a["status"] == "failed"]


def export_checkpoint(
    checkpoint: str | Path | None = None,
    *,
    formats: str | Sequence[str] = "cpu",
    out: str | Path | None = None,
    model: str | None = None,
    num_classes: int | None = None,
    img_size: int | None = None,
    batch: tuple[int, int, int] = (1, 1, 32),
    qengine: str = "qnnpack",
    opset: int = 18,
    jit: str = "trace",
    inference_precision: str = "auto",
    calib_data: str | Path | None = None,
    calib_size: int = 64,
    parity_images: int = 128,
    progress: bool = True,
) -> Export:
    """Export a checkpoint (or, without one, seeded random weights) to ``formats`` under ``out``.

    What the checkpoint recorded fills what is not given: the model name, image size, the trainer's
    crop/interpolation (recorded in the manifest's preprocessing) and its class names. Real images
    from ``calib_data`` (a folder or ``digits``; default the bundled digits' ``val/``) are split into
    disjoint parity and calibration sets. Random weights are held to logit movement for reduced
    precision (:data:`PARITY_RANDOM_WEIGHTS`). ``out`` defaults to ``artifacts/<model>``.
    """
    import t2tvit
    from compress.quantize import check_qengine, load_images
    from t2tvit.data import eval_transform_for, image_folder

    fmts = resolve_formats(formats)  # unknown names fail before anything heavy loads
    if calib_size < 1 or parity_images < 1:
        raise ConfigError("--calib-size and --parity-images must be at least 1")
    check_qengine(qengine)
    name, img_size, overrides, classes = _recorded(checkpoint, model, img_size, num_classes)
    if checkpoint is None:  # random weights: the same ones every run
        import torch

        torch.manual_seed(0)
    net = t2tvit.build_model(name, checkpoint=checkpoint, num_classes=num_classes, img_size=img_size).eval()
    hw = tuple(int(s) for s in net.img_size)
    folder = image_folder(calib_data or "digits")
    images, _ = load_images(folder, eval_transform_for(net, hw, **overrides), parity_images + calib_size, what="image")
    parity, calib = images[:parity_images], images[parity_images:]
    overlap = len(calib) == 0
    if overlap:  # a tiny folder: calibrate on the parity images rather than on nothing
        calib = parity
    ctx = ExportContext(
        img_size=hw,
        batch=tuple(batch),
        calib=calib,
        qengine=qengine,
        opset=opset,
        jit=jit,
        inference_precision=inference_precision,
    )
    cfg = net.pretrained_cfg | overrides
    meta: dict[str, Any] = {
        "preprocessing": {k: cfg.get(k) for k in PREPROCESSING_KEYS},
        "data": {
            "folder": str(folder),
            "parity_images": len(parity),
            "calibration_images": len(calib),
            "calibration_is_parity_set": overlap,
        },
    }
    if classes is not None and len(classes) <= net.num_classes:
        meta["classes"] = classes  # index -> name, as the checkpoint's training set sorted them
    out = Path(out) if out is not None else Path("artifacts") / name
    thresholds = PARITY_RANDOM_WEIGHTS if checkpoint is None else None
    manifest = export_all(
        net, fmts, out, ctx, parity, source_checkpoint=checkpoint, meta=meta, thresholds=thresholds, progress=progress
    )
    return Export(out, manifest)


def _recorded(
    checkpoint: str | Path | None, name: str | None, img_size: int | None, num_classes: int | None
) -> tuple[str, int | None, dict[str, Any], list[str] | None]:
    """What the checkpoint recorded, under what the caller gave: model name, image size, the trainer's
    preprocessing, and its class names (kept for `t2t predict` unless a new head is asked for)."""
    from t2tvit.checkpoint import read_checkpoint, recorded_args, recorded_preprocessing

    overrides: dict[str, Any] = {}
    classes = None
    if checkpoint is not None:
        ck = read_checkpoint(checkpoint)
        args = recorded_args(ck)
        name = name or (args.get("model") if isinstance(args.get("model"), str) else None)
        if img_size is None and isinstance(args.get("img_size"), int):
            img_size = args["img_size"]
        overrides = recorded_preprocessing(args)
        names = ck.get("classes") if isinstance(ck, dict) else None
        if isinstance(names, list) and names and num_classes in (None, args.get("num_classes")):
            classes = [str(c) for c in names]
    return name or DEFAULT_MODEL, img_size, overrides, classes


def verify_export(
    folder: str | Path, checkpoint: str | Path, data: str | Path, *, images: int = 128, seed: int = 1
) -> list[dict[str, Any]]:
    """:func:`verify_artifacts` of an export folder with parity against ``checkpoint`` on ``images`` real
    images of ``data`` (a folder of images or a dataset name), preprocessed as the manifest records."""
    import t2tvit
    from compress.quantize import load_images
    from t2tvit.data import dataset_path, eval_transform_for

    manifest = read_manifest(folder)
    h, w = manifest["input"]["shape"][2:]
    model = t2tvit.create_model(manifest["model"]["model"], checkpoint=checkpoint, img_size=(h, w)).eval()
    transform = eval_transform_for(model, (h, w), **manifest_preprocessing(manifest))
    x, _ = load_images(dataset_path(data), transform, images, seed=seed, what="verification")
    return verify_artifacts(folder, model, x)
