"""The report on the terminal (rich): the compact table, the verdict, the notes, the peak line, the checks, the
failed and skipped rows. The full table is in ``report.md``."""

from __future__ import annotations

from typing import Any

from ..profiler.schema import Report
from .columns import P50, TERMINAL, Column, row_lines
from .text import MD_NAME, check_lines, ci_label, document, not_ok, peak_line, title
from .verdict import verdict_lines


def compact_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]], list[str]]:
    """The terminal's table: header, one line per row x batch size, and each line's status (for colour).

    Name, precision, size, batch, p50 with its interval, img/s, top-1, agreement (and the user's
    checks when there are some): what fits 120 columns. A row that did not run says its status in
    the p50 cell; the reasons, and everything else, are in ``report.md``.
    """
    checked = isinstance(report.get("checks"), dict)
    header = [c.title(ci_label(report), short=True) for c in TERMINAL] + (["checks"] if checked else [])
    lines, states = [], []
    for row in report.get("rows") or []:
        status = str(row.get("status") or "unknown")
        verdict = ("ok" if not row.get("checks") else "FAIL") if status == "ok" else "-"

        def cell(c: Column, source: dict[str, Any], status: str = status) -> str:
            return status if c is P50 and status != "ok" else c.cell(source)

        for i, line in enumerate(row_lines(row, TERMINAL, cell)):
            lines.append(line + ([verdict if i == 0 else ""] if checked else []))
            states.append(status if i == 0 else "ok")
    return header, lines, states


@document
def print_table(report: Report | dict[str, Any], console: Any = None) -> None:
    """The compact results table on the terminal (rich), then the peak line, the user's checks and the
    failed/skipped reasons. The full table is in ``report.md``."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    header, lines, states = compact_table(report)
    t = Table(title=escape(title(report)), title_justify="left")
    lefts = [c.left for c in TERMINAL] + [False] * (len(header) - len(TERMINAL))  # the checks column: right
    for h, left in zip(header, lefts, strict=True):
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
    console.print(escape(peak_line(report)))
    for text in report.get("sources") or []:
        console.print(f"[dim]{escape(text)}[/dim]")
    for text, passed in check_lines(report):
        color = "green" if passed else "red"
        console.print(f"[{color}]{escape(text)}[/{color}]")
    for name, status, reason in not_ok(report):
        console.print(f"[yellow]{escape(name)} {status}:[/yellow] {escape(reason)}")
    console.print(f"[dim]the full table: {MD_NAME}[/dim]")
