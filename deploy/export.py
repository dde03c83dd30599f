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

Every row converted from the deploy graph (:mod:`deploy.graph`) records in ``deploy_graph`` the
graph's largest |Δlogit| against the model on real images; a graph beyond its tolerance fails the row
with that difference before anything is converted.

A format row may override them with ``options={"parity_max_abs": ..., "parity_min_agreement": ...}``.

Writing into an existing export folder merges: the requested formats' entries (and files) replace
theirs, every other format, its manifest entry and any other file (``bench/`` reports, the user's
own) are kept. The new folder is assembled next to the target (new artifacts written there, the kept
files hard-linked in) and exchanged with the old one in one atomic rename, so a run killed at any
moment leaves the previous export as it was. A lock file beside the folder refuses a second
concurrent export into it; a dead process's lock is taken over, and its leftovers (staging folders,
scratch folders in the system temp folder) are removed by the next export.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import hashlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from t2tvit.errors import ConfigError
from t2tvit.models.variants import DEFAULT_MODEL
from t2tvit.progress import Progress

from . import manifest as mf
from .artifacts import integrity_problem
from .base import (
    FORMATS,
    ExportContext,
    Format,
    Predictor,
    first_line,
    get_format,
    resolve_formats,
    sha256_file,
    tool_versions,
)
from .child import converters
from .manifest import ArtifactEntry, Manifest
from .settings import ExportConfig

__all__ = [
    "Export",
    "PARITY",
    "Verification",
    "PARITY_RANDOM_WEIGHTS",
    "ParityThreshold",
    "check_parity",
    "clean_leftovers",
    "export_all",
    "export_checkpoint",
    "export_lock",
    "prepare_out_dir",
    "reference_logits",
    "sha256_file",
    "tool_versions",
    "verify_artifacts",
    "verify_export",
    "verify_folder",
    "weights_digest",
]


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
    """Refuse, before any work, an output folder that is not an earlier export (it would be mixed with
    foreign files), a path under a file, or a folder this user cannot write."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"output path {out_dir} is a file; pass a folder to --out")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not mf.exists(out_dir):
        raise ConfigError(
            f"output folder {out_dir} is not empty and has no {mf.FILE}, so it is not an export folder "
            "and will not be written into; pass another --out or empty it"
        )
    existing = out_dir.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"cannot create {out_dir}: {existing} is a file; pass another --out")
    if out_dir.is_dir() and not os.access(out_dir, os.W_OK | os.X_OK):
        raise ConfigError(
            f"export folder {out_dir} is not writable by this user; pass another --out or fix its permissions"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write {out_dir}: {existing} is not writable by this user; pass another --out")


def weights_digest(model: Any) -> str:
    """sha256 of the model's state dict (names, dtypes, shapes and bytes): which weights an export holds, so a
    merge never mixes the artifacts of two models in one manifest."""
    import torch

    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}\0".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# When this process began exporting (this module's import, on the wall clock leftovers' mtimes use): a leftover
# older than it is not this process's. psutil's create_time is derived from the boot time and drifts from the
# wall clock by seconds on some machines, enough to spare a folder a process killed just before.
_STARTED = time.time()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


SCRATCH_PREFIX = "t2t-export-scratch-"


def clean_leftovers(out_dir: Path) -> list[Path]:
    """Remove what killed exports left: ``.OUT.partial-*`` / ``.OUT.old-*`` folders beside ``out_dir`` and the
    ``t2t-export-scratch-*`` folders in the system temp folder, older than this process and (when their name
    records it) of a process that is gone. Call it holding the folder's lock. Returns what was removed."""
    start = _STARTED
    removed: list[Path] = []
    candidates: list[Path] = []
    if out_dir.parent.is_dir():
        for kind in ("partial", "old", "next"):
            candidates += out_dir.parent.glob(f".{out_dir.name}.{kind}-*")
    for p in Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*"):
        pid = p.name[len(SCRATCH_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and _pid_alive(int(pid)):
            continue
        candidates.append(p)
    for p in candidates:
        try:
            if not p.is_dir() or p.stat().st_mtime >= start:
                continue
        except OSError:
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


@contextlib.contextmanager
def export_lock(out_dir: Path) -> Iterator[Path]:
    """Hold ``.OUT.lock`` beside ``out_dir`` for one export (``fcntl.flock``: the kernel releases the lock of a
    process that dies, so a killed export's lock is taken over). A second export into the same folder is refused
    in one sentence."""
    lock = out_dir.parent / f".{out_dir.name}.lock"
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, the atomic exchange still keeps the folder whole
        yield lock
        return
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise ConfigError(
                f"another export into {out_dir} is running (process {holder}); wait for it to finish or pass "
                "another --out"
            ) from None
        try:  # the file may have been removed by the holder that just finished: lock the one at the path
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield lock
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


def _umask() -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _link_tree(src: Path, dst: Path, skip: set[str]) -> None:
    """Hard-link every file under ``src`` into ``dst`` (copies where links fail), except the top-level names
    in ``skip`` and names ``dst`` already has (the new artifacts win)."""
    for item in src.iterdir():
        if item.name in skip:
            continue
        target = dst / item.name
        if target.exists() or target.is_symlink():
            continue
        if item.is_symlink():
            os.symlink(os.readlink(item), target)
        elif item.is_dir():
            target.mkdir()
            shutil.copystat(item, target)
            _link_tree(item, target, set())
        else:
            try:
                os.link(item, target)
            except OSError:
                shutil.copy2(item, target)


def _entry_files(entry: ArtifactEntry) -> set[str]:
    """The top-level names an entry's artifact occupies in its folder (the file, its companions, its
    sensitivity report)."""
    if not entry.file:
        return set()
    report = set(((entry.details.get("accuracy_budget") or {}).get("sensitivity") or {}).values())
    fmt = FORMATS.get(entry.format)
    if fmt is None:
        return {entry.file} | report
    return {p.name for p in fmt.files(Path(entry.file))} | report


def _merge_entries(old: list[ArtifactEntry], new: list[ArtifactEntry]) -> tuple[list[ArtifactEntry], set[str]]:
    """The manifest's artifacts after this run: the new entries replace theirs, the others are kept; a format
    this machine skipped does not replace one built earlier (elsewhere). Returns the entries, in table order,
    and the top-level names of the old files that are dropped."""
    by_name = {e.format: e for e in old}
    drop: set[str] = set()
    for e in new:
        before = by_name.get(e.format)
        if before is not None and e.status == "skipped" and before.file and before.status != "skipped":
            continue  # e.g. a TensorRT engine built on a GPU machine, re-exported here without one
        if before is not None:
            drop |= _entry_files(before)
        by_name[e.format] = e
    order = {n: i for i, n in enumerate(FORMATS)}
    entries = sorted(by_name.values(), key=lambda e: order.get(e.format, len(order)))
    keep = set().union(*(_entry_files(e) for e in entries)) if entries else set()
    return entries, drop - keep


def _same_model(out_dir: Path, old: Manifest, spec: dict[str, Any], digest: str, ck: str | None) -> None:
    """Refuse to merge into an export of another model or other weights (its artifacts would be mislabelled)."""
    recorded = old.weights_sha256
    same = old.model == spec and (recorded == digest if recorded else old.source_checkpoint == ck)
    if not same:
        was = f"{old.model_name} {old.model.get('img_size')}" + (
            f" from {old.source_checkpoint}" if old.source_checkpoint else " (random weights)"
        )
        raise ConfigError(
            f"{out_dir} holds the export of another model or other weights ({was}); its formats would be mixed "
            "with this one's, so pass another --out or remove that folder first"
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
) -> Manifest:
    """Export ``model`` to every format in ``formats`` under ``out_dir``; returns the manifest.

    ``parity_images``: normalised float32 ``(N, 3, H, W)`` real images, held out from calibration.
    ``meta``: the manifest's fields about the data (``preprocessing``, ``data``, ``classes``). An existing export
    folder of the same weights is merged into (see the module docstring); one of other weights is refused.
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
    ctx.about = _about(model, spec, meta or {})
    for fmt in fmts:  # a setting a requested format cannot honour here fails before anything is written
        hook = None if fmt.missing() else getattr(fmt.impl(), "check_context", None)
        if hook is not None:
            hook(ctx)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    ck = str(source_checkpoint) if source_checkpoint else None
    digest = weights_digest(model)
    with export_lock(out_dir):
        clean_leftovers(out_dir)
        old = mf.read(out_dir) if mf.exists(out_dir) else None
        if old is not None:
            _same_model(out_dir, old, spec, digest, ck)
        reference = reference_logits(model, parity_images, ctx.batch[2])
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
        own_scratch = ctx.scratch is None
        if own_scratch:
            ctx.scratch = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-"))
        entries: list[ArtifactEntry] = []
        try:
            with Progress(len(fmts), "export", enabled=progress, prefix="export") as bar, converters():
                for fmt in fmts:  # the rows of one converter run in one child process (deploy.child)
                    bar.step(f"{fmt.name}: exporting", 0)
                    entries.append(_one(model, fmt, staging, ctx, parity_images, reference, ck, thresholds, bar))
                    bar.step(f"{fmt.name}: {entries[-1].status}")
            merged, dropped = _merge_entries(old.artifacts if old is not None else [], entries)
            manifest = Manifest(
                created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                model=spec,
                weights_sha256=digest,
                source_checkpoint=ck,
                source_checkpoint_from_folder=_relative(source_checkpoint, out_dir),
                input=_input(ctx),
                parity={
                    "images": len(parity_images),
                    "reference": "fp32 PyTorch eager model, eval mode",
                    "thresholds": {p: {k: v for k, v in asdict(t).items() if v is not None} for p, t in PARITY.items()}
                    | {p: {k: v for k, v in asdict(t).items() if v is not None} for p, t in (thresholds or {}).items()},
                },
                tool_versions=tool_versions(),
                **(meta or {}),
                artifacts=merged,
            )
            _commit(staging, out_dir, manifest, dropped)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            if own_scratch and ctx.scratch is not None:
                shutil.rmtree(ctx.scratch, ignore_errors=True)
                ctx.scratch = None
            ctx.built.clear()  # those paths were in the staging folder
    return manifest


def _about(model: Any, spec: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """What each artifact records about itself: ``meta``'s class names and preprocessing (else the model's)."""
    preprocessing = meta.get("preprocessing") or {k: model.pretrained_cfg.get(k) for k in mf.PREPROCESSING_KEYS}
    return mf.about(spec, meta.get("classes"), preprocessing)


def _relative(path: str | Path | None, folder: Path) -> str | None:
    """``path`` relative to ``folder`` (how a moved pipeline or export folder finds its checkpoint again)."""
    if not path:
        return None
    try:
        return os.path.relpath(Path(path).resolve(), folder)
    except ValueError:  # another drive (Windows)
        return None


def _commit(staging: Path, out_dir: Path, manifest: Manifest, dropped: set[str]) -> None:
    """Make ``staging`` (this run's artifacts) the export folder: the old folder's other files hard-linked in,
    the manifest written, then one atomic exchange; the old folder stays whole until that instant."""
    if out_dir.exists():
        _link_tree(out_dir, staging, dropped | {mf.FILE})
        mode = out_dir.stat().st_mode & 0o7777
    else:
        mode = 0o777 & ~_umask()  # mkdtemp made it 0700; an export folder follows the umask
    mf.write(staging, manifest)
    os.chmod(staging, mode)
    if not out_dir.exists():
        os.replace(staging, out_dir)
    elif not _exchange(staging, out_dir):  # no atomic exchange here: two renames, the old one kept until done
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        os.replace(out_dir, old)
        os.replace(staging, out_dir)
        os.replace(old, staging)


def _input(ctx: ExportContext) -> dict[str, Any]:
    return {
        "name": "images",
        "shape": ["batch", 3, *ctx.img_size],
        "dtype": "float32",
        "layout": "NCHW, normalised with the model's mean/std",
        "batch": {"min": ctx.batch[0], "opt": ctx.batch[1], "max": ctx.batch[2]},
    }


def _one(model: Any, fmt: Format, *rest: Any) -> ArtifactEntry:
    """The manifest entry of ``fmt``'s artifact (``rest``: the other arguments of :func:`_attempt`): exported,
    loaded back and checked; a row with a second recipe (``fallback_options``) whose first artifact misses parity
    is exported once more with it, and the entry says so (the first recipe's miss in ``details.recipe_fallback``)."""
    entry = _attempt(model, fmt, *rest)
    if not (entry.parity_failed and fmt.fallback_options):
        return entry
    second = dataclasses.replace(fmt, options={**fmt.options, **fmt.fallback_options}, fallback_options={})
    rest[-1].step(f"{fmt.name}: missed parity, exporting its second recipe", 0)  # the progress bar
    retry = _attempt(model, second, *rest)
    note = (
        f"the row's first recipe {fmt.options} missed parity ({entry.parity['problem']}); "
        f"exported again with {fmt.fallback_options}"
    )
    retry.details["recipe_fallback"] = note
    return retry


def _attempt(
    model: Any,
    fmt: Format,
    folder: Path,
    ctx: ExportContext,
    images: np.ndarray,
    reference: np.ndarray,
    checkpoint: str | None,
    thresholds: dict[str, ParityThreshold] | None,
    bar: Progress,
) -> ArtifactEntry:
    entry = ArtifactEntry(
        format=fmt.name,
        precision=fmt.precision,
        input_shape=["batch", 3, *ctx.img_size],
        batch=list(ctx.batch),
        source_checkpoint=checkpoint,
        tool_versions=tool_versions(fmt.tools),
        description=fmt.description,
        exported=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    why = fmt.missing()
    if why:
        entry.reason = why
        return entry
    path = folder / fmt.filename
    t0 = time.perf_counter()
    try:
        extra = fmt.impl().export(model, path, fmt, ctx) or {}
    except Exception as e:  # noqa: BLE001 - one format's failure must not stop the others
        entry.status, entry.reason = "failed", f"export failed: {first_line(e)}"
        path.unlink(missing_ok=True)
        return entry
    entry.export_seconds = round(time.perf_counter() - t0, 2)
    if not fmt.exists(path):
        entry.status, entry.reason = "failed", f"export reported success but wrote no {fmt.filename}"
        return entry
    ctx.built[fmt.name] = path
    # an export may compute in another precision than its row's (OpenVINO fp32 weights run in bf16)
    precision = extra.pop("precision", fmt.precision)
    if extra.get("deploy_graph"):  # the converted graph's proof of equality with the model (deploy.graph)
        entry.deploy_graph = extra.pop("deploy_graph")
    entry.precision, entry.file, entry.details = precision, fmt.filename, extra
    entry.bytes, entry.sha256 = fmt.size(path), fmt.digest(path)
    elsewhere = fmt.not_here()
    if elsewhere:  # written and checked as far as this machine can, but parity was not checked: never "ok"
        checked = extra.get("checked_structurally")
        entry.reason = f"parity skipped: {elsewhere}" + (f"; checked structurally: {checked}" if checked else "")
        return entry
    bar.step(f"{fmt.name}: checking parity", 0)
    try:
        predictor = fmt.load(path)
        # what the loaded runtime says it computes in (OpenVINO's `auto` resolves on this CPU), not what was asked
        entry.precision = precision = getattr(predictor, "precision", None) or precision
        _runtime_details(extra, predictor)
        threshold = threshold_for(fmt, thresholds, precision)
        parity = check_parity(predictor, images, reference, threshold, ctx.batch[2])
        fallback = getattr(fmt.impl(), "parity_fallback", None)
        second = fallback(path, fmt, predictor) if fallback is not None and not parity["passed"] else None
        if second is not None:  # e.g. an `auto` OpenVINO file whose bf16 missed parity: recorded f32, checked again
            note, predictor = second
            extra["fallback"] = f"{note} ({parity['problem']})"
            entry.precision = precision = predictor.precision
            _runtime_details(extra, predictor)
            parity = check_parity(predictor, images, reference, threshold_for(fmt, thresholds, precision), ctx.batch[2])
            entry.bytes, entry.sha256 = fmt.size(path), fmt.digest(path)
    except Exception as e:  # noqa: BLE001 - a file that does not load back is a failed artifact
        entry.status, entry.reason = "failed", f"written but could not be loaded and run: {first_line(e)}"
        return entry
    entry.parity = parity
    entry.status = "ok" if parity["passed"] else "failed"
    if not parity["passed"]:
        entry.reason = f"parity check failed: {parity['problem']}"
    return entry


def _runtime_details(extra: dict[str, Any], predictor: Predictor) -> None:
    """What the loaded runtime reports about itself, beside what the export asked for (OpenVINO's inference
    precision as its compiled model reads it back)."""
    used = getattr(predictor, "inference_precision", None)
    if isinstance(used, str):
        extra["inference_precision_used"] = used


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
    manifest = mf.read(folder)
    reference = reference_logits(model, images) if model is not None and images is not None else None
    results = []
    for entry in manifest.entries("ok"):
        fmt = get_format(entry.format)
        path = folder / entry.file
        rec: dict[str, Any] = {"format": fmt.name, "problems": [], "parity": None}
        if not fmt.exists(path):
            rec["problems"].append(f"{entry.file} is missing")
        else:
            problem = integrity_problem(path, fmt, entry.sha256)
            if problem is not None:
                rec["problems"].append(problem)
            try:
                predictor = fmt.load(path)
                if reference is not None:
                    # in the export's own batches (its max batch): dynamic int8 quantizes activations per batch
                    same = {"batch": entry.batch[2]} if len(entry.batch) == 3 else {}
                    # the precision it runs in here (a file recorded bf16 runs f32 on a CPU without bf16)
                    threshold = threshold_for(fmt, thresholds, getattr(predictor, "precision", entry.precision))
                    rec["parity"] = check_parity(predictor, images, reference, threshold, **same)
                    if not rec["parity"]["passed"]:
                        rec["problems"].append(f"parity check failed: {rec['parity']['problem']}")
                else:
                    h, w = manifest.img_size
                    out = predictor(np.zeros((1, 3, h, w), np.float32))
                    if out.shape != (1, manifest.num_classes):
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
    manifest: Manifest
    formats: list[str] | None = None  # the formats this run exported (None: every entry of the manifest)

    @property
    def failed(self) -> list[str]:
        """The formats this run failed to build or to pass parity (skipped ones are not failures; entries kept
        from an earlier export into the same folder are not this run's)."""
        mine = set(self.formats) if self.formats is not None else None
        return [a.format for a in self.manifest.entries("failed") if mine is None or a.format in mine]


def export_checkpoint(
    checkpoint: str | Path | None = None,
    config: ExportConfig | None = None,
    *,
    progress: bool = True,
    **options: Any,
) -> Export:
    """Export a checkpoint (or, without one, seeded random weights) as ``config`` says.

    ``options`` replace fields of ``config`` (``formats="onnx", out="artifacts/x"``; see
    :class:`deploy.settings.ExportConfig`): a name it does not have, or a format option none of the
    chosen formats takes, is refused in one sentence. A ``num_classes`` other than the checkpoint's is
    refused unless ``new_head`` asks for an untrained head (then the checkpoint's class names are dropped).

    What the checkpoint recorded fills what is not given: the model name, image size, the trainer's
    crop/interpolation (recorded in the manifest's preprocessing) and its class names. Real images
    from ``calib_data`` (a folder or ``digits``; default the bundled digits' ``val/``) are split into
    disjoint parity and calibration sets. Random weights are held to logit movement for reduced
    precision (:data:`PARITY_RANDOM_WEIGHTS`). ``out`` defaults to ``artifacts/<model>``.
    """
    import t2tvit

    cfg = ExportConfig.of(config, **options)
    fmts = cfg.check()  # unknown names and options no chosen format takes fail before anything heavy loads
    if cfg.out is not None:
        prepare_out_dir(Path(cfg.out))  # an unwritable or foreign folder fails before any work
    name, img_size, overrides, classes = _recorded(checkpoint, cfg.model, cfg.img_size, cfg.num_classes)
    if checkpoint is None:  # random weights: the same ones every run
        import torch

        torch.manual_seed(0)
    net = t2tvit.build_model(
        name, checkpoint=checkpoint, num_classes=cfg.num_classes, img_size=img_size, new_head=cfg.new_head
    ).eval()
    hw = tuple(int(s) for s in net.img_size)
    parity, calib, data = _split_images(net, hw, overrides, cfg.calib_data, cfg.parity_images, cfg.calib_size)
    ctx = ExportContext(img_size=hw, batch=tuple(cfg.batch), calib=calib, **cfg.format_options())
    if cfg.val_data is not None:  # an accuracy budget or a sensitivity ranking (deploy.budget)
        ctx.val = _val_images(net, hw, overrides, cfg.val_data, classes, data)
    netcfg = net.pretrained_cfg | overrides
    meta: dict[str, Any] = {
        "preprocessing": {k: netcfg.get(k) for k in mf.PREPROCESSING_KEYS},
        "data": data,
    }
    if classes is not None and len(classes) <= net.num_classes:
        meta["classes"] = classes  # index -> name, as the checkpoint's training set sorted them
    out = Path(cfg.out) if cfg.out is not None else Path("artifacts") / name
    thresholds = PARITY_RANDOM_WEIGHTS if checkpoint is None else None
    manifest = export_all(
        net, fmts, out, ctx, parity, source_checkpoint=checkpoint, meta=meta, thresholds=thresholds, progress=progress
    )
    return Export(out, manifest, [f.name for f in fmts])


def _split_images(
    net: Any, hw: tuple[int, ...], overrides: dict[str, Any], calib_data: str | Path | None, n_parity: int, n_calib: int
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Disjoint parity and calibration images from ``calib_data`` (default the bundled digits), preprocessed as
    the model's eval transform; and the manifest's record of them."""
    from compress.quantize import load_images
    from t2tvit.data import eval_transform_for, image_folder

    folder = image_folder(calib_data or "digits")
    images, _ = load_images(folder, eval_transform_for(net, hw, **overrides), n_parity + n_calib, what="image")
    parity, calib = images[:n_parity], images[n_parity:]
    overlap = len(calib) == 0
    if overlap:  # a tiny folder: calibrate on the parity images rather than on nothing
        calib = parity
    data = {
        "folder": str(folder),
        "parity_images": len(parity),
        "calibration_images": len(calib),
        "calibration_is_parity_set": overlap,
    }
    return parity, calib, data


VAL_IMAGES = 500  # at most this many images of --val-data (a fixed sample) measure the accuracy budget


def _val_images(
    net: Any,
    hw: tuple[int, ...],
    overrides: dict[str, Any],
    val_data: str | Path,
    classes: list[str] | None,
    data: dict[str, Any],
) -> tuple[np.ndarray, np.ndarray]:
    """The labelled images an accuracy budget is measured on (the model's eval preprocessing, labels as
    ``t2t validate`` gives them); their folder and count are added to the manifest's ``data`` record."""
    from t2tvit.data import eval_transform_for

    from .validation import labelled_files, read_labelled

    folder, files, _, _ = labelled_files(val_data, classes, VAL_IMAGES)
    if Path(folder).resolve() == Path(data["folder"]).resolve():
        raise ConfigError(
            f"--val-data {folder} is the folder the calibration images come from; pass a labelled folder kept "
            "apart from them (e.g. the validation split when calibrating on the training split)"
        )
    images, labels = read_labelled(files, eval_transform_for(net, hw, **overrides), [])
    if not len(images):
        raise ConfigError(f"--val-data {folder} holds no readable images")
    data["validation"] = {"folder": str(folder), "images": len(images)}
    return images, labels


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

    manifest = mf.read(folder)
    h, w = manifest.img_size
    model = t2tvit.create_model(manifest.model_name, checkpoint=checkpoint, img_size=(h, w)).eval()
    transform = eval_transform_for(model, (h, w), **manifest.transform_keywords())
    x, _ = load_images(dataset_path(data), transform, images, seed=seed, what="verification")
    return verify_artifacts(folder, model, x)


@dataclass
class Verification:
    """What :func:`verify_folder` found: one :func:`verify_artifacts` record per built-ok artifact."""

    folder: Path
    results: list[dict[str, Any]]
    reference: str | None  # what parity was checked against (None: parity not re-run)
    problems: list[str]  # folder-wide problems (the reference's weights are not the exported ones)

    @property
    def ok(self) -> bool:
        return not self.problems and all(r["ok"] for r in self.results)


def verify_folder(
    folder: str | Path,
    *,
    checkpoint: str | Path | None = None,
    data: str | Path | None = None,
    parity: bool = True,
) -> Verification:
    """``t2t verify``: every built-ok artifact of an export folder is there, matches its sha256, loads and runs;
    with ``parity`` (default) its parity check is run again on the images the export used (the recorded data
    folder, the same fixed sample) against the recorded source checkpoint (``checkpoint`` / ``data`` override
    them), or the seeded random weights of an export without one."""
    import t2tvit
    from compress.quantize import load_images
    from t2tvit.data import eval_transform_for, image_folder

    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"export folder {folder} does not exist; pass the --out folder of `t2t export`")
    manifest = mf.read(folder)
    if not parity:
        return Verification(folder, verify_artifacts(folder), None, [])
    recorded = manifest.source_checkpoint
    if checkpoint is None and recorded:
        checkpoint = mf.recorded_path(folder, recorded, manifest.source_checkpoint_from_folder)
        if checkpoint is None:
            raise ConfigError(
                f"the checkpoint {recorded} that {folder} was exported from is not found; pass --checkpoint PATH "
                "(or --no-parity to check digests, loading and running only)"
            )
    recorded_data = (manifest.data or {}).get("folder")
    if data is None:
        found = mf.recorded_path(folder, recorded_data) if recorded_data else None
        data = found if found is not None else "digits"
        if recorded_data and found is None:
            raise ConfigError(
                f"the image folder {recorded_data} the export checked parity on is not found; pass --data DIR "
                "(or --no-parity)"
            )
    n = int((manifest.data or {}).get("parity_images") or manifest.parity.get("images") or 128)
    h, w = manifest.img_size or (224, 224)
    if checkpoint is None:
        import torch

        torch.manual_seed(0)  # what export_checkpoint does without a checkpoint
    net = t2tvit.build_model(
        manifest.model_name or DEFAULT_MODEL,
        checkpoint=checkpoint,
        num_classes=manifest.num_classes,
        img_size=h if h == w else (h, w),
    ).eval()
    problems = []
    if manifest.weights_sha256 and weights_digest(net) != manifest.weights_sha256:
        problems.append(
            f"the weights of {checkpoint or 'the seeded random model'} are not the ones exported (the checkpoint "
            "changed after export); parity below is against the changed weights"
        )
    transform = eval_transform_for(net, (h, w), **manifest.transform_keywords())
    images, _ = load_images(image_folder(data), transform, n, what="parity")  # the export's seed: the same sample
    thresholds = PARITY_RANDOM_WEIGHTS if not recorded and checkpoint is None else None
    results = verify_artifacts(folder, net, images, thresholds)
    reference = f"{checkpoint or 'seeded random weights'} on {len(images)} images of {data}"
    return Verification(folder, results, reference, problems)
