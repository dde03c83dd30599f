"""The accuracy budget and sensitivity report of the int8 rows (``t2t export --max-drop PTS --val-data DIR``,
``--sensitivity``): what a row's ``export`` calls to quantize within the budget, and the manifest record.

* ONNX Runtime rows (``onnx-int8-dynamic``, ``onnx-int8-static``), ``tflite-int8`` and ``tensorrt-int8`` (on the
  QDQ ONNX its engine is parsed from, measured in ONNX Runtime): :func:`file_int8` runs
  :func:`compress.budget.fit_file_budget` with the row's quantizer and its skip list (ONNX Runtime's
  ``nodes_to_exclude``, ai-edge-quantizer's ``NO_QUANTIZE`` recipe entries);
* PyTorch rows (``torch-int8``, ``torchscript-int8``, ``ptl-int8``): :func:`module_float_layers` runs
  :func:`compress.budget.fit_module_budget` once per quantized engine and export run (the three rows share
  the eager dynamic quantization, so they share its fit), and the row quantizes with those modules float;
* ``executorch-int8`` searches the same way over its PT2E reference model (``deploy/executorch.py``);
* ``coreml-int8`` searches the same way over the converted module run in PyTorch with the package's own int8
  weights (``deploy/coreml.py``: Core ML runs on macOS only);
* ``openvino-int8`` uses NNCF's own accuracy-aware quantization (``deploy/openvino.py``).

Each returns ``details.accuracy_budget`` (:meth:`compress.budget.BudgetFit.record`); with ``ctx.sensitivity``
the full ranking is also written beside the artifact as a table and a plot, named in the record.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from t2tvit.errors import ConfigError

from .base import ExportContext, Format

__all__ = ["asked", "file_int8", "module_float_layers", "record", "summary", "val_images"]


def asked(ctx: ExportContext) -> bool:
    """Whether this export run fits a budget or ranks layers for the rows that take it."""
    return ctx.max_drop is not None or ctx.sensitivity


def val_images(ctx: ExportContext) -> tuple[Any, Any]:
    """The labelled validation images and labels a budget is measured on (one sentence when there are none)."""
    if ctx.val is None:
        raise ConfigError("--max-drop and --sensitivity need --val-data, a labelled folder of images")
    return ctx.val


def record(fit: Any, path: Path, fmt: Format, ctx: ExportContext) -> dict[str, Any]:
    """The manifest's ``accuracy_budget`` of ``fit``; with ``ctx.sensitivity`` the ranking's table and plot are
    written beside ``path`` first."""
    if ctx.sensitivity:
        from compress.budget import write_sensitivity

        fit.sensitivity = write_sensitivity(fit, path, fmt.name)
    return fit.record()


def file_int8(
    src: Path,
    path: Path,
    fmt: Format,
    ctx: ExportContext,
    quantize: Callable[[Path, Path, list[str]], dict[str, Any]],
    runtime: Any = None,
    report: Path | None = None,
) -> dict[str, Any]:
    """``quantize(src, dst, exclude)`` of the fp32 model file ``src`` into ``path`` within ``ctx.max_drop``, run
    by ``runtime`` (a :class:`compress.budget.FileRuntime`; ONNX Runtime by default); its fields and
    ``accuracy_budget``. The sensitivity report goes beside ``report`` (default ``path``: the artifact)."""
    from compress.budget import ONNX_RUNTIME, fit_file_budget

    images, labels = val_images(ctx)
    fit, info = fit_file_budget(
        src, path, quantize, runtime or ONNX_RUNTIME, images, labels, ctx.max_drop, ctx.scratch_dir(),
        rank=ctx.sensitivity,
    )  # fmt: skip
    return {**info, "accuracy_budget": record(fit, report or path, fmt, ctx)}


def module_float_layers(model: Any, path: Path, fmt: Format, ctx: ExportContext) -> tuple[list[str], dict[str, Any]]:
    """The ``nn.Linear`` modules the PyTorch int8 rows keep float for ``ctx.max_drop`` (fitted once per engine
    in this export run), and the row's ``accuracy_budget`` record."""
    from compress.budget import fit_module_budget
    from compress.quantize import qengine, quantize_dynamic_int8

    key = f"torch-dynamic-int8:{ctx.qengine}"
    fit = ctx.fits.get(key)
    if fit is None:
        images, labels = val_images(ctx)

        def quantize(keep: Sequence[str]) -> Any:
            return quantize_dynamic_int8(model, ctx.qengine, float_layers=keep)

        with qengine(ctx.qengine):
            fit = fit_module_budget(model, quantize, images, labels, ctx.max_drop, rank=ctx.sensitivity)
        ctx.fits[key] = fit
    return list(fit.kept_nodes), record(fit, path, fmt, ctx)


def summary(record: dict[str, Any]) -> str:
    """One line for a table: the drop, the layers kept float, what they cost in latency, the report's files."""
    kept = record.get("kept_float") or []
    budget = f" (budget {record['max_drop']:g})" if record.get("max_drop") is not None else ""
    parts = [f"top-1 drop {record['drop']:.2f} pts{budget}"]
    parts.append(f"kept float: {', '.join(kept)}" if kept else "every layer int8")
    lat = record.get("latency_ms") or {}
    if lat.get("budget") and lat.get("int8") and lat.get("fp32"):
        parts.append(f"{lat['budget'] / lat['int8']:.2f}x all-int8 latency, {lat['budget'] / lat['fp32']:.2f}x fp32")
    if not record.get("met", True):
        parts.append("BUDGET NOT MET")
    if record.get("sensitivity"):
        parts.append(f"sensitivity: {record['sensitivity']['table']}")
    return "; ".join(parts)
