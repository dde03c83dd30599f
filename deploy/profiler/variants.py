"""The variants a profile measures: one per manifest entry or artifact file, loaded through its format row.

Everything format-specific comes from the row (:class:`deploy.base.Format`): whether the artifact
accepts only its export's batch range, which runtime modules to import before a load is timed,
how its threads are set. An artifact that failed at export, cannot run here (missing package,
needs a GPU) or fails to load or run is a variant with its status and reason, never a missing row.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from t2tvit.errors import ConfigError

from ..base import FORMATS, Format, first_line, get_format, resolve_formats
from ..manifest import ArtifactEntry, Manifest
from .schema import Row
from .timing import make_timer

__all__ = ["Variant", "collect", "load_labelled", "model_info"]


@dataclass
class Variant(Row):
    """One row in the making: the :class:`Row` it will be, and what loading, timing and scoring it needs."""

    path: Path | None = None
    fmt: Format | None = None
    batch_range: tuple[int, int] | None = None
    notes: list[str] = field(default_factory=list)  # joined to the row's reason
    manifest_agreement: float | None = None
    manifest_images: int | None = None  # how many images the export's parity check ran on
    sha256: str | None = None  # what the manifest recorded
    changed: bool = False  # the file no longer matches the manifest's sha256 (the row failed for that)
    timed_only: bool = False  # its export's parity check failed: timed for latency only (--time-unverified)
    predictor: Any = None
    preds: np.ndarray | None = None  # top-1 class per data image
    hw: tuple[int, int] | None = None  # its model's input size (set by the profile; a comparison may mix them)

    def fail(self, status: str, reason: str) -> None:
        self.status, self.reason, self.predictor = status, reason, None

    def _size(self) -> int | None:
        if self.path is None or not (self.fmt.exists(self.path) if self.fmt is not None else self.path.is_file()):
            return None
        return self.fmt.size(self.path) if self.fmt is not None else self.path.stat().st_size

    def accepts(self, batch: int) -> bool:
        return self.batch_range is None or self.batch_range[0] <= batch <= self.batch_range[1]

    def row(self, macs: int | None, peak: dict[str, Any], peak_cuda: dict[str, Any] | None) -> Row:
        """The finished row: this variant's own fields, with its size, MAC rate and notes."""
        b1 = self.latency.get("1")
        gmacs = macs / (b1["p50_ms"] / 1e3) / 1e9 if (b1 and macs and b1["p50_ms"] > 0) else None
        table = peak_cuda if self.device == "cuda" and peak_cuda else peak
        ref = (table or {}).get(self.precision) or {}
        share = gmacs / ref["gmacs_per_s"] if gmacs is not None and ref.get("gmacs_per_s") else None
        own = {f.name: getattr(self, f.name) for f in fields(Row)}
        return Row(
            **own
            | {
                "file_bytes": self._size(),
                "reason": "; ".join([*([self.reason] if self.reason else []), *self.notes]) or None,
                "gmacs_per_s": gmacs,
                "peak_share": share,
                "agreement_source": self.agreement_source if self.agreement is not None else None,
                "timed_only": self.timed_only or None,
            }
        )


class _Names:
    """Row names, unique within a report (a second ``onnx`` file becomes ``onnx-2``)."""

    def __init__(self) -> None:
        self.taken: set[str] = set()

    def __call__(self, name: str) -> str:
        k, candidate = 2, name
        while candidate in self.taken:
            candidate, k = f"{name}-{k}", k + 1
        self.taken.add(candidate)
        return candidate


def _from_entry(
    entry: ArtifactEntry, folder: Path | None, device: str, unique: _Names, unverified: bool = False
) -> Variant:
    name = entry.format
    fmt = FORMATS.get(name)
    v = Variant(
        name=unique(name),
        format=name,
        precision=entry.precision or (fmt.precision if fmt else "fp32"),
        device=fmt.device_for(device) if fmt else device,
        file=entry.file,
        fmt=fmt,
    )
    batch = entry.batch
    if fmt is not None and fmt.bounded_batch and len(batch) == 3:
        v.batch_range = (int(batch[0]), int(batch[2]))
    parity = entry.parity or {}
    v.manifest_agreement, v.sha256 = parity.get("top1_agreement"), entry.sha256
    v.manifest_images = parity.get("images")
    if v.file and folder is not None:
        v.path = folder / v.file
    status = entry.status
    if unverified and status == "failed" and entry.parity_failed and v.file:
        # built, loaded and run at export, only its logits moved too far: timed, with the failure said
        v.timed_only = True
        v.notes.append(f"timed for latency only: {entry.reason or 'parity check failed'}")
    elif status != "ok":
        v.fail(status if status in ("failed", "skipped") else "failed", entry.reason or f"status {status}")
    elif fmt is None:
        v.fail("failed", f"unknown format {name!r} in the manifest")
    budget = entry.details.get("accuracy_budget")
    if budget:  # the layers int8 kept in float, at what drop and latency (deploy.budget)
        from ..budget import summary

        v.notes.append(f"accuracy budget: {summary(budget)}")
    return v


def _from_file(spec: str | Path | tuple[Format, str | Path], device: str, unique: _Names) -> Variant:
    """A file given directly: ``PATH``, ``FORMAT=PATH``, or ``(row, PATH)`` for a row outside the table
    (e.g. a benchmark script's variant that runs another artifact's file)."""
    from ..artifacts import identify

    if isinstance(spec, tuple):
        fmt, path, note = spec[0], Path(spec[1]), None
    else:
        text = str(spec)
        forced = text.split("=", 1)[0] if "=" in text and text.split("=", 1)[0] in FORMATS else None
        path = Path(text.split("=", 1)[1] if forced else text).expanduser()
        try:
            fmt, info = (get_format(forced), {}) if forced else identify(path)
            if fmt is None:
                raise ConfigError(f"{path.name} is a training checkpoint, not an exported artifact; export it first")
        except ConfigError as e:
            v = Variant(name=unique(path.name), format="?", precision="fp32", device=device, file=str(path), path=path)
            v.fail("failed", str(e))
            return v
        note = info.get("note")
    v = Variant(unique(fmt.name), fmt.name, fmt.precision, fmt.device_for(device), str(path), path=path, fmt=fmt)
    if note:
        v.notes.append(note)
    return v


def collect(
    folder: Path | None,
    manifest: Manifest | None,
    files: Sequence[Any],
    device: str,
    formats: str | Sequence[str] | None = None,
    unverified: bool = False,
    verify: bool = True,
) -> list[Variant]:
    """Every variant to profile, in manifest order then ``files`` order; each with what keeps it from running.
    ``unverified``: also time artifacts that were built but failed their parity check (their rows say so).
    ``verify``: a manifest artifact whose files no longer match the sha256 recorded at export is a failed row
    (False: timed anyway, its row saying it was not verified)."""
    wanted = {f.name for f in resolve_formats(formats)} if formats else None
    unique = _Names()
    out: list[Variant] = []
    seen: set[Path] = set()
    for entry in manifest.artifacts if manifest is not None else []:
        if wanted is None or entry.format in wanted:
            out.append(_from_entry(entry, folder, device, unique, unverified))
            if out[-1].path is not None:
                seen.add(out[-1].path.resolve())
    for spec in files:
        path = Path(spec[1] if isinstance(spec, tuple) else str(spec).split("=", 1)[-1]).expanduser()
        if not isinstance(spec, tuple) and path.resolve() in seen:
            continue
        seen.add(path.resolve())
        v = _from_file(spec, device, unique)
        if wanted is None or v.fmt is None or v.fmt.name in wanted or v.fmt.name not in FORMATS:
            out.append(v)
    for v in out:
        if v.status == "ok":
            _check_runnable(v, verify)
    return out


def _check_runnable(v: Variant, verify: bool = True) -> None:
    """What this machine can run at all."""
    why = v.fmt.missing() or v.fmt.not_here()
    if why:
        v.fail("skipped", why)
    elif v.device == "cuda" and not v.fmt.needs_gpu and not _cuda_available():
        v.fail("skipped", "needs a CUDA GPU; none is visible on this machine")
    elif v.path is None or not v.fmt.exists(v.path):
        v.fail("failed", f"artifact file {v.file} is missing")
    elif v.sha256 and not verify:
        v.integrity = "not verified (--no-verify)"
        v.notes.append("not checked against the manifest's sha256 (--no-verify)")
    elif v.sha256:
        from ..artifacts import integrity_problem

        problem = integrity_problem(v.path, v.fmt, v.sha256)
        if problem is None:
            v.integrity = "verified"
        else:
            v.integrity, v.changed = problem, True
            v.fail(
                "failed",
                f"integrity check failed: {problem}; export it again, or pass --no-verify if you changed it on purpose",
            )


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def model_info(manifest: Manifest | None, variants: Sequence[Variant]) -> dict[str, Any]:
    """Name, classes and input size of the model: from the manifest, else from what a given file says about
    itself (its format row's ``describe``: an eager artifact names its model, an ONNX file its input shape)."""
    if manifest is not None:
        return {
            "name": manifest.model_name,
            "num_classes": manifest.num_classes,
            "img_size": tuple(int(s) for s in manifest.model.get("img_size", (224, 224))),
            "source": manifest.source_checkpoint,
        }
    for v in variants:
        if v.fmt is None or v.path is None or not v.fmt.exists(v.path) or v.fmt.name not in FORMATS:
            continue
        try:
            info = v.fmt.describe(v.path) or {}
        except Exception:  # noqa: BLE001 - a broken file becomes a failed row later; try the next one
            continue
        size = info.get("img_size")
        if size:
            hw = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
            return {"name": info.get("model"), "num_classes": info.get("num_classes"), "img_size": hw,
                    "source": str(v.path)}  # fmt: skip
    raise ConfigError(
        "cannot tell the model's input size from the files given; pass the export folder with its manifest "
        "or add its model-torch.pt to --files"
    )


def load(v: Variant, hw: tuple[int, int], batch_sizes: Sequence[int], threads: int) -> None:
    """Load ``v`` (timed; its runtime modules imported first, so imports are not counted) and time its first call."""
    import importlib

    usable = [b for b in batch_sizes if v.accepts(b)]
    if not usable:
        lo, hi = v.batch_range or (0, 0)
        v.fail("skipped", f"accepts batch sizes {lo}..{hi}, none of the requested {list(batch_sizes)}")
        return
    with warnings.catch_warnings():  # the runtimes' own deprecation chatter says nothing about the artifact
        for category in (DeprecationWarning, FutureWarning, UserWarning):
            warnings.simplefilter("ignore", category)
        try:
            v.fmt.impl()
            for name in v.fmt.runtime_imports:
                importlib.import_module(name)
            t0 = time.perf_counter()
            v.predictor = v.fmt.load(v.path, v.device, threads)
            v.load_s = time.perf_counter() - t0
            v.precision = v.predictor.precision  # what it computes in here (an OpenVINO bf16 file falls back to fp32)
            v.notes.extend(v.predictor.runtime_notes)
        except Exception as e:  # noqa: BLE001 - a bad file is a failed row, not a crash
            v.fail("failed", f"load failed: {first_line(e)}")
            return
        try:
            v.first_inference_ms = make_timer(v.predictor, inputs(usable[0], hw), v.device)()
        except Exception as e:  # noqa: BLE001
            v.fail("failed", f"run failed (batch {usable[0]}): {first_line(e)}")


_INPUTS: dict[tuple[int, int, int], np.ndarray] = {}


def inputs(batch: int, hw: tuple[int, int]) -> np.ndarray:
    """The same fixed-seed random batch for every variant (latency does not depend on the pixels)."""
    key = (batch, *hw)
    if key not in _INPUTS:
        if len(_INPUTS) >= 4:  # a comparison of mismatched sizes holds a few; never more
            _INPUTS.clear()
        _INPUTS[key] = np.random.default_rng(0).standard_normal((batch, 3, *hw), dtype=np.float32)
    return _INPUTS[key]


def accuracy(v: Variant, images: np.ndarray, labels: np.ndarray) -> None:
    """Top-1/top-5 of ``v`` on labelled images, in the batches its artifact accepts."""
    lo, hi = v.batch_range or (1, 32)
    chunk = max(lo, min(32, hi))
    outs = []
    try:
        for i in range(0, len(images), chunk):
            x = images[i : i + chunk]
            n = len(x)
            if n < lo:  # an artifact with a fixed batch: pad, then drop the padding
                x = np.concatenate([x, np.zeros((lo - n, *x.shape[1:]), np.float32)])
            outs.append(v.predictor(x)[:n])
    except Exception as e:  # noqa: BLE001
        v.notes.append(f"accuracy not measured: {first_line(e)}")
        return
    logits = np.concatenate(outs)
    k = min(5, logits.shape[1])
    topk = np.argsort(-logits, axis=1)[:, :k]
    v.preds = topk[:, 0]
    v.top1 = float((topk[:, 0] == labels).mean() * 100)
    v.top5 = float((topk == labels[:, None]).any(axis=1).mean() * 100)


def agreements(variants: Sequence[Variant], measured: bool, use_manifest: bool = True) -> None:
    """Top-1 agreement with the fp32 ``torch`` artifact on the data images; without data (or without a
    usable torch row) the export's own parity agreement with the fp32 model, from the manifest
    (unless ``use_manifest`` is False)."""
    ref = next((v for v in variants if v.format == "torch" and v.preds is not None), None) if measured else None
    for v in variants:
        if v.status != "ok":
            continue
        if ref is not None and v.preds is not None:
            v.agreement = float((v.preds == ref.preds).mean())
            v.agreement_source = "measured"
        elif use_manifest and v.manifest_agreement is not None:
            v.agreement = float(v.manifest_agreement)
            v.agreement_source = "export"
            images = f" on {v.manifest_images} images" if v.manifest_images else ""
            v.notes.append(f"agreement from the export's parity check{images} (manifest), not measured in this run")


def data_classes(folder: str | Path, num_classes: int | None = None) -> list[str]:
    """The class names of a labelled folder (sorted sub-folders), or a ConfigError saying what is wrong."""
    from t2tvit.data import existing_folder

    folder = existing_folder(folder)
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ConfigError(f"data folder {folder} has no class sub-folders; lay it out as {folder}/<class>/<image>")
    if num_classes is not None and len(classes) > num_classes:
        raise ConfigError(
            f"data folder {folder} has {len(classes)} classes but the model has {num_classes}; "
            "pass the validation folder of the dataset it was trained on"
        )
    return classes


def load_labelled(
    folder: str | Path, transform: Any, max_images: int | None = None, num_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Up to ``max_images`` images of ``folder/<class>/<image>`` (a fixed random sample across classes),
    transformed, with their labels: the index of the class among the sorted sub-folder names, as in
    training. Returns ``(images, labels, classes)``."""
    from compress.quantize import load_images

    folder = Path(folder)
    classes = data_classes(folder, num_classes)
    index = {c: i for i, c in enumerate(classes)}
    images, files = load_images(folder, transform, max_images, what="data")
    labels = [
        index.get(f.relative_to(folder).parts[0], -1) if len(f.relative_to(folder).parts) > 1 else -1 for f in files
    ]
    keep = np.array([lab >= 0 for lab in labels], dtype=bool)
    if not keep.any():
        raise ConfigError(f"data folder {folder} has no images inside its class sub-folders")
    return images[keep], np.array(labels)[keep], classes
