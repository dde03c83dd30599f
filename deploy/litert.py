"""LiteRT (TensorFlow Lite) flatbuffers: ``tflite`` (fp32), ``tflite-fp16`` (fp16 weights), ``tflite-int8``.

LiteRT is what most Android apps embed (XNNPACK on the CPU; GPU and NPU delegates on phones). The
toolkit converts with litert-torch, Google's PyTorch-to-LiteRT converter (``torch.export`` ->
StableHLO -> the LiteRT converter's passes; no TensorFlow), and checks every file by loading it back
in the LiteRT interpreter (``ai_edge_litert``), which runs here on x86 with XNNPACK.

* Why this converter: it is the one Google maintains for PyTorch models and needs no TensorFlow (the
  ONNX route, onnx2tf, needs TensorFlow itself). Its releases up to 0.10 pin ``torch<2.15``; the nightly
  ``litert-torch-nightly==0.11.0.dev20261026`` lifts that pin, but its converter's ``xdsl`` declares
  ``typing-extensions<4.13`` against torch 2.15's ``>=4.13``, so pip cannot resolve it beside the project:
  ``requirements-litert.txt`` pins the tested set, installed with ``--no-deps`` (it runs with
  typing-extensions 4.16). Its nightly interpreter installs the same ``ai_edge_litert`` module as the
  ``ai-edge-litert`` release, so the two must not be installed together.
* The conversion runs in a child process (:mod:`deploy.child`): litert-torch starts JAX and writes its
  own progress logs. It converts :func:`deploy.graph.deploy_graph` (LiteRT's form: soft splits as
  one-hot convolutions, since litert-torch lowers ``Tensor.unfold`` to a 6-D pad that LiteRT rejects: "'tfl.pad'
  op ... at most 5-D"), checked against the model on real images before conversion.
* The program is fixed at batch 1 (litert-torch's dynamic batch fails to lower T2T-ViT's reshapes:
  "Shapes must be 1D sequences of concrete values"); the :class:`LiteRTPredictor` runs a batch image by
  image, the way a phone app calls it, and says so in its runtime notes.
* ``tflite-fp16``: weights stored fp16 (ai-edge-quantizer's float casting), computed in fp32 by XNNPACK
  on x86; ``tflite-int8``: dynamic-range int8 (int8 weights, activations quantized per inference inside
  the kernels). Full-integer int8 (``options={"quantize": "static"}``, calibrated on ``ctx.calib``; int8
  input and output) was measured beside it (``benchmarks/bench_mobile_formats.py``: on T2T-ViT-7 both keep
  >= 99% top-1 agreement, full integer 3x slower on an AVX2 CPU with 30x the logit error) and is an option,
  not the row.
"""

from __future__ import annotations

import contextlib
import functools
import io
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from t2tvit.errors import CheckpointError, ConfigError

from . import manifest as mf
from .base import ExportContext, Format, Predictor, require_artifact

__all__ = ["LiteRTPredictor", "budget_runtime", "describe", "export", "load", "read_about", "write_about"]

_MAGIC = b"TFL3"  # the flatbuffer file identifier at bytes 4..8 of every .tflite
QUANTIZE_MODES = ("fp16", "dynamic", "static")


def export(model: nn.Module, path: Path, fmt: Format, ctx: ExportContext) -> dict[str, Any]:
    """Write the ``.tflite`` of ``model`` for the row ``fmt``. The fp32 program is converted in a child
    process; the fp16 and int8 rows quantize the fp32 file of this export run (the ``tflite`` artifact
    when it was built, else one converted into the scratch folder), so one run converts once."""
    mode = fmt.options.get("quantize")
    if mode is not None and mode not in QUANTIZE_MODES:
        raise ConfigError(f"unknown LiteRT quantization {mode!r}; choose from: {', '.join(QUANTIZE_MODES)}")
    if mode == "static" and (ctx.calib is None or len(ctx.calib) == 0):
        raise ConfigError(f"{fmt.name} needs calibration images; pass --calib-data with a folder of real images")
    if mode is None:
        info = _convert(model, path, ctx)
        write_about(path, ctx.about)
        return info
    src = Path(ctx.built.get("tflite", ctx.scratch_dir() / "model-fp32.tflite"))
    extra = {"converter": "litert-torch " + _version("litert-torch-nightly", "litert-torch"), "batch": 1}
    if not src.is_file():
        extra = _convert(model, src, ctx)
    else:  # the tflite row converted it in this run: the same graph, proven again for this row's record
        from .graph import checked_graph

        extra["deploy_graph"] = checked_graph(model, "litert", ctx)[1]
    extra.update(_int8(model, src, path, fmt, ctx) if mode != "fp16" else _quantize(src, path, mode, ctx.calib))
    extra["weights"] = "fp16" if mode == "fp16" else "int8"
    write_about(path, ctx.about)
    return {**extra, "from": "fp32 LiteRT program of the same model"}


def write_about(path: Path, about: dict[str, Any]) -> None:
    """Keep ``about`` (:func:`deploy.manifest.about`) in the flatbuffer's own ``metadata`` table: an entry
    named :data:`~deploy.manifest.ABOUT_KEY` whose buffer holds the JSON (the table where the converter keeps
    ``min_runtime_version``; the interpreter ignores entries it does not know). Other entries are kept."""
    import json

    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    if not about:
        return
    model = flatbuffer_utils.read_model(str(path))
    for weights in model.buffers:  # bytes (a file with buffer offsets) pack byte by byte: seconds per MB
        if weights.data is not None and not isinstance(weights.data, np.ndarray):
            weights.data = np.frombuffer(weights.data, np.uint8)  # one vector copy
    model.metadata = [m for m in model.metadata or [] if _name(m.name) != mf.ABOUT_KEY]
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(about).encode(), np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = mf.ABOUT_KEY, len(model.buffers) - 1
    model.metadata.append(entry)
    flatbuffer_utils.write_model(model, str(path))


def read_about(data: bytes) -> dict[str, Any]:
    """The self-description :func:`write_about` stored in the ``.tflite`` bytes ``data`` (``{}`` if none)."""
    from ai_edge_litert.schema_py_generated import Model

    try:
        model = Model.GetRootAs(data, 0)
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            if _name(entry.Name()) == mf.ABOUT_KEY:
                return mf.read_about(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes())
    except Exception:  # noqa: BLE001 - a damaged table describes nothing; the interpreter says what is wrong
        return {}
    return {}


def _name(raw: str | bytes | None) -> str | None:
    return raw.decode() if isinstance(raw, bytes) else raw


def _convert(model: nn.Module, path: Path, ctx: ExportContext) -> dict[str, Any]:
    from .base import get_format
    from .child import export_in_child

    return export_in_child("deploy.litert", model, path, get_format("tflite"), ctx)


def _write(model: nn.Module, path: Path, fmt: Format, ctx: ExportContext) -> dict[str, Any]:
    """The child's conversion to an fp32 program (see :func:`export`)."""
    import litert_torch
    import torch

    from .graph import checked_graph

    captured, record = checked_graph(model, "litert", ctx)
    extra: dict[str, Any] = {"deploy_graph": record}
    with torch.no_grad():
        litert_torch.convert(captured, (ctx.example(1),)).export(str(path))
    return {
        **extra,
        "converter": "litert-torch " + _version("litert-torch-nightly", "litert-torch"),
        "batch": 1,
        "weights": "fp32",
    }


def _version(*packages: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    for name in packages:
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return "unknown"


def _int8(model: nn.Module, src: Path, path: Path, fmt: Format, ctx: ExportContext) -> dict[str, Any]:
    """The int8 row's quantization of ``src`` into ``path``: within ``ctx.max_drop`` when a budget is asked
    (:func:`deploy.budget.file_int8` over the ops ai-edge-quantizer made int8), else every op it supports."""
    from . import budget

    mode = fmt.options["quantize"]
    if not budget.asked(ctx):
        return _quantize(src, path, mode, ctx.calib)
    from ai_edge_quantizer import quantizer

    modules = [name for name, _ in model.named_modules()]
    read: dict[Path, Any] = {}  # each file the search quantizes, read once (0.1-0.3 s a read at 32 px)

    def quantize(s: Path, d: Path, exclude: Sequence[str]) -> dict[str, Any]:
        reader = read.get(s) or read.setdefault(s, quantizer.Quantizer(str(s)))
        return _quantize(s, d, mode, ctx.calib, exclude, reader)

    return budget.file_int8(src, path, fmt, ctx, quantize, budget_runtime(modules))


def budget_runtime(modules: Sequence[str] = ()) -> Any:
    """How the accuracy budget reads and runs ``.tflite`` files (:class:`compress.budget.FileRuntime`): its
    layers are the ops with an int8 weight in the all-int8 file, by op scope (ai-edge-quantizer's name for
    an op: its output tensors' names), named by the PyTorch module in ``modules`` they came from."""
    from compress.budget import FileRuntime

    return FileRuntime(".tflite", functools.partial(_int8_layers, modules=list(modules)), _logits, _call)


def _int8_layers(src: Path, int8: Path, modules: list[str]) -> list[tuple[str, str]]:
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils
    from ai_edge_quantizer.utils.tfl_flatbuffer_utils import get_op_scope

    model = flatbuffer_utils.read_model(str(int8))
    graph, out = model.subgraphs[0], []
    for op in graph.operators:
        weights = [
            graph.tensors[i]
            for i in op.inputs
            if i >= 0
            and graph.tensors[i].type == schema.TensorType.INT8
            and model.buffers[graph.tensors[i].buffer].data is not None
        ]
        if weights:
            named = next((graph.tensors[i].name for i in op.outputs if "/" in _name(graph.tensors[i].name)), None)
            out.append((get_op_scope(op, graph.tensors), _module_of(_name(named or weights[0].name), modules)))
    return out


def _module_of(tensor: str, modules: list[str]) -> str:
    """The module path of a tensor that litert-torch named ``Root/pkg.Class_attr/pkg.Class_attr;n`` (a
    ``ModuleList``'s own name is not in it: ``Block_0`` is matched to ``blocks.0`` through ``modules``)."""
    attrs = [seg.rsplit(".", 1)[-1].split("_", 1)[-1] for seg in tensor.split(";")[0].split("/")[1:]]
    path = ".".join(attrs)
    found = [m for m in modules if m == path or m.endswith("." + path)]
    return found[0] if len(found) == 1 else path or tensor


def _logits(path: Path, images: np.ndarray) -> np.ndarray:
    return _predictor(path)(images)


def _call(path: Path, x: np.ndarray) -> Any:
    predictor = _predictor(path)
    return lambda: predictor(x)


def _predictor(path: Path) -> LiteRTPredictor:
    """Any ``.tflite`` of a budget search (fp32 source, all-int8, trial) in the interpreter, at its default threads."""
    from .base import get_format

    return LiteRTPredictor(_interpreter(path), get_format("tflite"), path)


def _quantize(
    src: Path, dst: Path, mode: str, calib: np.ndarray | None, exclude: Sequence[str] = (), reader: Any = None
) -> dict[str, Any]:
    """ai-edge-quantizer on the fp32 flatbuffer ``src``, written to ``dst``; the ops whose scope is in
    ``exclude`` stay float (a ``NO_QUANTIZE`` entry each, the last matching entry of a recipe winning).
    ``reader``: a ``Quantizer`` that already read ``src`` (a budget search quantizes it once per layer, and
    reading it is most of a trial); its recipe is replaced here."""
    from ai_edge_quantizer import quantizer, recipe
    from ai_edge_quantizer.algorithm_manager import AlgorithmName
    from ai_edge_quantizer.qtyping import TFLOperationName

    Path(dst).unlink(missing_ok=True)  # a budget search rewrites its trial file: no "overwriting" log each time
    q = reader or quantizer.Quantizer(str(src))
    if mode == "fp16":
        q.load_quantization_recipe([])
        q.add_weight_only_config(
            regex=".*",
            operation_name=TFLOperationName.ALL_SUPPORTED,
            num_bits=16,
            algorithm_key=AlgorithmName.FLOAT_CASTING,
        )
        info: dict[str, Any] = {"quantization": "fp16 weights (float casting), fp32 compute"}
    elif mode == "dynamic":
        q.load_quantization_recipe(recipe.dynamic_wi8_afp32())
        _keep_float(q, exclude)
        info = {"quantization": "dynamic range: int8 per-channel weights, activations quantized at run time"}
    else:
        from ai_edge_litert.interpreter import Interpreter

        q.load_quantization_recipe(recipe.static_wi8_ai8())
        _keep_float(q, exclude)
        signature, names = next(iter(Interpreter(model_path=str(src)).get_signature_list().items()))
        items = [{names["inputs"][0]: np.ascontiguousarray(calib[i : i + 1])} for i in range(len(calib))]
        result = q.calibrate({signature: items})
        info = {"quantization": "full integer: int8 weights and activations", "calibration_images": len(items)}
        with _no_progress_bar():
            q.quantize(result, enable_progress_bar=False, enable_progress_report=False).export_model(
                dst, overwrite=True
            )
        return info
    with _no_progress_bar():
        q.quantize(enable_progress_bar=False, enable_progress_report=False).export_model(dst, overwrite=True)
    return info


def _no_progress_bar() -> Any:
    """ai-edge-quantizer draws a progress bar on stderr for a model of 100 tensors or more even when told not
    to (its ``quantize`` does not pass ``enable_progress_bar`` on to the model modifier); a budget search
    quantizes once per layer, so the bar would print a line per trial."""
    return contextlib.redirect_stderr(io.StringIO())


def _keep_float(q: Any, scopes: Sequence[str]) -> None:
    from ai_edge_quantizer.algorithm_manager import AlgorithmName
    from ai_edge_quantizer.qtyping import TFLOperationName

    for scope in scopes:
        q.update_quantization_recipe(
            regex="^" + re.escape(scope) + "$",
            operation_name=TFLOperationName.ALL_SUPPORTED,
            algorithm_key=AlgorithmName.NO_QUANTIZE,
        )


def _interpreter(path: Path, threads: int | None = None) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    try:
        it = Interpreter(model_path=str(path), num_threads=int(threads) if threads else None)
        it.allocate_tensors()
    except Exception as e:  # noqa: BLE001 - the interpreter raises ValueError/RuntimeError for bad files
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(f"{path} is not a loadable LiteRT model ({type(e).__name__}: {first})") from None
    return it


def describe(path: Path) -> dict[str, Any] | None:
    """The format row hook: a ``.tflite`` says its row by its weight types, its input size and class count, and
    its class names and preprocessing by :func:`write_about`'s metadata entry."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return None
    if head[4:8] != _MAGIC:
        return None
    try:
        it = _interpreter(path)
        about = read_about(path.read_bytes())
    except (CheckpointError, ImportError):
        return {"format": None, "img_size": None, "num_classes": None}
    types = {np.dtype(t["dtype"]) for t in it.get_tensor_details()}
    name = "tflite-int8" if np.dtype(np.int8) in types else "tflite-fp16" if np.dtype(np.float16) in types else "tflite"
    shape = it.get_input_details()[0]["shape"]
    out = it.get_output_details()[0]["shape"]
    return about | {
        "format": name,
        "img_size": (int(shape[2]), int(shape[3])) if len(shape) == 4 else None,
        "num_classes": int(out[-1]) if len(out) else None,
    }


class LiteRTPredictor(Predictor):
    """A LiteRT ``Interpreter`` (XNNPACK on the CPU) of a batch-1 program: a batch runs image by image."""

    def __init__(self, interpreter: Any, fmt: Format, path: Path):
        self.interpreter, self.format, self.precision = interpreter, fmt.name, fmt.precision
        self.path, self.device = Path(path), "cpu"
        self._in = interpreter.get_input_details()[0]
        self._out = interpreter.get_output_details()[0]

    @property
    def input_hw(self) -> tuple[int, int]:
        shape = self._in["shape"]
        return int(shape[2]), int(shape[3])

    @property
    def runtime_notes(self) -> list[str]:
        n = int(self._in["shape"][0])
        return [f"LiteRT program fixed at batch {n}: a larger batch runs as several calls of {n}"]

    def predict(self, images: np.ndarray) -> np.ndarray:
        shape = tuple(int(s) for s in self._in["shape"])
        if images.shape[1:] != shape[1:]:
            raise ConfigError(f"{self.path.name} takes {shape[1:]} images, not {tuple(images.shape[1:])}")
        step, out = shape[0], []
        for i in range(0, len(images), step):
            chunk = images[i : i + step]
            if len(chunk) < step:  # a last partial batch of a batch-N program is padded, then trimmed
                chunk = np.concatenate([chunk, np.zeros((step - len(chunk), *shape[1:]), np.float32)])
            self.interpreter.set_tensor(self._in["index"], _to(chunk, self._in))
            self.interpreter.invoke()
            out.append(_from(self.interpreter.get_tensor(self._out["index"]), self._out)[: len(images) - i])
        return np.concatenate(out)


def _to(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """Images into the input's type (a full-integer program takes int8 with the input's scale)."""
    if np.dtype(detail["dtype"]) == np.float32:
        return x
    scale, zero = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(detail["dtype"])


def _from(y: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    if np.dtype(detail["dtype"]) == np.float32:
        return y.copy()
    scale, zero = detail["quantization"]
    return (y.astype(np.float32) - zero) * scale


def load(path: Path, fmt: Format, device: str = "cpu", threads: int | None = None) -> LiteRTPredictor:
    """The LiteRT interpreter of ``path`` on the CPU; ``threads`` sets its thread count (XNNPACK's too)."""
    if device != "cpu":
        raise ConfigError(f"LiteRT files run on the CPU here (GPU delegates are for phones), not {device!r}")
    path = require_artifact(path)
    return LiteRTPredictor(_interpreter(path, threads), fmt, path)


if __name__ == "__main__":
    from deploy.child import run_child

    sys.exit(run_child(_write))
