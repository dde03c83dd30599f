"""Report writers of the latency profiler: one report in, ``report.json`` / ``.csv`` / ``.md`` and two PNGs out.

The profiler (:mod:`deploy.profiler`) measures; this module only presents. It works from the report alone
(a :class:`~deploy.profiler.schema.Report` or its JSON dict) so a saved ``report.json`` can be re-rendered
later (``write_report(read_report(path), out_dir)``) and so the writers can be tested without measuring.

Every row appears in every output whatever its status: a failed or skipped row is in the JSON, has one CSV
line with empty latency cells and its status and reason, a table line saying why, and a "not plotted" note
under each plot. Missing numbers (``None``) print as ``-``, never as a crash.

Files written by :func:`write_report`:

- ``report.json`` -- the dict itself (indent 2); :func:`read_report` parses it back.
- ``report.csv`` -- one line per row x batch size (raw, unrounded numbers); :func:`read_csv` parses it back.
- ``report.md`` -- the verdict (which file to ship: the fastest faithful artifact, against fp32 eager, and the
  best row of each runtime), machine and settings, the notes (an int8 row slower than its float sibling), the
  full results table, the peak GEMM line, the user's checks, failed/skipped rows, and both plots embedded by
  relative link.
- ``latency_vs_accuracy.png`` -- p50 latency at the smallest batch size against top-1 (or, when no row has a
  top-1, top-1 agreement with fp32 x 100), one labelled point per row, the Pareto front as a step line.
- ``latency_bars.png`` -- p50 at the smallest batch size per row, fastest first, coloured by precision;
  black whiskers are the confidence interval of the median, the grey diamond and its thin line mean +- std.

Both PNGs are always written, also when no row can be plotted: the figure then says "nothing to plot" and
why, so the links in ``report.md`` never break. Plots use matplotlib's ``Figure`` with the Agg canvas
directly (no pyplot, no global backend switch), imported lazily so importing this module stays cheap.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import textwrap
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from .profiler.schema import SCHEMA, Report

JSON_NAME, CSV_NAME, MD_NAME = "report.json", "report.csv", "report.md"
SCATTER_NAME, BARS_NAME = "latency_vs_accuracy.png", "latency_bars.png"
PRECISION_COLORS = {"fp32": "tab:blue", "fp16": "tab:orange", "bf16": "tab:purple", "int8": "tab:green"}
DEVICE_MARKERS = {"cpu": "o", "cuda": "s"}
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
_TABLE_REASON_CHARS = 80  # longer reasons are cut in table cells; the full text is listed below the table
_PLOT_REASON_CHARS = 70


# ---------------------------------------------------------------- reading and writing


def as_dict(report: Report | dict[str, Any]) -> dict[str, Any]:
    """The JSON document of a report (a dict passes through)."""
    return report.to_dict() if isinstance(report, Report) else report


def _document(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Let a writer that reads the JSON document take a :class:`Report` too."""

    @functools.wraps(fn)
    def wrapper(report: Report | dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        return fn(as_dict(report), *args, **kwargs)

    return wrapper


def write_report(report: Report | dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write ``report.json``, ``report.csv``, both PNGs and ``report.md`` into ``out_dir``; return their paths.

    The JSON is written first: whatever fails later, the measured numbers are on disk.
    """
    report = as_dict(report)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / JSON_NAME, out / CSV_NAME]
    paths[0].write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    write_csv(report, paths[1])
    plot_latency_vs_accuracy(report, out / SCATTER_NAME)
    plot_latency_bars(report, out / BARS_NAME)
    md = out / MD_NAME
    md.write_text(render_markdown(report, plots=(SCATTER_NAME, BARS_NAME)))
    return [*paths, md, out / SCATTER_NAME, out / BARS_NAME]


def read_report(path_or_dir: str | Path) -> Report:
    """Parse a ``report.json`` (or the one inside a directory) back into the :class:`Report`.

    Raises ``t2tvit.errors.ConfigError`` (one sentence naming the fix) when it is missing, not JSON, not a
    report or of another schema.
    """
    from t2tvit.errors import ConfigError  # here, not at the top: `import t2tvit` loads torch and timm

    path = Path(path_or_dir)
    if path.is_dir():
        path = path / JSON_NAME
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


@_document
def csv_rows(report: Report | dict[str, Any]) -> list[dict[str, Any]]:
    """One dict per row x batch size (CSV_FIELDS keys); rows without latency get one line with ``batch`` None."""
    model = (report.get("model") or {}).get("name")
    out = []
    for row in report.get("rows") or []:
        base = {k: row.get(k) for k in CSV_FIELDS if k in row}
        base["model"] = row.get("model") or model  # a comparison's row names its own model
        lat = _latency_items(row)
        for batch, stats in lat or [(None, {})]:
            line = dict.fromkeys(CSV_FIELDS)
            line.update(base)
            line["batch"] = batch
            for k in LATENCY_FIELDS:
                line[k] = stats.get(k)
            line["checks"] = "; ".join(row.get("checks") or []) or None
            line["p50_ci_lo_ms"], line["p50_ci_hi_ms"] = _ci(stats) or (None, None)
            out.append(line)
    return out


@_document
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


# ---------------------------------------------------------------- pure helpers


def pareto_front(points: Iterable[tuple[str, float | None, float | None]]) -> list[str]:
    """Names of the points no other point beats: lower latency AND higher accuracy are better.

    A point is dominated when another has latency <= and accuracy >= with at least one strict. Exact
    duplicates do not dominate each other, so both stay on the front. Points with a missing or non-finite
    latency or accuracy are ignored. Names come back in order of increasing latency (input order on ties).
    """
    pts = [(name, lat, acc) for name, lat, acc in points if _finite(lat) and _finite(acc)]
    pts.sort(key=lambda p: (p[1], -p[2]))  # stable: input order among exact ties
    front: list[str] = []
    best_acc, best_lat = -math.inf, None
    for name, lat, acc in pts:
        if acc > best_acc:
            front.append(name)
            best_acc, best_lat = acc, lat
        elif acc == best_acc and lat == best_lat:
            front.append(name)
    return front


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _latency_items(row: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """The row's ``latency`` as (batch, stats) sorted by batch; keys may be str (JSON) or int (in memory)."""
    lat = row.get("latency")
    items = []
    for k, stats in lat.items() if isinstance(lat, dict) else []:
        try:
            items.append((int(k), stats if isinstance(stats, dict) else {}))
        except (TypeError, ValueError):
            continue
    return sorted(items, key=lambda kv: kv[0])


def _stats(row: dict[str, Any], batch: int | None) -> dict[str, Any]:
    return next((s for b, s in _latency_items(row) if b == batch), {})


def _ci(stats: dict[str, Any]) -> tuple[float, float] | None:
    """The (low, high) confidence interval of the median, or None when it is missing or malformed."""
    ci = stats.get("p50_ci_ms")
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_finite(c) for c in ci):
        return (ci[0], ci[1])
    return None


@_document
def batch_sizes(report: Report | dict[str, Any]) -> list[int]:
    """The batch sizes of the settings, plus any a row measured that the settings do not name."""
    sizes = {int(b) for b in (report.get("settings") or {}).get("batch_sizes") or [] if _finite(b)}
    for row in report.get("rows") or []:
        sizes.update(b for b, _ in _latency_items(row))
    return sorted(sizes)


def _plot_batch(report: dict[str, Any]) -> int | None:
    settings = [int(b) for b in (report.get("settings") or {}).get("batch_sizes") or [] if _finite(b)]
    sizes = settings or batch_sizes(report)
    return min(sizes) if sizes else None


def _why_not(row: dict[str, Any], batch: int | None, what: str = "") -> str | None:
    """Why ``row`` is not in a plot (None if it can be): its status and reason, or the missing number."""
    status = row.get("status") or "unknown"
    if status != "ok":
        reason = row.get("reason")
        return f"{status}: {_one_line(reason)}" if reason else status
    if not _finite(_stats(row, batch).get("p50_ms")):
        return f"no latency at batch {batch}"
    if what and not _finite(row.get(what)):
        return f"no {'top-1' if what == 'top1' else what}"
    return None


@_document
def accuracy_points(report: Report | dict[str, Any]) -> dict[str, Any]:
    """What ``latency_vs_accuracy.png`` shows: batch, y metric and label, points and the rows left out.

    y is top-1 when any row has one, else top-1 agreement with fp32 x 100, else nothing can be plotted.
    """
    rows = report.get("rows") or []
    batch = _plot_batch(report)
    metric = "top1" if any(_finite(r.get("top1")) for r in rows) else "agreement"
    ylabel = "top-1 accuracy (%)" if metric == "top1" else "top-1 agreement with fp32 (%)"
    points, skipped = [], []
    for r in rows:
        why = _why_not(r, batch, metric)
        if why:
            skipped.append((str(r.get("name")), why))
            continue
        acc = r[metric] if metric == "top1" else 100.0 * r[metric]
        points.append(
            {
                "name": str(r.get("name")),
                "latency": _stats(r, batch)["p50_ms"],
                "accuracy": acc,
                "precision": r.get("precision"),
                "device": r.get("device"),
            }
        )
    return {"batch": batch, "metric": metric, "ylabel": ylabel, "points": points, "skipped": skipped}


@_document
def latency_bars_data(report: Report | dict[str, Any]) -> dict[str, Any]:
    """What ``latency_bars.png`` shows: per plottable row p50, its CI and mean/std, fastest first."""
    batch = _plot_batch(report)
    bars, skipped = [], []
    for r in report.get("rows") or []:
        why = _why_not(r, batch)
        if why:
            skipped.append((str(r.get("name")), why))
            continue
        s = _stats(r, batch)
        bars.append(
            {
                "name": str(r.get("name")),
                "precision": r.get("precision"),
                "p50": s["p50_ms"],
                "ci": _ci(s),
                "ci_level": s.get("ci_level"),
                "mean": s.get("mean_ms") if _finite(s.get("mean_ms")) else None,
                "std": s.get("std_ms") if _finite(s.get("std_ms")) else None,
            }
        )
    bars.sort(key=lambda b: b["p50"])
    return {"batch": batch, "bars": bars, "skipped": skipped}


# ---------------------------------------------------------------- number formatting


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def _cut(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1].rstrip() + "…"


def _ms_digits(v: float) -> int:
    return 3 if abs(v) < 1 else 2 if abs(v) < 100 else 1


def fmt_ms(v: Any, digits: int | None = None) -> str:
    """Milliseconds: 3 decimals below 1 ms, 2 below 100 ms, 1 above (or ``digits``)."""
    if not _finite(v):
        return "-"
    return f"{v:.{_ms_digits(v) if digits is None else digits}f}"


def _fmt(v: Any, digits: int = 1, scale: float = 1.0) -> str:
    return f"{v * scale:.{digits}f}" if _finite(v) else "-"


def _fmt_s(v: Any) -> str:
    return "-" if not _finite(v) else f"{v:.3f}" if abs(v) < 1 else f"{v:.2f}"


def _fmt_mb(nbytes: Any) -> str:
    return _fmt(nbytes, 2, 1e-6)


def _fmt_ips(v: Any) -> str:
    return "-" if not _finite(v) else f"{v:.1f}" if abs(v) < 1000 else f"{v:.0f}"


def _fmt_value(v: Any) -> str:
    return "-" if not _finite(v) else f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"


def _ci_label(report: dict[str, Any]) -> str:
    for row in report.get("rows") or []:
        for _, s in _latency_items(row):
            if _finite(s.get("ci_level")):
                return f"{100 * s['ci_level']:g}% CI"
    return "95% CI"


def _p50_ci(s: dict[str, Any]) -> str:
    if not _finite(s.get("p50_ms")):
        return "-"
    ci = _ci(s)
    if ci:
        digits = _ms_digits(s["p50_ms"])
        return f"{fmt_ms(s['p50_ms'])} [{fmt_ms(ci[0], digits)}, {fmt_ms(ci[1], digits)}]"
    return fmt_ms(s["p50_ms"])


def _mean_std(s: dict[str, Any]) -> str:
    if not _finite(s.get("mean_ms")):
        return "-"
    if not _finite(s.get("std_ms")):
        return fmt_ms(s["mean_ms"])
    digits = _ms_digits(s["mean_ms"])  # the spread to the mean's precision: "9.99 ± 0.48"
    return f"{fmt_ms(s['mean_ms'])} ± {fmt_ms(s['std_ms'], digits)}"


def _status_cell(row: dict[str, Any], reason: bool = True) -> str:
    status = str(row.get("status") or "unknown")
    if status == "ok" or not row.get("reason") or not reason:
        return status
    return f"{status}: {_cut(_one_line(row['reason']), _TABLE_REASON_CHARS)}"


# ---------------------------------------------------------------- the results table (markdown and terminal)


@_document
def table(report: Report | dict[str, Any], reasons: bool = True) -> tuple[list[str], list[list[str]], list[bool]]:
    """Header, cell lines and, per line, whether it starts a new row (one line per row x batch size).

    With ``reasons`` a failed/skipped row's status cell also says why (cut to 80 characters).

    Row-wide cells (size, load, memory, accuracy...) are filled on a row's first line only; its further
    lines repeat just the per-batch latency cells. A row without latency has a single line.
    """
    rows = report.get("rows") or []
    cuda_mem = any(_finite(r.get("cuda_peak_mb")) for r in rows)
    header = [
        "name",
        "format",
        "precision",
        "device",
        "status",
        "size MB",
        "load s",
        "first ms",
        "batch",
        "runs",
        f"p50 ms [{_ci_label(report)}]",
        "p90 ms",
        "p99 ms",
        "mean ± std ms",
        "img/s",
        "peak RSS MB",
        *(["CUDA peak MB"] if cuda_mem else []),
        "GMAC/s",
        "% of peak",
        "top-1 %",
        "top-5 %",
        "agreement %",
    ]
    lines, starts = [], []
    for row in rows:
        head = [
            str(row.get("name")),
            str(row.get("format") or "-"),
            str(row.get("precision") or "-"),
            str(row.get("device") or "-"),
            _status_cell(row, reasons),
            _fmt_mb(row.get("file_bytes")),
            _fmt_s(row.get("load_s")),
            fmt_ms(row.get("first_inference_ms")),
        ]
        tail = [
            _fmt(row.get("peak_rss_mb"), 1),
            *([_fmt(row.get("cuda_peak_mb"), 1)] if cuda_mem else []),
            _fmt(row.get("gmacs_per_s"), 1),
            _fmt(row.get("peak_share"), 1, 100.0),
            _fmt(row.get("top1"), 2),
            _fmt(row.get("top5"), 2),
            _fmt(row.get("agreement"), 1, 100.0),
        ]
        for i, (batch, s) in enumerate(_latency_items(row) or [(None, {})]):
            runs = s.get("runs")
            per_batch = [
                "-" if batch is None else str(batch),
                str(runs) if runs is not None else "-",
                _p50_ci(s),
                fmt_ms(s.get("p90_ms")),
                fmt_ms(s.get("p99_ms")),
                _mean_std(s),
                _fmt_ips(s.get("throughput_ips")),
            ]
            if i == 0:
                lines.append([*head, *per_batch, *tail])
            else:
                lines.append([*[""] * len(head), *per_batch, *[""] * len(tail)])
            starts.append(i == 0)
    return header, lines, starts


def _peak_parts(peak: Any) -> list[str]:
    if not isinstance(peak, dict):
        return []
    if peak.get("error"):
        return [f"not measured ({_one_line(peak['error'])})"]
    parts = []
    for prec, p in peak.items():
        if not isinstance(p, dict) or not _finite(p.get("gmacs_per_s")):
            parts.append(f"{prec} not measured")
            continue
        how = ", ".join(str(p[k]) for k in ("op", "shape") if p.get(k))
        parts.append(f"{prec} {p['gmacs_per_s']:.1f} GMAC/s" + (f" ({how})" if how else ""))
    return parts


def _peak_line(report: dict[str, Any]) -> str:
    """The measured peak GEMM rates (the yardstick of "% of peak"); ``peak_cuda`` too when the report has one."""
    cpu, cuda = _peak_parts(report.get("peak")), _peak_parts(report.get("peak_cuda"))
    line = "Peak GEMM rate measured on this machine: " + ("; ".join(cpu) if cpu else "not measured")
    return line + (f". CUDA: {'; '.join(cuda)}." if cuda else ".")


def _check_lines(report: dict[str, Any]) -> list[tuple[str, bool]]:
    """The user's checks: what was asked, the verdict, then one line per row that missed one."""
    checks = report.get("checks")
    if not isinstance(checks, dict):
        return []
    asked = [
        f"{label} {checks[key]:g}{unit}"
        for key, label, unit in (
            ("max_latency_ms", "p50 <=", " ms"),
            ("min_agreement", "agreement >=", ""),
            ("min_top1", "top-1 >=", "%"),
        )
        if checks.get(key) is not None
    ]
    passed = bool(checks.get("passed"))
    out = [(f"Checks ({', '.join(asked)}): {'passed' if passed else 'FAILED'}", passed)]
    return out + [(f"{_one_line(f)}", False) for f in checks.get("failures") or []]


def _not_ok(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [
        (str(r.get("name")), str(r.get("status") or "unknown"), _one_line(r.get("reason") or "no reason given"))
        for r in report.get("rows") or []
        if r.get("status") != "ok"
    ]


def _title(report: dict[str, Any]) -> str:
    model = (report.get("model") or {}).get("name") or "model"
    machine = report.get("machine") or {}
    where = machine.get("cpu") or "unknown CPU"
    if machine.get("gpu"):
        where += f" + {machine['gpu']}"
    return f"Latency report: {model} on {where}"


# ---------------------------------------------------------------- markdown


def _md_cell(text: Any) -> str:
    return _one_line(text).replace("|", "\\|")


def _code(text: str) -> str:
    """Inline code; a text holding a backtick needs the double-backtick form."""
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _v(*values: Any) -> Any:
    """The first value that is not None (or empty), else "-"."""
    return next((v for v in values if v is not None and v != ""), "-")


def _machine_md(report: dict[str, Any]) -> list[str]:
    m, s, mo = report.get("machine") or {}, report.get("settings") or {}, report.get("model") or {}
    cores = f"{_v(m.get('cores'))} physical cores, {_v(m.get('logical_cpus'))} logical CPUs"
    versions = ", ".join(f"{k} {v}" for k, v in sorted((report.get("versions") or {}).items())) or "-"
    params = f"{mo['params'] / 1e6:.2f}M parameters" if _finite(mo.get("params")) else "parameters unknown"
    macs = f"{mo['macs_per_image'] / 1e9:.3f} GMACs per image" if _finite(mo.get("macs_per_image")) else ""
    batches = ", ".join(str(b) for b in s.get("batch_sizes") or []) or "-"
    data = f"{s['data']} ({_v(s.get('images'))} images)" if s.get("data") else "none (no labelled images)"
    return [
        "## Machine and settings",
        "",
        f"- CPU: {_v(m.get('cpu'))} ({cores}); threads used: {_v(m.get('threads'), s.get('threads'))}",
        f"- GPU: {m.get('gpu') or 'none'}",
        f"- OS: {_v(m.get('os'))}; Python {_v(m.get('python'))}",
        f"- versions: {versions}",
        f"- model: {_v(mo.get('name'))}, {_v(mo.get('num_classes'))} classes, "
        + ", ".join(x for x in (params, macs) if x)
        + (f"; weights from {_code(str(mo['source']))}" if mo.get("source") else "; random weights"),
        f"- batch sizes: {batches}; image size {_v(s.get('img_size'))}; per measurement at least "
        f"{_v(s.get('min_runs'))} runs and {_v(s.get('duration_s'))} s after {_v(s.get('warmup'))} warm-up runs, "
        f"{_v(s.get('rounds'))} rounds",
        f"- accuracy data: {data}",
        *([f"- timing: {_one_line(s['timing'])}"] if s.get("timing") else []),
        f"- command: {_code(str(_v(report.get('command'))))}",
        f"- created: {_v(report.get('created'))}",
        "",
    ]


def _times(x: Any) -> str:
    return f"{x:.2f}x" if _finite(x) else "-"


@_document
def verdict_lines(report: Report | dict[str, Any]) -> list[str]:
    """The verdict, one plain-text sentence per line: which file to ship and why (the first line), then the best
    row of each runtime. Empty for a report saved without one."""
    verdict = report.get("verdict")
    if not verdict:
        return []
    pick = verdict.get("pick")
    if not pick:
        return [f"no file to recommend: {verdict.get('why')}"]
    batch = verdict.get("batch")
    against = (
        f"{_times(pick['speedup'])} the speed of {pick['baseline']} (fp32 eager) and {_times(pick['size_ratio'])} "
        "its size"
        if pick.get("baseline")
        else "no fp32 torch row to compare with"
    )
    where = f" ({pick['file']})" if pick.get("file") else ""
    agree = f", agreement {100 * pick['agreement']:.1f}%" if _finite(pick.get("agreement")) else ""
    lines = [
        f"ship {pick['row']}{where}: the fastest artifact that {verdict['rule']}, {fmt_ms(pick['p50_ms'])} ms p50 "
        f"at batch {batch}{agree}; {against}"
    ]
    for r in verdict.get("runtimes") or []:
        lines.append(
            f"best {r['runtime']} row: {r['row']} ({r['precision']}), {fmt_ms(r['p50_ms'])} ms, "
            f"{_times(r['speedup'])} the speed of fp32 eager"
        )
    return lines


def verdict_markdown(report: dict[str, Any]) -> list[str]:
    """``## Verdict`` and its lines, for the top of ``report.md`` (nothing for a report without one)."""
    lines = verdict_lines(report)
    if not lines:
        return []
    return ["## Verdict", "", f"**{_md_cell(lines[0])}**", "", *[f"- {_md_cell(t)}" for t in lines[1:]], ""]


def _plot_note(skipped: Sequence[tuple[str, str]]) -> str:
    return "not plotted: " + "; ".join(f"{n} ({why})" for n, why in skipped) if skipped else ""


@_document
def render_markdown(report: Report | dict[str, Any], plots: Sequence[str] = (SCATTER_NAME, BARS_NAME)) -> str:
    """``report.md``: title, the verdict, machine and settings, the full results table, peak, the user's checks,
    failed rows, plots."""
    header, lines, _ = table(report)
    out = [f"# {_title(report)}", "", *verdict_markdown(report), *_machine_md(report), "## Results", ""]
    out += ["| " + " | ".join(_md_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_md_cell(c) for c in line) + " |" for line in lines]
    out += [
        "",
        f"One line per artifact and batch size. p50 with the {_ci_label(report)} of the median; "
        "img/s = images per second at that batch size; peak RSS = peak resident memory of the process while the "
        "row ran; GMAC/s = model MACs per image x images/s, and % of peak relates it to the peak GEMM rate below "
        "for the row's precision; agreement = share of images whose top-1 class matches the fp32 model's.",
        "",
        _peak_line(report),
        "",
    ]
    if report.get("notes"):  # before anything else a reader could pick a row from
        out[out.index("## Results") : out.index("## Results")] = [
            "## Notes",
            "",
            *[f"- {_one_line(t)}" for t in report["notes"]],
            "",
        ]
    if report.get("sources"):
        out += ["## Where the figures come from", "", *[f"- {_one_line(t)}" for t in report["sources"]], ""]
    checks = _check_lines(report)
    if checks:
        out += ["## Checks", "", *[f"- {text}" for text, _ in checks], ""]
    not_ok = _not_ok(report)
    if not_ok:
        out += ["## Failed and skipped", ""]
        out += [f"- **{name}** {status}: {reason}" for name, status, reason in not_ok]
        out.append("")
    if plots:
        out += ["## Plots", ""]
        scatter, bars = accuracy_points(report), latency_bars_data(report)
        captions = {
            SCATTER_NAME: (
                f"p50 latency at batch {scatter['batch']} against {scatter['ylabel']}; the dashed step line is "
                "the Pareto front (nothing else is both faster and more accurate).",
                scatter["skipped"],
            ),
            BARS_NAME: (
                f"p50 latency at batch {bars['batch']}, fastest first, coloured by precision; black whiskers: "
                f"the {_ci_label(report)} of the median; grey diamond and thin line: mean ± std.",
                bars["skipped"],
            ),
        }
        for name in plots:
            caption, skipped = captions.get(name, ("", []))
            out += [f"![{Path(name).stem.replace('_', ' ')}]({name})", ""]
            text = " ".join(x for x in (caption, _plot_note(skipped)) if x)
            if text:
                out += [text, ""]
    return "\n".join(out)


# ---------------------------------------------------------------- terminal


def compact_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]], list[str]]:
    """The terminal's table: header, one line per row x batch size, and each line's status (for colour).

    Name, precision, size, batch, p50 with its interval, img/s, top-1, agreement (and the user's
    checks when there are some): what fits 120 columns. A row that did not run says its status in
    the p50 cell; the reasons, and everything else, are in ``report.md``.
    """
    rows = report.get("rows") or []
    checked = isinstance(report.get("checks"), dict)
    header = ["name", "precision", "MB", "batch", f"p50 ms [{_ci_label(report)}]", "img/s", "top-1 %", "agree %"]
    header += ["checks"] if checked else []
    lines, states = [], []
    for row in rows:
        status = str(row.get("status") or "unknown")
        verdict = ("ok" if not row.get("checks") else "FAIL") if status == "ok" else "-"
        for i, (batch, s) in enumerate(_latency_items(row) or [(None, {})]):
            first = i == 0
            line = [
                str(row.get("name")) if first else "",
                str(row.get("precision") or "-") if first else "",
                _fmt_mb(row.get("file_bytes")) if first else "",
                "-" if batch is None else str(batch),
                _p50_ci(s) if status == "ok" else status,
                _fmt_ips(s.get("throughput_ips")),
                _fmt(row.get("top1"), 2) if first else "",
                _fmt(row.get("agreement"), 1, 100.0) if first else "",
            ]
            lines.append(line + ([verdict if first else ""] if checked else []))
            states.append(status if first else "ok")
    return header, lines, states


@_document
def print_table(report: Report | dict[str, Any], console: Any = None) -> None:
    """The compact results table on the terminal (rich), then the peak line, the user's checks and the
    failed/skipped reasons. The full table is in ``report.md``."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    header, lines, states = compact_table(report)
    t = Table(title=escape(_title(report)), title_justify="left")
    for h in header:
        left = h in ("name", "precision")
        t.add_column(escape(h), justify="left" if left else "right", no_wrap=not left, overflow="fold")
    for i, (line, state) in enumerate(zip(lines, states, strict=True)):
        if line[0] and i:
            t.add_section()
        failed_check = "checks" in header and line[-1] == "FAIL"
        style = "red" if state == "failed" or failed_check else "yellow" if state != "ok" else None
        t.add_row(*(escape(c) for c in line), style=style)
    if console is None:
        console = Console()
        if not console.is_terminal:  # piped: the width the table is made for, not squeezed into 80 columns
            console = Console(width=120)
    console.print(t)
    for i, text in enumerate(verdict_lines(report)):  # which file to ship, first of what follows the table
        console.print(f"[bold green]{escape(text)}[/bold green]" if i == 0 else escape(text))
    for text in report.get("notes") or []:  # an int8 row slower than its float sibling, beside the table
        console.print(f"[yellow]note: {escape(text)}[/yellow]")
    console.print(escape(_peak_line(report)))
    for text in report.get("sources") or []:
        console.print(f"[dim]{escape(text)}[/dim]")
    for text, passed in _check_lines(report):
        color = "green" if passed else "red"
        console.print(f"[{color}]{escape(text)}[/{color}]")
    for name, status, reason in _not_ok(report):
        console.print(f"[yellow]{escape(name)} {status}:[/yellow] {escape(reason)}")
    console.print(f"[dim]the full table: {MD_NAME}[/dim]")


# ---------------------------------------------------------------- plots


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure  # Agg canvas by default: headless, no pyplot state

    return Figure(figsize=(width, height), dpi=120, layout="constrained")


def _caption(fig: Any, text: str) -> None:
    """A note along the bottom of the image; the layout keeps the axes clear of it."""
    if not text:
        return
    lines = textwrap.wrap(text, 125)
    height = (0.1 + 0.16 * len(lines)) / fig.get_figheight()  # 8 pt lines, in figure fraction
    fig.text(0.01, 0.01, "\n".join(lines), fontsize=8, va="bottom", ha="left")
    fig.get_layout_engine().set(rect=(0, height, 1, 1 - height))


def _nothing(ax: Any, title: str, why: str, skipped: Sequence[tuple[str, str]]) -> None:
    ax.set_axis_off()
    ax.set_title(title)
    lines = [f"nothing to plot: {why}"]
    lines += [f"{n}: {_cut(w, _PLOT_REASON_CHARS)}" for n, w in skipped[:20]]
    if len(skipped) > 20:
        lines.append(f"... and {len(skipped) - 20} more")
    ax.text(0.5, 0.5, "\n".join(lines), ha="center", va="center", transform=ax.transAxes, fontsize=10)


def _short_note(skipped: Sequence[tuple[str, str]]) -> str:
    return _plot_note([(n, _cut(w, _PLOT_REASON_CHARS)) for n, w in skipped])


def _text_box(px: float, py: float, dx: float, dy: float, w: float, h: float) -> tuple[float, float, float, float]:
    """The box of a label offset by (dx, dy) from (px, py): right of the point when dx > 0, else left of it."""
    left = px + dx if dx > 0 else px + dx - w
    return (left, py + dy, left + w, py + dy + h)


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _label_points(ax: Any, points: Sequence[tuple[str, float, float]], fontsize: float = 8) -> None:
    """Name each point, trying right, left, below and above it until the label overlaps no point or label.

    Greedy in order of latency, on estimated text boxes in display points: good enough for the handful of
    artifacts a report holds. A label that had to move away from its point gets a thin leader line.
    """
    ax.autoscale_view()
    to_pt = 72.0 / ax.figure.dpi
    where = [(px * to_pt, py * to_pt) for px, py in ax.transData.transform([(x, y) for _, x, y in points])]
    placed = [(px - 5, py - 5, px + 5, py + 5) for px, py in where]  # the markers themselves
    candidates = [(dx, dy) for dy in (4, -12, 14, -22, 24, -32) for dx in (6, -6)]
    order = sorted(range(len(points)), key=lambda i: (points[i][1], -points[i][2]))
    for i in order:
        name, (px, py) = points[i][0], where[i]
        width, height = 0.62 * fontsize * len(name) + 4, fontsize + 3
        boxes = [(c, _text_box(px, py, *c, width, height)) for c in candidates]
        (dx, dy), box = next((cb for cb in boxes if not any(_overlap(cb[1], o) for o in placed)), boxes[0])
        placed.append(box)
        leader = {"arrowstyle": "-", "lw": 0.5, "color": "gray"} if abs(dy) > 4 else None
        ax.annotate(
            name,
            points[i][1:],
            xytext=(dx, dy),
            textcoords="offset points",
            fontsize=fontsize,
            ha="left" if dx > 0 else "right",
            arrowprops=leader,
        )


@_document
def plot_latency_vs_accuracy(report: Report | dict[str, Any], path: str | Path) -> Path:
    """Scatter of p50 latency (smallest batch) against accuracy, each point labelled, Pareto front stepped."""
    from matplotlib.lines import Line2D

    data = accuracy_points(report)
    model = (report.get("model") or {}).get("name") or "model"
    pts = data["points"]
    fig = _figure(10, 6)
    ax = fig.add_subplot()
    title = f"{model}: latency vs accuracy (batch {data['batch']})"
    if not pts:
        _nothing(ax, title, f"no row has both a latency at batch {data['batch']} and an accuracy", data["skipped"])
        fig.savefig(path)
        return Path(path)
    for p in pts:
        ax.scatter(
            p["latency"],
            p["accuracy"],
            color=PRECISION_COLORS.get(p["precision"], "tab:gray"),
            marker=DEVICE_MARKERS.get(p["device"], "^"),
            s=45,
            zorder=3,
        )
    front = pareto_front((p["name"], p["latency"], p["accuracy"]) for p in pts)
    by_name = {p["name"]: p for p in pts}
    fx = [by_name[n]["latency"] for n in front]
    fy = [by_name[n]["accuracy"] for n in front]
    ax.step(fx, fy, where="post", color="black", linestyle="--", linewidth=1, zorder=2)
    ax.scatter(fx, fy, s=160, facecolors="none", edgecolors="black", linewidths=1.2, zorder=4)
    lats = [p["latency"] for p in pts]
    log = min(lats) > 0 and max(lats) / min(lats) > 20
    if log:
        from matplotlib.ticker import FuncFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.margins(x=0.08, y=0.08)
    _label_points(ax, [(p["name"], p["latency"], p["accuracy"]) for p in pts])
    ax.set_xlabel(f"p50 latency at batch {data['batch']} (ms{', log scale' if log else ''}) — lower is better")
    ax.set_ylabel(f"{data['ylabel']} — higher is better")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    precisions = sorted({p["precision"] for p in pts}, key=str)
    devices = sorted({p["device"] for p in pts}, key=str)
    handles = [
        Line2D([], [], color=PRECISION_COLORS.get(pr, "tab:gray"), marker="o", linestyle="", label=str(pr))
        for pr in precisions
    ]
    if len(devices) > 1:
        handles += [
            Line2D([], [], color="gray", marker=DEVICE_MARKERS.get(d, "^"), linestyle="", label=str(d)) for d in devices
        ]
    handles.append(
        Line2D([], [], color="black", linestyle="--", marker="o", markerfacecolor="none", label="Pareto front")
    )
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)  # outside: never on a point
    _caption(fig, _short_note(data["skipped"]))
    fig.savefig(path)
    return Path(path)


@_document
def plot_latency_bars(report: Report | dict[str, Any], path: str | Path) -> Path:
    """Horizontal p50 bars (smallest batch), fastest on top, CI whiskers and mean +- std markers."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    data = latency_bars_data(report)
    model = (report.get("model") or {}).get("name") or "model"
    bars = data["bars"]
    title = f"{model}: p50 latency at batch {data['batch']}"
    fig = _figure(10, max(3.0, 1.8 + 0.45 * len(bars)))
    ax = fig.add_subplot()
    if not bars:
        _nothing(ax, title, f"no row has a latency at batch {data['batch']}", data["skipped"])
        fig.savefig(path)
        return Path(path)
    ys = list(range(len(bars)))
    p50 = [b["p50"] for b in bars]
    lo = [max(0.0, b["p50"] - b["ci"][0]) if b["ci"] else 0.0 for b in bars]
    hi = [max(0.0, b["ci"][1] - b["p50"]) if b["ci"] else 0.0 for b in bars]
    colors = [PRECISION_COLORS.get(b["precision"], "tab:gray") for b in bars]
    ax.barh(ys, p50, height=0.6, color=colors, xerr=[lo, hi], error_kw={"capsize": 3, "ecolor": "black", "lw": 1})
    right = [p + h for p, h in zip(p50, hi, strict=True)]
    for y, b in enumerate(bars):
        if b["mean"] is not None:
            std = b["std"] or 0.0
            ax.errorbar(b["mean"], y + 0.18, xerr=std, fmt="D", ms=4, color="dimgray", capsize=2, lw=0.8, zorder=3)
            right[y] = max(right[y], b["mean"] + std)
    span = max(right) or 1.0
    for y, (b, r) in enumerate(zip(bars, right, strict=True)):
        ax.text(r + 0.01 * span, y, f"{fmt_ms(b['p50'])} ms", va="center", fontsize=8)
    ax.set_xlim(0, span * 1.18)
    ax.set_yticks(ys, [b["name"] for b in bars], fontsize=9)
    ax.invert_yaxis()  # fastest on top
    ax.set_xlabel(f"p50 latency at batch {data['batch']} (ms)")
    ax.set_title(title)
    ax.grid(True, axis="x", alpha=0.3)
    precisions = sorted({b["precision"] for b in bars}, key=str)
    handles = [Patch(color=PRECISION_COLORS.get(p, "tab:gray"), label=str(p)) for p in precisions]
    handles += [
        Line2D([], [], color="black", marker="|", linestyle="-", label=f"{_ci_label(report)} of median"),
        Line2D([], [], color="dimgray", marker="D", ms=4, linestyle="-", lw=0.8, label="mean ± std"),
    ]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)  # outside: never on a bar
    _caption(fig, _short_note(data["skipped"]))
    fig.savefig(path)
    return Path(path)
