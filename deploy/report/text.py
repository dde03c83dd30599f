"""What every view of a report shares: the file names, reading the report's document, and the text of its numbers.

Every writer works from the JSON document of a report (:func:`as_dict`; :func:`document` lets a writer take a
:class:`~deploy.profiler.schema.Report` too). Missing numbers (``None``, non-finite) print as ``-``, never as a
crash. Nothing here imports matplotlib or rich.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

from ..profiler.schema import Report

JSON_NAME, CSV_NAME, MD_NAME = "report.json", "report.csv", "report.md"
SCATTER_NAME, BARS_NAME = "latency_vs_accuracy.png", "latency_bars.png"  # a single model's plots
MACS_NAME, PARETO_NAME = "latency_vs_macs.png", "accuracy_vs_latency.png"  # a comparison's plots
TABLE_REASON_CHARS = 80  # longer reasons are cut in table cells; the full text is listed below the table


# ---------------------------------------------------------------- the document


def as_dict(report: Report | dict[str, Any]) -> dict[str, Any]:
    """The JSON document of a report (a dict passes through)."""
    return report.to_dict() if isinstance(report, Report) else report


def document(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Let a writer that reads the JSON document take a :class:`Report` too."""

    @functools.wraps(fn)
    def wrapper(report: Report | dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        return fn(as_dict(report), *args, **kwargs)

    return wrapper


def is_comparison(report: Report | dict[str, Any]) -> bool:
    """Whether ``report`` compares several models: :attr:`Report.is_comparison` (its ``model`` lists ``models``),
    also for a report's JSON document."""
    if isinstance(report, Report):
        return report.is_comparison
    return Report(model=report.get("model") or {}).is_comparison


def finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def latency_items(row: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """The row's ``latency`` as (batch, stats) sorted by batch; keys may be str (JSON) or int (in memory)."""
    lat = row.get("latency")
    items = []
    for k, stats in lat.items() if isinstance(lat, dict) else []:
        try:
            items.append((int(k), stats if isinstance(stats, dict) else {}))
        except (TypeError, ValueError):
            continue
    return sorted(items, key=lambda kv: kv[0])


def stats(row: dict[str, Any], batch: int | None) -> dict[str, Any]:
    """The row's latency stats at ``batch`` (empty when it has none)."""
    return next((s for b, s in latency_items(row) if b == batch), {})


def ci(stats: dict[str, Any]) -> tuple[float, float] | None:
    """The (low, high) confidence interval of the median, or None when it is missing or malformed."""
    interval = stats.get("p50_ci_ms")
    if isinstance(interval, (list, tuple)) and len(interval) == 2 and all(finite(c) for c in interval):
        return (interval[0], interval[1])
    return None


@document
def batch_sizes(report: Report | dict[str, Any]) -> list[int]:
    """The batch sizes of the settings, plus any a row measured that the settings do not name."""
    sizes = {int(b) for b in (report.get("settings") or {}).get("batch_sizes") or [] if finite(b)}
    for row in report.get("rows") or []:
        sizes.update(b for b, _ in latency_items(row))
    return sorted(sizes)


def ci_label(report: dict[str, Any]) -> str:
    """The interval of the median the report measured, as a column says it: ``95% CI``."""
    for row in report.get("rows") or []:
        for _, s in latency_items(row):
            if finite(s.get("ci_level")):
                return f"{100 * s['ci_level']:g}% CI"
    return "95% CI"


# ---------------------------------------------------------------- numbers


def one_line(text: Any) -> str:
    return " ".join(str(text).split())


def cut(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1].rstrip() + "…"


def ms_digits(v: float) -> int:
    return 3 if abs(v) < 1 else 2 if abs(v) < 100 else 1


def fmt_ms(v: Any, digits: int | None = None) -> str:
    """Milliseconds: 3 decimals below 1 ms, 2 below 100 ms, 1 above (or ``digits``)."""
    if not finite(v):
        return "-"
    return f"{v:.{ms_digits(v) if digits is None else digits}f}"


def fmt(v: Any, digits: int = 1, scale: float = 1.0) -> str:
    return f"{v * scale:.{digits}f}" if finite(v) else "-"


def fmt_s(v: Any) -> str:
    return "-" if not finite(v) else f"{v:.3f}" if abs(v) < 1 else f"{v:.2f}"


def fmt_mb(nbytes: Any) -> str:
    return fmt(nbytes, 2, 1e-6)


def fmt_ips(v: Any) -> str:
    return "-" if not finite(v) else f"{v:.1f}" if abs(v) < 1000 else f"{v:.0f}"


def times(x: Any) -> str:
    return f"{x:.2f}x" if finite(x) else "-"


def p50_ci(s: dict[str, Any]) -> str:
    """p50 and its interval: ``9.70 [9.51, 9.89]``, the interval to the p50's precision."""
    if not finite(s.get("p50_ms")):
        return "-"
    interval = ci(s)
    if interval:
        digits = ms_digits(s["p50_ms"])
        return f"{fmt_ms(s['p50_ms'])} [{fmt_ms(interval[0], digits)}, {fmt_ms(interval[1], digits)}]"
    return fmt_ms(s["p50_ms"])


def mean_std(s: dict[str, Any]) -> str:
    if not finite(s.get("mean_ms")):
        return "-"
    if not finite(s.get("std_ms")):
        return fmt_ms(s["mean_ms"])
    digits = ms_digits(s["mean_ms"])  # the spread to the mean's precision: "9.99 ± 0.48"
    return f"{fmt_ms(s['mean_ms'])} ± {fmt_ms(s['std_ms'], digits)}"


def status_cell(row: dict[str, Any], reason: bool = True) -> str:
    """The row's status; a failed or skipped one's also says why (cut to :data:`TABLE_REASON_CHARS`)."""
    status = str(row.get("status") or "unknown")
    if status == "ok" or not row.get("reason") or not reason:
        return status
    return f"{status}: {cut(one_line(row['reason']), TABLE_REASON_CHARS)}"


# ---------------------------------------------------------------- sentences both views and the terminal print


def _peak_parts(peak: Any) -> list[str]:
    if not isinstance(peak, dict):
        return []
    if peak.get("error"):
        return [f"not measured ({one_line(peak['error'])})"]
    parts = []
    for prec, p in peak.items():
        if not isinstance(p, dict) or not finite(p.get("gmacs_per_s")):
            parts.append(f"{prec} not measured")
            continue
        how = ", ".join(str(p[k]) for k in ("op", "shape") if p.get(k))
        parts.append(f"{prec} {p['gmacs_per_s']:.1f} GMAC/s" + (f" ({how})" if how else ""))
    return parts


def peak_line(report: dict[str, Any]) -> str:
    """The measured peak GEMM rates (the yardstick of "% of peak"); ``peak_cuda`` too when the report has one."""
    cpu, cuda = _peak_parts(report.get("peak")), _peak_parts(report.get("peak_cuda"))
    line = "Peak GEMM rate measured on this machine: " + ("; ".join(cpu) if cpu else "not measured")
    return line + (f". CUDA: {'; '.join(cuda)}." if cuda else ".")


def check_lines(report: dict[str, Any]) -> list[tuple[str, bool]]:
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
    return out + [(f"{one_line(f)}", False) for f in checks.get("failures") or []]


def not_ok(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(name, status, reason) of every row that did not run."""
    return [
        (str(r.get("name")), str(r.get("status") or "unknown"), one_line(r.get("reason") or "no reason given"))
        for r in report.get("rows") or []
        if r.get("status") != "ok"
    ]


def title(report: dict[str, Any]) -> str:
    """A single model's report title (``report.md``, the terminal table)."""
    model = (report.get("model") or {}).get("name") or "model"
    machine = report.get("machine") or {}
    where = machine.get("cpu") or "unknown CPU"
    if machine.get("gpu"):
        where += f" + {machine['gpu']}"
    return f"Latency report: {model} on {where}"


def plot_note(skipped: Sequence[tuple[str, str]]) -> str:
    """``not plotted: name (why); ...`` under a plot, or nothing when every row is in it."""
    return "not plotted: " + "; ".join(f"{n} ({why})" for n, why in skipped) if skipped else ""


# ---------------------------------------------------------------- markdown


def md_cell(text: Any) -> str:
    return one_line(text).replace("|", "\\|")


def md_table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table: the header, its rule, one line per cell line."""
    out = ["| " + " | ".join(md_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(md_cell(c) for c in line) + " |" for line in lines]


def code(text: str) -> str:
    """Inline code; a text holding a backtick needs the double-backtick form."""
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def first_value(*values: Any) -> Any:
    """The first value that is not None (or empty), else "-"."""
    return next((v for v in values if v is not None and v != ""), "-")
