"""Typed export settings: what ``t2t export``, the pipeline's export stage and Python callers give
:func:`deploy.export.export_checkpoint`.

The common options apply to every format. The **format options** (:data:`FORMAT_OPTIONS`) belong to the
rows that declare them in their :attr:`deploy.base.Format.settings`: ``qengine`` to the PyTorch int8 rows,
``jit`` to the TorchScript and ``.ptl`` rows, ``opset`` to the rows built from an ONNX file,
``inference_precision`` to the OpenVINO rows, ``max_drop`` to every int8 row and ``sensitivity`` to all but
``openvino-int8`` (an accuracy budget, :mod:`deploy.budget`). A format option left ``None`` takes its default (the
:class:`~deploy.base.ExportContext` field of the same name); one given when none of the chosen formats
takes it is refused in one sentence (Ultralytics' ``validate_args`` idea), never silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from t2tvit.errors import ConfigError

__all__ = ["FORMAT_OPTIONS", "ExportConfig"]

# Format option -> its command-line flag (the refusal names the flag a user typed).
FORMAT_OPTIONS = {
    "qengine": "--qengine",
    "jit": "--jit",
    "opset": "--opset",
    "inference_precision": "--inference-precision",
    "max_drop": "--max-drop",
    "sensitivity": "--sensitivity",
}


@dataclass(frozen=True)
class ExportConfig:
    """One export run's settings; ``None`` means "what the checkpoint records, else the default"."""

    formats: str | tuple[str, ...] = "cpu"  # format names or groups (deploy.base.FORMAT_GROUPS), comma-separated
    out: str | Path | None = None  # the export folder (default: artifacts/<model>)
    model: str | None = None  # variant name (default: the checkpoint's, else t2tvit.DEFAULT_MODEL)
    num_classes: int | None = None  # classes of the head (default: the checkpoint's; another count needs new_head)
    new_head: bool = False  # replace the checkpoint's trained head by an untrained one of num_classes
    img_size: int | None = None  # input height and width (default: the checkpoint's, else 224)
    batch: tuple[int, int, int] = (1, 1, 32)  # min, opt, max batch the artifacts accept
    calib_data: str | Path | None = None  # real images for calibration and parity (default: the digits' val/)
    calib_size: int = 64  # calibration images for static int8
    parity_images: int = 128  # images for the parity checks
    # format options (None: the default of deploy.base.ExportContext)
    qengine: str | None = None  # PyTorch quantized engine of the torch / torchscript / ptl int8 rows
    jit: str | None = None  # TorchScript capture of the torchscript and ptl rows: "trace" or "script"
    opset: int | None = None  # ONNX opset requested for the rows built from an ONNX file
    inference_precision: str | None = None  # OpenVINO's compute precision at load: auto, f32, bf16, f16
    max_drop: float | None = None  # accuracy budget of the int8 rows that take it: top-1 points against fp32
    sensitivity: bool | None = None  # rank the int8 rows' layers on val_data; write the table and plot
    val_data: str | Path | None = None  # labelled images (DIR/<class>/<image> or digits) the budget is measured on

    @classmethod
    def of(cls, base: ExportConfig | None = None, /, **options: Any) -> ExportConfig:
        """``base`` (or the defaults) with ``options`` replaced; an unknown name is one sentence."""
        unknown = sorted(set(options) - {f.name for f in fields(cls)})
        if unknown:
            known = ", ".join(f.name for f in fields(cls))
            raise ConfigError(f"export has no option {', '.join(unknown)} (its options: {known})")
        return replace(base or cls(), **options)

    def format_options(self) -> dict[str, Any]:
        """The format options given (not None, not False), by name: what the :class:`~deploy.base.ExportContext`
        takes."""
        return {k: v for k in FORMAT_OPTIONS if (v := getattr(self, k)) is not None and v is not False}

    def check(self) -> list[Any]:
        """The chosen formats (:func:`deploy.base.resolve_formats`), after refusing bad values and format
        options that none of them takes; raises :class:`~t2tvit.errors.ConfigError` (one sentence)."""
        from compress.quantize import check_qengine

        from .base import FORMATS, ExportContext, resolve_formats

        fmts = resolve_formats(self.formats)
        if self.calib_size < 1 or self.parity_images < 1:
            raise ConfigError("--calib-size and --parity-images must be at least 1")
        batch = tuple(self.batch)
        if len(batch) != 3 or not 1 <= batch[0] <= batch[1] <= batch[2]:
            raise ConfigError(f"--batch takes MIN,OPT,MAX with 1 <= MIN <= OPT <= MAX, not {self.batch!r}")
        for option in self.format_options():
            if not any(option in f.settings for f in fmts):
                takers = [f.name for f in FORMATS.values() if option in f.settings]
                chosen = ", ".join(f.name for f in fmts) or "none"
                raise ConfigError(
                    f"{FORMAT_OPTIONS[option]} is an option of {', '.join(takers)}, and none of the chosen formats "
                    f"({chosen}) takes it; drop it or add one of those formats"
                )
        if any("qengine" in f.settings for f in fmts):  # the engine they will use: the given one, else the default
            check_qengine(self.qengine or ExportContext.qengine)
        self._check_budget()
        if self.jit is not None and self.jit not in ("trace", "script"):
            raise ConfigError(f"--jit must be 'trace' or 'script', not {self.jit!r}")
        return fmts  # an inference precision this CPU lacks: the OpenVINO module's pre-flight (check_context)

    def _check_budget(self) -> None:
        """--max-drop / --sensitivity need --val-data and the reverse (every int8 row takes them)."""
        if self.max_drop is not None and (self.val_data is None or self.max_drop < 0):
            raise ConfigError(
                "--max-drop takes points of top-1 (0 or more) measured on --val-data, a labelled folder of images "
                "kept apart from the calibration images; give both"
            )
        if self.sensitivity and self.val_data is None:
            raise ConfigError("--sensitivity ranks layers by int8 error on --val-data, a labelled folder; give it")
        if self.val_data is not None and self.max_drop is None and not self.sensitivity:
            raise ConfigError("--val-data is where --max-drop measures top-1; give --max-drop too, or drop it")
