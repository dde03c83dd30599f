"""The profiler's report as typed structures, and its one schema version.

:class:`Report` is what :func:`deploy.profiler.profile_folder` returns and what
:func:`deploy.report.read_report` gives back from a ``report.json``; :meth:`Report.to_dict` is
the JSON document (plain types only). A row's ``latency`` maps a batch size (as a string, the JSON
key) to :func:`deploy.profiler.stats.latency_stats`'s summary.

Schema 2 (this one) replaced schema 1's project targets with the user's own ``checks``: the
report says whether the limits *they* asked for hold, and marks the rows that miss them. A comparison
of several models (:func:`deploy.profiler.compare.profile_folders`) is a schema-2 report whose rows also
carry ``model``, ``params`` and ``macs`` and whose ``model`` holds ``models``, one entry per model; these
fields are optional, so a single-model report and an older reader are unaffected.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["FAITHFUL", "SCHEMA", "Report", "Row"]

SCHEMA = 2
FAITHFUL = 0.99  # top-1 agreement with the fp32 model a row needs to be the verdict's pick (without user checks)


@dataclass
class Row:
    """One artifact (or extra variant): what it is, whether it ran, and what it measured."""

    name: str
    format: str
    precision: str
    device: str
    file: str | None = None
    file_bytes: int | None = None
    status: str = "ok"  # "ok", "failed" or "skipped"
    reason: str | None = None  # why it is not ok, and notes (batch sizes not timed, ...)
    load_s: float | None = None
    first_inference_ms: float | None = None
    latency: dict[str, dict[str, Any]] = field(default_factory=dict)  # str(batch) -> latency_stats(...)
    peak_rss_mb: float | None = None
    cuda_peak_mb: float | None = None
    gmacs_per_s: float | None = None  # model MACs per image / p50 at batch 1
    peak_share: float | None = None  # gmacs_per_s / the measured peak of its precision
    top1: float | None = None  # percent
    top5: float | None = None  # percent
    agreement: float | None = None  # share of top-1 decisions equal to the fp32 torch artifact's (0..1)
    checks: list[str] = field(default_factory=list)  # the user's checks this row misses, one sentence each
    # where "agreement" comes from: "measured" (this run, on the data images, against the fp32 torch row) or
    # "export" (the manifest's parity check at export time, not measured here)
    agreement_source: str | None = None
    # the file against the sha256 its manifest recorded: "verified", "not verified (--no-verify)", or the mismatch
    integrity: str | None = None
    # True when its export's parity check failed and it was timed anyway (--time-unverified): not a row to ship
    timed_only: bool | None = None
    # a comparison of several models (deploy.profiler.compare): the row's model and that model's own counts
    model: str | None = None
    params: int | None = None
    macs: int | None = None  # per image, at the model's input size


_COMPARISON_FIELDS = ("model", "params", "macs")
# left out of the JSON when None
_OPTIONAL_FIELDS = (*_COMPARISON_FIELDS, "agreement_source", "integrity", "timed_only")


@dataclass
class Report:
    """Everything one profile measured: machine, versions, settings, peak rates and one row per artifact."""

    created: str = ""
    command: str = ""
    machine: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    peak: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    peak_cuda: dict[str, Any] | None = None
    checks: dict[str, Any] | None = None  # the limits asked for, "passed" and "failures" (see deploy.profiler.checks)
    # the artifacts' files against their manifest: "verified" (bool: checked at all) and "failures" (row names
    # whose files changed after export: failed rows, exit status 1)
    integrity: dict[str, Any] | None = None
    sources: list[str] = field(default_factory=list)  # where the figures come from (see find_sources)
    # what a reader must know before picking a row, one sentence each (see find_notes): an int8 row slower than its
    # float sibling
    notes: list[str] = field(default_factory=list)
    # which file to ship (see find_verdict): the fastest faithful row, its speed-up and size against fp32 eager,
    # and the best row of each runtime
    verdict: dict[str, Any] | None = None
    schema: int = SCHEMA

    @property
    def is_comparison(self) -> bool:
        """Whether this report compares several models (:func:`deploy.profiler.compare.profile_folders`): its
        ``model`` lists ``models``, one entry per model. :func:`deploy.report.write_report` renders such a report
        as the comparison view."""
        return bool((self.model or {}).get("models"))

    def conclude(self) -> None:
        """What the report concludes from its rows, once the timing and the user's checks are in: where the figures
        come from, the notes a reader needs, and the verdict."""
        self.sources = self.find_sources()
        self.notes = self.find_notes()
        self.verdict = self.find_verdict()

    def find_verdict(self) -> dict[str, Any]:
        """Which file to ship: the fastest row (p50 at the smallest batch size timed) among the artifacts that
        meet the user's checks, or without checks that agree with the fp32 model on at least
        :data:`FAITHFUL` of the images; its speed-up and size against its own model's fp32 ``torch`` row; and
        the best such row of each runtime. Rows timed despite a failed parity check never qualify; nor do rows
        outside the format table (a benchmark's extra variants)."""
        from ..base import FORMATS

        timed = sorted({int(b) for r in self.rows for b in r.latency})
        batch = str(timed[0]) if timed else None
        checked = self.checks is not None
        rule = "meets your checks" if checked else f"agrees with the fp32 model on >= {FAITHFUL:.0%} of the images"

        def p50(row: Row) -> float | None:
            return (row.latency.get(batch) or {}).get("p50_ms") if batch is not None else None

        def faithful(row: Row) -> bool:
            if row.status != "ok" or row.timed_only or row.format not in FORMATS or p50(row) is None:
                return False
            return not row.checks if checked else row.agreement is not None and row.agreement >= FAITHFUL

        picks = sorted((r for r in self.rows if faithful(r)), key=lambda r: p50(r))
        out: dict[str, Any] = {"rule": rule, "batch": int(batch) if batch is not None else None, "pick": None}
        if not picks:
            why = "no artifact was timed" if batch is None else f"no timed artifact {rule}"
            if not checked and not any(r.agreement is not None for r in self.rows):
                why += " (no agreement is known: pass --data with labelled images to measure it)"
            return out | {"why": why}

        def summary(row: Row) -> dict[str, Any]:
            base = next(
                (r for r in self.rows if r.format == "torch" and r.model == row.model and p50(r) is not None), None
            )
            return {
                "row": row.name,
                "runtime": FORMATS[row.format].runtime_name(),
                "precision": row.precision,
                "file": row.file,
                "p50_ms": p50(row),
                "agreement": row.agreement,
                "baseline": base.name if base is not None else None,
                "speedup": p50(base) / p50(row) if base is not None and p50(row) else None,
                "size_ratio": row.file_bytes / base.file_bytes
                if base is not None and row.file_bytes and base.file_bytes
                else None,
            }

        best: dict[str, Row] = {}
        for row in picks:
            best.setdefault(FORMATS[row.format].runtime_name(), row)
        return out | {"pick": summary(picks[0]), "runtimes": [summary(r) for r in best.values()]}

    def find_sources(self) -> list[str]:
        """Where the figures come from, one sentence each (the profiler stores them in ``sources``; report.md and
        the terminal show them)."""
        out = []
        settings = self.settings or {}
        measured = [r.name for r in self.rows if r.agreement_source == "measured"]
        export = [r.name for r in self.rows if r.agreement_source == "export"]
        if measured:
            out.append(
                f"agreement of {', '.join(measured)}: measured in this run on {settings.get('images')} images of "
                f"{settings.get('data')} against the fp32 torch artifact"
            )
        if export:
            out.append(
                f"agreement of {', '.join(export)}: from the export's parity check recorded in manifest.json, "
                "not measured in this run (pass --data to measure it)"
            )
        if any(r.latency for r in self.rows):
            memory = " and peak memory" if any(r.peak_rss_mb is not None for r in self.rows) else ""
            out.append(f"latency, throughput, load time, MAC rate{memory}: measured in this run")
        if any(r.top1 is not None for r in self.rows):
            where = f"{settings.get('images')} images of {settings.get('data')}"
            out.append(f"top-1/top-5: measured in this run on {where}")
        if self.integrity is not None:
            if not self.integrity.get("verified"):
                out.append("artifact files: not checked against the manifest's sha256 (--no-verify)")
            elif self.integrity.get("failures"):
                bad = ", ".join(self.integrity["failures"])
                out.append(f"artifact files: {bad} changed after export (sha256 differs from the manifest): failed")
            else:
                out.append("artifact files: sha256 checked against the manifest, every one unchanged")
        return out

    def find_notes(self) -> list[str]:
        """One sentence per int8 row that ran slower than its float sibling (the fastest fp32/bf16/fp16 row of the
        same runtime: ``openvino-int8`` against ``openvino`` and ``openvino-fp16``, ``onnx-int8-*`` against ``onnx``;
        the same model in a comparison) at the smallest batch size both were timed at. Where a CPU has no int8
        advantage the int8 file is smaller, not faster, and the report must say so beside the row (its ``reason``
        gets the sentence too). Call it once per report, after the timing."""
        notes = []
        for row in self.rows:
            if row.precision != "int8" or "-int8" not in row.format or row.status != "ok":
                continue
            base = row.format.split("-int8")[0]
            siblings = [
                r
                for r in self.rows
                if r.status == "ok"
                and r.precision != "int8"
                and r.model == row.model
                and (r.format == base or r.format.startswith(base + "-"))
            ]
            best = None
            for sib in siblings:
                shared = sorted(set(row.latency) & set(sib.latency), key=int)
                if not shared:
                    continue
                b = shared[0]
                ours, theirs = row.latency[b].get("p50_ms"), sib.latency[b].get("p50_ms")
                if ours is None or theirs is None:
                    continue
                if best is None or theirs < best[2]:
                    best = (sib, b, theirs, ours)
            if best is None or best[3] <= best[2]:
                continue
            sib, b, theirs, ours = best
            text = (
                f"{row.name} (int8) is {ours / theirs:.2f}x slower than {sib.name} ({sib.precision}) at batch {b} "
                f"({ours:.3g} vs {theirs:.3g} ms p50): int8 does not pay on this CPU, so {sib.name} is the faster "
                "choice unless file size matters"
            )
            notes.append(text)
            if text not in (row.reason or ""):
                row.reason = f"{row.reason}; {text}" if row.reason else text
        return notes

    def row(self, name: str) -> Row:
        return next(r for r in self.rows if r.name == name)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document: plain dicts and lists, ``peak_cuda`` / ``checks`` and a row's comparison fields
        (``model``, ``params``, ``macs``) left out when absent."""
        out = asdict(self)
        for key in ("peak_cuda", "checks", "integrity", "verdict"):
            if out[key] is None:
                del out[key]
        for row in out["rows"]:  # a single model's rows: the comparison's fields stay out, as before them
            for key in _OPTIONAL_FIELDS:
                if row[key] is None:
                    del row[key]
        for key in ("sources", "notes"):
            if not out[key]:
                del out[key]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        """The report of a parsed ``report.json`` (unknown keys are ignored, missing row fields default)."""
        row_keys = {f.name for f in fields(Row)}
        rows = [Row(**{k: v for k, v in r.items() if k in row_keys}) for r in data.get("rows") or []]
        keys = {f.name for f in fields(cls)} - {"rows"}
        return cls(rows=rows, **{k: data[k] for k in keys if k in data})
