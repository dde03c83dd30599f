"""``report.md`` of a comparison of several models (:func:`deploy.profiler.profile_folders`): the verdict first,
machine and settings, the models, one table over every (model, format, precision) with the batch sizes side by
side, failed/skipped/unverified rows, and the two plots (:mod:`deploy.report.plots`).

Its JSON and CSV are the single model's (:mod:`deploy.report.files`); :func:`deploy.report.write_report` writes
this view when :func:`deploy.report.is_comparison`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..profiler.schema import Report
from .columns import COMPARISON, GMACS, PARAMS, TOP1, side_by_side
from .markdown import machine_md
from .points import comparison_batches, comparison_points, models, top1_measured
from .text import MACS_NAME, PARETO_NAME, ci_label, document, md_table, not_ok, one_line, peak_line, stats
from .verdict import verdict_markdown


@document
def comparison_table(report: Report | dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and one line per (model, format, precision) row, the batch sizes side by side.

    Without a measured top-1 the top-1 column holds the model's published one, and says so in its header.
    """
    by_name, measured = models(report), top1_measured(report)
    columns = side_by_side(COMPARISON, comparison_batches(report))
    published = " (published)" if not measured else ""
    header = [c.title(ci_label(report), b) + (published if c is TOP1 else "") for c, b in columns]
    lines = []
    for r in report.get("rows") or []:
        m = by_name.get(str(r.get("model"))) or {}
        line = []
        for c, b in columns:
            if c is TOP1 and not measured:
                line.append(TOP1.fmt(m.get("published_top1")))
            else:
                line.append(c.cell(stats(r, b) if c.per_batch else r))
        lines.append(line)
    return header, lines


def _models_md(report: dict[str, Any]) -> list[str]:
    header = ["model", PARAMS.header, GMACS.header, "image size", f"published ImageNet {TOP1.header}", "source"]
    lines = [
        [
            str(m.get("name")),
            PARAMS.fmt(m.get("params")),
            GMACS.fmt(m.get("macs_per_image")),
            "x".join(str(s) for s in m.get("img_size") or []) or "-",
            TOP1.fmt(m.get("published_top1")),
            str(m.get("published_source") or "-"),
        ]
        for m in models(report).values()
    ]
    note = "Published top-1: what the authors measured with trained weights, not this run."
    return ["## Models", "", *md_table(header, lines), "", note, ""]


def _failed_md(report: dict[str, Any]) -> list[str]:
    failed = not_ok(report)
    rows = [r for r in report.get("rows") or [] if r.get("status") == "ok" and r.get("timed_only")]
    if not failed and not rows:
        return []
    out = ["## Failed, skipped and unverified", ""]
    out += [f"- **{name}** {status}: {reason}" for name, status, reason in failed]
    out += [f"- **{r.get('name')}** ok but unverified: {one_line(r.get('reason'))}" for r in rows]
    return [*out, ""]


@document
def render_comparison(report: Report | dict[str, Any], plots: Sequence[str] = (MACS_NAME, PARETO_NAME)) -> str:
    """``report.md`` of a comparison: the verdict, settings, models, one table over every (model, format),
    failures, plots."""
    header, lines = comparison_table(report)
    names = ", ".join(models(report))
    where = (report.get("machine") or {}).get("cpu") or "unknown CPU"
    out = [f"# Model comparison on {where}", "", f"Models: {names}.", "", *verdict_markdown(report)]
    out += [ln for ln in machine_md(report) if not ln.startswith("- model:")]
    out += _models_md(report)
    out += ["## Results", "", *md_table(header, lines)]
    out += [
        "",
        f"One line per (model, format, precision); every row timed interleaved with every other. p50 with the "
        f"{ci_label(report)} of the median; % of peak = model MACs x images/s at batch 1 over the measured peak "
        "GEMM rate of the row's precision; agreement = top-1 agreement with the same model's fp32 torch artifact.",
        "",
        peak_line(report),
        "",
        *_failed_md(report),
    ]
    if plots:
        pts = comparison_points(report)
        acc = "measured top-1" if pts["measured"] else "published ImageNet top-1 (not measured here)"
        captions = {
            MACS_NAME: f"p50 latency at batch {pts['batch']} against MACs per image, one panel per runtime, one "
            "line per model family.",
            PARETO_NAME: f"{acc} against p50 latency at batch {pts['batch']} for every (model, format) that ran; "
            "dashed: the Pareto front across models and formats.",
        }
        out += ["## Plots", ""]
        for name in plots:
            out += [f"![{Path(name).stem.replace('_', ' ')}]({name})", "", captions.get(name, ""), ""]
    return "\n".join(out)
