"""The columns of the report's tables, each declared once: its header, the field it reads, how it prints.

The single model's results table (:data:`RESULTS`, ``report.md``), the comparison's (:data:`COMPARISON`) and the
terminal's compact table (:data:`TERMINAL`) are tuples of these :class:`Column` s; where they differ (which columns,
the terminal's narrower headers, a comparison's batch sizes side by side) the tuple or the view says so. A column
reads the row, or (``per_batch``) one batch size's latency stats of the row (with its ``batch``). The CSV holds
the raw fields instead (:data:`deploy.report.files.CSV_FIELDS`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .text import fmt, fmt_ips, fmt_mb, fmt_ms, fmt_s, latency_items, mean_std, p50_ci, status_cell


@dataclass(frozen=True)
class Column:
    """One column of a results table."""

    header: str  # may hold {ci} (the report's interval of the median) and {b} (" b8": batch sizes side by side)
    key: str | None  # the field the cell shows (the row's, or per_batch the stats'); None: the cell reads them all
    fmt: Callable[[Any], str]  # the field's value (key None: the whole row or stats) -> the cell's text
    per_batch: bool = False  # a batch size's latency stats, not the row's own fields
    short: str | None = None  # the terminal's narrower header
    left: bool = False  # left-aligned on the terminal

    def title(self, ci: str = "", batch: int | None = None, short: bool = False) -> str:
        text = (self.short or self.header) if short else self.header
        return text.format(ci=ci, b="" if batch is None else f" b{batch}")

    def cell(self, source: dict[str, Any]) -> str:
        return self.fmt(source if self.key is None else source.get(self.key))


def _text(v: Any) -> str:
    return str(v)


def _or_dash(v: Any) -> str:
    return str(v or "-")


def _count(v: Any) -> str:
    return "-" if v is None else str(v)


def _one(v: Any) -> str:
    return fmt(v, 1)


def _two(v: Any) -> str:
    return fmt(v, 2)


def _percent(v: Any) -> str:
    return fmt(v, 1, 100.0)


NAME = Column("name", "name", _text, left=True)
MODEL = Column("model", "model", _text, left=True)
FORMAT = Column("format", "format", _or_dash, left=True)
PRECISION = Column("precision", "precision", _or_dash, left=True)
DEVICE = Column("device", "device", _or_dash, left=True)
STATUS = Column("status", None, status_cell)  # a failed/skipped row's cell says why
PARAMS = Column("params M", "params", lambda v: fmt(v, 2, 1e-6))
GMACS = Column("GMACs", "macs", lambda v: fmt(v, 2, 1e-9))
SIZE = Column("size MB", "file_bytes", fmt_mb, short="MB")
LOAD = Column("load s", "load_s", fmt_s)
FIRST = Column("first ms", "first_inference_ms", fmt_ms)
BATCH = Column("batch", "batch", _count, per_batch=True)
RUNS = Column("runs", "runs", _count, per_batch=True)
P50 = Column("p50 ms{b} [{ci}]", None, p50_ci, per_batch=True)
P90 = Column("p90 ms", "p90_ms", fmt_ms, per_batch=True)
P99 = Column("p99 ms", "p99_ms", fmt_ms, per_batch=True)
MEAN_STD = Column("mean ± std ms", None, mean_std, per_batch=True)
IPS = Column("img/s{b}", "throughput_ips", fmt_ips, per_batch=True)
PEAK_RSS = Column("peak RSS MB", "peak_rss_mb", _one)
CUDA_PEAK = Column("CUDA peak MB", "cuda_peak_mb", _one)
GMACS_PER_S = Column("GMAC/s", "gmacs_per_s", _one)
PEAK_SHARE = Column("% of peak", "peak_share", _percent)
TOP1 = Column("top-1 %", "top1", _two)
TOP5 = Column("top-5 %", "top5", _two)
AGREEMENT = Column("agreement %", "agreement", _percent, short="agree %")

# report.md of one model: one line per row x batch size (CUDA peak only when some row has one)
RESULTS = (NAME, FORMAT, PRECISION, DEVICE, STATUS, SIZE, LOAD, FIRST, BATCH, RUNS, P50, P90, P99, MEAN_STD, IPS,
           PEAK_RSS, CUDA_PEAK, GMACS_PER_S, PEAK_SHARE, TOP1, TOP5, AGREEMENT)  # fmt: skip
# report.md of a comparison: one line per row, the per-batch columns repeated side by side for each batch size
COMPARISON = (MODEL, FORMAT, PRECISION, STATUS, PARAMS, GMACS, SIZE, P50, IPS, PEAK_RSS, PEAK_SHARE, TOP1, AGREEMENT)
# the terminal: what fits 120 columns (short headers; the checks column is the terminal's own)
TERMINAL = (NAME, PRECISION, SIZE, BATCH, P50, IPS, TOP1, AGREEMENT)

Cell = Callable[[Column, dict[str, Any]], str]


def row_lines(row: dict[str, Any], columns: Sequence[Column], cell: Cell = Column.cell) -> list[list[str]]:
    """One line per batch size the row measured (one line when none): the per-batch cells on every line, the
    row's own cells on its first line only. ``cell(column, source)`` gives a cell's text."""
    out = []
    for i, (batch, s) in enumerate(latency_items(row) or [(None, {})]):
        at = {**s, "batch": batch}
        out.append([cell(c, at) if c.per_batch else cell(c, row) if i == 0 else "" for c in columns])
    return out


def side_by_side(columns: Sequence[Column], batches: Sequence[int]) -> list[tuple[Column, int | None]]:
    """The columns of a one-line-per-row table: the per-batch block (where its first column stands) once per
    batch size, as (column, batch); the row's own columns with batch None."""
    block = [c for c in columns if c.per_batch]
    out: list[tuple[Column, int | None]] = []
    for c in columns:
        if not c.per_batch:
            out.append((c, None))
        elif c is block[0]:
            out += [(d, b) for b in batches for d in block]
    return out
