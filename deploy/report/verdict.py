"""The verdict, first in every view: which file to ship and why, then the best row of each runtime."""

from __future__ import annotations

from typing import Any

from ..profiler.schema import Report
from .text import document, finite, fmt_ms, md_cell, times


@document
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
        f"{times(pick['speedup'])} the speed of {pick['baseline']} (fp32 eager) and {times(pick['size_ratio'])} "
        "its size"
        if pick.get("baseline")
        else "no fp32 torch row to compare with"
    )
    where = f" ({pick['file']})" if pick.get("file") else ""
    agree = f", agreement {100 * pick['agreement']:.1f}%" if finite(pick.get("agreement")) else ""
    lines = [
        f"ship {pick['row']}{where}: the fastest artifact that {verdict['rule']}, {fmt_ms(pick['p50_ms'])} ms p50 "
        f"at batch {batch}{agree}; {against}"
    ]
    for r in verdict.get("runtimes") or []:
        lines.append(
            f"best {r['runtime']} row: {r['row']} ({r['precision']}), {fmt_ms(r['p50_ms'])} ms, "
            f"{times(r['speedup'])} the speed of fp32 eager"
        )
    return lines


def verdict_markdown(report: Report | dict[str, Any]) -> list[str]:
    """``## Verdict`` and its lines, the first section of ``report.md`` in both views (nothing for a report
    without one)."""
    lines = verdict_lines(report)
    if not lines:
        return []
    return ["## Verdict", "", f"**{md_cell(lines[0])}**", "", *[f"- {md_cell(t)}" for t in lines[1:]], ""]
