"""``report.md`` of one model: the verdict first, machine and settings, the notes, the full results table, the
peak GEMM line, the user's checks, failed and skipped rows, and both plots embedded by relative link.

Every row is in the table whatever its status: a failed or skipped one has a line saying why.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..profiler.schema import Report
from .columns import CUDA_PEAK, RESULTS, STATUS, Column, row_lines
from .points import accuracy_points, latency_bars_data
from .text import (
    BARS_NAME,
    SCATTER_NAME,
    check_lines,
    ci_label,
    code,
    document,
    finite,
    first_value,
    md_table,
    not_ok,
    one_line,
    peak_line,
    plot_note,
    status_cell,
    title,
)
from .verdict import verdict_markdown


@document
def table(report: Report | dict[str, Any], reasons: bool = True) -> tuple[list[str], list[list[str]], list[bool]]:
    """Header, cell lines and, per line, whether it starts a new row (one line per row x batch size).

    With ``reasons`` a failed/skipped row's status cell also says why (cut to 80 characters).

    Row-wide cells (size, load, memory, accuracy...) are filled on a row's first line only; its further
    lines repeat just the per-batch latency cells. A row without latency has a single line.
    """
    rows = report.get("rows") or []
    cuda_mem = any(finite(r.get("cuda_peak_mb")) for r in rows)
    columns = [c for c in RESULTS if cuda_mem or c is not CUDA_PEAK]
    header = [c.title(ci_label(report)) for c in columns]

    def cell(c: Column, source: dict[str, Any]) -> str:
        return status_cell(source, reasons) if c is STATUS else c.cell(source)

    lines, starts = [], []
    for row in rows:
        mine = row_lines(row, columns, cell)
        lines += mine
        starts += [i == 0 for i in range(len(mine))]
    return header, lines, starts


def machine_md(report: dict[str, Any]) -> list[str]:
    """``## Machine and settings``: CPU, GPU, OS, versions, the model, the timing settings, the data, the command."""
    m, s, mo = report.get("machine") or {}, report.get("settings") or {}, report.get("model") or {}
    v = first_value
    cores = f"{v(m.get('cores'))} physical cores, {v(m.get('logical_cpus'))} logical CPUs"
    versions = ", ".join(f"{k} {x}" for k, x in sorted((report.get("versions") or {}).items())) or "-"
    params = f"{mo['params'] / 1e6:.2f}M parameters" if finite(mo.get("params")) else "parameters unknown"
    macs = f"{mo['macs_per_image'] / 1e9:.3f} GMACs per image" if finite(mo.get("macs_per_image")) else ""
    batches = ", ".join(str(b) for b in s.get("batch_sizes") or []) or "-"
    data = f"{s['data']} ({v(s.get('images'))} images)" if s.get("data") else "none (no labelled images)"
    return [
        "## Machine and settings",
        "",
        f"- CPU: {v(m.get('cpu'))} ({cores}); threads used: {v(m.get('threads'), s.get('threads'))}",
        f"- GPU: {m.get('gpu') or 'none'}",
        f"- OS: {v(m.get('os'))}; Python {v(m.get('python'))}",
        f"- versions: {versions}",
        f"- model: {v(mo.get('name'))}, {v(mo.get('num_classes'))} classes, "
        + ", ".join(x for x in (params, macs) if x)
        + (f"; weights from {code(str(mo['source']))}" if mo.get("source") else "; random weights"),
        f"- batch sizes: {batches}; image size {v(s.get('img_size'))}; per measurement at least "
        f"{v(s.get('min_runs'))} runs and {v(s.get('duration_s'))} s after {v(s.get('warmup'))} warm-up runs, "
        f"{v(s.get('rounds'))} rounds",
        f"- accuracy data: {data}",
        *([f"- timing: {one_line(s['timing'])}"] if s.get("timing") else []),
        f"- command: {code(str(v(report.get('command'))))}",
        f"- created: {v(report.get('created'))}",
        "",
    ]


def _plots_md(report: dict[str, Any], plots: Sequence[str]) -> list[str]:
    scatter, bars = accuracy_points(report), latency_bars_data(report)
    captions = {
        SCATTER_NAME: (
            f"p50 latency at batch {scatter['batch']} against {scatter['ylabel']}; the dashed step line is "
            "the Pareto front (nothing else is both faster and more accurate).",
            scatter["skipped"],
        ),
        BARS_NAME: (
            f"p50 latency at batch {bars['batch']}, fastest first, coloured by precision; black whiskers: "
            f"the {ci_label(report)} of the median; grey diamond and thin line: mean ± std.",
            bars["skipped"],
        ),
    }
    out = ["## Plots", ""]
    for name in plots:
        caption, skipped = captions.get(name, ("", []))
        out += [f"![{Path(name).stem.replace('_', ' ')}]({name})", ""]
        text = " ".join(x for x in (caption, plot_note(skipped)) if x)
        if text:
            out += [text, ""]
    return out


@document
def render_markdown(report: Report | dict[str, Any], plots: Sequence[str] = (SCATTER_NAME, BARS_NAME)) -> str:
    """``report.md``: title, the verdict, machine and settings, the notes, the full results table, peak, the user's
    checks, failed rows, plots."""
    header, lines, _ = table(report)
    out = [f"# {title(report)}", "", *verdict_markdown(report), *machine_md(report)]
    if report.get("notes"):  # before anything else a reader could pick a row from
        out += ["## Notes", "", *[f"- {one_line(t)}" for t in report["notes"]], ""]
    out += ["## Results", "", *md_table(header, lines)]
    out += [
        "",
        f"One line per artifact and batch size. p50 with the {ci_label(report)} of the median; "
        "img/s = images per second at that batch size; peak RSS = peak resident memory of the process while the "
        "row ran; GMAC/s = model MACs per image x images/s, and % of peak relates it to the peak GEMM rate below "
        "for the row's precision; agreement = share of images whose top-1 class matches the fp32 model's.",
        "",
        peak_line(report),
        "",
    ]
    if report.get("sources"):
        out += ["## Where the figures come from", "", *[f"- {one_line(t)}" for t in report["sources"]], ""]
    checks = check_lines(report)
    if checks:
        out += ["## Checks", "", *[f"- {text}" for text, _ in checks], ""]
    failed = not_ok(report)
    if failed:
        out += ["## Failed and skipped", ""]
        out += [f"- **{name}** {status}: {reason}" for name, status, reason in failed]
        out.append("")
    if plots:
        out += _plots_md(report, plots)
    return "\n".join(out)
