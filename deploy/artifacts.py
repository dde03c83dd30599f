"""What a path is: the one resolver of artifacts, export folders and training checkpoints.

:func:`resolve` answers for ``deploy.open``, ``t2t predict`` and the pipeline; :func:`identify`,
the one file sniffer, answers for a lone file (also for the profiler's ``--files``). Facts come
from the most authoritative place available:

1. the export folder's ``manifest.json`` entry whose ``file`` is the artifact (an export folder
   itself: the entry of ``format``, else the first built-ok of :data:`DEFAULT_FORMATS`);
2. what the file says about itself, through its format row's ``describe`` hook (eager ``.pt``: the
   model's name and arguments; TorchScript and ``.ptl``: ``extra/t2t.json``; ONNX: its input shape
   and quantization nodes; a TensorRT engine: its sidecar), else its name (``model-<format><suffix>``);
   and the class names and preprocessing the export wrote into it (:func:`deploy.manifest.about`) in the
   formats that have a place for them;
3. a training checkpoint's recorded ``args`` (model, ``img_size``, the trainer's ``--crop-pct`` and
   ``--interpolation``) and ``classes``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from t2tvit.errors import ConfigError

from . import manifest as mf
from .base import FORMATS, Format, get_format
from .manifest import ArtifactEntry, Manifest

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "DEFAULT_FORMATS",
    "Artifact",
    "check_integrity",
    "identify",
    "integrity_problem",
    "resolve",
]

# An export folder without a format: the first of these the manifest lists as built ok (the fp32
# reference first, then the runtimes a CPU always has), else its first ok artifact.
DEFAULT_FORMATS = ("torch", "onnx", "torchscript", "ptl", "executorch", "tensorrt")
CHECKPOINT_SUFFIXES = (".pth", ".tar", ".safetensors", ".bin", ".ckpt")


@dataclass
class Artifact:
    """What :func:`resolve` found out about the thing to run."""

    path: Path
    fmt: Format | None  # None: a training checkpoint (run by PyTorch eager)
    source: str  # where the facts below come from: "manifest", "file" or "checkpoint"
    model: str | None = None  # registered model name (its preprocessing)
    img_size: tuple[int, int] | None = None  # (H, W)
    classes: list[str] | None = None
    preprocessing: dict[str, Any] = field(default_factory=dict)  # overrides of the model's cfg
    batch: tuple[int, int, int] | None = None  # min, opt, max batch the artifact was built for
    status: str | None = None  # the manifest's status of the artifact
    reason: str | None = None  # and why, when it is not ok
    num_classes: int | None = None
    note: str | None = None  # how the format was guessed, when it was
    sha256: str | None = None  # what the manifest recorded at export (None: nothing to check against)
    verified: bool | None = None  # whether the file was checked against it (None: nothing to check)


def integrity_problem(path: str | Path, fmt: Format, sha256: str | None) -> str | None:
    """Why the artifact at ``path`` is not the one its manifest recorded (``sha256``, over the file, its
    companions or a bundle's files, as :meth:`Format.digest` computes it), or None when it is."""
    path = Path(path)
    if not sha256:
        return None
    if not fmt.exists(path):
        return f"{path.name} is missing"
    if fmt.digest(path) == sha256:
        return None
    gone = [f.name for f in fmt.files(path)[1:] if not f.is_file()] if not fmt.bundle else []
    if gone:
        return f"its companion file {', '.join(gone)} is missing (or the files changed after export)"
    return "its sha256 differs from the manifest's: the file changed after export (edited, truncated or replaced)"


def check_integrity(art: Artifact) -> None:
    """Refuse, in one sentence, an artifact that no longer matches its manifest; marks ``art.verified``."""
    if art.fmt is None or not art.sha256:
        return
    problem = integrity_problem(art.path, art.fmt, art.sha256)
    if problem is not None:
        raise ConfigError(
            f"{art.path} is not the {art.fmt.name} artifact its manifest recorded ({problem}); export it again, "
            "or pass --no-verify (verify=False) if you changed it on purpose"
        )
    art.verified = True


def _size(value: Any) -> tuple[int, int] | None:
    if isinstance(value, int):
        return value, value
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return int(value[0]), int(value[1])
    return None


def _claims(path: Path, rows: list[Format]) -> tuple[Format, dict[str, Any]] | None:
    """The first row whose module's ``describe`` recognises ``path`` (each module asked once)."""
    asked: set[str] = set()
    for row in rows:
        if row.module in asked:
            continue
        asked.add(row.module)
        info = row.describe(path) if row.exists(path) else None
        if info and info.get("format") in FORMATS:
            return FORMATS[info["format"]], info
    return None


def identify(path: str | Path, want: str | Format | None = None) -> tuple[Format | None, dict[str, Any]]:
    """The format row of a lone artifact file and what it says about itself (``model``, ``img_size``,
    ``num_classes``, ``classes`` and ``preprocessing`` where it records them, and ``note`` when the format
    had to be guessed from the suffix).

    ``want`` (a row name) is checked against what the file says. A file no row recognises that has a
    checkpoint suffix (or ``.pt`` with ``want`` None or ``torch``) is a training checkpoint: ``(None, {})``.
    """
    path = Path(path)
    want_row = get_format(want) if want is not None else None
    suffix = path.suffix.lower()
    rows = [f for f in FORMATS.values() if f.suffix == suffix]
    exact = next((f for f in FORMATS.values() if f.filename == path.name), None)
    order = ([want_row] if want_row else []) + ([exact] if exact else []) + rows
    claim = _claims(path, order)
    if want_row is not None:
        if claim is not None and claim[0].module != want_row.module:
            raise ConfigError(f"{path} is a {claim[0].name} artifact, not {want_row.name}; drop --format")
        if (
            claim is None
            and path.is_file()
            and suffix in (".pt", *CHECKPOINT_SUFFIXES)
            and want_row.describe(path) is None
        ):
            if want_row.name == "torch":
                return None, {}
            raise ConfigError(
                f"{path} is not a {want_row.name} artifact (it holds no program of that kind); drop --format"
            )
        return want_row, dict(claim[1]) if claim else {}
    if claim is not None:
        return claim[0] if exact is None or exact.module != claim[0].module else exact, dict(claim[1])
    if exact is not None:
        return exact, {}
    if suffix in CHECKPOINT_SUFFIXES or path.name.lower().endswith(".pth.tar") or (suffix == ".pt" and path.is_file()):
        return None, {}
    if not rows:
        suffixes = sorted({f.suffix for f in FORMATS.values()} | set(CHECKPOINT_SUFFIXES))
        raise ConfigError(
            f"cannot tell what {path.name} is from its suffix; pass a file ending in {', '.join(suffixes)}, "
            "an export folder, or name the format"
        )
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    named = [f for f in rows if stem.endswith(f.name)]
    if named:
        return max(named, key=lambda f: len(f.name)), {}
    note = (
        f"format guessed from the suffix {suffix} as {rows[0].name}; name the file "
        f"model-<format>{suffix} or pass FORMAT=PATH to choose"
    )
    return rows[0], {"note": note}


def resolve(
    path: str | Path, format: str | Format | None = None, *, model: str | None = None, img_size: int | None = None
) -> Artifact:
    """Find out what ``path`` is (see the module docstring); raises ConfigError in one sentence."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(
            f"artifact {path} does not exist; pass an exported file, an export folder or a training checkpoint"
        )
    art = _resolve(path, get_format(format) if format else None, model)
    if img_size is not None:
        if art.fmt is not None and art.img_size not in (None, (img_size, img_size)):
            raise ConfigError(
                f"{path} takes {art.img_size[0]}x{art.img_size[1]} images, not {img_size}; drop --img-size"
            )
        art.img_size = (img_size, img_size)
    return art


def _resolve(path: Path, want: Format | None, model: str | None) -> Artifact:
    if path.is_dir() and not any(f.bundle and f.suffix == path.suffix.lower() for f in FORMATS.values()):
        manifest = mf.read(path)
        return _from_manifest(path, manifest, _pick_entry(path, manifest, want))
    if mf.exists(path.parent):
        manifest = mf.read(path.parent)
        entry = next((a for a in manifest.artifacts if a.file == path.name), None)
        if entry is not None:
            if want is not None and want.name != entry.format:
                raise ConfigError(
                    f"{path} is the {entry.format} artifact of its manifest, not {want.name}; drop --format"
                )
            return _from_manifest(path.parent, manifest, entry)
    fmt, info = identify(path, want)
    if fmt is None:
        return _from_checkpoint(path, model)
    return Artifact(
        path,
        fmt,
        "file",
        info.get("model") or model,
        _size(info.get("img_size")),
        classes=info.get("classes"),  # what the file records about itself (deploy.manifest.about), if anything
        preprocessing=info.get("preprocessing") or {},
        num_classes=info.get("num_classes"),
        note=info.get("note"),
    )


def _pick_entry(folder: Path, manifest: Manifest, want: Format | None) -> ArtifactEntry:
    ok = [a for a in manifest.entries("ok") if a.file]
    if want is not None:
        entry = manifest.entry(want.name)
        if entry is None or not entry.file:
            state = "not in" if entry is None else f"{entry.status} ({entry.reason}) in"
            choose = f"; choose one of: {', '.join(a.format for a in ok)}" if ok else ""
            raise ConfigError(f"{want.name} is {state} {mf.path(folder)}{choose}")
        return entry
    if not ok:
        raise ConfigError(f"{mf.path(folder)} lists no artifact that was built ok; run `t2t export` again")
    by_name = {a.format: a for a in ok}
    return next((by_name[n] for n in DEFAULT_FORMATS if n in by_name), ok[0])


def _from_manifest(folder: Path, manifest: Manifest, entry: ArtifactEntry) -> Artifact:
    shape = entry.input_shape
    size = tuple(int(s) for s in shape[2:4]) if len(shape) == 4 else manifest.img_size
    return Artifact(
        path=folder / entry.file,
        fmt=get_format(entry.format),
        source="manifest",
        model=manifest.model_name,
        img_size=size,
        classes=[str(c) for c in manifest.classes] if isinstance(manifest.classes, list) else None,
        preprocessing=manifest.transform_keywords(),
        batch=tuple(entry.batch) if len(entry.batch) == 3 else None,
        status=entry.status,
        reason=entry.reason,
        num_classes=manifest.num_classes,
        sha256=entry.sha256,
    )


def _from_checkpoint(path: Path, model: str | None) -> Artifact:
    from t2tvit.checkpoint import read_checkpoint, read_state_dict, recorded_args, recorded_preprocessing
    from t2tvit.models import guess_variant

    obj = read_checkpoint(path)
    args = recorded_args(obj)
    name = model or (args.get("model") if isinstance(args.get("model"), str) else None)
    if name is None:
        name = guess_variant(read_state_dict(obj)[0])
    if name is None:
        raise ConfigError(f"cannot tell which T2T-ViT variant {path} holds; pass --model NAME")
    classes = obj.get("classes") if isinstance(obj, dict) else None
    return Artifact(
        path,
        None,
        "checkpoint",
        name,
        _size(args.get("img_size")),
        [str(c) for c in classes] if isinstance(classes, list) and classes else None,
        recorded_preprocessing(args),  # falsy: the model's own, as the trainer reads them
    )
