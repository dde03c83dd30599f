"""The report's files: :func:`write_report` writes either view, :func:`read_report` / :func:`read_csv` read them
back.

One model (``profile_folder``): ``report.json``, ``report.csv``, ``report.md`` (:mod:`deploy.report.markdown`),
``latency_vs_accuracy.png`` and ``latency_bars.png``. A comparison of several models (``profile_folders``,
:attr:`Report.is_comparison <deploy.profiler.schema.Report.is_comparison>`): the same JSON and CSV, its own
``report.md`` (:mod:`deploy.report.comparison`), ``latency_vs_macs.png`` and ``accuracy_vs_latency.png``.

- ``report.json`` -- the report's document (indent 2); :func:`read_report` parses it back into the Report.
- ``report.csv`` -- one line per row x batch size (raw, unrounded numbers); :func:`read_csv` parses it back. A
  failed or skipped row has one line with empty latency cells and its status and reason.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..profiler.schema import SCHEMA, Report
from . import text as names  # the file names and the document's text helpers
from .comparison import render_comparison
from .markdown import render_markdown
from .plots import plot_accuracy_vs_latency, plot_latency_bars, plot_latency_vs_accuracy, plot_latency_vs_macs

LATENCY_FIELDS = (
    "runs",
    "mean_ms",
    "std_ms",
    "min_ms",
    "p50_ms",
    "p90_ms",
    "p95_ms",
    "p99_ms",
    "p50_ci_lo_ms",
    "p50_ci_hi_ms",
    "ci_level",
    "throughput_ips",
)
CSV_FIELDS = (
    "model",
    "name",
    "format",
    "precision",
    "device",
    "status",
    "reason",
    "file",
    "file_bytes",
    "load_s",
    "first_inference_ms",
    "batch",
    *LATENCY_FIELDS,
    "peak_rss_mb",
    "cuda_peak_mb",
    "gmacs_per_s",
    "peak_share",
    "top1",
    "top5",
    "agreement",
    "checks",
    "params",  # a comparison's rows: the row's model's own counts
    "macs",
)
_CSV_INTS = {"file_bytes", "batch", "runs", "params", "macs"}
_CSV_STRS = {"model", "name", "format", "precision", "device", "status", "reason", "file", "checks"}


@dataclass(frozen=True)
class View:
    """What one view writes beside the JSON and the CSV: its plots (file name, plot function) and ``report.md``."""

    plots: tuple[tuple[str, Callable[[dict[str, Any], Path], Path]], ...]
    render: Callable[[dict[str, Any], Sequence[str]], str]  # (report, plot file names) -> report.md


SINGLE = View(((names.SCATTER_NAME, plot_latency_vs_accuracy), (names.BARS_NAME, plot_latency_bars)), render_markdown)
COMPARISON = View(
    ((names.MACS_NAME, plot_latency_vs_macs), (names.PARETO_NAME, plot_accuracy_vs_latency)), render_comparison
)


def write_report(report: Report | dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write ``report.json``, ``report.csv``, ``report.md`` and the view's two PNGs into ``out_dir``; return their
    paths in that order. The view is the comparison's when :func:`is_comparison`, else the single model's.

    The JSON is written first: whatever fails later, the measured numbers are on disk.
    """
    view = COMPARISON if names.is_comparison(report) else SINGLE
    report = names.as_dict(report)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / names.JSON_NAME).write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    write_csv(report, out / names.CSV_NAME)
    plots = [plot(report, out / name) for name, plot in view.plots]
    (out / names.MD_NAME).write_text(view.render(report, [name for name, _ in view.plots]))
    return [out / names.JSON_NAME, out / names.CSV_NAME, out / names.MD_NAME, *plots]


def read_report(path_or_dir: str | Path) -> Report:
    """Parse a ``report.json`` (or the one inside a directory) back into the :class:`Report`.

    Raises ``t2tvit.errors.ConfigError`` (one sentence naming the fix) when it is missing, not JSON, not a
    report or of another schema.
    """
    from t2tvit.errors import ConfigError  # here, not at the top: `import t2tvit` loads torch and timm

    path = Path(path_or_dir)
    if path.is_dir():
        path = path / names.JSON_NAME
    if not path.is_file():
        raise ConfigError(f"No profiler report at {path}: run `t2t bench` first or pass the path of its report.json.")
    try:
        report = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path} is not a readable JSON report ({e}); re-run `t2t bench` to write it again.") from e
    if not isinstance(report, dict) or not isinstance(report.get("rows"), list):
        raise ConfigError(f"{path} is JSON but not a profiler report (no list of rows); pass a report.json.")
    if report.get("schema") != SCHEMA:
        raise ConfigError(
            f"{path} has report schema {report.get('schema')!r} but this version reads schema {SCHEMA}; "
            "re-run `t2t bench` to write it again."
        )
    return Report.from_dict(report)


@names.document
def csv_rows(report: Report | dict[str, Any]) -> list[dict[str, Any]]:
    """One dict per row x batch size (CSV_FIELDS keys); rows without latency get one line with ``batch`` None."""
    model = (report.get("model") or {}).get("name")
    out = []
    for row in report.get("rows") or []:
        base = {k: row.get(k) for k in CSV_FIELDS if k in row}
        base["model"] = row.get("model") or model  # a comparison's row names its own model
        for batch, stats in names.latency_items(row) or [(None, {})]:
            line = dict.fromkeys(CSV_FIELDS)
            line.update(base)
            line["batch"] = batch
            for k in LATENCY_FIELDS:
                line[k] = stats.get(k)
            line["checks"] = "; ".join(row.get("checks") or []) or None
            line["p50_ci_lo_ms"], line["p50_ci_hi_ms"] = names.ci(stats) or (None, None)
            out.append(line)
    return out


@names.document
def write_csv(report: Report | dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for line in csv_rows(report):
            w.writerow({k: "" if v is None else v for k, v in line.items()})
    return path


def read_csv(path: str | Path) -> list[dict[str, Any]]:
    """Parse ``report.csv`` back: empty cells are None, counts int, measurements float, the rest str."""
    with Path(path).open(newline="") as f:
        return [{k: _csv_value(k, v) for k, v in line.items()} for line in csv.DictReader(f)]


def _csv_value(key: str, text: str | None) -> Any:
    if text is None or text == "":
        return None
    if key in _CSV_STRS or key not in CSV_FIELDS:
        return text
    return int(text) if key in _CSV_INTS else float(text)


def _json_default(obj: Any) -> Any:
    """Paths, tuples-as-objects and numpy scalars/arrays that slipped into the dict still serialise."""
    if isinstance(obj, Path):
        return str(obj)
    for attr in ("tolist", "item"):  # numpy / torch scalars and arrays
        if hasattr(obj, attr):
            return getattr(obj, attr)()
    return str(obj)
