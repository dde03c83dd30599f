"""Mobile lite-interpreter files (``.ptl``): ``ptl`` (fp32) and ``ptl-int8`` (dynamic int8 ``nn.Linear``).

What PyTorch Mobile apps load with ``LiteModuleLoader`` (Android) / ``torch::jit::_load_for_mobile``
(iOS, C++). The model is traced (or scripted, ``ctx.jit``), quantized for ``ctx.qengine`` first in
int8 (``qnnpack`` by default: the engine ARM phones run), then

* ``torch.utils.mobile_optimizer.optimize_for_mobile`` (freezing, conv/linear prepacking, op
  fusion) when this PyTorch build has XNNPACK. The registry's current builds have not (it raises
  "Mobile optimization only available with XNNPACK"): the model is then only frozen, the file is
  still written, and the manifest records ``optimize_for_mobile`` as unavailable with the reason.
* saved with ``_save_for_lite_interpreter`` and checked by loading it back with the lite
  interpreter (``torch.jit.mobile._load_for_lite_interpreter``), the runtime a phone uses.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compress.quantize import qengine, quiet_quantization_warnings

from .base import ExportContext, Format, Predictor
from .torchscript import EXTRA_FILE, capture, describe, read_extra

__all__ = ["LitePredictor", "describe", "export", "load", "mobile_optimization"]


def mobile_optimization(module: torch.jit.ScriptModule) -> tuple[torch.jit.ScriptModule, str]:
    """``optimize_for_mobile(module)`` if this build can, else the frozen module; and what happened."""
    from torch.utils.mobile_optimizer import optimize_for_mobile

    try:
        return optimize_for_mobile(module), "applied"
    except RuntimeError as e:
        first = next((line.strip() for line in str(e).splitlines() if "XNNPACK" in line), str(e).splitlines()[0])
        reason = first[first.find("Mobile optimization") :] if "Mobile optimization" in first else first
        return torch.jit.freeze(module), f"unavailable in this PyTorch build: {reason[:200]}"


def export(model: nn.Module, path: Path, fmt: Format, ctx: ExportContext) -> dict[str, Any]:
    module, meta = capture(model, path, fmt, ctx)
    with qengine(meta.get("qengine", torch.backends.quantized.engine)), quiet_quantization_warnings():
        optimized, status = mobile_optimization(module)
        meta["optimize_for_mobile"] = status
        optimized._save_for_lite_interpreter(str(path), _extra_files={EXTRA_FILE: json.dumps(meta)})
    return {k: meta[k] for k in ("jit", "qengine", "accuracy_budget") if k in meta} | {"optimize_for_mobile": status}


class LitePredictor(Predictor):
    """A ``.ptl`` file run by the lite interpreter."""

    def __init__(self, module: Any, fmt: Format, path: Path, engine: str | None):
        self.module, self.format, self.precision = module, fmt.name, fmt.precision
        self.path, self.device, self.engine = Path(path), "cpu", engine

    def predict(self, images: np.ndarray) -> np.ndarray:
        with torch.no_grad(), qengine(self.engine or torch.backends.quantized.engine):
            return self.module(torch.from_numpy(images)).float().numpy()


def load(path: Path, fmt: Format, device: str = "cpu") -> LitePredictor:
    from torch.jit.mobile import _load_for_lite_interpreter

    from t2tvit.errors import ConfigError

    if device != "cpu":
        raise ConfigError(f"{fmt.name} runs on the CPU (lite interpreter) only; load it with device='cpu'")
    engine = read_extra(path).get("qengine")
    with qengine(engine or torch.backends.quantized.engine), quiet_quantization_warnings():
        module = _load_for_lite_interpreter(str(path), map_location="cpu")
    return LitePredictor(module, fmt, path, engine)
