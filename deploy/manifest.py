"""The export manifest: the one owner of its file name, schema string, reading and writing.

An export folder's ``manifest.json`` lists every artifact with its status, file, digest, parity and
details (see :func:`deploy.export.export_all`, which builds it). Everything that opens, merges, profiles,
verifies or forges one goes through this module, so the name and the schema live in one place:

* :func:`path` / :func:`exists` -- where a folder's manifest is and whether it has one;
* :func:`read` -- the manifest of an export folder, checked to be one (a JSON object of this schema with
  an ``artifacts`` list), or a :class:`~t2tvit.errors.ConfigError` that says what to do;
* :func:`write` -- written atomically (a temporary file renamed over it), never half a manifest;
* :func:`new` -- a manifest with this schema around the given fields (for folders written by hand, such
  as the comparison's record of a model whose export failed);
* :func:`preprocessing` -- the eval preprocessing it records, as ``eval_transform_for`` keywords;
* :func:`entries` -- its artifact entries, optionally those of one status.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from t2tvit.errors import ConfigError

__all__ = [
    "FILE",
    "PREPROCESSING_KEYS",
    "SCHEMA",
    "entries",
    "exists",
    "new",
    "path",
    "preprocessing",
    "read",
    "write",
]

FILE = "manifest.json"
SCHEMA = "t2t-export/1"

# The eval preprocessing a manifest records (``t2tvit.data.eval_transform_for``'s keyword overrides).
PREPROCESSING_KEYS = ("mean", "std", "crop_pct", "interpolation")


def path(folder: str | Path) -> Path:
    """Where the manifest of export folder ``folder`` is."""
    return Path(folder) / FILE


def exists(folder: str | Path) -> bool:
    """Whether ``folder`` holds a manifest (is an export folder)."""
    return path(folder).is_file()


def read(folder: str | Path) -> dict[str, Any]:
    """The manifest of export folder ``folder``; a ConfigError, in one sentence, when it has none or the file
    is not a manifest this version reads."""
    where = path(folder)
    if not where.is_file():
        raise ConfigError(f"{folder} has no {FILE}; run `t2t export --out {folder}` first")
    try:
        manifest = json.loads(where.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{where} is not valid JSON ({e}); export again") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("artifacts"), list):
        raise ConfigError(f"{where} is not an export manifest (no artifacts list); export again")
    if manifest.get("schema") != SCHEMA:
        raise ConfigError(
            f"{where} has manifest schema {manifest.get('schema')!r} but this version reads {SCHEMA}; export again"
        )
    return manifest


def write(folder: str | Path, manifest: dict[str, Any]) -> Path:
    """Write ``manifest`` into ``folder`` atomically (readers see the old one or the new one, never a part);
    returns its path."""
    where = path(folder)
    tmp = where.with_name(f".{FILE}.tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, where)
    return where


def new(**fields: Any) -> dict[str, Any]:
    """A manifest of this schema holding ``fields`` (``artifacts`` defaults to none)."""
    return {"schema": SCHEMA, **fields, "artifacts": list(fields.get("artifacts") or [])}


def preprocessing(manifest: dict[str, Any] | None) -> dict[str, Any]:
    """The preprocessing ``manifest`` recorded, as ``eval_transform_for`` keywords (unset ones left out)."""
    recorded = (manifest or {}).get("preprocessing") or {}
    return {k: recorded[k] for k in PREPROCESSING_KEYS if recorded.get(k) is not None}


def entries(manifest: dict[str, Any], status: str | None = None) -> list[dict[str, Any]]:
    """The artifact entries of ``manifest``, in table order; with ``status``, only those in that state."""
    arts = manifest.get("artifacts") or []
    return [a for a in arts if status is None or a.get("status") == status]
