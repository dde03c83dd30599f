"""int8 quantization: dynamic int8 in PyTorch, real calibration images, int8 ONNX via ONNX Runtime.

* :func:`quantize_dynamic_int8` replaces every ``nn.Linear`` with a dynamically quantized one
  (int8 weights, activations quantized per batch at run time) for one PyTorch quantized engine:
  ``qnnpack`` for ARM phones, ``x86`` / ``fbgemm`` / ``onednn`` for x86 servers. In a T2T-ViT
  nearly every weight is in an ``nn.Linear`` (the T2T Performers, the backbone's attention and
  MLP, the head), so this alone makes the model about four times smaller.
* :func:`load_images` reads real images from a folder with the model's own eval transform, for
  static-quantization calibration and for parity checks: a random batch would calibrate the
  activation ranges of images nobody will ever send.
* :func:`quantize_onnx_dynamic` / :func:`quantize_onnx_static` wrap ONNX Runtime's quantization
  tools. Static quantization writes QDQ (QuantizeLinear/DequantizeLinear pairs, which both ONNX
  Runtime and TensorRT read; the TensorRT-bound variant keeps biases float, see
  :data:`TENSORRT_QDQ_OPTIONS`), symmetric activations and weights, per-channel weights, and only
  quantizes the products with a weight (:data:`STATIC_OP_TYPES`, constant second input): they
  hold every weight, so quantizing the normalisations, softmax, GELU or residual additions saves
  no file size. ``benchmarks/results/export_t2t_vit_7.md`` measures the alternatives.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from t2tvit.data import IMAGE_EXTENSIONS, list_images, open_rgb
from t2tvit.errors import ConfigError

__all__ = [
    "QENGINES",
    "STATIC_OP_TYPES",
    "TENSORRT_QDQ_OPTIONS",
    "ImageBatchReader",
    "check_qengine",
    "int32_dequantize_inputs",
    "load_images",
    "qengine",
    "quantize_dynamic_int8",
    "quantize_onnx_dynamic",
    "quantize_onnx_static",
]

QENGINES = ("qnnpack", "x86", "fbgemm", "onednn")
# The matrix-product ops: they hold all the weights and most of the time. Everything else
# (LayerNormalization, Softmax, the Erf of GELU, the Performer's Exp/ReduceMax, residual Adds)
# stays float: quantizing it loses agreement and saves no bytes. Not Conv: T2T-ViT's only
# convolutions are the soft splits' one-hot windows in ONNX (t2tvit.models.layers), exact
# copies that int8 would only make lossy and slower.
STATIC_OP_TYPES = ("MatMul", "Gemm")
# What a QDQ model that TensorRT parses needs beyond ONNX Runtime's defaults. ORT quantizes a Gemm's
# (or Conv's) bias to INT32 behind its own DequantizeLinear; TensorRT's dequantize layer takes only
# INT8/FP8/INT4/FP4 inputs, so the parser rejects that node ("only activation types allowed as input
# to this layer": microsoft/onnxruntime#14229, #17738, onnx/onnx-tensorrt#850). The bias then stays a
# float add after the int8 product, which TensorRT handles itself. NVIDIA's ModelOpt passes the same
# option to ORT's quantizer for TensorRT (``modelopt/onnx/quantization/ort_utils.py``). ORT's own
# kernels keep the INT32 bias (its QGemm fusion wants it), so only the TensorRT-bound model differs.
TENSORRT_QDQ_OPTIONS: dict[str, Any] = {"QuantizeBias": False}


def check_qengine(engine: str) -> str:
    """``engine`` if this PyTorch build supports it, else a :class:`ConfigError` naming the ones it has."""
    supported = [e for e in torch.backends.quantized.supported_engines if e != "none"]
    if engine not in supported:
        raise ConfigError(
            f"quantized engine {engine!r} is not available in this PyTorch build; choose from: {', '.join(supported)}"
        )
    return engine


@contextlib.contextmanager
def qengine(engine: str) -> Iterator[None]:
    """Run the block with ``torch.backends.quantized.engine = engine``, then restore the previous one.

    The engine is process-global and decides how int8 weights are packed, so it is set only
    around quantization, loading and running, never left changed for the caller.
    """
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = check_qengine(engine)
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


@contextlib.contextmanager
def quiet_quantization_warnings() -> Iterator[None]:
    """torch.ao's eager quantization warns that it moves to torchao; it still works and is what
    TorchScript and the lite interpreter run, so keep the warning out of the user's output."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"(?s).*torch\.ao\.quantization.*")
        warnings.filterwarnings("ignore", message=r"(?s).*torchao.*")
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.ao\..*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"(?s).*torch\.jit.* is deprecated", category=FutureWarning)
        yield


def quantize_dynamic_int8(model: nn.Module, engine: str = "qnnpack", float_layers: Sequence[str] = ()) -> nn.Module:
    """A copy of ``model`` (eval mode) with every ``nn.Linear`` dynamically quantized to int8 for ``engine``,
    but those named in ``float_layers`` (module paths, :mod:`compress.budget` chooses them).

    The original is left untouched (it is the fp32 reference of the parity checks).
    """
    model = copy.deepcopy(model).eval()
    spec: Any = {nn.Linear}
    if float_layers:
        keep = set(float_layers)
        qconfig = torch.ao.quantization.default_dynamic_qconfig
        spec = {n: qconfig for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in keep}
    with qengine(engine), quiet_quantization_warnings():
        return torch.ao.quantization.quantize_dynamic(model, spec, dtype=torch.qint8)


def load_images(
    folder: str | Path,
    transform: Any,
    n: int | None = None,
    *,
    seed: int = 0,
    what: str = "calibration",
) -> tuple[np.ndarray, list[Path]]:
    """Up to ``n`` real images from ``folder`` (any depth: ``<class>/<image>`` or flat), transformed.

    The images are a fixed random sample (``seed``) of every image in the folder, so a class-sorted
    folder still gives every class. Unreadable files (corrupt, decompression bombs) are skipped and
    counted in one warning. Returns a float32
    ``(N, 3, H, W)`` array and the files used, in the same order.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{what} folder {folder} does not exist; pass a folder of real images")
    files = list_images(folder)
    if not files:
        raise ConfigError(
            f"{what} folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
            "pass a folder with a few hundred real images, e.g. the validation split of your dataset"
        )
    order = np.random.default_rng(seed).permutation(len(files))
    arrays: list[np.ndarray] = []
    used: list[Path] = []
    skipped: list[Path] = []
    for i in order:
        if n is not None and len(arrays) >= n:
            break
        img = open_rgb(files[i], warn=False)
        if img is None:
            skipped.append(files[i])
            continue
        arrays.append(np.asarray(transform(img), dtype=np.float32))
        used.append(files[i])
    if not arrays:
        raise ConfigError(f"{what} folder {folder} holds no readable images; every file failed to decode")
    if skipped:  # one warning with the count, as the trainer counts skipped samples
        names = ", ".join(f.name for f in skipped[:3]) + (", ..." if len(skipped) > 3 else "")
        warnings.warn(
            f"{what} folder {folder}: skipped {len(skipped)} unreadable image(s) ({names}); used {len(used)}",
            RuntimeWarning,
            stacklevel=2,
        )
    return np.stack(arrays), used


class ImageBatchReader:
    """ONNX Runtime ``CalibrationDataReader`` over an in-memory image array, in batches.

    Built lazily as a subclass of ORT's base class (see :func:`_reader`) so that importing this
    module does not import onnxruntime.
    """

    def __init__(self, images: np.ndarray, input_name: str, batch_size: int = 8):
        self.images, self.input_name, self.batch_size = images, input_name, max(1, batch_size)
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self.images):
            return None
        batch = self.images[self._next : self._next + self.batch_size]
        self._next += self.batch_size
        return {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}

    def rewind(self) -> None:
        self._next = 0


def _reader(images: np.ndarray, input_name: str, batch_size: int) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(ImageBatchReader, CalibrationDataReader):
        pass

    return _Reader(images, input_name, batch_size)


def _input_name(path: Path) -> str:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    return next(i.name for i in graph.input if i.name not in initializers)


def _quiet_ort_logging() -> contextlib.AbstractContextManager[None]:
    import logging

    @contextlib.contextmanager
    def quiet() -> Iterator[None]:
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # the quantizer logs every pre-processing hint at WARNING
        try:
            yield
        finally:
            root.setLevel(level)

    return quiet()


def _static_batch(path: Path) -> int | None:
    """The fixed batch size of the model's image input, or None when the batch dimension is dynamic."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    inp = next(i for i in graph.input if i.name not in initializers)
    dims = inp.type.tensor_type.shape.dim
    return int(dims[0].dim_value) if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0 else None


def _without_value_info(src: Path, dst: Path) -> Path:
    """A copy of ``src`` without its intermediate shape annotations (``value_info``).

    The quantizer re-runs ONNX shape inference in strict mode and rejects some of the shapes the
    dynamo exporter annotates (seen: the head's Gemm, 256 vs the class count); without the
    annotations inference recomputes every shape itself and agrees with the graph.
    """
    import onnx

    model = onnx.load(str(src))
    del model.graph.value_info[:]
    onnx.save(model, str(dst))
    return dst


def _weight_product_nodes(path: Path, op_types: Sequence[str]) -> list[str]:
    """Names of the ``op_types`` nodes whose second input (the weight) is a constant.

    Unnamed nodes are named in place first (the quantizer selects nodes by name).
    """
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    constants = {i.name for i in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    renamed = False
    names: list[str] = []
    for i, node in enumerate(graph.node):
        if not node.name:
            node.name, renamed = f"{node.op_type}_t2t_{i}", True
        if node.op_type in op_types and len(node.input) > 1 and node.input[1] in constants:
            names.append(node.name)
    if renamed:
        onnx.save(model, str(path))
    return names


def quantize_onnx_dynamic(
    src: str | Path, dst: str | Path, *, per_channel: bool = False, exclude: Sequence[str] = ()
) -> dict[str, Any]:
    """Dynamic int8 (int8 weights; activations quantized at run time) of an fp32 ONNX model.

    Only MatMul/Gemm are quantized (``MatMulConstBOnly``: products with a constant weight, not
    the attention's activation-activation products); the nodes named in ``exclude`` stay in float
    (:mod:`compress.budget` chooses them). Returns the settings for the manifest.
    """
    import tempfile

    from onnxruntime.quantization import QuantType, quantize_dynamic

    op_types = ["MatMul", "Gemm"]
    with tempfile.TemporaryDirectory(prefix="t2t-quant-") as tmp, _quiet_ort_logging():
        quantize_dynamic(
            str(_without_value_info(Path(src), Path(tmp) / "clean.onnx")),
            str(dst),
            op_types_to_quantize=op_types,
            per_channel=per_channel,
            weight_type=QuantType.QInt8,
            # the quantizer first rewrites a Gemm into MatMul + Add, naming the MatMul "<gemm>_MatMul"
            nodes_to_exclude=[*exclude, *(f"{name}_MatMul" for name in exclude)],
            extra_options={"MatMulConstBOnly": True},
        )
    record = {"mode": "dynamic", "weights": "int8", "per_channel": per_channel, "op_types": op_types}
    return {"quantization": record | ({"float_nodes": list(exclude)} if exclude else {})}


def _static_settings(n_calib: int, op_types: Sequence[str], for_tensorrt: bool) -> dict[str, Any]:
    """The manifest's record of how :func:`quantize_onnx_static` quantizes."""
    return {
        "mode": "static",
        "format": "QDQ",
        "activations": "int8 symmetric",
        "weights": "int8 symmetric per-channel",
        "calibration": "MinMax",
        "calibration_images": n_calib,
        "op_types": list(op_types),
        "bias": "float (TensorRT-bound)" if for_tensorrt else "int32",
    }


def _preprocessed(model_in: Path, pre: Path, record: dict[str, Any]) -> Path:
    """ONNX Runtime's ``quant_pre_process`` of ``model_in`` into ``pre``, or ``model_in`` itself if it
    fails (an optional step the quantizer recommends); ``record`` says which, and why."""
    from onnxruntime.quantization import quant_pre_process

    try:
        # ORT's symbolic shape inference cannot read the dynamo exporter's graphs; ONNX's can.
        quant_pre_process(str(model_in), str(pre), skip_symbolic_shape=True)
    except Exception as e:  # noqa: BLE001 - optional step; quantize the original instead
        record["preprocessed"] = False
        record["preprocess_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        return model_in
    record["preprocessed"] = True
    return pre


def _prepared(src: Path, work: Path, preprocess: bool, record: dict[str, Any]) -> Path:
    """The model :func:`quantize_onnx_static` quantizes: ``src`` without its shape annotations and, with
    ``preprocess``, through ``quant_pre_process``; made in ``work`` unless it is there already (the record of
    how is kept beside it)."""
    import json

    work.mkdir(parents=True, exist_ok=True)
    done = work / "prepared.json"
    if done.is_file():
        kept = json.loads(done.read_text())
        if kept["src"] != str(src):
            raise ValueError(f"the quantizer's cache {work} holds {kept['src']}, not {src}")
        record.update(kept["record"])
        return work / kept["model"]
    model_in = _without_value_info(src, work / "clean.onnx")
    before = dict(record)
    if preprocess:
        model_in = _preprocessed(model_in, work / "pre.onnx", record)
    added = {k: v for k, v in record.items() if before.get(k) != v}
    done.write_text(json.dumps({"src": str(src), "model": model_in.name, "record": added}))
    return model_in


def _calibration_batches(
    model: Path, calib: np.ndarray, batch_size: int, record: dict[str, Any]
) -> tuple[np.ndarray, int]:
    """The images and batch size ``model`` is calibrated with: a static-batch model (``--batch N,N,N``)
    takes batches of exactly N (the images cut to a multiple of N, ``record`` updated)."""
    static = _static_batch(model)
    if static is None:
        return calib, batch_size
    if len(calib) < static:
        raise ConfigError(f"the model's batch is fixed at {static}: pass at least {static} calibration images")
    calib = calib[: len(calib) // static * static]
    record["calibration_images"] = len(calib)
    return calib, static


def quantize_onnx_static(
    src: str | Path,
    dst: str | Path,
    calib: np.ndarray,
    *,
    op_types: Sequence[str] = STATIC_OP_TYPES,
    activation_products: bool = False,
    batch_size: int = 8,
    preprocess: bool = True,
    for_tensorrt: bool = False,
    exclude: Sequence[str] = (),
    cache: str | Path | None = None,
) -> dict[str, Any]:
    """Static int8 of an fp32 ONNX model in QDQ format, calibrated on real images.

    Activations and weights are symmetric int8 (zero point 0: what TensorRT requires), weights per
    output channel, ranges from MinMax calibration over ``calib`` (normalised ``(N, 3, H, W)``
    float32 images). ``preprocess`` first runs ONNX Runtime's ``quant_pre_process`` (shape
    inference and graph optimisation, which the quantizer recommends); if that fails for a graph
    the original model is quantized as it is, and the manifest says so.

    Only products with a constant weight are quantized unless ``activation_products``: the products
    of two activations carry input-dependent ranges (``benchmarks/export_sizes.py`` measures both).
    The nodes named in ``exclude`` stay in float (:mod:`compress.budget` chooses them).

    ``for_tensorrt`` adds :data:`TENSORRT_QDQ_OPTIONS` (biases stay float) and checks the written
    file has no INT32 ``DequantizeLinear`` input (:func:`int32_dequantize_inputs`), which TensorRT
    cannot parse.

    ``cache``: a folder kept between calls on the same ``src``, images and options that differ only in
    ``exclude`` (an accuracy-budget search's trials): the prepared model and the calibrated ranges (ONNX
    Runtime's calibration cache) are made there once instead of once per call. The ranges do not depend on
    ``exclude``: the calibrator records every ``op_types`` node.
    """
    import tempfile

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if calib is None or len(calib) == 0:
        raise ConfigError("static int8 quantization needs calibration images; pass --calib-data DIR")
    src, dst = Path(src), Path(dst)
    info: dict[str, Any] = {"quantization": _static_settings(len(calib), op_types, for_tensorrt)}
    with tempfile.TemporaryDirectory(prefix="t2t-quant-") as tmp, _quiet_ort_logging():
        work = Path(tmp) if cache is None else Path(cache)
        model_in = _prepared(src, work, preprocess, info["quantization"])
        calib, batch_size = _calibration_batches(model_in, calib, batch_size, info["quantization"])
        nodes = (
            None if activation_products else [n for n in _weight_product_nodes(model_in, op_types) if n not in exclude]
        )
        info["quantization"]["activation_products"] = activation_products
        if nodes is not None:
            info["quantization"]["quantized_nodes"] = len(nodes)
        quantize_static(
            str(model_in),
            str(dst),
            _reader(calib, _input_name(model_in), batch_size),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(op_types),
            nodes_to_quantize=nodes,
            nodes_to_exclude=list(exclude),
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={
                "ActivationSymmetric": True,
                "WeightSymmetric": True,
                # not CalibMaxIntermediateOutputs: ORT 1.31 discards (never merges) the batches it flushes
                **(TENSORRT_QDQ_OPTIONS if for_tensorrt else {}),
            },
            calibration_cache_path=work / "calibration.json",
        )
    if exclude:
        info["quantization"]["float_nodes"] = list(exclude)
    if for_tensorrt:
        _check_tensorrt_bound(dst)
    return info


def static_quantizer(calib: np.ndarray, folder: Path, **options: Any) -> Callable[[Path, Path, Sequence[str]], Any]:
    """:func:`quantize_onnx_static` as an accuracy-budget search calls it, ``(src, dst, exclude)``, with
    ``options``; its calls share one prepared model and one calibration, kept in a new folder under ``folder``."""
    import tempfile

    cache = Path(tempfile.mkdtemp(prefix="static-int8-", dir=folder))
    return lambda src, dst, exclude: quantize_onnx_static(src, dst, calib, exclude=exclude, cache=cache, **options)


def _check_tensorrt_bound(path: Path) -> None:
    bad = int32_dequantize_inputs(path)
    if bad:
        raise ConfigError(
            f"the TensorRT-bound QDQ model still dequantizes INT32 tensors ({', '.join(bad[:3])}); "
            "TensorRT cannot parse them: check that onnxruntime honours QuantizeBias=False"
        )


def int32_dequantize_inputs(path: str | Path) -> list[str]:
    """Names of the INT32 tensors that a ``DequantizeLinear`` in the ONNX file at ``path`` reads.

    TensorRT's dequantize layer accepts INT8, FP8, INT4 and FP4 inputs only (NVIDIA's explicit
    quantization docs), so a QDQ model meant for TensorRT must return an empty list. The types come
    from the initializers, ``Constant`` nodes and ONNX type inference of the file as written.
    """
    import onnx
    from onnx import TensorProto

    model = onnx.load(str(path))
    types = {t.name: t.data_type for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    types[n.output[0]] = a.t.data_type
    inferred = onnx.shape_inference.infer_shapes(model)
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        types.setdefault(vi.name, vi.type.tensor_type.elem_type)
    return [
        n.input[0]
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and n.input and types.get(n.input[0]) == TensorProto.INT32
    ]
