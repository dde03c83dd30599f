"""The report of a comparison of several models (:func:`deploy.profiler.profile_folders`): Markdown, JSON, CSV
and two plots a person reads at a glance.

* ``latency_vs_macs.png``: one panel per runtime (format), p50 latency at the smallest batch against the
  model's MACs, one line per model family: MACs are not latency, and this shows by how much, per runtime.
* ``accuracy_vs_latency.png``: every (model, format) that ran, its top-1 against its p50 latency, and the
  Pareto front across models and formats. Top-1 is measured on the report's data when there is some, else
  the model's *published* ImageNet top-1 (hollow markers, said in the axis label and the caption).

The JSON and CSV are :func:`deploy.report.write_report`'s; :func:`deploy.report.read_report` reads them back.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .profiler.schema import Report
from .report import (
    CSV_NAME,
    JSON_NAME,
    MD_NAME,
    _caption,
    _ci_label,
    _finite,
    _fmt,
    _fmt_ips,
    _fmt_mb,
    _label_points,
    _machine_md,
    _md_cell,
    _not_ok,
    _one_line,
    _p50_ci,
    _peak_line,
    _stats,
    _status_cell,
    as_dict,
    pareto_front,
    verdict_markdown,
    write_csv,
)

__all__ = [
    "MACS_NAME",
    "PARETO_NAME",
    "comparison_points",
    "comparison_table",
    "family",
    "is_comparison",
    "render_comparison",
    "write_comparison",
]

MACS_NAME, PARETO_NAME = "latency_vs_macs.png", "accuracy_vs_latency.png"
# model-name prefix -> family (one line per family in latency_vs_macs.png)
_FAMILIES = (
    ("t2t_vit", "T2T-ViT"),
    ("mobilenet", "MobileNet"),
    ("efficientnet", "EfficientNet"),
    ("deit", "DeiT"),
    ("resnet", "ResNet"),
)
_FAMILY_STYLE = {
    "T2T-ViT": ("tab:red", "o"),
    "MobileNet": ("tab:blue", "s"),
    "EfficientNet": ("tab:green", "^"),
    "DeiT": ("tab:purple", "D"),
    "ResNet": ("tab:gray", "v"),
}


def family(model: str | None) -> str:
    name = str(model or "?")
    return next((fam for prefix, fam in _FAMILIES if name.startswith(prefix)), name)


def is_comparison(report: Report | dict[str, Any]) -> bool:
    """Whether ``report`` compares several models (its ``model`` lists ``models``)."""
    return bool((as_dict(report).get("model") or {}).get("models"))


def _models(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {str(m.get("name")): m for m in (report.get("model") or {}).get("models") or []}


def _batches(report: dict[str, Any]) -> list[int]:
    return sorted(int(b) for b in (report.get("settings") or {}).get("batch_sizes") or [1])


def _short(model: Any) -> str:
    """A label that fits a plot: ``t2t_vit_7`` -> ``T2T-7``, ``mobilenetv3_large_100`` -> ``mnv3``."""
    name = str(model)
    for long, short in (
        ("t2t_vit_", "T2T-"),
        ("mobilenetv3_large_100", "MNv3-L"),
        ("mobilenetv2_100", "MNv2"),
        ("efficientnet_", "EffNet-"),
        ("deit_tiny_patch16_224", "DeiT-Ti"),
        ("resnet", "R"),
    ):
        name = name.replace(long, short)
    return name


def comparison_points(report: Report | dict[str, Any]) -> dict[str, Any]:
    """The points of both plots: per ok row its model, family, format, precision, MACs, p50 at the smallest
    batch and top-1 (measured, else published, with ``published`` True); plus the rows left out and why."""
    report = as_dict(report)
    models, batch = _models(report), _batches(report)[0]
    measured = any(_finite(r.get("top1")) for r in report.get("rows") or [])
    points, skipped = [], []
    for r in report.get("rows") or []:
        p50 = _stats(r, batch).get("p50_ms")
        if r.get("status") != "ok" or not _finite(p50):
            skipped.append((str(r.get("name")), _one_line(r.get("reason") or f"no latency at batch {batch}")))
            continue
        m = models.get(str(r.get("model"))) or {}
        top1 = r.get("top1") if measured else m.get("published_top1")
        points.append(
            {
                "name": str(r.get("name")),
                "model": str(r.get("model")),
                "family": family(m.get("model") or r.get("model")),
                "format": str(r.get("format")),
                "precision": r.get("precision"),
                "macs": r.get("macs") if _finite(r.get("macs")) else m.get("macs_per_image"),
                "latency": p50,
                "top1": top1 if _finite(top1) else None,
                "published": not measured,
            }
        )
    return {"batch": batch, "measured": measured, "points": points, "skipped": skipped}


def comparison_table(report: Report | dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and one line per (model, format, precision) row, the batch sizes side by side."""
    report = as_dict(report)
    models, batches = _models(report), _batches(report)
    measured = any(_finite(r.get("top1")) for r in report.get("rows") or [])
    header = ["model", "format", "precision", "status", "params M", "GMACs", "size MB"]
    for b in batches:
        header += [f"p50 ms b{b} [{_ci_label(report)}]", f"img/s b{b}"]
    header += ["peak RSS MB", "% of peak", "top-1 %" if measured else "top-1 % (published)", "agreement %"]
    lines = []
    for r in report.get("rows") or []:
        m = models.get(str(r.get("model"))) or {}
        line = [
            str(r.get("model")),
            str(r.get("format")),
            str(r.get("precision")),
            _status_cell(r),
            _fmt(r.get("params"), 2, 1e-6),
            _fmt(r.get("macs"), 2, 1e-9),
            _fmt_mb(r.get("file_bytes")),
        ]
        for b in batches:
            s = _stats(r, b)
            line += [_p50_ci(s), _fmt_ips(s.get("throughput_ips"))]
        top1 = _fmt(r.get("top1"), 2) if measured else _fmt(m.get("published_top1"), 2)
        line += [_fmt(r.get("peak_rss_mb"), 1), _fmt(r.get("peak_share"), 1, 100.0), top1]
        line.append(_fmt(r.get("agreement"), 1, 100.0))
        lines.append(line)
    return header, lines


def _models_md(report: dict[str, Any]) -> list[str]:
    out = ["## Models", "", "| model | params M | GMACs | image size | published ImageNet top-1 % | source |"]
    out.append("|---|---|---|---|---|---|")
    for m in _models(report).values():
        size = "x".join(str(s) for s in m.get("img_size") or []) or "-"
        out.append(
            f"| {_md_cell(m.get('name'))} | {_fmt(m.get('params'), 2, 1e-6)} | {_fmt(m.get('macs_per_image'), 2, 1e-9)}"
            f" | {size} | {_fmt(m.get('published_top1'), 2)} | {_md_cell(m.get('published_source') or '-')} |"
        )
    return [*out, "", "Published top-1: what the authors measured with trained weights, not this run.", ""]


def render_comparison(report: Report | dict[str, Any], plots: Sequence[str] = (MACS_NAME, PARETO_NAME)) -> str:
    """``report.md`` of a comparison: settings, models, one table over every (model, format), failures, plots."""
    report = as_dict(report)
    header, lines = comparison_table(report)
    names = ", ".join(_models(report))
    where = (report.get("machine") or {}).get("cpu") or "unknown CPU"
    out = [f"# Model comparison on {where}", "", f"Models: {names}.", "", *verdict_markdown(report)]
    out += [ln for ln in _machine_md(report) if not ln.startswith("- model:")]
    out += _models_md(report)
    out += ["## Results", "", "| " + " | ".join(_md_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_md_cell(c) for c in line) + " |" for line in lines]
    out += [
        "",
        f"One line per (model, format, precision); every row timed interleaved with every other. p50 with the "
        f"{_ci_label(report)} of the median; % of peak = model MACs x images/s at batch 1 over the measured peak "
        "GEMM rate of the row's precision; agreement = top-1 agreement with the same model's fp32 torch artifact.",
        "",
        _peak_line(report),
        "",
    ]
    not_ok = _not_ok(report)
    rows = [r for r in report.get("rows") or [] if r.get("status") == "ok" and r.get("timed_only")]
    timed_only = [(str(r.get("name")), r.get("reason")) for r in rows]
    if not_ok or timed_only:
        out += ["## Failed, skipped and unverified", ""]
        out += [f"- **{name}** {status}: {reason}" for name, status, reason in not_ok]
        out += [f"- **{name}** ok but unverified: {_one_line(why)}" for name, why in timed_only]
        out.append("")
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


def write_comparison(report: Report | dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write ``report.json``, ``report.csv``, both plots and ``report.md`` of a comparison into ``out_dir``."""
    import json

    from .report import _json_default

    report = as_dict(report)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / JSON_NAME, out / CSV_NAME, out / MD_NAME, out / MACS_NAME, out / PARETO_NAME]
    paths[0].write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    write_csv(report, paths[1])
    plot_latency_vs_macs(report, paths[3])
    plot_accuracy_vs_latency(report, paths[4])
    paths[2].write_text(render_comparison(report))
    return paths


def _log_axes(ax: Any, xs: Sequence[float], ys: Sequence[float]) -> None:
    """Log scales with plain-number ticks: MACs and latencies of these models span more than a decade."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    for axis, values, setter in ((ax.xaxis, xs, ax.set_xscale), (ax.yaxis, ys, ax.set_yscale)):
        if values and min(values) > 0:
            setter("log")
            axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def plot_latency_vs_macs(report: Report | dict[str, Any], path: str | Path) -> Path:
    """One panel per format: p50 latency against GMACs, a line per model family, each point named."""
    from matplotlib.figure import Figure

    data = comparison_points(report)
    pts = [p for p in data["points"] if _finite(p["macs"])]
    formats = list(dict.fromkeys(p["format"] for p in pts)) or ["-"]
    cols = min(3, len(formats))
    rows = (len(formats) + cols - 1) // cols
    fig = Figure(figsize=(5.2 * cols, 4.2 * rows + 0.6), dpi=120, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True)  # runtimes compare across panels
    for i, fmt in enumerate(formats):
        ax = axes[i // cols][i % cols]
        mine = [p for p in pts if p["format"] == fmt]
        for fam in dict.fromkeys(p["family"] for p in mine):
            fp = sorted((p for p in mine if p["family"] == fam), key=lambda p: p["macs"])
            color, marker = _FAMILY_STYLE.get(fam, ("tab:orange", "x"))
            ax.plot([p["macs"] / 1e9 for p in fp], [p["latency"] for p in fp], marker=marker, color=color, label=fam)
        _log_axes(ax, [p["macs"] / 1e9 for p in mine], [p["latency"] for p in mine])
        _label_points(ax, [(_short(p["model"]), p["macs"] / 1e9, p["latency"]) for p in mine], fontsize=7)
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


def plot_accuracy_vs_latency(report: Report | dict[str, Any], path: str | Path) -> Path:
    """Top-1 (measured, else published: hollow markers) against p50 latency, Pareto front across all rows."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    data = comparison_points(report)
    pts = [p for p in data["points"] if p["top1"] is not None]
    fig = Figure(figsize=(11, 6.5), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    fams = list(dict.fromkeys(p["family"] for p in pts))
    fmts = list(dict.fromkeys(p["format"] for p in pts))
    markers = ["o", "s", "^", "D", "v", "P", "X", "*", "h"]
    for p in pts:
        color = _FAMILY_STYLE.get(p["family"], ("tab:orange", "x"))[0]
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
    _label_points(ax, [(f"{_short(by[n]['model'])} {by[n]['format']}", by[n]["latency"], by[n]["top1"]) for n in named])
    what = "measured top-1 %" if data["measured"] else "published ImageNet top-1 % (not measured here)"
    ax.set_xlabel(f"p50 latency at batch {data['batch']} (ms, log scale) — lower is better")
    ax.set_ylabel(f"{what} — higher is better")
    ax.set_title("Accuracy vs latency across models and runtimes (labelled: Pareto front, each model's fastest)")
    ax.grid(True, which="both", alpha=0.3)
    handles = [Line2D([], [], color=_FAMILY_STYLE.get(f, ("tab:orange", "x"))[0], marker="o", linestyle="",
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
