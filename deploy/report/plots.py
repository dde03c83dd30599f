"""Every plot of the report, both views: matplotlib's ``Figure`` on the Agg canvas (no pyplot, no global backend
switch), imported lazily so importing the package stays cheap. What a plot shows comes from
:mod:`deploy.report.points`; this module only draws it.

One model: ``latency_vs_accuracy.png`` -- p50 latency at the smallest batch size against top-1 (or, when no row
has a top-1, top-1 agreement with fp32 x 100), one labelled point per row, the Pareto front as a step line;
``latency_bars.png`` -- p50 at the smallest batch size per row, fastest first, coloured by precision; black
whiskers are the confidence interval of the median, the grey diamond and its thin line mean +- std. Both are
always written, also when no row can be plotted: the figure then says "nothing to plot" and why, so the links in
``report.md`` never break.

A comparison: ``latency_vs_macs.png`` -- one panel per runtime (format), p50 latency at the smallest batch against
the model's MACs, one line per model family: MACs are not latency, and this shows by how much, per runtime;
``accuracy_vs_latency.png`` -- every (model, format) that ran, its top-1 against its p50 latency, and the Pareto
front across models and formats. Top-1 is measured on the report's data when there is some, else the model's
*published* ImageNet top-1 (hollow markers, said in the axis label and the caption).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..profiler.schema import Report
from .points import accuracy_points, comparison_points, latency_bars_data, pareto_front, short_name
from .text import ci_label, cut, document, finite, fmt_ms, plot_note

PRECISION_COLORS = {"fp32": "tab:blue", "fp16": "tab:orange", "bf16": "tab:purple", "int8": "tab:green"}
DEVICE_MARKERS = {"cpu": "o", "cuda": "s"}
FAMILY_STYLE = {  # a comparison's model families: colour and marker
    "T2T-ViT": ("tab:red", "o"),
    "MobileNet": ("tab:blue", "s"),
    "EfficientNet": ("tab:green", "^"),
    "DeiT": ("tab:purple", "D"),
    "ResNet": ("tab:gray", "v"),
}
_PLOT_REASON_CHARS = 70


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
    lines += [f"{n}: {cut(w, _PLOT_REASON_CHARS)}" for n, w in skipped[:20]]
    if len(skipped) > 20:
        lines.append(f"... and {len(skipped) - 20} more")
    ax.text(0.5, 0.5, "\n".join(lines), ha="center", va="center", transform=ax.transAxes, fontsize=10)


def _short_note(skipped: Sequence[tuple[str, str]]) -> str:
    return plot_note([(n, cut(w, _PLOT_REASON_CHARS)) for n, w in skipped])


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


@document
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


@document
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
        Line2D([], [], color="black", marker="|", linestyle="-", label=f"{ci_label(report)} of median"),
        Line2D([], [], color="dimgray", marker="D", ms=4, linestyle="-", lw=0.8, label="mean ± std"),
    ]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)  # outside: never on a bar
    _caption(fig, _short_note(data["skipped"]))
    fig.savefig(path)
    return Path(path)


# ---------------------------------------------------------------- a comparison's plots


def _log_axes(ax: Any, xs: Sequence[float], ys: Sequence[float]) -> None:
    """Log scales with plain-number ticks: MACs and latencies of these models span more than a decade."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    for axis, values, setter in ((ax.xaxis, xs, ax.set_xscale), (ax.yaxis, ys, ax.set_yscale)):
        if values and min(values) > 0:
            setter("log")
            axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


@document
def plot_latency_vs_macs(report: Report | dict[str, Any], path: str | Path) -> Path:
    """One panel per format: p50 latency against GMACs, a line per model family, each point named."""
    data = comparison_points(report)
    pts = [p for p in data["points"] if finite(p["macs"])]
    formats = list(dict.fromkeys(p["format"] for p in pts)) or ["-"]
    cols = min(3, len(formats))
    rows = (len(formats) + cols - 1) // cols
    fig = _figure(5.2 * cols, 4.2 * rows + 0.6)
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True)  # runtimes compare across panels
    for i, fmt in enumerate(formats):
        ax = axes[i // cols][i % cols]
        mine = [p for p in pts if p["format"] == fmt]
        for fam in dict.fromkeys(p["family"] for p in mine):
            fp = sorted((p for p in mine if p["family"] == fam), key=lambda p: p["macs"])
            color, marker = FAMILY_STYLE.get(fam, ("tab:orange", "x"))
            ax.plot([p["macs"] / 1e9 for p in fp], [p["latency"] for p in fp], marker=marker, color=color, label=fam)
        _log_axes(ax, [p["macs"] / 1e9 for p in mine], [p["latency"] for p in mine])
        _label_points(ax, [(short_name(p["model"]), p["macs"] / 1e9, p["latency"]) for p in mine], fontsize=7)
        ax.set_title(f"{fmt} ({mine[0]['precision'] if mine else '-'})")
        ax.set_xlabel("GMACs per image (log)")
        ax.set_ylabel(f"p50 ms at batch {data['batch']} (log)")
        ax.grid(True, alpha=0.3)
        ax.margins(x=0.12, y=0.1)
        ax.tick_params(labelbottom=True, labelleft=True)  # shared axes hide inner tick labels; keep them
        if i == 0:
            ax.legend(fontsize=7, loc="upper left")
    for j in range(len(formats), rows * cols):
        axes[j // cols][j % cols].set_visible(False)
    fig.suptitle("Latency vs MACs per runtime: equal MACs, unequal latency")
    if data["skipped"]:
        _caption(fig, "not plotted: " + "; ".join(f"{n} ({why[:60]})" for n, why in data["skipped"]))
    fig.savefig(path)
    return Path(path)


@document
def plot_accuracy_vs_latency(report: Report | dict[str, Any], path: str | Path) -> Path:
    """Top-1 (measured, else published: hollow markers) against p50 latency, Pareto front across all rows."""
    from matplotlib.lines import Line2D

    data = comparison_points(report)
    pts = [p for p in data["points"] if p["top1"] is not None]
    fig = _figure(11, 6.5)
    ax = fig.add_subplot()
    fams = list(dict.fromkeys(p["family"] for p in pts))
    fmts = list(dict.fromkeys(p["format"] for p in pts))
    markers = ["o", "s", "^", "D", "v", "P", "X", "*", "h"]
    for p in pts:
        color = FAMILY_STYLE.get(p["family"], ("tab:orange", "x"))[0]
        marker = markers[fmts.index(p["format"]) % len(markers)]
        face = "none" if p["published"] else color
        ax.scatter(p["latency"], p["top1"], marker=marker, s=50, edgecolors=color, facecolors=face, zorder=3)
    front = pareto_front((p["name"], p["latency"], p["top1"]) for p in pts)
    by = {p["name"]: p for p in pts}
    ax.step([by[n]["latency"] for n in front], [by[n]["top1"] for n in front], where="post", color="black",
            linestyle="--", linewidth=1, zorder=2)  # fmt: skip
    if pts:
        ax.set_xscale("log")
        from matplotlib.ticker import FuncFormatter

        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.margins(x=0.12, y=0.05)  # room for the labels at the edges
    fastest = {}  # each model's fastest runtime, labelled too: every model can be found on the plot
    for p in sorted(pts, key=lambda p: p["latency"]):
        fastest.setdefault(p["model"], p["name"])
    named = list(dict.fromkeys([*front, *fastest.values()]))
    labels = [(f"{short_name(by[n]['model'])} {by[n]['format']}", by[n]["latency"], by[n]["top1"]) for n in named]
    _label_points(ax, labels)
    what = "measured top-1 %" if data["measured"] else "published ImageNet top-1 % (not measured here)"
    ax.set_xlabel(f"p50 latency at batch {data['batch']} (ms, log scale) — lower is better")
    ax.set_ylabel(f"{what} — higher is better")
    ax.set_title("Accuracy vs latency across models and runtimes (labelled: Pareto front, each model's fastest)")
    ax.grid(True, which="both", alpha=0.3)
    handles = [Line2D([], [], color=FAMILY_STYLE.get(f, ("tab:orange", "x"))[0], marker="o", linestyle="",
                      label=f) for f in fams]  # fmt: skip
    handles += [Line2D([], [], color="black", marker=markers[i % len(markers)], linestyle="", markerfacecolor="none",
                       label=f) for i, f in enumerate(fmts)]  # fmt: skip
    handles.append(Line2D([], [], color="black", linestyle="--", label="Pareto front"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    note = "" if data["measured"] else "Hollow markers: published accuracy of trained weights; latency measured. "
    skipped = "; ".join(f"{n} ({why[:60]})" for n, why in data["skipped"])
    _caption(fig, note + (f"Not plotted: {skipped}" if skipped else ""))
    fig.savefig(path)
    return Path(path)
