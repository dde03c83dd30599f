"""ONNX artifacts run by ONNX Runtime: ``onnx`` (fp32) and its int8 versions.

* ``onnx``: ``torch.onnx.export(dynamo=True)`` with a dynamic batch dimension (``ctx.batch``
  min..max; the legacy TorchScript-based exporter cannot export ``Tensor.unfold`` with dynamic
  shapes), opset ``ctx.opset`` (the opset actually written is read back and recorded), weights
  inside the one file (no ``.onnx.data`` side file), checked with ``onnx.checker``.
* ``onnx-int8-dynamic``: ONNX Runtime dynamic quantization of the weight products.
* ``onnx-int8-static``: ONNX Runtime static QDQ quantization calibrated on ``ctx.calib``
  (see :func:`compress.quantize.quantize_onnx_static` for what is quantized and why).

Every ONNX file is an export of the deploy graph (:func:`deploy.graph.checked_graph`), proven equal
to the model before it is written; the proof is the row's ``deploy_graph`` field. Both int8 formats
start from the fp32 ONNX: the ``onnx`` artifact when it was built in the same run (``ctx.built``),
else an fp32 export into the scratch folder (:func:`fp32_onnx`, which the TensorRT exporter uses too,
with TensorRT's own deploy graph).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import threading
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from t2tvit.errors import CheckpointError, ConfigError

from . import budget
from . import manifest as mf
from .base import ExportContext, Format, Predictor, require_artifact

__all__ = ["OnnxPredictor", "describe", "export", "export_fp32", "fp32_onnx", "graph_record", "load", "opset_of"]

INPUT_NAME, OUTPUT_NAME = "images", "logits"

# The fp32 ONNX files this process exported last, by what decides their bytes (:func:`_export_key`), at most
# _EXPORTED_BYTES of them: exporting the same graph again at the same settings (with and without --max-drop, a
# notebook's second run) copies the file instead of paying torch.export and onnxscript's optimizer again (5.5 s
# at 32 px here). A copy is checked like any other file: the row's parity check runs it against the model.
_EXPORTED: OrderedDict[str, bytes] = OrderedDict()
_EXPORTED_BYTES = 128 * 2**20  # a few small models' files, one T2T-ViT-14's at 224 px; a larger file is not kept
_EXPORTED_LOCK = threading.Lock()


def opset_of(path: Path) -> int:
    """The default-domain opset a model file declares."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def export_fp32(
    model: nn.Module, path: Path, ctx: ExportContext, runtime: str = "onnx", t2t: str | None = None
) -> dict[str, Any]:
    """fp32 ONNX of ``model``'s deploy graph for ``runtime`` (``t2t``: another T2T-module form, for
    benchmarks) with a dynamic batch dimension; returns the manifest fields (``deploy_graph``: its proof)."""
    import onnx
    import torch

    from .graph import checked_graph

    graph, record = checked_graph(model, runtime, ctx, t2t=t2t)

    bmin, bopt, bmax = ctx.batch
    dynamic = bmin != bmax
    n = min(max(2, bopt), bmax) if dynamic else bmin  # batch 1 would be specialised as a constant
    shapes = ({0: torch.export.Dim("batch", min=bmin, max=bmax)},) if dynamic else None
    key = _export_key(graph, n, ctx)
    with _EXPORTED_LOCK:
        done = _EXPORTED.get(key)
        if done is not None:
            _EXPORTED.move_to_end(key)
    if done is not None:
        path.write_bytes(done)
    else:
        out = io.StringIO()
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(out):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph,
                (ctx.example(n),),
                str(path),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=ctx.opset,
                dynamo=True,
                external_data=False,
                dynamic_shapes=shapes,
            )
        onnx.checker.check_model(str(path))
        with _EXPORTED_LOCK:
            _EXPORTED[key] = path.read_bytes()
            while sum(map(len, _EXPORTED.values())) > _EXPORTED_BYTES:
                _EXPORTED.popitem(last=False)
    return {
        "opset": opset_of(path),
        "requested_opset": ctx.opset,
        "exporter": "torch.onnx.export(dynamo=True)",
        "dynamic_batch": [bmin, bmax] if dynamic else False,
        "checked": "onnx.checker",
        "deploy_graph": record,
    }


def _export_key(graph: nn.Module, n: int, ctx: ExportContext) -> str:
    """What decides the bytes :func:`export_fp32` writes for ``graph``: its module tree, every parameter and
    buffer (values, dtypes, shapes), the example batch, batch range, opset and input size, and torch's version.
    Not :func:`deploy.export.weights_digest`: a state dict leaves out non-persistent buffers, which the file holds
    as constants."""
    import itertools

    import torch

    h = hashlib.sha256()
    h.update(repr((str(graph), n, tuple(ctx.batch), ctx.opset, tuple(ctx.img_size), torch.__version__)).encode())
    for name, t in itertools.chain(graph.named_parameters(), graph.named_buffers()):
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def fp32_onnx(model: nn.Module, ctx: ExportContext, runtime: str = "onnx") -> Path:
    """The fp32 ONNX of this export run for ``runtime``: the ``onnx`` artifact if built and its deploy
    graph is ``runtime``'s too, else one in the scratch folder."""
    from .graph import T2T_FORM

    same = T2T_FORM[runtime] == T2T_FORM["onnx"]
    if same and "onnx" in ctx.built and Path(ctx.built["onnx"]).is_file():
        return Path(ctx.built["onnx"])
    path = ctx.scratch_dir() / ("model-fp32.onnx" if same else f"model-fp32-{runtime}.onnx")
    if not path.is_file():
        export_fp32(model, path, ctx, runtime="onnx" if same else runtime)
    return path


def graph_record(model: nn.Module, ctx: ExportContext, runtime: str = "onnx") -> dict[str, Any]:
    """The ``deploy_graph`` proof of the graph behind :func:`fp32_onnx` (for rows built from that file)."""
    from .graph import checked_graph

    return checked_graph(model, runtime, ctx)[1]


def export(model: nn.Module, path: Path, fmt: Format, ctx: ExportContext) -> dict[str, Any]:
    from compress.quantize import quantize_onnx_dynamic, static_quantizer

    mode = fmt.options.get("quantization")
    if mode is None:
        info = export_fp32(model, path, ctx)
    else:
        src = fp32_onnx(model, ctx)
        if mode == "dynamic":
            quantize = lambda s, d, exclude: quantize_onnx_dynamic(s, d, exclude=exclude)  # noqa: E731
        elif mode == "static":
            quantize = static_quantizer(ctx.calib, ctx.scratch_dir())
        else:
            raise ConfigError(f"unknown ONNX quantization {mode!r} for format {fmt.name}")
        info = budget.file_int8(src, path, fmt, ctx, quantize) if budget.asked(ctx) else quantize(src, path, [])
        record = graph_record(model, ctx)
        info = {"opset": opset_of(path), "from": "fp32 ONNX of the same model", **info, "deploy_graph": record}
    write_about(path, ctx.about)
    return info


def write_about(path: Path, about: dict[str, Any]) -> None:
    """Keep ``about`` (:func:`deploy.manifest.about`) in the file's ``metadata_props`` under
    :data:`~deploy.manifest.ABOUT_KEY`, as JSON; other tools' entries are kept."""
    import onnx

    if not about:
        return
    model = onnx.load(str(path), load_external_data=False)
    kept = [(p.key, p.value) for p in model.metadata_props if p.key != mf.ABOUT_KEY]
    del model.metadata_props[:]
    for key, value in [*kept, (mf.ABOUT_KEY, json.dumps(about))]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))


def describe(path: Path) -> dict[str, Any] | None:
    """The format row hook: the ONNX row (from its quantization nodes), input size and class count."""
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        graph = model.graph
    except Exception:  # noqa: BLE001 - not a readable ONNX file: the loader says why when it is loaded
        return None
    ops = {n.op_type for n in graph.node}
    name = "onnx-int8-static" if "QuantizeLinear" in ops else "onnx"
    if ops & {"DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul"}:
        name = "onnx-int8-dynamic"
    inits = {i.name for i in graph.initializer}
    inp = next((i for i in graph.input if i.name not in inits), None)
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim] if inp is not None else []
    out = [d.dim_value for d in graph.output[0].type.tensor_type.shape.dim] if graph.output else []
    return mf.read_about({p.key: p.value for p in model.metadata_props}.get(mf.ABOUT_KEY)) | {
        "format": name,
        "img_size": (dims[2], dims[3]) if len(dims) == 4 and dims[2] > 0 and dims[3] > 0 else None,
        "num_classes": out[-1] if out and out[-1] > 0 else None,
    }


class OnnxPredictor(Predictor):
    """An ONNX Runtime ``InferenceSession``."""

    def __init__(self, session: Any, fmt: Format, path: Path, device: str):
        self.session, self.format, self.precision = session, fmt.name, fmt.precision
        self.path, self.device = Path(path), device
        self.input_name = session.get_inputs()[0].name

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: images})[0]


def load(path: Path, fmt: Format, device: str = "cpu", threads: int | None = None) -> OnnxPredictor:
    """An ONNX Runtime session of ``path``; ``threads`` sets its intra-op thread count (default: ORT's,
    one per physical core)."""
    import onnxruntime as ort

    path = require_artifact(path)
    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ConfigError("device='cuda' needs onnxruntime-gpu (CUDAExecutionProvider is not available)")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    elif device == "cpu":
        providers = ["CPUExecutionProvider"]
    else:
        raise ConfigError(f"device must be 'cpu' or 'cuda', not {device!r}")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    if threads:
        options.intra_op_num_threads = int(threads)
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as e:  # noqa: BLE001 - ORT raises its own exception types for bad files
        raise CheckpointError(f"{path} is not a loadable ONNX model ({type(e).__name__}: {e})") from None
    return OnnxPredictor(session, fmt, path, device)
