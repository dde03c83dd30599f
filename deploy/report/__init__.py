"""The report writer of the latency profiler: one report in, its files out, in one of two views.

The profiler (:mod:`deploy.profiler`) measures; this package only presents. It works from the report alone
(a :class:`~deploy.profiler.schema.Report` or its JSON dict) so a saved ``report.json`` can be re-rendered
later (``write_report(read_report(path), out_dir)``) and so the writers can be tested without measuring.

:func:`write_report` writes ``report.json``, ``report.csv``, ``report.md`` and two PNGs. A report of one model
gets the single-model view (the full results table, ``latency_vs_accuracy.png``, ``latency_bars.png``); a
comparison of several models (:attr:`Report.is_comparison <deploy.profiler.schema.Report.is_comparison>`) gets the
comparison view (a models table, one line per (model, format) with the batch sizes side by side,
``latency_vs_macs.png``, ``accuracy_vs_latency.png``). Both start with the verdict: which file to ship.

Every row appears in every output whatever its status: a failed or skipped row is in the JSON, has one CSV
line with empty latency cells and its status and reason, a table line saying why, and a "not plotted" note
under each plot. Missing numbers (``None``) print as ``-``, never as a crash.

Modules: :mod:`~deploy.report.text` (file names, reading the document, the text of numbers),
:mod:`~deploy.report.columns` (every table column, declared once), :mod:`~deploy.report.verdict`,
:mod:`~deploy.report.points` (what each plot shows), :mod:`~deploy.report.plots` (matplotlib, both views),
:mod:`~deploy.report.markdown` (one model's ``report.md``), :mod:`~deploy.report.comparison` (a comparison's),
:mod:`~deploy.report.terminal` (the compact table), :mod:`~deploy.report.files` (write and read the files).
"""

from __future__ import annotations

from .columns import Column
from .comparison import comparison_table, render_comparison
from .files import CSV_FIELDS, LATENCY_FIELDS, csv_rows, read_csv, read_report, write_csv, write_report
from .markdown import render_markdown, table
from .plots import (
    DEVICE_MARKERS,
    PRECISION_COLORS,
    plot_accuracy_vs_latency,
    plot_latency_bars,
    plot_latency_vs_accuracy,
    plot_latency_vs_macs,
)
from .points import accuracy_points, comparison_points, family, latency_bars_data, pareto_front
from .terminal import compact_table, print_table
from .text import (
    BARS_NAME,
    CSV_NAME,
    JSON_NAME,
    MACS_NAME,
    MD_NAME,
    PARETO_NAME,
    SCATTER_NAME,
    as_dict,
    batch_sizes,
    fmt_ms,
    is_comparison,
)
from .verdict import verdict_lines, verdict_markdown

__all__ = [
    "BARS_NAME",
    "CSV_FIELDS",
    "CSV_NAME",
    "DEVICE_MARKERS",
    "JSON_NAME",
    "LATENCY_FIELDS",
    "MACS_NAME",
    "MD_NAME",
    "PARETO_NAME",
    "PRECISION_COLORS",
    "SCATTER_NAME",
    "Column",
    "accuracy_points",
    "as_dict",
    "batch_sizes",
    "compact_table",
    "comparison_points",
    "comparison_table",
    "csv_rows",
    "family",
    "fmt_ms",
    "is_comparison",
    "latency_bars_data",
    "pareto_front",
    "plot_accuracy_vs_latency",
    "plot_latency_bars",
    "plot_latency_vs_accuracy",
    "plot_latency_vs_macs",
    "print_table",
    "read_csv",
    "read_report",
    "render_comparison",
    "render_markdown",
    "table",
    "verdict_lines",
    "verdict_markdown",
    "write_csv",
    "write_report",
]
