"""What each plot shows, as plain data (no matplotlib): the points, the Pareto front, the rows left out and why.

A single model's plots (:func:`accuracy_points`, :func:`latency_bars_data`) and a comparison's
(:func:`comparison_points`) take the p50 at the smallest batch size; every row they leave out is listed with why.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from ..profiler.schema import Report
from .text import batch_sizes, ci, document, finite, one_line, stats

# model-name prefix -> family (one line per family in latency_vs_macs.png)
FAMILIES = (
    ("t2t_vit", "T2T-ViT"),
    ("mobilenet", "MobileNet"),
    ("efficientnet", "EfficientNet"),
    ("deit", "DeiT"),
    ("resnet", "ResNet"),
)
_SHORT_NAMES = (
    ("t2t_vit_", "T2T-"),
    ("mobilenetv3_large_100", "MNv3-L"),
    ("mobilenetv2_100", "MNv2"),
    ("efficientnet_", "EffNet-"),
    ("deit_tiny_patch16_224", "DeiT-Ti"),
    ("resnet", "R"),
)


def pareto_front(points: Iterable[tuple[str, float | None, float | None]]) -> list[str]:
    """Names of the points no other point beats: lower latency AND higher accuracy are better.

    A point is dominated when another has latency <= and accuracy >= with at least one strict. Exact
    duplicates do not dominate each other, so both stay on the front. Points with a missing or non-finite
    latency or accuracy are ignored. Names come back in order of increasing latency (input order on ties).
    """
    pts = [(name, lat, acc) for name, lat, acc in points if finite(lat) and finite(acc)]
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


# ---------------------------------------------------------------- one model


def _plot_batch(report: dict[str, Any]) -> int | None:
    settings = [int(b) for b in (report.get("settings") or {}).get("batch_sizes") or [] if finite(b)]
    sizes = settings or batch_sizes(report)
    return min(sizes) if sizes else None


def _why_not(row: dict[str, Any], batch: int | None, what: str = "") -> str | None:
    """Why ``row`` is not in a plot (None if it can be): its status and reason, or the missing number."""
    status = row.get("status") or "unknown"
    if status != "ok":
        reason = row.get("reason")
        return f"{status}: {one_line(reason)}" if reason else status
    if not finite(stats(row, batch).get("p50_ms")):
        return f"no latency at batch {batch}"
    if what and not finite(row.get(what)):
        return f"no {'top-1' if what == 'top1' else what}"
    return None


@document
def accuracy_points(report: Report | dict[str, Any]) -> dict[str, Any]:
    """What ``latency_vs_accuracy.png`` shows: batch, y metric and label, points and the rows left out.

    y is top-1 when any row has one, else top-1 agreement with fp32 x 100, else nothing can be plotted.
    """
    rows = report.get("rows") or []
    batch = _plot_batch(report)
    metric = "top1" if any(finite(r.get("top1")) for r in rows) else "agreement"
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
                "latency": stats(r, batch)["p50_ms"],
                "accuracy": acc,
                "precision": r.get("precision"),
                "device": r.get("device"),
            }
        )
    return {"batch": batch, "metric": metric, "ylabel": ylabel, "points": points, "skipped": skipped}


@document
def latency_bars_data(report: Report | dict[str, Any]) -> dict[str, Any]:
    """What ``latency_bars.png`` shows: per plottable row p50, its CI and mean/std, fastest first."""
    batch = _plot_batch(report)
    bars, skipped = [], []
    for r in report.get("rows") or []:
        why = _why_not(r, batch)
        if why:
            skipped.append((str(r.get("name")), why))
            continue
        s = stats(r, batch)
        bars.append(
            {
                "name": str(r.get("name")),
                "precision": r.get("precision"),
                "p50": s["p50_ms"],
                "ci": ci(s),
                "ci_level": s.get("ci_level"),
                "mean": s.get("mean_ms") if finite(s.get("mean_ms")) else None,
                "std": s.get("std_ms") if finite(s.get("std_ms")) else None,
            }
        )
    bars.sort(key=lambda b: b["p50"])
    return {"batch": batch, "bars": bars, "skipped": skipped}


# ---------------------------------------------------------------- a comparison of several models


def family(model: str | None) -> str:
    """The model's family (one line per family in ``latency_vs_macs.png``): T2T-ViT, MobileNet, ..., else its name."""
    name = str(model or "?")
    return next((fam for prefix, fam in FAMILIES if name.startswith(prefix)), name)


def short_name(model: Any) -> str:
    """A label that fits a plot: ``t2t_vit_7`` -> ``T2T-7``, ``mobilenetv3_large_100`` -> ``MNv3-L``."""
    name = str(model)
    for long, short in _SHORT_NAMES:
        name = name.replace(long, short)
    return name


def models(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A comparison's models by name (the ``model.models`` entries)."""
    return {str(m.get("name")): m for m in (report.get("model") or {}).get("models") or []}


def comparison_batches(report: dict[str, Any]) -> list[int]:
    return sorted(int(b) for b in (report.get("settings") or {}).get("batch_sizes") or [1])


def top1_measured(report: dict[str, Any]) -> bool:
    """Whether some row measured its top-1 (else a comparison shows the models' published top-1)."""
    return any(finite(r.get("top1")) for r in report.get("rows") or [])


@document
def comparison_points(report: Report | dict[str, Any]) -> dict[str, Any]:
    """The points of both plots: per ok row its model, family, format, precision, MACs, p50 at the smallest
    batch and top-1 (measured, else published, with ``published`` True); plus the rows left out and why."""
    by_name, batch = models(report), comparison_batches(report)[0]
    measured = top1_measured(report)
    points, skipped = [], []
    for r in report.get("rows") or []:
        p50 = stats(r, batch).get("p50_ms")
        if r.get("status") != "ok" or not finite(p50):
            skipped.append((str(r.get("name")), one_line(r.get("reason") or f"no latency at batch {batch}")))
            continue
        m = by_name.get(str(r.get("model"))) or {}
        top1 = r.get("top1") if measured else m.get("published_top1")
        points.append(
            {
                "name": str(r.get("name")),
                "model": str(r.get("model")),
                "family": family(m.get("model") or r.get("model")),
                "format": str(r.get("format")),
                "precision": r.get("precision"),
                "macs": r.get("macs") if finite(r.get("macs")) else m.get("macs_per_image"),
                "latency": p50,
                "top1": top1 if finite(top1) else None,
                "published": not measured,
            }
        )
    return {"batch": batch, "measured": measured, "points": points, "skipped": skipped}
