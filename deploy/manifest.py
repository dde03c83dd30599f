"""The export manifest: its types, file name, schema string, reading and writing.

An export folder's ``manifest.json`` describes the model once (:class:`Manifest`) and every artifact built
from it (:class:`ArtifactEntry`: status, file, digest, parity, details); :func:`deploy.export.export_all`
builds it. Everything that opens, merges, profiles, verifies or forges one goes through these types, so the
name, the schema and the fields live in one place:

* :func:`path` / :func:`exists` -- where a folder's manifest is and whether it has one;
* :func:`read` -- the :class:`Manifest` of an export folder, checked to be one (a JSON object of this
  schema with an ``artifacts`` list of known fields), or a :class:`~t2tvit.errors.ConfigError` that says
  what to do;
* :func:`write` -- written atomically (a temporary file renamed over it), never half a manifest.

An entry's state is its fields (``status``, ``reason``, ``parity``), never read back out of a sentence.

Each artifact file also carries the part of the manifest needed to use it alone (:func:`about`: the model,
its class names and preprocessing, the toolkit version), stored by its format module under :data:`ABOUT_KEY`
where the format has a place for it; :func:`read_about` reads it back for ``deploy.open`` of a lone file.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from t2tvit.errors import ConfigError

__all__ = ["FILE", "PREPROCESSING_KEYS", "SCHEMA", "STATUSES", "ArtifactEntry", "Manifest", "exists", "path", "read"]
__all__ += ["ABOUT_KEY", "about", "read_about", "recorded_path", "write"]

FILE = "manifest.json"
SCHEMA = "t2t-export/1"
STATUSES = ("ok", "failed", "skipped")  # built and passed parity / built or checked and failed / not built here

# The eval preprocessing a manifest records (``t2tvit.data.eval_transform_for``'s keyword overrides).
PREPROCESSING_KEYS = ("mean", "std", "crop_pct", "interpolation")
# The name an artifact file keeps its self-description under (ONNX metadata_props, OpenVINO rt_info, ...).
ABOUT_KEY = "t2t.about"


def about(model: dict[str, Any], classes: list[str] | None, preprocessing: dict[str, Any] | None) -> dict[str, Any]:
    """What every artifact records about itself, so that the file alone can be used: the model (its
    ``model_spec``: registry name, class count, input size), the class names (index order), the eval
    preprocessing (:data:`PREPROCESSING_KEYS` that are set) and the toolkit version that wrote it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        toolkit = version("t2tvit-edge")
    except PackageNotFoundError:
        toolkit = "unknown"
    pre = {k: v for k, v in (preprocessing or {}).items() if k in PREPROCESSING_KEYS and v is not None}
    return {
        "toolkit": toolkit,
        "model": model.get("model"),
        "num_classes": model.get("num_classes"),
        "img_size": list(model.get("img_size") or []) or None,
        "classes": [str(c) for c in classes] if classes else None,
        "preprocessing": {k: list(v) if isinstance(v, tuple) else v for k, v in pre.items()},
    }


def read_about(raw: str | bytes | dict[str, Any] | None) -> dict[str, Any]:
    """An artifact's self-description (its JSON text or dict) as ``describe`` hooks return it: ``classes`` and
    ``preprocessing`` (and ``model`` / ``img_size`` / ``num_classes`` / ``toolkit`` when recorded); ``{}`` for
    none, or for one that is not ours (a file edited by other tools must still open)."""
    try:
        data = json.loads(raw) if isinstance(raw, str | bytes) else raw
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    if not isinstance(data, dict):
        return {}
    out: dict[str, Any] = {}
    classes = data.get("classes")
    if isinstance(classes, list) and all(isinstance(c, str) for c in classes):
        out["classes"] = classes
    pre = data.get("preprocessing")
    if isinstance(pre, dict):
        out["preprocessing"] = {k: pre[k] for k in PREPROCESSING_KEYS if pre.get(k) is not None}
    for key in ("model", "toolkit"):
        if isinstance(data.get(key), str):
            out[key] = data[key]
    if isinstance(data.get("num_classes"), int):
        out["num_classes"] = data["num_classes"]
    size = data.get("img_size")
    if isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) for v in size):
        out["img_size"] = tuple(size)
    return out


@dataclass
class ArtifactEntry:
    """One format's artifact in an export folder, as the export found it."""

    format: str  # the format row's name (deploy.base.FORMATS)
    precision: str | None = None  # what it computes in, as the loaded runtime reports it
    status: str = "skipped"  # one of STATUSES
    reason: str | None = None  # why it is not ok (or what was not checked here), one sentence
    file: str | None = None  # relative to the export folder
    bytes: int | None = None
    sha256: str | None = None  # of the file (of every file, for a bundle or a file with companions)
    input_shape: list[Any] = field(default_factory=list)  # ["batch", 3, H, W]
    batch: list[int] = field(default_factory=list)  # [min, opt, max] it was built for
    source_checkpoint: str | None = None
    tool_versions: dict[str, str] = field(default_factory=dict)
    description: str | None = None
    parity: dict[str, Any] | None = None  # deploy.parity.check_parity's record
    exported: str | None = None  # ISO time: an entry may outlive later exports into the same folder
    export_seconds: float | None = None
    deploy_graph: dict[str, Any] | None = None  # the converted graph's proof of equality (deploy.graph)
    details: dict[str, Any] = field(default_factory=dict)  # what the format's export reported (opset, engine, ...)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def parity_failed(self) -> bool:
        """Built and loaded, but its outputs missed the parity threshold."""
        return (self.parity or {}).get("passed") is False

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Any, where: str = "the manifest") -> ArtifactEntry:
        if not isinstance(data, dict) or not isinstance(data.get("format"), str):
            raise ConfigError(f"{where} has an artifact entry without a format name; export again")
        return cls(**_known(cls, data, f"{where} (artifact {data['format']})"))


@dataclass(kw_only=True)
class Manifest:
    """An export folder's description of its model and artifacts (``manifest.json``, fields in this order)."""

    schema: str = SCHEMA
    created: str | None = None
    model: dict[str, Any]  # {"model": registry name, "num_classes", "img_size": [H, W]} (torch_eager.model_spec)
    weights_sha256: str | None = None  # deploy.export.weights_digest of the exported model
    source_checkpoint: str | None = None  # None: seeded random weights
    source_checkpoint_from_folder: str | None = None  # the same, relative to the folder (a moved folder)
    input: dict[str, Any] = field(default_factory=dict)  # name, shape, dtype, layout, batch {min, opt, max}
    parity: dict[str, Any] = field(default_factory=dict)  # images, reference, thresholds per precision
    tool_versions: dict[str, str] = field(default_factory=dict)
    preprocessing: dict[str, Any] = field(default_factory=dict)  # PREPROCESSING_KEYS
    data: dict[str, Any] | None = None  # the calibration / parity images' folder and counts
    classes: list[str] | None = None  # index -> class name, as the checkpoint's training set sorted them
    artifacts: list[ArtifactEntry] = field(default_factory=list)  # in the format table's order

    @property
    def model_name(self) -> str | None:
        return self.model.get("model")

    @property
    def num_classes(self) -> int | None:
        return self.model.get("num_classes")

    @property
    def img_size(self) -> tuple[int, int] | None:
        """(H, W) of the input, from the input shape, else the model's recorded size."""
        shape = self.input.get("shape") or []
        size = shape[2:4] if len(shape) == 4 else (self.model.get("img_size") or [])
        return (int(size[0]), int(size[-1])) if size else None

    def entries(self, status: str | None = None) -> list[ArtifactEntry]:
        """Its artifact entries, in table order; with ``status``, only those in that state."""
        return [a for a in self.artifacts if status is None or a.status == status]

    def entry(self, format: str) -> ArtifactEntry | None:
        return next((a for a in self.artifacts if a.format == format), None)

    def transform_keywords(self) -> dict[str, Any]:
        """The preprocessing it recorded, as ``eval_transform_for`` keywords (unset ones left out)."""
        return {k: self.preprocessing[k] for k in PREPROCESSING_KEYS if self.preprocessing.get(k) is not None}

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Any, where: str = "the manifest") -> Manifest:
        if not isinstance(data, dict) or not isinstance(data.get("artifacts"), list):
            raise ConfigError(f"{where} is not an export manifest (no artifacts list); export again")
        if data.get("schema") != SCHEMA:
            raise ConfigError(
                f"{where} has manifest schema {data.get('schema')!r} but this version reads {SCHEMA}; export again"
            )
        if not isinstance(data.get("model"), dict):
            raise ConfigError(f"{where} does not say which model it holds (no model object); export again")
        fields = _known(cls, data, where)
        fields["artifacts"] = [ArtifactEntry.from_json(a, where) for a in data["artifacts"]]
        return cls(**fields)


def _known(cls: type, data: dict[str, Any], where: str) -> dict[str, Any]:
    """``data``'s fields of dataclass ``cls``; one this version does not know is refused (another schema)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where} has fields this version does not know ({', '.join(unknown)}); export again")
    return {k: v for k, v in data.items() if k in names}


def path(folder: str | Path) -> Path:
    """Where the manifest of export folder ``folder`` is."""
    return Path(folder) / FILE


def exists(folder: str | Path) -> bool:
    """Whether ``folder`` holds a manifest (is an export folder)."""
    return path(folder).is_file()


def read(folder: str | Path) -> Manifest:
    """The manifest of export folder ``folder``; a ConfigError, in one sentence, when it has none or the file
    is not a manifest this version reads."""
    where = path(folder)
    if not where.is_file():
        raise ConfigError(f"{folder} has no {FILE}; run `t2t export --out {folder}` first")
    try:
        data = json.loads(where.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{where} is not valid JSON ({e}); export again") from None
    return Manifest.from_json(data, str(where))


def recorded_path(folder: Path, recorded: str | None, from_folder: str | None = None) -> Path | None:
    """A path the manifest recorded, found again: relative to the export folder (a moved folder), as recorded
    (absolute, or relative to the working directory), or relative to the folder's parent."""
    candidates = [folder / from_folder] if from_folder else []
    if recorded:
        candidates += [Path(recorded), folder / recorded, folder.parent / recorded]
    return next((p for p in candidates if p.exists()), None)


def write(folder: str | Path, manifest: Manifest) -> Path:
    """Write ``manifest`` into ``folder`` atomically (readers see the old one or the new one, never a part);
    returns its path."""
    where = path(folder)
    tmp = where.with_name(f".{FILE}.tmp")
    tmp.write_text(json.dumps(manifest.to_json(), indent=2) + "\n")
    os.replace(tmp, where)
    return where
