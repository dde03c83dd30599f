"""``t2t validate``: the accuracy of a checkpoint, an artifact file or the artifacts of an export folder on a
labelled image folder, and how far each artifact moved from the fp32 model it was exported from.

:func:`validate` streams the folder once (``DATA/<class>/<image>``; a dataset root with a ``val/`` split, or
``digits``, gives that split) in batches through every artifact asked for and through the reference: the
checkpoint the export folder's manifest records (found again as ``t2t verify`` finds it). Each image gets the
model's own eval preprocessing (:func:`t2tvit.data.eval_transform_for`, as the trainer's validation, the export's
parity check and the profiler do), so the top-1 here is the top-1 ``t2t bench --data`` reports on the same images.

Labels: a class folder is the model's class of that name when the model records its class names (a folder the
model does not know is refused, not guessed); otherwise the folders, sorted, are classes 0, 1, ... as the trainer
numbers them. Unreadable images are skipped, counted and named. The result (:class:`ValidationReport`) holds the
top-1/top-5 and per-class accuracy of every artifact, its top-1 agreement with the reference and largest logit
error, and the user's checks (``min_top1``, ``max_drop``: points of top-1 lost against the reference);
:meth:`ValidationReport.write` writes ``validate.json``, ``validate.csv`` (one line per artifact and class) and
``validate.md`` into a folder, whole or not at all.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from t2tvit.data import in_batches
from t2tvit.errors import ConfigError

from . import manifest as mf
from .base import Predictor
from .predict import _read_image, open_predictor, quiet_runtimes

__all__ = ["ArtifactAccuracy", "ClassAccuracy", "ValidationReport", "labelled_files", "read_labelled", "validate"]

FILES = ("validate.json", "validate.csv", "validate.md")


@dataclass
class ClassAccuracy:
    """One class of the folder: its name, the model's index for it, its images and the top-1 on them (%)."""

    name: str
    index: int
    images: int
    top1: float


@dataclass
class ArtifactAccuracy:
    """One artifact (or the checkpoint) on the folder's images."""

    format: str  # the format's name, or "checkpoint"
    file: str
    top1: float  # percent of the images
    top5: float | None  # None when the model has fewer than 5 classes
    per_class: list[ClassAccuracy]
    agreement: float | None = None  # percent of images whose top-1 is the reference's (None: no reference)
    max_abs_logit_diff: float | None = None  # against the reference's logits
    drop: float | None = None  # reference top-1 minus this top-1, in points
    failures: list[str] = field(default_factory=list)  # the user's checks this artifact missed

    def worst(self, n: int = 5) -> list[ClassAccuracy]:
        """The ``n`` classes with the lowest top-1 (ties by name)."""
        return sorted(self.per_class, key=lambda c: (c.top1, c.name))[:n]


@dataclass
class ValidationReport:
    """What :func:`validate` measured: the images, the reference and every artifact's accuracy."""

    target: str
    model: str | None
    data: str
    images: int
    classes: list[str]
    labels: str  # how folders became class indices: "by name" or "by sorted order"
    skipped: list[dict[str, str]]  # {"image", "error"}: unreadable files, not counted in any accuracy
    reference: str | None  # the fp32 checkpoint agreement and drop are measured against
    reference_top1: float | None
    results: list[ArtifactAccuracy]
    checks: dict[str, float | None]  # {"min_top1", "max_drop"} as given

    @property
    def passed(self) -> bool:
        return not any(r.failures for r in self.results)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    def write(self, out: str | Path) -> list[Path]:
        """``validate.json``, ``validate.csv`` and ``validate.md`` in ``out``, swapped in together: an earlier
        report there is replaced whole, and nothing is left half-written if this fails."""
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        try:
            (staging / FILES[0]).write_text(json.dumps(self.to_json(), indent=2) + "\n")
            (staging / FILES[1]).write_text(self.csv())
            (staging / FILES[2]).write_text(self.markdown())
            if out.exists():
                for name in FILES:
                    os.replace(staging / name, out / name)
            else:
                os.replace(staging, out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return [out / name for name in FILES]

    def csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["format", "class", "index", "images", "top1"])
        for r in self.results:
            w.writerow([r.format, "(all)", "", self.images, f"{r.top1:.4f}"])
            for c in r.per_class:
                w.writerow([r.format, c.name, c.index, c.images, f"{c.top1:.4f}"])
        return buf.getvalue()

    def markdown(self, worst: int = 5) -> str:
        lines = [f"# Validation of {self.target}", ""]
        lines += [f"{self.images} images of {len(self.classes)} classes in {self.data} (labels {self.labels})."]
        if self.skipped:
            lines += [f"{len(self.skipped)} unreadable images skipped: {_names(self.skipped)}."]
        if self.reference is not None:
            lines += [f"Reference: {self.reference} (fp32), top-1 {_pct(self.reference_top1)}."]
        given = {k: v for k, v in self.checks.items() if v is not None}
        if given:
            verdict = "passed" if self.passed else "FAILED"
            lines += [f"Checks ({', '.join(f'{k} {v:g}' for k, v in given.items())}): {verdict}."]
        lines += ["", "| artifact | top-1 | top-5 | agreement | drop | max abs logit diff | worst classes |"]
        lines += ["|---|---:|---:|---:|---:|---:|---|"]
        for r in self.results:
            bad = ", ".join(f"{c.name} {c.top1:.1f}" for c in r.worst(worst))
            diff = "-" if r.max_abs_logit_diff is None else f"{r.max_abs_logit_diff:.3g}"
            lines.append(
                f"| {r.format} | {_pct(r.top1)} | {_pct(r.top5)} | {_pct(r.agreement)} | {_pts(r.drop)} | {diff} "
                f"| {bad} |"
            )
        failures = [f for r in self.results for f in r.failures]
        if failures:
            lines += ["", *[f"- {f}" for f in failures]]
        return "\n".join(lines) + "\n"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}%"


def _pts(v: float | None) -> str:
    return "-" if v is None else f"{v:+.2f} pts"


def _names(skipped: Sequence[dict[str, str]], n: int = 3) -> str:
    shown = ", ".join(f"{Path(s['image']).name} ({s['error']})" for s in skipped[:n])
    return shown + (f" and {len(skipped) - n} more" if len(skipped) > n else "")


# ----------------------------------------------------------------------------------------------- the folder


_SPLITS = {"train", "training", "val", "validation", "valid"}


def labelled_files(
    data: str | Path, names: Sequence[str] | None, max_images: int | None = None
) -> tuple[Path, list[tuple[Path, int]], dict[str, int], str]:
    """``(folder, [(file, class index)], {class folder: index}, how labelled)`` of a labelled image folder (see
    the module docstring); ``max_images``: a fixed random sample of that many files, the profiler's."""
    from t2tvit.data import existing_folder, find_split, list_images

    folder = existing_folder(data)
    subs = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if subs and set(subs) <= _SPLITS:  # a dataset root: its validation split
        folder = find_split(folder, "val")
        subs = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not subs:
        raise ConfigError(f"data folder {folder} has no class sub-folders; lay it out as {folder}/<class>/<image>")
    if names:
        unknown = [c for c in subs if c not in names]
        if unknown:
            shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise ConfigError(
                f"class folders of {folder} that the model does not have: {shown} (it knows {len(names)} classes, "
                f"e.g. {', '.join(names[:3])}); pass the validation folder of the dataset it was trained on"
            )
        index, how = {c: list(names).index(c) for c in subs}, "by name"
    else:
        index, how = {c: i for i, c in enumerate(subs)}, "by sorted order"
    files = [(f, index[c]) for c in subs for f in list_images(folder / c)]
    if not files:
        raise ConfigError(f"data folder {folder} holds no images in its class sub-folders")
    if max_images is not None:
        if max_images < 1:
            raise ConfigError("--max-images must be at least 1")
        order = np.random.default_rng(0).permutation(len(files))
        files = [files[i] for i in sorted(order[:max_images])]
    return folder, files, index, how


# ----------------------------------------------------------------------------------------------- the run


def _targets(target: Path, formats: str | None, verify: bool, device: str | None, threads: int | None) -> list:
    """The predictors to validate: the checkpoint or file itself, or the chosen (default: every built-ok)
    artifacts of an export folder; one that was built but missed its parity check runs when named."""
    if target.is_dir() and mf.exists(target):
        manifest = mf.read(target)
        ok = [a.format for a in manifest.entries("ok")]
        built = ok + [a.format for a in manifest.artifacts if a.parity_failed and a.file]
        names = ok if formats is None else [n.strip() for n in formats.split(",") if n.strip()]
        missing = [n for n in names if n not in built]
        if missing:
            raise ConfigError(
                f"{target} has no built artifact {', '.join(missing)}; its ok artifacts are {', '.join(ok) or 'none'}"
            )
        if not names:
            raise ConfigError(f"{target} holds no artifact that was built ok; export again")
        return [open_predictor(target, n, device=device, threads=threads, verify=verify) for n in names]
    if formats is not None:
        raise ConfigError("--formats picks artifacts of an export folder; pass the folder, not a file")
    return [open_predictor(target, device=device, threads=threads, verify=verify)]


def _reference(target: Path, first: Predictor, device: str | None, threads: int | None) -> Predictor | None:
    """The checkpoint the artifacts were exported from, as ``t2t verify`` finds it; None for a checkpoint, a
    lone file without a manifest, or an export of random weights."""
    if first.artifact.fmt is None:  # a checkpoint is its own fp32 model
        return None
    folder = target if target.is_dir() and mf.exists(target) else target.parent
    if not mf.exists(folder):
        return None
    manifest = mf.read(folder)
    if not manifest.source_checkpoint:
        return None
    found = mf.recorded_path(folder, manifest.source_checkpoint, manifest.source_checkpoint_from_folder)
    if found is None:
        raise ConfigError(
            f"the checkpoint {manifest.source_checkpoint} that {folder} was exported from is not found; "
            "pass --no-reference to measure top-1 only"
        )
    h, w = first.artifact.img_size
    found = Path(os.path.normpath(found))  # export/../student/best.pth -> student/best.pth
    return open_predictor(found, device=device, threads=threads, img_size=h if h == w else None)


def _logits(predictor: Predictor, x: np.ndarray) -> np.ndarray:
    """``predictor`` on ``x`` in chunks it accepts (a fixed-batch artifact: zero-padded, padding dropped)."""
    art = predictor.artifact
    lo = max(art.batch[0] if art.batch else 1, int(predictor.min_batch))
    return in_batches(predictor, x, max(art.batch[2] if art.batch else len(x), lo), min_batch=lo)


@dataclass
class _Tally:
    """Running counts of one predictor over the batches."""

    correct1: int = 0
    correct5: int = 0
    agree: int = 0
    max_diff: float = 0.0
    per_class: dict[int, list[int]] = field(default_factory=dict)  # index -> [images, correct]

    def add(self, logits: np.ndarray, labels: np.ndarray, ref: np.ndarray | None) -> None:
        top = np.argsort(-logits, axis=1, kind="stable")[:, :5]
        hit1 = top[:, 0] == labels
        self.correct1 += int(hit1.sum())
        self.correct5 += int((top == labels[:, None]).any(axis=1).sum())
        for lab, hit in zip(labels.tolist(), hit1.tolist(), strict=True):
            counts = self.per_class.setdefault(lab, [0, 0])
            counts[0] += 1
            counts[1] += int(hit)
        if ref is not None:
            self.agree += int((top[:, 0] == ref.argmax(axis=1)).sum())
            self.max_diff = max(self.max_diff, float(np.abs(logits - ref).max()))


@dataclass
class _Run:
    """What one pass over the folder counted: per predictor, for the reference, and the unreadable files."""

    tallies: list[_Tally]
    reference: _Tally | None
    skipped: list[dict[str, str]] = field(default_factory=list)
    seen: int = 0


def read_labelled(
    files: Sequence[tuple[Path, int]], transform: Any, skipped: list[dict[str, str]]
) -> tuple[np.ndarray, np.ndarray]:
    """The readable images of ``files`` (``(path, label)``) through ``transform`` as one float32 array, and
    their labels; each unreadable one is appended to ``skipped`` (``{"image", "error"}``)."""
    arrays, labels = [], []
    for f, label in files:
        img, why = _read_image(f)
        if img is None:
            skipped.append({"image": str(f), "error": why or "cannot be decoded"})
            continue
        arrays.append(np.asarray(transform(img), dtype=np.float32))
        labels.append(label)
    return (np.stack(arrays) if arrays else np.zeros((0,), np.float32)), np.array(labels, dtype=np.int64)


def _run(
    predictors: list[Predictor],
    ref: Predictor | None,
    files: list[tuple[Path, int]],
    transform: Any,
    what: str,
    progress: bool,
    batch_size: int = 32,
) -> _Run:
    """Every readable file of ``files`` once, in batches, through every predictor and the reference."""
    from t2tvit.progress import Progress

    run = _Run([_Tally() for _ in predictors], _Tally() if ref is not None else None)
    shown = progress and sys.stderr.isatty()  # a bar on a terminal only: a log or a pipe gets the report
    with quiet_runtimes(), Progress(len(files), what, enabled=shown) as bar:
        for start in range(0, len(files), batch_size):
            x, y = read_labelled(files[start : start + batch_size], transform, run.skipped)
            if len(x):
                ref_logits = _logits(ref, x) if ref is not None else None
                if run.reference is not None:
                    run.reference.add(ref_logits, y, None)
                for p, tally in zip(predictors, run.tallies, strict=True):
                    tally.add(_logits(p, x), y, ref_logits)
                run.seen += len(x)
            bar.update(min(start + batch_size, len(files)), f"{run.seen} images")
    return run


def _accuracy(
    p: Predictor, t: _Tally, seen: int, names: dict[int, str], top5: bool, ref_top1: float | None
) -> ArtifactAccuracy:
    """One predictor's figures from its counts (agreement, logit error and drop when there is a reference)."""
    top1 = 100.0 * t.correct1 / seen
    r = ArtifactAccuracy(
        format=p.artifact.fmt.name if p.artifact.fmt is not None else "checkpoint",
        file=str(p.artifact.path),
        top1=top1,
        top5=100.0 * t.correct5 / seen if top5 else None,
        per_class=[ClassAccuracy(names[i], i, n, 100.0 * ok / n) for i, (n, ok) in sorted(t.per_class.items())],
    )
    if ref_top1 is not None:
        r.agreement, r.max_abs_logit_diff, r.drop = 100.0 * t.agree / seen, t.max_diff, ref_top1 - top1
    return r


def validate(
    target: str | Path,
    data: str | Path,
    *,
    formats: str | None = None,
    batch_size: int = 32,
    max_images: int | None = None,
    device: str | None = None,
    threads: int | None = None,
    reference: bool = True,
    verify: bool = True,
    min_top1: float | None = None,
    max_drop: float | None = None,
    progress: bool = True,
) -> ValidationReport:
    """Validate ``target`` (a checkpoint, an artifact file or an export folder) on the labelled folder ``data``.

    ``formats``: comma-separated artifacts of an export folder (default: every one built ok). ``reference``:
    also run the checkpoint the export recorded, for agreement, logit error and drop (False: top-1 only).
    ``min_top1`` / ``max_drop`` (percent / points): checks whose misses are listed per artifact and make
    :attr:`ValidationReport.passed` False. Raises :class:`~t2tvit.errors.ConfigError` in one sentence for
    anything a user can get wrong, before any image is run.
    """
    from t2tvit.data import eval_transform_for
    from t2tvit.models.variants import DEFAULT_MODEL

    if batch_size < 1:
        raise ConfigError("--batch-size must be at least 1")
    target = Path(target)
    predictors = _targets(target, formats, verify, device, threads)
    ref = _reference(target, predictors[0], device, threads) if reference else None
    if max_drop is not None and ref is None:
        raise ConfigError(
            f"--max-drop compares an artifact with the checkpoint it was exported from, and {target} has none "
            "(a checkpoint, a file without its manifest, or an export of random weights)"
        )
    art = predictors[0].artifact
    folder, files, index, how = labelled_files(data, art.classes, max_images)
    num_classes = art.num_classes
    if how == "by sorted order" and num_classes is not None and len(index) > num_classes:
        raise ConfigError(
            f"data folder {folder} has {len(index)} classes but the model has {num_classes}; "
            "pass the validation folder of the dataset it was trained on"
        )
    transform = eval_transform_for(art.model or DEFAULT_MODEL, art.img_size, **art.preprocessing)
    run = _run(predictors, ref, files, transform, f"validating on {folder.name}", progress, batch_size)
    if not run.seen:
        raise ConfigError(f"data folder {folder} holds no readable images; every file failed to decode")
    ref_top1 = 100.0 * run.reference.correct1 / run.seen if run.reference is not None else None
    names = {i: c for c, i in index.items()}
    top5 = (num_classes or len(index)) >= 5
    results = [_accuracy(p, t, run.seen, names, top5, ref_top1) for p, t in zip(predictors, run.tallies, strict=True)]
    for r in results:
        if min_top1 is not None and r.top1 < min_top1:
            r.failures.append(f"{r.format}: top-1 {r.top1:.2f}% is under --min-top1 {min_top1:g}%")
        if max_drop is not None and r.drop is not None and r.drop > max_drop:
            r.failures.append(f"{r.format}: top-1 dropped {r.drop:.2f} points from fp32, over --max-drop {max_drop:g}")
    return ValidationReport(
        target=str(target),
        model=art.model,
        data=str(folder),
        images=run.seen,
        classes=list(index),
        labels=how,
        skipped=run.skipped,
        reference=str(ref.artifact.path) if ref is not None else None,
        reference_top1=ref_top1,
        results=results,
        checks={"min_top1": min_top1, "max_drop": max_drop},
    )
