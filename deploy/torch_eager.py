"""PyTorch eager artifacts: ``torch`` (fp32, the reference) and ``torch-int8`` (dynamic int8 ``nn.Linear``).

Both files are plain data read with ``torch.load(weights_only=True)``: no pickled code. They hold
the model's name and constructor arguments next to its weights, so loading rebuilds the model
from the registry:

* ``torch`` is one of our own checkpoints (``{"model": state_dict, "args": {...}}``), so
  ``t2tvit.create_model(name, checkpoint=file)`` and ``t2t info --checkpoint`` read it too;
* ``torch-int8`` stores the quantized state dict (int8 weights with their scales) and the
  quantized engine it was packed for, and the ``nn.Linear`` modules an accuracy budget kept float
  (:mod:`deploy.budget`). Loading rebuilds the fp32 model, applies the same dynamic quantization (which
  only swaps module types) and loads the int8 state dict into it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compress.quantize import qengine, quantize_dynamic_int8, quiet_quantization_warnings
from t2tvit.errors import CheckpointError, ConfigError

from . import budget
from . import manifest as mf
from .base import ExportContext, Format, Predictor, require_artifact

__all__ = ["TorchPredictor", "describe", "export", "load", "model_spec"]

_KIND = "t2t-deploy-torch"


def model_spec(model: nn.Module) -> dict[str, Any]:
    """Registry name and constructor arguments that rebuild ``model`` (a registered T2T-ViT, or a timm model
    built by :func:`t2tvit.build_model`, which gives a CNN its ``img_size``)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    name = cfg.get("architecture")
    if not name:
        raise ConfigError("only registered models (t2tvit.build_model / timm.create_model) can be exported")
    size = getattr(model, "img_size", None) or cfg.get("input_size", (3, 224, 224))[1:]
    return {"model": name, "num_classes": int(model.num_classes), "img_size": [int(s) for s in size]}


def export(model: nn.Module, path: Path, fmt: Format, ctx: ExportContext) -> dict[str, Any]:
    spec = model_spec(model)
    if fmt.precision == "int8":
        keep, extra = budget.module_float_layers(model, path, fmt, ctx) if budget.asked(ctx) else ([], {})
        qmodel = quantize_dynamic_int8(model, ctx.qengine, float_layers=keep)
        state = {"kind": _KIND, "args": spec, mf.ABOUT_KEY: ctx.about, "qengine": ctx.qengine, "float_layers": keep}
        torch.save(state | {"int8_state_dict": qmodel.state_dict()}, path)
        extra = {"accuracy_budget": extra} if extra else {}
        return {"qengine": ctx.qengine, "quantized": "nn.Linear weights int8 (dynamic activations)", **extra}
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save({"kind": _KIND, "args": spec, mf.ABOUT_KEY: ctx.about, "model": state}, path)
    return {}


class TorchPredictor(Predictor):
    """Any ``nn.Module`` or TorchScript module, run under ``torch.no_grad``."""

    def __init__(self, module: Any, fmt: Format, path: Path, device: str = "cpu", engine: str | None = None):
        self.module, self.format, self.precision = module, fmt.name, fmt.precision
        self.path, self.device, self.engine = Path(path), device, engine

    def predict(self, images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(images).to(self.device)
        with torch.no_grad(), qengine(self.engine) if self.engine else contextlib.nullcontext():
            out = self.module(x)
        return out.float().cpu().numpy()


def _device(fmt: Format, device: str) -> str:
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"device must be 'cpu' or 'cuda', not {device!r}")
    if device == "cuda" and not (fmt.gpu and fmt.precision != "int8"):
        raise ConfigError(f"{fmt.name} runs on the CPU only; load it with device='cpu'")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' but no CUDA GPU is visible on this machine")
    return device


def _read(path: Path) -> dict[str, Any]:
    path = require_artifact(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure here means a bad or unsafe file
        from t2tvit.checkpoint import load_refusal  # never repeats torch's advice to unpickle anyway

        raise CheckpointError(load_refusal(path, e, "an eager artifact written by `t2t export`")) from None
    if not isinstance(obj, dict) or obj.get("kind") != _KIND:
        raise CheckpointError(f"{path} is not an eager artifact written by `t2t export`")
    return obj


def describe(path: Path) -> dict[str, Any] | None:
    """The format row hook: an eager artifact names its row, model and input size (None: another kind)."""
    import zipfile

    try:
        if zipfile.is_zipfile(path) and _is_torchscript(path):
            return None
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not readable as plain data: not an eager artifact
        return None
    if not isinstance(obj, dict) or obj.get("kind") != _KIND:
        return None
    spec = obj.get("args") or {}
    return mf.read_about(obj.get(mf.ABOUT_KEY)) | {
        "format": "torch-int8" if "int8_state_dict" in obj else "torch",
        "model": spec.get("model"),
        "img_size": spec.get("img_size"),
        "num_classes": spec.get("num_classes"),
    }


def _is_torchscript(path: Path) -> bool:
    import zipfile

    with zipfile.ZipFile(path) as z:
        return any("/code/" in n or n.endswith("bytecode.pkl") for n in z.namelist())


def load(path: Path, fmt: Format, device: str = "cpu") -> TorchPredictor:
    from t2tvit import build_model

    device = _device(fmt, device)
    obj = _read(path)
    args = obj["args"]
    build = dict(num_classes=args["num_classes"], img_size=tuple(args["img_size"]))
    if "int8_state_dict" in obj:
        # Quantizing observes the fp32 weights, so they must be real numbers (not meta or empty)
        # even though the int8 state dict then replaces them.
        engine = obj["qengine"]
        model = build_model(args["model"], **build).eval()
        qmodel = quantize_dynamic_int8(model, engine, float_layers=obj.get("float_layers") or ())
        with qengine(engine), quiet_quantization_warnings():
            qmodel.load_state_dict(obj["int8_state_dict"])
        return TorchPredictor(qmodel.eval(), fmt, path, device, engine)
    with torch.device("meta"):  # every tensor comes from the file: skip the random init
        model = build_model(args["model"], **build)
    model.load_state_dict(obj["model"], assign=True)
    return TorchPredictor(model.eval().to(device), fmt, path, device)
