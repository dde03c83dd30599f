"""TensorRT engines (fp32 / fp16 / int8) built from ONNX with the TensorRT Python API, on TensorRT 10 and 11.

Every engine is built from a strongly typed network: the tensor types in the ONNX file are the
precision. TensorRT 11 knows no other kind (its weak-typing API, ``BuilderFlag.FP16`` / ``INT8`` /
``OBEY_PRECISION_CONSTRAINTS`` and ``ILayer.precision``, is gone), and TensorRT 10.12+ deprecates
weak typing in its favour, so one recipe serves both majors (10 sets
``NetworkDefinitionCreationFlag.STRONGLY_TYPED``; 11 ignores the deprecated flag, so it is not
passed). Checked against the bindings of TensorRT 10.16.1 and 11.4.0 (``pyCore.cpp``, ``pyGraph.cpp``,
``pyOnnx.cpp`` on NVIDIA/TensorRT ``release/10.x`` and ``main``), never run here: no machine of this
project has a GPU with TensorRT (docs/formats.md, "TensorRT engines", says what has and has not been run).

- fp32: the fp32 ONNX of the ``onnx`` format (:func:`deploy.onnx.fp32_onnx`), TF32 off.
- fp16: an fp16 copy of it (:func:`convert_onnx_fp16`) in which LayerNorm, softmax and the token
  Performer's own arithmetic stay float32 *by construction of the file*: under strong typing a
  layer computes in its input type. TensorRT's ONNX parser imports ``ReduceLogSumExp`` as
  log(sum(exp(x))) without subtracting the maximum (onnx-tensorrt ``onnxOpImporters.cpp``), and
  the Performer's exponents reach m/2 = 16, so e^16 ~ 8.9e6 would overflow fp16 (max 65504);
  LayerNorm's variance sums lose precision in fp16. Graph inputs and outputs stay float32.
- int8: a TensorRT-bound QDQ model (:func:`compress.quantize.quantize_onnx_static` with
  ``for_tensorrt=True``: float biases, which TensorRT's dequantize layer needs), calibrated on
  ``ctx.calib``. The rest of the network runs in float32.

Intermediate ONNX files go to the export's scratch folder, never next to the engine: only the
engine and its JSON sidecar (``<engine>.json``: TensorRT version, precision, network typing,
batch profile, workspace, layer precision counts, the sha256 of the ONNX parsed, timing-cache
status, GPU name) are artifacts. After the build the engine inspector's per-layer types are
counted (both inspector JSON schemas: TensorRT 10's combined ``Format/Datatype`` and 11's separate
fields), so an engine asked to be fp16 (or int8) that came out fp32 is an error, not a mislabelled
artifact. Every bool the API returns is checked.

TensorRT (and pycuda) are imported inside the functions: importing this module never needs them.
The runner uses PyTorch CUDA tensors as device buffers when CUDA PyTorch is there, else pycuda,
with page-locked host buffers in both.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from deploy import manifest as mf
from deploy.base import ExportContext, Format, Predictor, get_format, sha256_file
from deploy.onnx import graph_record
from t2tvit.errors import ConfigError

__all__ = [
    "TensorRTPredictor",
    "attach_timing_cache",
    "build_plan",
    "check_precision",
    "convert_onnx_fp16",
    "export",
    "fp32_island",
    "io_tensors",
    "layer_precisions",
    "load",
    "performer_core",
    "profile_shapes",
    "sidecar",
    "sidecar_path",
    "trt_major",
]

INPUT, OUTPUT = "images", "logits"
# Layers that move, reinterpret or convert data without computing: they say nothing about the
# precision the engine computes in (a Reformat or Cast to Half exists only because something else
# is fp16). Myelin's own sub-layers show as ``reshape``, ``transpose`` and ``shape_call``.
_DATA_MOVEMENT = {
    "reformat",
    "noop",
    "shuffle",
    "constant",
    "shape",
    "identity",
    "slice",
    "concatenation",
    "cast",
    "reshape",
    "transpose",
    "shape_call",
}
FP16_MAX = 65504.0  # the largest finite float16


# --------------------------------------------------------------------------- pure helpers


def trt_major(version: str) -> int:
    """``"10.13.0.35"`` -> 10."""
    return int(version.split(".")[0])


def build_plan(major: int, precision: str) -> dict[str, Any]:
    """How to build ``precision`` on TensorRT ``major``, as names (no TensorRT needed to decide).

    ``onnx``: which ONNX the network is parsed from ("fp32", "fp16" = converted copy, "qdq" = the
    TensorRT-bound int8 model); ``network_flags`` / ``builder_flags`` / ``clear_flags``:
    ``NetworkDefinitionCreationFlag`` and ``BuilderFlag`` member names. No precision flag is ever
    set: NVIDIA's explicit-quantization guide says to use Q/DQ with strong typing and no
    precision-control flags, and TensorRT 11 has none.
    """
    if precision not in ("fp32", "fp16", "int8"):
        raise ConfigError(f"TensorRT engines are fp32, fp16 or int8, not {precision!r}")
    if major < 10:
        raise ConfigError(f"TensorRT {major}.x is too old; install TensorRT 10 or 11")
    if major > 11:
        raise ConfigError(
            f"TensorRT {major}.x is newer than this toolkit was checked against (10 and 11); "
            'install TensorRT 10 or 11: pip install "t2tvit-edge[tensorrt]"'
        )
    return {
        "onnx": {"fp32": "fp32", "fp16": "fp16", "int8": "qdq"}[precision],
        # 10: opt in (weak typing is the default there); 11: always strongly typed, flag deprecated.
        "network_flags": ["STRONGLY_TYPED"] if major == 10 else [],
        "builder_flags": [],
        # TF32 rounds fp32 products to 10-bit mantissas: off, so fp32 (and the fp32 islands) mean fp32.
        "clear_flags": ["TF32"],
        "typing": "strong",
    }


def profile_shapes(batch: tuple[int, int, int], img_size: tuple[int, int]) -> tuple[tuple[int, ...], ...]:
    """(min, opt, max) input shapes of the one optimization profile."""
    bmin, bopt, bmax = batch
    if not 1 <= bmin <= bopt <= bmax:
        raise ConfigError(f"batch range must satisfy 1 <= min <= opt <= max, got {batch}")
    return tuple((b, 3, *img_size) for b in (bmin, bopt, bmax))


# --------------------------------------------------------------------------- engine inspector JSON
#
# Two schemas (``EngineInspector.get_engine_information(LayerInformationFormat.JSON)`` of an engine
# built with ``ProfilingVerbosity.DETAILED``):
#
# * TensorRT 10: ``{"Layers": [{"Name", "LayerType", "Inputs": [{"Name", "Location", "Dimensions",
#   "Format/Datatype": "Row major linear FP16 format"}], "Outputs": [...], ...}], "Bindings":
#   ["images", "logits"]}``; newer 10.x releases write short type names there ("Half", "Int8").
# * TensorRT 11 ("Migrating IEngineInspector Usage from TensorRT 10.x to 11.x" in NVIDIA's docs):
#   ``Bindings`` is replaced by ``"I/O Tensors": [{"Name", "IOMode", "DataType", "Dimensions",
#   "Location", "IsShapeInferenceIO", "ProfileInfo": [{"MinShape", ..., "Format"}]}]``, and a layer
#   tensor's combined ``Format/Datatype`` is split into ``Format`` and ``Datatype`` (the tensor
#   schema of NVIDIA's trt-perf-analysis tool in TensorRT ``main``: ``Name``, ``Datatype``,
#   ``Dimensions``, ``Format``, ``StrideOrder``, ``Strides``).
#
# A layer whose formats are not shown (``LAYER_NAMES_ONLY`` gives bare names, an engine inspected
# without an execution context says "N/A due to dynamic shapes") counts as "unknown".

_TYPE_KEYS = ("Datatype", "DataType", "Format/Datatype")  # 11, 11's I/O tensors, 10
# Token (lower case) -> precision. "uint8" is its own token, so it is never taken for int8.
_TOKENS = {
    "int4": "int4",
    "fp4": "fp4",
    "int8": "int8",
    "e2m1": "fp4",
    "fp8": "fp8",
    "float8": "fp8",
    "e4m3": "fp8",
    "e5m2": "fp8",
    "fp16": "fp16",
    "half": "fp16",
    "float16": "fp16",
    "bf16": "bf16",
    "bfloat16": "bf16",
    "fp32": "fp32",
    "float": "fp32",
    "float32": "fp32",
    "uint8": "int",
    "int32": "int",
    "int64": "int",
    "bool": "int",
    "e8m0": "int",
}
_RANK = {"int4": 0, "fp4": 0, "int8": 1, "fp8": 1, "fp16": 2, "bf16": 2, "fp32": 3}


def _datatype(text: str) -> str:
    """Precision named by an inspector type string ("Row major linear FP16 format", "Half", "UInt8", ...)."""
    t = text.strip().lower()
    if not t or t.startswith("n/a"):
        return "unknown"
    for token in re.findall(r"[a-z0-9]+", t):
        if token in _TOKENS:
            return _TOKENS[token]
    return "unknown"


def _tensor_type(tensor: dict[str, Any]) -> str:
    for key in _TYPE_KEYS:
        if isinstance(tensor.get(key), str):
            return _datatype(tensor[key])
    return _datatype(str(tensor.get("Format", "")))  # a format name alone may still say the type


def _parsed(info: str | dict[str, Any] | list[Any]) -> Any:
    return json.loads(info) if isinstance(info, str) else info


def layer_precisions(info: str | dict[str, Any] | list[Any]) -> dict[str, int]:
    """Count an engine's compute layers by precision from the inspector's JSON (either schema).

    A layer counts at the lowest float/int8 precision among its tensors (an int8 GEMM with a fused
    float output is int8). Data-movement layers (Reformat, Shuffle, Cast, Myelin's reshape, ...)
    are skipped.
    """
    data = _parsed(info)
    layers = data.get("Layers", []) if isinstance(data, dict) else data
    counts: Counter[str] = Counter()
    for layer in layers:
        if not isinstance(layer, dict):  # LAYER_NAMES_ONLY: a list of names
            counts["unknown"] += 1
            continue
        if str(layer.get("LayerType", "")).strip().lower() in _DATA_MOVEMENT:
            continue
        tensors = [*layer.get("Inputs", []), *layer.get("Outputs", [])]
        kinds = {_tensor_type(t) for t in tensors if isinstance(t, dict)}
        ranked = [k for k in kinds if k in _RANK]
        counts[min(ranked, key=_RANK.__getitem__) if ranked else "unknown" if "unknown" in kinds else "int"] += 1
    return dict(sorted(counts.items()))


def io_tensors(info: str | dict[str, Any] | list[Any]) -> list[dict[str, Any]]:
    """The engine's I/O tensors from the inspector's JSON: ``[{"name", "mode", "dtype"}]``.

    TensorRT 11 lists objects under ``I/O Tensors`` (mode and type known); TensorRT 10 lists bare
    names under ``Bindings`` (mode and type None).
    """
    data = _parsed(info)
    if not isinstance(data, dict):
        return []
    if isinstance(data.get("I/O Tensors"), list):
        return [
            {"name": t.get("Name"), "mode": t.get("IOMode"), "dtype": _tensor_type(t)}
            for t in data["I/O Tensors"]
            if isinstance(t, dict)
        ]
    return [{"name": str(n), "mode": None, "dtype": None} for n in data.get("Bindings", [])]


def check_precision(counts: dict[str, int], requested: str) -> None:
    """Raise if the engine does not compute in the precision it was asked for."""
    known = {k: v for k, v in counts.items() if k in _RANK}
    if not known:
        raise ConfigError(
            f"could not read the engine's layer precisions ({counts or 'no layers'}); "
            "build with ProfilingVerbosity.DETAILED to verify it"
        )
    if requested == "fp32" and any(k != "fp32" for k in known):
        raise ConfigError(f"the fp32 engine has reduced-precision layers {known}")
    if requested == "fp16" and not known.get("fp16") and not known.get("bf16"):
        raise ConfigError(f"the fp16 engine has no fp16 layers {known}: TensorRT built it in fp32")
    if requested == "int8" and not known.get("int8"):
        raise ConfigError(f"the int8 engine has no int8 layers {known}: the Q/DQ nodes were not honoured")


def sidecar(
    *,
    trt_version: str,
    precision: str,
    shapes: tuple[tuple[int, ...], ...],
    workspace_mib: int,
    counts: dict[str, int],
    onnx_sha256: str,
    gpu: str,
    plan: dict[str, Any],
    timing_cache: str = "none",
    about: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON written next to an engine: what it is and what it was built from, and ``about``
    (:func:`deploy.manifest.about`: class names, preprocessing) since an engine has no place of its own for it."""
    return {
        mf.ABOUT_KEY: about or {},
        "tensorrt_version": trt_version,
        "precision": precision,
        "input": INPUT,
        "output": OUTPUT,
        "profile": {"min": list(shapes[0]), "opt": list(shapes[1]), "max": list(shapes[2])},
        "workspace_mib": workspace_mib,
        "layer_precisions": counts,
        "onnx_sha256": onnx_sha256,
        "gpu": gpu,
        "typing": plan["typing"],
        "network_flags": plan["network_flags"],
        "builder_flags": plan["builder_flags"],
        "source_onnx": plan["onnx"],
        "timing_cache": timing_cache,
    }


def sidecar_path(engine: Path) -> Path:
    return engine.with_name(engine.name + ".json")


def describe(path: Path) -> dict[str, Any] | None:
    """The format row hook: an engine's sidecar names its precision (engines themselves are opaque), class
    names and preprocessing."""
    try:
        meta = json.loads(sidecar_path(Path(path)).read_text())
        precision = meta.get("precision")
    except (OSError, ValueError, AttributeError):
        return None
    name = {"fp32": "tensorrt", "fp16": "tensorrt-fp16", "int8": "tensorrt-int8"}.get(precision)
    return mf.read_about(meta.get(mf.ABOUT_KEY)) | {"format": name} if name else None


# --------------------------------------------------------------------------- fp16 ONNX

_NAME_SCOPES = "pkg.torch.onnx.name_scopes"
_CLASS_HIERARCHY = "pkg.torch.onnx.class_hierarchy"
_FP32_OPS = {"LayerNormalization", "Softmax", "LogSoftmax"}


def _meta_list(node: Any, key: str) -> list[str] | None:
    for prop in node.metadata_props:
        if prop.key == key:
            try:
                value = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            return [str(s) for s in value] if isinstance(value, (list, tuple)) else None
    return None


def _modules(node: Any) -> list[tuple[str, str]] | None:
    """The (module path, class) chain that owns ``node``, outermost first, from the dynamo
    exporter's ``pkg.torch.onnx.name_scopes`` and ``class_hierarchy`` (the last entry of both is
    the aten op itself and is dropped). Classes are "" when only the scopes were recorded."""
    scopes = _meta_list(node, _NAME_SCOPES)
    if not scopes:
        return None
    classes = _meta_list(node, _CLASS_HIERARCHY)
    if not classes or len(classes) != len(scopes):
        classes = [""] * len(scopes)
    return list(zip(scopes[:-1], classes[:-1], strict=True))


def _short(cls: str) -> str:
    return cls.rsplit(".", 1)[-1]


def performer_core(node: Any) -> bool:
    """True for the ONNX nodes of a token Performer's own arithmetic (not its Linear, LayerNorm or MLP).

    By name scope and module structure, not by op list, so a change to the Performer's formula
    (another epsilon, a gate) is covered as it is: a node belongs to it when a ``TokenPerformer``
    owns it and its innermost owner is not one of ``torch.nn``'s layers. When the exporter recorded
    scopes but no classes, the owner's path ``tokens_to_token.attentionN`` decides.
    """
    chain = _modules(node)
    if not chain:
        return False
    path, cls = chain[-1]
    if any(c for _, c in chain):
        inside = any(_short(c) == "TokenPerformer" for _, c in chain)
        return inside and not cls.startswith("torch.nn.")
    return re.fullmatch(r"(.*\.)?tokens_to_token\.attention\d+", path) is not None


def fp32_island(node: Any) -> bool:
    """The nodes an fp16 engine keeps in float32: LayerNorm (the op, or a ``LayerNorm`` module's
    decomposition), softmax, and the token Performer's own arithmetic (:func:`performer_core`).
    ``Constant`` nodes are never islands: a constant follows its consumers (see :func:`convert_onnx_fp16`)."""
    if node.op_type == "Constant":
        return False
    if node.op_type in _FP32_OPS:
        return True
    chain = _modules(node) or []
    return any(_short(c) == "LayerNorm" for _, c in chain) or performer_core(node)


# Why not a library. onnxconverter-common 1.16.0 (the newest) ``convert_float_to_float16(keep_io_types=True,
# op_block_list=[], node_block_list=<the fp32_island node names>, max_finite_val=65504, min_positive_val=0)``
# types every node of the digits model like this converter does (78 fp32, 273 fp16), but the islands are not
# fp32 end to end: (1) in each token Performer four island tensors (the Sub feeding ReduceLogSumExp, the
# ReduceLogSumExp, a MatMul, the residual Add before LayerNorm) go fp32 -> fp16 -> fp32 between two island
# nodes, because its Cast-pair cleanup only drops a pair whose Cast-to-fp16 has one reader (the
# several-readers branch compares ``to`` with 32 and 16, not FLOAT=1 / FLOAT16=10); (2) the islands' weights
# and constants (LayerNorm scale and bias, the Performer's) are stored fp16 and cast up, not kept exact. On
# the digits model of ``benchmarks/tensorrt_onnx.py`` (same training run, same 295 digits, ONNX Runtime CPU)
# its file is further from fp32 than this converter's: max |dlogit| 1.2e-2 vs 4.6e-3, mean 6.5e-4 vs 4.0e-4
# (top-1 agreement 1.0 both). On synthetic graphs it writes invalid models: an initializer read by an island
# and an fp16 node stays fp32 for both; ``Cast(to=FLOAT)``, ``ConstantOfShape`` without a value and
# ``Constant`` ``value_float(s)`` outside the islands keep fp32 outputs that it declares fp16. NVIDIA ModelOpt
# 0.47 (AutoCast) needs its ``onnx`` extra, which replaces the pinned onnxruntime with onnxruntime-gpu 1.24,
# downgrades onnx to 1.21 and adds cupy-cuda12x. tests/test_tensorrt.py checks this converter on each case
# above.
def convert_onnx_fp16(model: Any, keep_fp32: Callable[[Any], bool] | None = None) -> Any:
    """An fp16 copy of an fp32 ONNX model for strongly typed TensorRT; graph I/O stay float32.

    Every float32 tensor becomes float16 except the outputs of the nodes ``keep_fp32`` selects
    (default :func:`fp32_island`, which needs the dynamo exporter's name-scope metadata: without
    it the islands cannot be found, and that is an error, not a silently all-fp16 graph). Casts
    are inserted wherever a tensor meets a consumer of the other precision. Constants
    (initializers, ``Constant`` nodes including ``value_float(s)``) follow their consumers: an
    fp32 consumer reads the exact fp32 values, an fp16 consumer an fp16 copy saturated to
    ±65504 (never ±inf); a constant read by both is kept once in each precision.
    ``Cast``/``dtype`` targets and ``ConstantOfShape`` values (explicit or the default float32
    zero) outside the islands become float16. An input or output the op's schema cannot type as
    float16 stays float32. The result is checked with ONNX's strict type inference.
    """
    import onnx
    from onnx import TensorProto

    if keep_fp32 is None:
        if not any(_meta_list(n, _NAME_SCOPES) for n in model.graph.node):
            raise ConfigError(
                "the ONNX model carries no pkg.torch.onnx.name_scopes metadata, so its LayerNorm, softmax and "
                "Performer nodes cannot be kept in fp32; export it with torch.onnx.export(dynamo=True) "
                "(the `onnx` format does) and do not strip its metadata"
            )
        keep_fp32 = fp32_island
    if len(model.functions):
        raise ConfigError("the fp16 conversion does not handle ONNX local functions; export with functions inlined")
    f32, f16 = TensorProto.FLOAT, TensorProto.FLOAT16
    model = onnx.shape_inference.infer_shapes(model)
    graph = model.graph
    opsets = {o.domain or "": o.version for o in model.opset_import}
    nodes = list(graph.node)  # stable objects (protobuf may hand out new wrappers on each access)

    dtype, constants = _element_types(graph, nodes)
    island = [keep_fp32(n) and n.op_type != "Constant" for n in nodes]
    renamed = _fp16_output_copies(graph, nodes, island, dtype, constants, opsets)

    home = {i.name: f32 for i in graph.input}  # the precision each computed tensor has after conversion
    for i, n in enumerate(nodes):
        if n.output and n.output[0] in constants:
            continue
        for j, o in enumerate(n.output):
            if dtype.get(o) == f32:
                home[o] = f32 if island[i] or not _fp16_ok(n, "out", j, opsets) else f16

    casts: dict[tuple[str, int], Any] = {}

    def cast(name: str, to: int) -> str:
        if (name, to) not in casts:
            out = f"{name}__to_{'fp16' if to == f16 else 'fp32'}"
            casts[(name, to)] = onnx.helper.make_node("Cast", [name], [out], to=to, name=f"cast_{out}")
        return casts[(name, to)].output[0]

    const_use: dict[str, list[tuple[Any, int, int]]] = {}
    for i, n in enumerate(nodes):
        for j, name in enumerate(n.input):
            if not name or dtype.get(name) != f32:
                continue
            need = f32 if island[i] or not _fp16_ok(n, "in", j, opsets) else f16
            if name in constants:
                const_use.setdefault(name, []).append((n, j, need))
            elif home.get(name, f32) != need:
                n.input[j] = cast(name, need)
        if not island[i]:
            _retarget_to_fp16(n, f32, f16, home)
    for o in graph.output:
        if o.name in constants:
            const_use.setdefault(o.name, []).append((None, 0, f32))

    graph.initializer.extend(_constants_for_readers(const_use, constants))
    ordered = _with_casts(nodes, list(casts.values()), renamed)
    del graph.node[:]
    graph.node.extend(ordered)
    del graph.value_info[:]  # stale float32 annotations
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ConfigError(f"the fp16 ONNX is not type-consistent ({str(e).splitlines()[0][:200]})") from None
    return model


def _element_types(graph: Any, nodes: list[Any]) -> tuple[dict[str, int], dict[str, Any]]:
    """Every tensor's ONNX element type, and the float32 constants (name -> initializer or Constant node)."""
    from onnx import TensorProto

    f32 = TensorProto.FLOAT
    dtype: dict[str, int] = {}
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        dtype[vi.name] = vi.type.tensor_type.elem_type
    constants: dict[str, Any] = {}
    for t in graph.initializer:
        dtype[t.name] = t.data_type
        if t.data_type == f32:
            constants[t.name] = t
    for n in nodes:
        if n.op_type == "Constant" and _constant_tensor(n, f32) is not None:
            constants[n.output[0]] = n
            dtype[n.output[0]] = f32
    untyped = [o for n in nodes for o in n.output if o and o not in dtype]
    if untyped:
        raise ConfigError(f"ONNX type inference left {len(untyped)} tensors untyped (e.g. {untyped[0]!r})")
    return dtype, constants


def _fp16_output_copies(
    graph: Any, nodes: list[Any], island: list[bool], dtype: dict[str, int], constants: dict[str, Any], opsets: Any
) -> dict[str, str]:
    """Graph outputs stay float32: a producer outside the islands writes an fp16 copy (renamed here,
    its readers rewired), cast back at the end. Returns {graph output: its fp16 copy}."""
    from onnx import TensorProto

    f32 = TensorProto.FLOAT
    out_names = {o.name for o in graph.output if dtype.get(o.name) == f32 and o.name not in constants}
    renamed: dict[str, str] = {}
    for i, n in enumerate(nodes):
        for j, o in enumerate(n.output):
            if o in out_names and not island[i] and _fp16_ok(n, "out", j, opsets):
                renamed[o] = n.output[j] = f"{o}__fp16"
                dtype[renamed[o]] = f32
        for j, name in enumerate(n.input):
            if name in renamed:
                n.input[j] = renamed[name]
    return renamed


def _constants_for_readers(const_use: dict[str, list[tuple[Any, int, int]]], constants: dict[str, Any]) -> list[Any]:
    """Constants follow their readers: only fp16 readers convert it in place; readers of both
    precisions keep the fp32 original and the fp16 ones get a saturated copy (returned, to add)."""
    from onnx import TensorProto

    f32, f16 = TensorProto.FLOAT, TensorProto.FLOAT16
    new_inits = []
    for name, uses in const_use.items():
        needs = {need for _, _, need in uses}
        if needs == {f16}:
            _to_fp16_in_place(constants[name], f32)
        elif f16 in needs:
            copy16 = f"{name}__fp16"
            new_inits.append(_saturated_fp16(_constant_array(constants[name], f32), copy16))
            for n, j, need in uses:
                if need == f16:
                    n.input[j] = copy16
    return new_inits


def _with_casts(nodes: list[Any], casts: list[Any], renamed: dict[str, str]) -> list[Any]:
    """The nodes with each cast right after the node that produces its source (graph inputs and
    initializers first), then the casts back of the renamed outputs: the original order is
    topological, so this one is too."""
    import onnx
    from onnx import TensorProto

    after: dict[str, list[Any]] = {}
    for node in casts:
        after.setdefault(node.input[0], []).append(node)
    produced = {o for n in nodes for o in n.output}
    ordered = [c for name, cs in after.items() if name not in produced for c in cs]
    for n in nodes:
        ordered.append(n)
        for o in n.output:
            ordered.extend(after.get(o, []))
    for original, inner in renamed.items():
        ordered.append(
            onnx.helper.make_node("Cast", [inner], [original], to=TensorProto.FLOAT, name=f"cast_{original}_fp32")
        )
    return ordered


def _fp16_ok(node: Any, kind: str, index: int, opsets: dict[str, int]) -> bool:
    """Whether the op's schema lets input/output ``index`` be float16 (Resize's scales, for one, cannot)."""
    import onnx

    try:
        schema = onnx.defs.get_schema(node.op_type, opsets.get(node.domain or "", 1), node.domain or "")
    except onnx.defs.SchemaError:
        return True  # another domain: nothing to check against
    params = schema.inputs if kind == "in" else schema.outputs
    if not params:
        return True
    p = params[min(index, len(params) - 1)]
    allowed = next((c.allowed_type_strs for c in schema.type_constraints if c.type_param_str == p.type_str), None)
    return "tensor(float16)" in (allowed if allowed is not None else [p.type_str])


def _constant_tensor(node: Any, f32: int) -> Any | None:
    """The float32 value of a ``Constant`` node as a TensorProto (from ``value``, ``value_float`` or
    ``value_floats``), or None when it is not a float32 constant."""
    from onnx import numpy_helper

    for a in node.attribute:
        if a.name == "value" and a.t.data_type == f32:
            return a.t
        if a.name == "value_float":
            return numpy_helper.from_array(np.array(a.f, dtype=np.float32))
        if a.name == "value_floats":
            return numpy_helper.from_array(np.array(list(a.floats), dtype=np.float32))
    return None


def _constant_array(const: Any, f32: int) -> np.ndarray:
    from onnx import numpy_helper

    return numpy_helper.to_array(const if hasattr(const, "data_type") else _constant_tensor(const, f32))


def _saturated_fp16(array: np.ndarray, name: str) -> Any:
    """float16 TensorProto of ``array`` with magnitudes above 65504 clipped to it (not rounded to inf)."""
    from onnx import numpy_helper

    return numpy_helper.from_array(np.clip(array, -FP16_MAX, FP16_MAX).astype(np.float16), name)


def _to_fp16_in_place(const: Any, f32: int) -> None:
    import onnx

    if hasattr(const, "data_type"):  # an initializer
        const.CopyFrom(_saturated_fp16(_constant_array(const, f32), const.name))
        return
    value = _saturated_fp16(_constant_array(const, f32), "")
    del const.attribute[:]
    const.attribute.append(onnx.helper.make_attribute("value", value))


def _retarget_to_fp16(node: Any, f32: int, f16: int, home: dict[str, int]) -> None:
    """Type attributes of a node outside the islands: float32 targets become float16 when its output does."""
    import onnx

    if not node.output or home.get(node.output[0]) != f16:
        return
    for a in node.attribute:
        if a.name in ("to", "dtype") and a.type == a.INT and a.i == f32:
            a.i = f16
    if node.op_type == "ConstantOfShape":
        values = [a for a in node.attribute if a.name == "value"]
        zero = np.zeros(1, dtype=np.float32) if not values else _constant_array(values[0].t, f32)
        del node.attribute[:]
        node.attribute.append(onnx.helper.make_attribute("value", _saturated_fp16(zero, "")))


# --------------------------------------------------------------------------- export


def _source_onnx(
    model: Any, plan: dict[str, Any], ctx: ExportContext, engine: Path | None = None
) -> tuple[Path, dict[str, Any]]:
    """The ONNX the engine is parsed from, in the scratch folder (never next to the engine), and manifest
    fields of its making (int8 within an accuracy budget: ``accuracy_budget``).

    fp32 is the ``onnx`` format's export of TensorRT's deploy graph (:func:`deploy.onnx.fp32_onnx`: one
    file, no external data, a static batch when the batch range is one size, which a dynamic dimension
    with minimum 1 would be specialised away from); fp16 and int8 are derived from it.
    """
    import onnx

    from deploy.onnx import fp32_onnx

    if plan["onnx"] == "qdq" and (ctx.calib is None or len(ctx.calib) == 0):
        raise ConfigError("tensorrt-int8 needs calibration images; pass --calib-data DIR")
    src = fp32_onnx(model, ctx, runtime="tensorrt")
    if plan["onnx"] == "fp32":
        return src, {}
    scratch = ctx.scratch_dir()
    if plan["onnx"] == "fp16":
        dst = scratch / "model-tensorrt-fp16.onnx"
        onnx.save(convert_onnx_fp16(onnx.load(str(src))), str(dst))
        return dst, {}
    from compress.quantize import quantize_onnx_static, static_quantizer

    from . import budget

    dst = scratch / "model-tensorrt-int8.onnx"
    if not budget.asked(ctx):
        quantize_onnx_static(src, dst, ctx.calib, for_tensorrt=True)
        return dst, {}
    from compress.budget import ONNX_RUNTIME

    quantize = static_quantizer(ctx.calib, scratch, for_tensorrt=True)
    untimed = dataclasses.replace(ONNX_RUNTIME, call=None)  # ONNX Runtime's CPU times say nothing about the engine
    fmt = get_format("tensorrt-int8")
    record = budget.file_int8(src, dst, fmt, ctx, quantize, untimed, report=engine)["accuracy_budget"]
    record["measured_in"] = "ONNX Runtime (CPU) on the QDQ model the engine is parsed from"
    return dst, {"accuracy_budget": record}


def _gpu_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    try:
        import pycuda.driver as cuda

        cuda.init()
        return cuda.Device(0).name()
    except Exception:  # noqa: BLE001 - the name is informative only
        return "unknown"


def attach_timing_cache(config: Any, data: bytes, source: str = "timing cache") -> tuple[Any, str]:
    """Give ``config`` a timing cache made from ``data`` (empty: a new cache); returns it and its status.

    ``IBuilderConfig.set_timing_cache(cache, ignore_mismatch=False)`` returns False for a cache
    from another TensorRT version or GPU (its header is verified; pyCore.cpp returns the bool of
    ``setTimingCache``), and ``create_timing_cache`` may return None for bytes it cannot read.
    Either way the build goes on with an empty cache and a warning; only an empty cache that is
    refused too is an error. Status: "new", "reused" or "rejected (...), rebuilt".
    """
    if data:
        cache = config.create_timing_cache(data)
        if cache is not None and config.set_timing_cache(cache, False):
            return cache, "reused"
        why = "unreadable" if cache is None else "built by another TensorRT version or GPU"
        warnings.warn(
            f"TensorRT rejected the {source} ({why}); building with an empty one, which will replace it",
            RuntimeWarning,
            stacklevel=2,
        )
        status = f"rejected ({why}), rebuilt"
    else:
        status = "new"
    cache = config.create_timing_cache(b"")
    if cache is None or not config.set_timing_cache(cache, False):
        raise ConfigError("TensorRT refused even an empty timing cache; rebuild without --timing-cache")
    return cache, status


def _save_timing_cache(config: Any, cache_file: Path) -> None:
    """The builder's timing cache written to ``cache_file`` whole or not at all (through a temporary file)."""
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_name(cache_file.name + ".tmp")
    tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    tmp.replace(cache_file)


def export(model: Any, path: Path | str, fmt: Format | str, ctx: ExportContext) -> dict[str, Any]:
    """Build and write the engine ``path`` plus its sidecar; returns manifest fields."""
    import tensorrt as trt

    fmt = get_format(fmt)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plan = build_plan(trt_major(trt.__version__), fmt.precision)
    shapes = profile_shapes(ctx.batch, ctx.img_size)
    onnx_path, made = _source_onnx(model, plan, ctx, engine=path)
    onnx_sha = sha256_file(onnx_path)

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    for name in plan["network_flags"]:
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ConfigError(f"TensorRT could not parse {onnx_path.name}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, ctx.workspace_mib << 20)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    for name in plan["builder_flags"]:
        config.set_flag(getattr(trt.BuilderFlag, name))
    for name in plan["clear_flags"]:
        config.clear_flag(getattr(trt.BuilderFlag, name))
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT, *shapes)  # returns None; a bad shape makes the profile invalid below
    if config.add_optimization_profile(profile) < 0:
        raise ConfigError(f"TensorRT rejected the batch profile {shapes} for input {INPUT!r}")
    cache_file = ctx.timing_cache
    cache_bytes = cache_file.read_bytes() if cache_file is not None and cache_file.is_file() else b""
    _cache, cache_status = attach_timing_cache(config, cache_bytes, f"timing cache {cache_file}")
    if cache_file is None:
        cache_status = "none"

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ConfigError(f"TensorRT failed to build the {fmt.name} engine; see the TensorRT log above")
    path.write_bytes(bytes(serialized))
    if cache_file is not None:
        _save_timing_cache(config, cache_file)

    try:
        counts = _inspect(path, shapes[1], trt, logger)
        check_precision(counts, fmt.precision)
    except (ConfigError, RuntimeError):
        path.unlink()  # never leave an unverified or mislabelled engine behind
        raise
    meta = sidecar(
        trt_version=trt.__version__,
        precision=fmt.precision,
        shapes=shapes,
        workspace_mib=ctx.workspace_mib,
        counts=counts,
        onnx_sha256=onnx_sha,
        gpu=_gpu_name(),
        plan=plan,
        timing_cache=cache_status,
        about=ctx.about,
    )
    sidecar_path(path).write_text(json.dumps(meta, indent=2) + "\n")
    return {
        "tensorrt_version": meta["tensorrt_version"],
        "gpu": meta["gpu"],
        "profile": meta["profile"],
        "typing": meta["typing"],
        "layer_precisions": counts,
        "sidecar": sidecar_path(path).name,
        "source_onnx": plan["onnx"],
        "source_onnx_sha256": onnx_sha,
        "deploy_graph": graph_record(model, ctx, runtime="tensorrt"),
        "timing_cache": cache_status,
        **made,
    }


def _inspect(path: Path, opt_shape: tuple[int, ...], trt: Any, logger: Any) -> dict[str, int]:
    """Layer precision counts of the built engine, read through an execution context at ``opt``
    (without one, dynamic-shape engines report their formats as "N/A due to dynamic shapes")."""
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise ConfigError(f"TensorRT could not load the engine it just built ({path.name})")
    context = engine.create_execution_context()
    if context is None:
        raise RuntimeError(f"TensorRT could not create an execution context for {path.name} (out of GPU memory?)")
    if not context.set_input_shape(INPUT, opt_shape):
        raise RuntimeError(f"TensorRT rejected the input shape {opt_shape} of its own profile for {path.name}")
    inspector = engine.create_engine_inspector()
    inspector.execution_context = context
    return layer_precisions(inspector.get_engine_information(trt.LayerInformationFormat.JSON))


# --------------------------------------------------------------------------- runtime


class TensorRTPredictor(Predictor):
    """Runs an engine with ``execute_async_v3`` on its own CUDA stream.

    Batches are cut into chunks of at most the profile's max batch; a chunk below its min batch
    (a short last chunk, or a small request) is padded with copies of its last image and the
    padding's logits are dropped. Device and page-locked host buffers are sized once for the max
    shape.
    """

    def __init__(self, path: Path | str, fmt: Format | str) -> None:
        import tensorrt as trt

        fmt = get_format(fmt)
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"no TensorRT engine at {path}; build it first with `t2t export`")
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise ConfigError(
                f"TensorRT {trt.__version__} cannot load {path.name}; an engine only runs on the "
                "TensorRT version and GPU it was built with: rebuild it here"
            )
        import torch

        backend = _TorchCudaBuffers if torch.cuda.is_available() else _PycudaBuffers
        self._runtime = runtime  # the engine must not outlive its runtime
        self._setup(engine, fmt, path, trt, backend)

    @property
    def input_hw(self) -> tuple[int, int] | None:
        return int(self.max_shape[2]), int(self.max_shape[3])

    def _setup(self, engine: Any, fmt: Format, path: Path, trt: Any, backend: Callable[..., Any]) -> None:
        """Everything after deserialization; ``backend(in_shape, in_dtype, out_shape, out_dtype)``
        allocates the buffers (a separate step so the chunking and checks can be exercised without a GPU)."""
        self.format, self.precision, self.device, self.path = fmt.name, fmt.precision, "cuda", path
        self.engine = engine
        self.context = engine.create_execution_context()
        if self.context is None:
            raise RuntimeError(f"TensorRT could not create an execution context for {path.name} (out of GPU memory?)")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        ins = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(ins) != 1 or len(outs) != 1:
            raise ConfigError(f"{path.name} has inputs {ins} and outputs {outs}; expected one of each")
        self.input, self.output = ins[0], outs[0]
        self.in_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self.input)))
        self.out_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self.output)))
        min_shape, _, max_shape = engine.get_tensor_profile_shape(self.input, 0)
        self.min_shape = tuple(int(s) for s in min_shape)
        self.max_shape = tuple(int(s) for s in max_shape)
        self.min_batch, self.max_batch = self.min_shape[0], self.max_shape[0]
        self.buffers = backend(self.max_shape, self.in_dtype, self._output_shape(self.max_shape), self.out_dtype)
        for name, address in ((self.input, self.buffers.input_address), (self.output, self.buffers.output_address)):
            if not self.context.set_tensor_address(name, address):
                raise RuntimeError(f"TensorRT refused the device address of {name!r} for {path.name}")

    def _output_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        if not self.context.set_input_shape(self.input, in_shape):
            raise RuntimeError(
                f"TensorRT rejected input shape {in_shape} for {self.path.name} "
                f"(its profile takes {self.min_shape} to {self.max_shape})"
            )
        return tuple(int(s) for s in self.context.get_tensor_shape(self.output))

    def predict(self, images: np.ndarray) -> np.ndarray:
        if tuple(images.shape[1:]) != self.max_shape[1:]:
            raise ConfigError(
                f"{self.path.name} takes (N, {', '.join(map(str, self.max_shape[1:]))}) images, not {images.shape}"
            )
        outs = []
        for i in range(0, len(images), self.max_batch):
            chunk = images[i : i + self.max_batch]
            n = len(chunk)
            if n < self.min_batch:  # below the profile: set_input_shape would refuse it
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.min_batch - n, axis=0)])
            outs.append(self._run(chunk)[:n])
        return np.concatenate(outs, axis=0).astype(np.float32, copy=False)

    def _run(self, chunk: np.ndarray) -> np.ndarray:
        out_shape = self._output_shape(tuple(chunk.shape))
        self.buffers.upload(np.ascontiguousarray(chunk, dtype=self.in_dtype))
        if not self.context.execute_async_v3(self.buffers.stream_handle):
            raise RuntimeError(f"TensorRT execution of {self.path.name} failed")
        return self.buffers.download(out_shape)


class _TorchCudaBuffers:
    """Device buffers as PyTorch CUDA tensors, page-locked host staging, a dedicated CUDA stream
    (TensorRT's docs: the default stream costs extra device synchronisations)."""

    def __init__(self, in_shape: tuple[int, ...], in_dtype: np.dtype, out_shape: tuple[int, ...], out_dtype: np.dtype):
        import torch

        tin, tout = _torch_dtype(in_dtype), _torch_dtype(out_dtype)
        self.stream = torch.cuda.Stream()
        self.x = torch.empty(in_shape, dtype=tin, device="cuda")
        self.y = torch.empty(int(np.prod(out_shape)), dtype=tout, device="cuda")
        self.host_in = torch.empty(in_shape, dtype=tin).pin_memory()
        self.host_out = torch.empty(int(np.prod(out_shape)), dtype=tout).pin_memory()
        self.input_address, self.output_address = self.x.data_ptr(), self.y.data_ptr()
        self.stream_handle = self.stream.cuda_stream

    def upload(self, chunk: np.ndarray) -> None:
        import torch

        n = len(chunk)
        self.host_in[:n].numpy()[...] = chunk
        with torch.cuda.stream(self.stream):
            self.x[:n].copy_(self.host_in[:n], non_blocking=True)

    def download(self, shape: tuple[int, ...]) -> np.ndarray:
        import torch

        size = int(np.prod(shape))
        with torch.cuda.stream(self.stream):
            self.host_out[:size].copy_(self.y[:size], non_blocking=True)
        self.stream.synchronize()
        return self.host_out[:size].numpy().reshape(shape).copy()


class _PycudaBuffers:
    """Device buffers from pycuda in the primary context (the one TensorRT's runtime uses),
    page-locked host buffers, one stream."""

    def __init__(self, in_shape: tuple[int, ...], in_dtype: np.dtype, out_shape: tuple[int, ...], out_dtype: np.dtype):
        import pycuda.driver as cuda

        cuda.init()
        self._cuda = cuda
        self._ctx = cuda.Device(0).retain_primary_context()
        self._ctx.push()
        try:
            self.stream = cuda.Stream()
            self.host_in = cuda.pagelocked_empty(in_shape, in_dtype)
            self.host_out = cuda.pagelocked_empty(int(np.prod(out_shape)), out_dtype)
            self._d_in = cuda.mem_alloc(self.host_in.nbytes)
            self._d_out = cuda.mem_alloc(self.host_out.nbytes)
        finally:
            self._ctx.pop()
        self.input_address, self.output_address = int(self._d_in), int(self._d_out)
        self.stream_handle = self.stream.handle

    def upload(self, chunk: np.ndarray) -> None:
        n = len(chunk)
        self.host_in[:n] = chunk
        self._ctx.push()
        try:
            self._cuda.memcpy_htod_async(self._d_in, self.host_in[:n], self.stream)
        finally:
            self._ctx.pop()

    def download(self, shape: tuple[int, ...]) -> np.ndarray:
        size = int(np.prod(shape))
        self._ctx.push()
        try:
            self._cuda.memcpy_dtoh_async(self.host_out[:size], self._d_out, self.stream)
            self.stream.synchronize()
        finally:
            self._ctx.pop()
        return np.array(self.host_out[:size]).reshape(shape)


def _torch_dtype(dtype: np.dtype) -> Any:
    import torch

    return {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16}[np.dtype(dtype)]


def load(path: Path | str, fmt: Format | str, device: str = "cuda") -> TensorRTPredictor:
    """Load an engine built by :func:`export`; TensorRT engines run on a CUDA GPU only."""
    if not device.startswith("cuda"):
        raise ConfigError(f"TensorRT engines run on a CUDA GPU, not on {device!r}; use device='cuda'")
    return TensorRTPredictor(path, fmt)
