"""TorchScript artifacts: ``torchscript`` (fp32) and ``torchscript-int8`` (dynamic int8 ``nn.Linear``).

The model is captured with ``torch.jit.trace`` (default; the T2T-ViT forward has no data-dependent
control flow, and a trace at one batch size runs any other) or ``torch.jit.script`` (``ctx.jit``),
then frozen: parameters become constants and the graph is specialised for inference. The int8
variant quantizes first, for ``ctx.qengine``; the engine is written into the file
(``extra/t2t.json``) and set again when the file is loaded, because int8 weights are re-packed for
the current engine as they are read.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.quantize import qengine, quantize_dynamic_int8, quiet_quantization_warnings
from t2tvit.errors import CheckpointError, ConfigError

from . import budget
from . import manifest as mf
from .base import ExportContext, Format, require_artifact
from .torch_eager import TorchPredictor, _device, _is_torchscript, model_spec

__all__ = ["EXTRA_FILE", "capture", "describe", "export", "load", "read_extra"]

EXTRA_FILE = "t2t.json"  # metadata stored inside TorchScript / .ptl zip archives


def capture(
    model: nn.Module, path: Path, fmt: Format, ctx: ExportContext
) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """Trace or script ``model`` (quantized first for an int8 ``fmt``, within ``ctx.max_drop`` when asked:
    :mod:`deploy.budget`), in eval mode; not yet frozen. ``path`` is the artifact to be written.

    Returns the module and the metadata to store with it.
    """
    if ctx.jit not in ("trace", "script"):
        raise ConfigError(f"TorchScript capture must be 'trace' or 'script', not {ctx.jit!r}")
    meta: dict[str, Any] = {"format": fmt.name, "precision": fmt.precision, "jit": ctx.jit, "args": model_spec(model)}
    meta[mf.ABOUT_KEY] = ctx.about
    if fmt.precision == "int8":
        keep: list[str] = []
        if budget.asked(ctx):
            keep, meta["accuracy_budget"] = budget.module_float_layers(model, path, fmt, ctx)
        model = quantize_dynamic_int8(model, ctx.qengine, float_layers=keep)
        meta["qengine"] = ctx.qengine
    model = model.eval()
    with torch.no_grad(), qengine(meta.get("qengine", torch.backends.quantized.engine)), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about shapes turned into constants, deprecations
        if ctx.jit == "script":
            module = torch.jit.script(model)
        else:
            module = torch.jit.trace(model, ctx.example(max(2, ctx.batch[1])), check_trace=False)
    return module.eval(), meta


def export(model: nn.Module, path: Path, fmt: Format, ctx: ExportContext) -> dict[str, Any]:
    module, meta = capture(model, path, fmt, ctx)
    with qengine(meta.get("qengine", torch.backends.quantized.engine)), quiet_quantization_warnings():
        frozen = torch.jit.freeze(module)
        torch.jit.save(frozen, str(path), _extra_files={EXTRA_FILE: json.dumps(meta)})
    return {k: meta[k] for k in ("jit", "qengine", "accuracy_budget") if k in meta} | {"frozen": True}


def read_extra(path: Path) -> dict[str, Any]:
    """The ``t2t.json`` metadata inside a TorchScript or .ptl archive (``{}`` if it has none)."""
    path = require_artifact(path)
    try:
        with zipfile.ZipFile(path) as z:
            name = next((n for n in z.namelist() if n.endswith(f"extra/{EXTRA_FILE}")), None)
            return json.loads(z.read(name)) if name else {}
    except (zipfile.BadZipFile, json.JSONDecodeError, KeyError) as e:
        raise CheckpointError(f"{path} is not a TorchScript archive ({type(e).__name__}: {e})") from None


def describe(path: Path) -> dict[str, Any] | None:
    """The format row hook of TorchScript and ``.ptl`` files: the row, model and input size its
    ``extra/t2t.json`` records (a file without one: fp32, or int8 when it records a quantized engine)."""
    path = Path(path)
    try:
        if not zipfile.is_zipfile(path) or not (path.suffix.lower() == ".ptl" or _is_torchscript(path)):
            return None
        extra = read_extra(path)
    except (OSError, CheckpointError):
        return None
    base = "ptl" if path.suffix.lower() == ".ptl" else "torchscript"
    name = extra.get("format") or (f"{base}-int8" if extra.get("qengine") else base)
    spec = extra.get("args") or {}
    return mf.read_about(extra.get(mf.ABOUT_KEY)) | {
        "format": name,
        "model": spec.get("model"),
        "img_size": spec.get("img_size"),
    }


def load(path: Path, fmt: Format, device: str = "cpu") -> TorchPredictor:
    device = _device(fmt, device)
    engine = read_extra(path).get("qengine")
    with qengine(engine or torch.backends.quantized.engine), quiet_quantization_warnings():
        module = torch.jit.load(str(path), map_location=device)
    return TorchPredictor(module.eval(), fmt, path, device, engine)
