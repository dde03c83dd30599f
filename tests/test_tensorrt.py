"""TensorRT engines: everything that needs no GPU runs everywhere; the real build and run needs
TensorRT and a CUDA GPU and is skipped without them (``benchmarks/gpu_check.sh`` runs it).

Where a piece of our code talks to TensorRT objects (the timing cache, the runner's chunking and
bool checks), a minimal fake stands for NVIDIA's library: same method names, arguments and return
types as the Python bindings of TensorRT 10.16.1 and 11.4.0 (``pyCore.cpp``: ``set_timing_cache``
and ``set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3`` return bool,
``create_timing_cache`` returns an ``ITimingCache`` or None). The code under test is ours.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import deploy.tensorrt as trtmod
from compress.quantize import int32_dequantize_inputs, load_images, quantize_onnx_static
from deploy import manifest as mf
from deploy.artifacts import resolve
from deploy.base import FORMATS, ExportContext
from deploy.export import PARITY, check_parity, reference_logits
from deploy.onnx import export_fp32
from deploy.tensorrt import (
    FP16_MAX,
    TensorRTPredictor,
    attach_timing_cache,
    build_plan,
    check_precision,
    convert_onnx_fp16,
    fp32_island,
    io_tensors,
    layer_precisions,
    performer_core,
    profile_shapes,
    sidecar,
    sidecar_path,
    trt_major,
)
from t2tvit.data import bundled_dataset_path, eval_transform_for
from t2tvit.errors import ConfigError

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
IMG = 32  # the digits recipe's size
N_PARITY, N_CALIB = 200, 32

# --------------------------------------------------------------------------- inspector JSON, both schemas
#
# TensorRT 10 (EngineInspector JSON, DETAILED): layer tensors carry one combined "Format/Datatype"
# string, long ("Row major linear FP16 format") or, in later 10.x, short ("Half", "Int8"); the I/O
# are a flat "Bindings" list of names. TensorRT 11 (NVIDIA's "Migrating IEngineInspector Usage from
# TensorRT 10.x to 11.x"): "Bindings" became "I/O Tensors" objects (Name, IOMode, DataType,
# Dimensions, Location, IsShapeInferenceIO, ProfileInfo[].Format), and a layer tensor has separate
# "Format" and "Datatype" fields (the tensor schema of the trt-perf-analysis tool in TensorRT main).


def _t10(name: str, fmt: str) -> dict:
    return {"Name": name, "Location": "Device", "Dimensions": [4, 197, 256], "Format/Datatype": fmt}


def _t11(name: str, dtype: str, fmt: str = "Row major linear format (kLINEAR)") -> dict:
    return {"Name": name, "Dimensions": [4, 197, 256], "Format": fmt, "Datatype": dtype, "Strides": [50432, 256, 1]}


def _layer(name: str, kind: str, tin: dict, tout: dict) -> dict:
    return {"Name": name, "LayerType": kind, "Inputs": [tin], "Outputs": [tout], "TacticValue": "0x0"}


# (layer, type, input type, output type), each type as TensorRT (10, 11) would write it
F32, F16 = ("Row major linear FP32", "Float"), ("Row major linear FP16 format", "Half")
_FP16 = [
    ("Reformatting CopyNode for Input Tensor 0", "Reformat", F32, F16),
    ("/blocks.0/attn/qkv/MatMul", "CaskGemmMatrixMultiply", F16, ("Half", "Half")),
    ("{ForeignNode[/blocks.0/norm1...]}", "Myelin", F16, F16),
    ("__myl_Resh_0", "reshape", F16, F16),
    ("__myl_Tran_1", "transpose", F32, F32),
    ("__myl_ShapeCall", "shape_call", F32, F32),
    ("/tokens_to_token/attention1/Exp", "PointWiseV2", F32, F32),
    ("cast_h__to_fp32", "Cast", F16, F32),
]
I8 = ("Thirty-two wide channel vectorized row major Int8 format.", "Int8")
_INT8 = [
    ("/blocks.0/attn/qkv/MatMul", "CaskConvolution", I8, F32),
    ("/blocks.0/mlp/fc1/MatMul", "CaskGemmMatrixMultiply", ("Int8", "Int8"), ("Int8", "Int8")),
    ("/head/Gemm", "CaskGemmMatrixMultiply", ("Float", "Float"), ("Float", "Float")),
    ("image_quant", "PointWiseV2", ("UInt8", "UInt8"), F32),  # UInt8 is not int8
]
_FP32 = [
    ("/blocks.0/attn/qkv/MatMul", "CaskGemmMatrixMultiply", F32, ("Float", "Float")),
    ("{ForeignNode[/blocks.0/norm1...]}", "Myelin", F32, F32),
    ("shuffle", "Shuffle", F16, F16),
]


def _engine_json(rows: list, major: int) -> dict:
    layers = []
    for name, kind, (in10, in11), (out10, out11) in rows:
        if major == 10:
            layers.append(_layer(name, kind, _t10(f"{name}_in", in10), _t10(f"{name}_out", out10)))
        else:
            layers.append(_layer(name, kind, _t11(f"{name}_in", in11), _t11(f"{name}_out", out11)))
    if major == 10:
        return {"Layers": layers, "Bindings": ["images", "logits"]}
    linear = "Row major linear FP32 format (kLINEAR)"
    io = [
        {
            "Name": name,
            "IOMode": mode,
            "DataType": "Float",
            "Dimensions": dims,
            "Location": "Device",
            "IsShapeInferenceIO": False,
            "ProfileInfo": [{"MinShape": dims, "OptShape": dims, "MaxShape": dims, "Format": linear}],
        }
        for name, mode, dims in (("images", "Input", [4, 3, 32, 32]), ("logits", "Output", [4, 10]))
    ]
    return {"Layers": layers, "I/O Tensors": io}


@pytest.mark.parametrize("major", [10, 11])
def test_layer_precisions_read_both_inspector_schemas(major) -> None:
    fp16, int8, fp32 = (_engine_json(rows, major) for rows in (_FP16, _INT8, _FP32))
    # Reformat, reshape, transpose, shape_call, Cast and Shuffle move data and are not counted
    assert layer_precisions(json.dumps(fp16)) == {"fp16": 2, "fp32": 1}
    assert layer_precisions(int8) == {"fp32": 2, "int8": 2}  # the UInt8 layer counts as fp32, not int8
    assert layer_precisions(fp32) == {"fp32": 2}
    check_precision(layer_precisions(fp16), "fp16")
    check_precision(layer_precisions(int8), "int8")
    check_precision(layer_precisions(fp32), "fp32")


def test_io_tensors_of_both_schemas() -> None:
    assert io_tensors(_engine_json(_FP32, 10)) == [
        {"name": "images", "mode": None, "dtype": None},
        {"name": "logits", "mode": None, "dtype": None},
    ]
    assert io_tensors(json.dumps(_engine_json(_FP32, 11))) == [
        {"name": "images", "mode": "Input", "dtype": "fp32"},
        {"name": "logits", "mode": "Output", "dtype": "fp32"},
    ]


def test_the_old_reader_would_have_refused_every_trt11_engine() -> None:
    """The regression: TensorRT 11's split fields read as unknown made check_precision raise and
    the build delete a good engine. A layer with only a ``Format`` name still says its type."""
    only_format = {"Layers": [_layer("a", "gemm", _t11("x", None, "Row major linear FP16 format"), _t11("y", None))]}
    assert layer_precisions(only_format) == {"fp16": 1}
    assert all(k != "unknown" for k in layer_precisions(_engine_json(_FP16, 11)))


def test_layer_precisions_without_formats_are_unknown() -> None:
    names_only = {"Layers": ["/blocks.0/attn/qkv/MatMul", "/head/Gemm"], "Bindings": ["images", "logits"]}
    assert layer_precisions(names_only) == {"unknown": 2}
    dynamic = {"Layers": [_layer("a", "gemm", _t10("x", "N/A due to dynamic shapes"), _t10("y", "N/A"))]}
    assert layer_precisions(dynamic) == {"unknown": 1}
    with pytest.raises(ConfigError, match="DETAILED"):
        check_precision({"unknown": 3}, "fp16")


def test_check_precision_refuses_an_engine_that_is_not_what_was_asked() -> None:
    fp16, fp32 = layer_precisions(_engine_json(_FP16, 11)), layer_precisions(_engine_json(_FP32, 11))
    with pytest.raises(ConfigError, match="no fp16 layers"):
        check_precision(fp32, "fp16")
    with pytest.raises(ConfigError, match="no int8 layers"):
        check_precision(fp16, "int8")
    with pytest.raises(ConfigError, match="reduced-precision"):
        check_precision(fp16, "fp32")


# --------------------------------------------------------------------------- build plan

# Member names of the real enums, read from the Python bindings of 10.16.1.11 and 11.4.0.106.
_BUILDER_FLAGS = {
    10: {"BF16", "DEBUG", "FP16", "FP4", "FP8", "INT4", "INT8", "OBEY_PRECISION_CONSTRAINTS", "TF32", "REFIT"},
    11: {"DEBUG", "DISABLE_TIMING_CACHE", "GPU_FALLBACK", "REFIT", "STRICT_NANS", "TF32", "VERSION_COMPATIBLE"},
}
_NETWORK_FLAGS = {10: {"EXPLICIT_BATCH", "STRONGLY_TYPED"}, 11: {"STRONGLY_TYPED"}}  # 11: deprecated, ignored


@pytest.mark.parametrize("major", [10, 11])
def test_build_plan_is_strongly_typed_with_flags_the_version_has(major) -> None:
    for precision, source in [("fp32", "fp32"), ("fp16", "fp16"), ("int8", "qdq")]:
        p = build_plan(major, precision)
        assert p["onnx"] == source and p["builder_flags"] == [] and p["typing"] == "strong"
        assert set(p["builder_flags"]) | set(p["clear_flags"]) <= _BUILDER_FLAGS[major]
        assert set(p["network_flags"]) <= _NETWORK_FLAGS[major]
    assert build_plan(10, "fp16")["network_flags"] == ["STRONGLY_TYPED"]  # 10 is weakly typed by default
    assert build_plan(11, "fp16")["network_flags"] == []


def test_build_plan_refuses_other_versions_and_precisions() -> None:
    assert trt_major("10.13.0.35") == 10 and trt_major("11.4.0.106") == 11
    with pytest.raises(ConfigError, match="too old"):
        build_plan(8, "fp16")
    with pytest.raises(ConfigError, match="newer than"):
        build_plan(12, "fp16")
    with pytest.raises(ConfigError, match="fp32, fp16 or int8"):
        build_plan(10, "bf16")


def test_profile_shapes_and_sidecar(tmp_path) -> None:
    shapes = profile_shapes((1, 8, 32), (224, 224))
    assert shapes == ((1, 3, 224, 224), (8, 3, 224, 224), (32, 3, 224, 224))
    assert profile_shapes((1, 1, 1), (32, 32)) == ((1, 3, 32, 32),) * 3
    with pytest.raises(ConfigError, match="batch range"):
        profile_shapes((4, 2, 8), (224, 224))
    meta = sidecar(
        trt_version="11.4.0.106",
        precision="fp16",
        shapes=shapes,
        workspace_mib=1024,
        counts={"fp16": 40, "fp32": 6},
        onnx_sha256="ab" * 32,
        gpu="NVIDIA H100",
        plan=build_plan(11, "fp16"),
        timing_cache="reused",
        about=mf.about({"model": "t2t_vit_7", "num_classes": 2, "img_size": [224, 224]}, ["cat", "dog"], None),
    )
    assert meta["profile"] == {"min": [1, 3, 224, 224], "opt": [8, 3, 224, 224], "max": [32, 3, 224, 224]}
    assert meta["typing"] == "strong" and meta["source_onnx"] == "fp16" and meta["timing_cache"] == "reused"
    json.dumps(meta)  # serialisable as is
    engine = tmp_path / "mine.engine"
    assert sidecar_path(engine).name == "mine.engine.json"
    engine.write_bytes(b"opaque")
    sidecar_path(engine).write_text(json.dumps(meta))
    art = resolve(engine)  # a lone engine names its row, classes and model from its sidecar
    assert (art.fmt.name, art.classes, art.model) == ("tensorrt-fp16", ["cat", "dog"], "t2t_vit_7")


def test_tensorrt_rows_are_skipped_here_with_a_reason() -> None:
    for name in ("tensorrt", "tensorrt-fp16", "tensorrt-int8"):
        reason = FORMATS[name].missing()
        if not HAS_TRT:
            assert "tensorrt not installed" in reason and "t2tvit-edge[tensorrt]" in reason
        elif not torch.cuda.is_available():
            assert reason is not None


# --------------------------------------------------------------------------- timing cache (fake TensorRT)


class _FakeTimingCache:
    """Stands for ``tensorrt.ITimingCache``."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def serialize(self) -> bytes:
        return self.data


class _FakeBuilderConfig:
    """Stands for ``tensorrt.IBuilderConfig``'s timing-cache methods: ``create_timing_cache(buffer)``
    returns an ITimingCache or None (bytes it cannot read), ``set_timing_cache(cache,
    ignore_mismatch)`` returns False for a cache whose header names another TensorRT or GPU."""

    def __init__(self, refuse_empty: bool = False) -> None:
        self.refuse_empty, self.attached = refuse_empty, None

    def create_timing_cache(self, serialized_timing_cache: bytes) -> _FakeTimingCache | None:
        if serialized_timing_cache.startswith(b"garbage"):
            return None
        return _FakeTimingCache(bytes(serialized_timing_cache))

    def set_timing_cache(self, cache: _FakeTimingCache, ignore_mismatch: bool) -> bool:
        ok = cache.data in (b"", b"TRT-this-gpu") or ignore_mismatch
        ok = ok and not (self.refuse_empty and cache.data == b"")
        if ok:
            self.attached = cache
        return ok


def test_timing_cache_is_reused_when_tensorrt_accepts_it() -> None:
    config = _FakeBuilderConfig()
    cache, status = attach_timing_cache(config, b"TRT-this-gpu")
    assert status == "reused" and config.attached is cache and cache.data == b"TRT-this-gpu"
    cache, status = attach_timing_cache(config, b"")
    assert status == "new" and config.attached is cache and cache.data == b""


@pytest.mark.parametrize(
    ("data", "why"), [(b"TRT-other-gpu", "built by another TensorRT version or GPU"), (b"garbage", "unreadable")]
)
def test_a_rejected_timing_cache_falls_back_to_an_empty_one(data, why) -> None:
    config = _FakeBuilderConfig()
    with pytest.warns(RuntimeWarning, match=f"rejected the timing cache.*{why}"):
        cache, status = attach_timing_cache(config, data, "timing cache")
    assert config.attached is cache and cache.data == b"" and status == f"rejected ({why}), rebuilt"


def test_an_empty_timing_cache_refused_too_is_an_error() -> None:
    with warnings.catch_warnings(), pytest.raises(ConfigError, match="empty timing cache"):
        warnings.simplefilter("ignore")
        attach_timing_cache(_FakeBuilderConfig(refuse_empty=True), b"TRT-other-gpu")


# --------------------------------------------------------------------------- runner (fake TensorRT engine)


class _FakeContext:
    """Stands for ``tensorrt.IExecutionContext``: ``set_input_shape`` returns False outside the
    profile (as TensorRT does), ``execute_async_v3`` reads the input at the bound address and
    writes logits ``(mean of each image) * (class index + 1)``."""

    def __init__(self, engine: _FakeEngine) -> None:
        self.engine, self.shape, self.addresses, self.shapes_set = engine, None, {}, []
        self.fail_execute = self.fail_address = False

    def set_input_shape(self, name: str, shape: tuple) -> bool:
        lo, _, hi = self.engine.profile
        ok = name == "images" and len(shape) == 4 and all(a <= s <= b for a, s, b in zip(lo, shape, hi, strict=True))
        if ok:
            self.shape = tuple(shape)
            self.shapes_set.append(self.shape)
        return ok

    def get_tensor_shape(self, name: str) -> tuple:
        return self.shape if name == "images" else (self.shape[0], self.engine.classes)

    def set_tensor_address(self, name: str, memory: int) -> bool:
        self.addresses[name] = memory
        return not self.fail_address

    def execute_async_v3(self, stream_handle: int) -> bool:
        if self.fail_execute:
            return False
        n, size = self.shape[0], int(np.prod(self.shape))
        x = np.ctypeslib.as_array((ctypes.c_float * size).from_address(self.addresses["images"])).reshape(self.shape)
        y = np.ctypeslib.as_array((ctypes.c_float * (n * self.engine.classes)).from_address(self.addresses["logits"]))
        y[:] = (x.mean(axis=(1, 2, 3))[:, None] * np.arange(1, self.engine.classes + 1)).ravel()
        return True


class _FakeEngine:
    """Stands for ``tensorrt.ICudaEngine`` (the members the runner reads)."""

    def __init__(self, batch: tuple[int, int, int], classes: int = 3) -> None:
        self.profile = [(b, 3, 4, 4) for b in batch]
        self.classes, self.num_io_tensors, self.context = classes, 2, None

    def get_tensor_name(self, index: int) -> str:
        return ("images", "logits")[index]

    def get_tensor_mode(self, name: str) -> str:
        return "INPUT" if name == "images" else "OUTPUT"

    def get_tensor_dtype(self, name: str) -> str:
        return "FLOAT"

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list:
        return self.profile

    def create_execution_context(self) -> _FakeContext:
        self.context = _FakeContext(self)
        return self.context


_FAKE_TRT = SimpleNamespace(
    TensorIOMode=SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT"), nptype=lambda dtype: np.float32
)


class _HostBuffers:
    """Host memory standing for the device buffers (same interface as ``_TorchCudaBuffers``)."""

    def __init__(self, in_shape, in_dtype, out_shape, out_dtype) -> None:
        self.x, self.y = np.zeros(in_shape, in_dtype), np.zeros(int(np.prod(out_shape)), out_dtype)
        self.input_address, self.output_address, self.stream_handle = self.x.ctypes.data, self.y.ctypes.data, 0

    def upload(self, chunk: np.ndarray) -> None:
        self.x[: len(chunk)] = chunk

    def download(self, shape: tuple) -> np.ndarray:
        return self.y[: int(np.prod(shape))].reshape(shape).copy()


def _predictor(batch: tuple[int, int, int]) -> TensorRTPredictor:
    p = TensorRTPredictor.__new__(TensorRTPredictor)
    p._setup(_FakeEngine(batch), FORMATS["tensorrt"], Path("fake.engine"), _FAKE_TRT, _HostBuffers)
    return p


def _expected(images: np.ndarray) -> np.ndarray:
    return images.mean(axis=(1, 2, 3))[:, None] * np.arange(1, 4)


def test_a_short_last_chunk_is_padded_to_the_profile_minimum() -> None:
    p = _predictor((4, 4, 8))
    images = np.random.default_rng(0).standard_normal((10, 3, 4, 4)).astype(np.float32)
    out = p(images)
    assert out.shape == (10, 3) and np.allclose(out, _expected(images), atol=1e-6)
    # 10 images: a full chunk of 8, then 2 padded to the minimum of 4 (their padding's logits dropped)
    assert p.context.shapes_set[1:] == [(8, 3, 4, 4), (4, 3, 4, 4)]
    assert np.allclose(p(images[:1]), _expected(images[:1]), atol=1e-6)  # one image, padded to 4


def test_static_batch_one_engine_runs_any_batch_one_image_at_a_time() -> None:
    p = _predictor((1, 1, 1))
    images = np.random.default_rng(1).standard_normal((3, 3, 4, 4)).astype(np.float32)
    assert np.allclose(p(images), _expected(images), atol=1e-6)
    assert p.context.shapes_set[1:] == [(1, 3, 4, 4)] * 3


def test_every_bool_the_runtime_api_returns_is_checked() -> None:
    p = _predictor((1, 2, 4))
    images = np.zeros((2, 3, 4, 4), np.float32)
    p.engine.profile[2] = (1, 3, 4, 4)  # the engine now refuses batch 2: set_input_shape returns False
    with pytest.raises(RuntimeError, match="rejected input shape"):
        p(images)
    p = _predictor((1, 2, 4))
    p.context.fail_execute = True
    with pytest.raises(RuntimeError, match="execution of fake.engine failed"):
        p(images)
    engine = _FakeEngine((1, 2, 4))
    real = engine.create_execution_context

    def failing_context() -> _FakeContext:
        ctx = real()
        ctx.fail_address = True
        return ctx

    engine.create_execution_context = failing_context
    p = TensorRTPredictor.__new__(TensorRTPredictor)
    with pytest.raises(RuntimeError, match="refused the device address"):
        p._setup(engine, FORMATS["tensorrt"], Path("fake.engine"), _FAKE_TRT, _HostBuffers)
    with pytest.raises(ConfigError, match=r"takes \(N, 3, 4, 4\) images"):
        _predictor((1, 2, 4))(np.zeros((2, 3, 8, 8), np.float32))


# --------------------------------------------------------------------------- fp16 ONNX, synthetic graphs


def _scoped(node, scopes: list[str], classes: list[str] | None = None):
    node.metadata_props.add(key="pkg.torch.onnx.name_scopes", value=repr(scopes))
    if classes is not None:
        node.metadata_props.add(key="pkg.torch.onnx.class_hierarchy", value=repr(classes))
    return node


_PERF = ["", "tokens_to_token", "tokens_to_token.attention1"]
_PERF_CLS = ["t2tvit.models.t2t_vit.T2TViT", "t2tvit.models.t2t_vit.T2TModule", "t2tvit.models.layers.TokenPerformer"]


def _perf(node, op: str):
    """``node`` as the Performer's own arithmetic would be scoped by the dynamo exporter."""
    return _scoped(node, [*_PERF, op], [*_PERF_CLS, f"aten.{op}"])


def _tiny_onnx() -> onnx.ModelProto:
    """images -> MatMul (a Linear) -> Exp, ReduceSum, Div, Sigmoid (Performer) -> LayerNormalization
    -> MatMul (head; w2 is also read by the Performer's ReduceMax) -> + ConstantOfShape zeros -> Min with
    a Constant (value_floats, 1e6 saturates) times that max -> logits."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32) * 0.1, "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32) + 1e-4, "w2")
    ln_s = numpy_helper.from_array(np.ones(4, np.float32), "ln_s")
    shape3 = numpy_helper.from_array(np.array([3], np.int64), "shape3")
    nodes = [
        _scoped(
            helper.make_node("MatMul", ["images", "w1"], ["h"], name="kqv"),
            [*_PERF, "tokens_to_token.attention1.kqv", "linear"],
            [*_PERF_CLS, "torch.nn.modules.linear.Linear", "aten.linear.default"],
        ),
        _perf(helper.make_node("Exp", ["h"], ["e"], name="exp"), "exp"),
        _perf(helper.make_node("ReduceSum", ["e"], ["s"], keepdims=1, name="sum"), "sum"),
        _perf(helper.make_node("Div", ["e", "s"], ["d"], name="div"), "div"),
        # a later formula's extra node (e.g. the epsilon's sigmoid gate): found by scope, not by op type
        _perf(helper.make_node("Sigmoid", ["d"], ["g"], name="gate"), "sigmoid"),
        _perf(helper.make_node("Constant", [], ["eps"], value_float=1e-8, name="eps"), "c"),
        _perf(helper.make_node("Add", ["g", "eps"], ["n"], name="add_eps"), "add"),
        _scoped(helper.make_node("LayerNormalization", ["n", "ln_s"], ["ln"], axis=-1, name="norm"), ["", "n", "ln"]),
        _scoped(helper.make_node("MatMul", ["ln", "w2"], ["y"], name="head"), ["", "head", "linear_1"]),
        _perf(helper.make_node("ReduceMax", ["w2"], ["w2max"], keepdims=0, name="wmax"), "amax"),
        _scoped(helper.make_node("ConstantOfShape", ["shape3"], ["zeros"], name="zeros"), ["", "head", "zeros"]),
        _scoped(helper.make_node("Constant", [], ["big"], value_floats=[1e6, 7e4, 3e4], name="big"), ["", "h", "c"]),
        _scoped(helper.make_node("Add", ["y", "zeros"], ["y0"], name="add0"), ["", "head", "add0"]),
        _scoped(helper.make_node("Mul", ["big", "w2max"], ["bigw"], name="mulbig"), ["", "head", "mulbig"]),
        _scoped(helper.make_node("Min", ["y0", "bigw"], ["logits"], name="min"), ["", "head", "min"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        [w1, w2, ln_s, shape3],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def _float_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.value_info, *g.output]}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


F16 = TensorProto.FLOAT16


def _producer(model: onnx.ModelProto, tensor: str):
    return next(n for n in model.graph.node if tensor in n.output)


def _io(node) -> list[str]:
    return [t for t in [*node.input, *node.output] if t]


def test_fp16_onnx_of_a_synthetic_graph_types_every_tensor_as_planned() -> None:
    model = _tiny_onnx()
    by_name = {n.name: n for n in model.graph.node}
    assert [n for n in by_name if performer_core(by_name[n])] == ["exp", "sum", "div", "gate", "eps", "add_eps", "wmax"]
    assert fp32_island(by_name["norm"]) and not fp32_island(by_name["kqv"]) and not fp32_island(by_name["head"])
    m16 = convert_onnx_fp16(model)
    onnx.checker.check_model(m16, full_check=True)
    types = _float_types(m16)
    assert types["images"] == types["logits"] == TensorProto.FLOAT  # graph I/O stay fp32
    assert types["h"] == types["y"] == TensorProto.FLOAT16  # the Linears run in fp16
    for name in ("e", "s", "d", "g", "n", "ln", "w2max"):  # Performer and LayerNorm: fp32
        assert types[name] == TensorProto.FLOAT, name
    inits = {t.name: t for t in m16.graph.initializer}
    # w2 is read by the fp16 head and by the fp32 Performer: each gets its own precision, exactly
    assert inits["w2"].data_type == TensorProto.FLOAT and inits["w2__fp16"].data_type == TensorProto.FLOAT16
    assert np.array_equal(numpy_helper.to_array(inits["w2"]), numpy_helper.to_array(_tiny_onnx().graph.initializer[1]))
    consts = {n.output[0]: n for n in m16.graph.node if n.op_type == "Constant"}
    # the Performer's 1e-8 stays fp32 (it would round to 0 in fp16); the head's 1e6 saturates to 65504
    (eps,) = consts["eps"].attribute
    assert eps.name == "value_float" and eps.f == pytest.approx(1e-8) and types["eps"] == TensorProto.FLOAT
    big = numpy_helper.to_array(helper.get_attribute_value(consts["big"].attribute[0]))
    assert big.dtype == np.float16 and big.tolist() == [FP16_MAX, FP16_MAX, 3e4]
    zeros = next(n for n in m16.graph.node if n.op_type == "ConstantOfShape")  # had no value: float32 zeros
    assert numpy_helper.to_array(helper.get_attribute_value(zeros.attribute[0])).dtype == np.float16
    x = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    ref = ort.InferenceSession(model.SerializeToString()).run(None, {"images": x})[0]
    out = ort.InferenceSession(m16.SerializeToString()).run(None, {"images": x})[0]
    assert out.dtype == np.float32 and np.isfinite(out).all() and np.abs(out - ref).max() < 1e-2


def test_fp16_initializers_saturate_instead_of_overflowing() -> None:
    w = numpy_helper.from_array(np.array([[1e5, -7e4], [3.0, 65519.0]], np.float32), "w")
    node = _scoped(helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"), ["", "fc", "linear"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [w],
    )
    m16 = convert_onnx_fp16(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10))
    (w16,) = m16.graph.initializer
    assert numpy_helper.to_array(w16).tolist() == [[FP16_MAX, -FP16_MAX], [3.0, FP16_MAX]]


def test_fp16_keeps_inputs_the_schema_cannot_type_as_fp16_in_fp32() -> None:
    """Resize's ``scales`` is tensor(float) only: converting it would make an invalid model."""
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    node = _scoped(helper.make_node("Resize", ["x", "", "scales"], ["y"], name="up"), ["", "up", "resize"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])],
        [scales],
    )
    m16 = convert_onnx_fp16(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10))
    onnx.checker.check_model(m16, full_check=True)
    assert {t.name: t.data_type for t in m16.graph.initializer} == {"scales": TensorProto.FLOAT}
    assert _float_types(m16)["x__to_fp16"] == TensorProto.FLOAT16


def test_fp16_retargets_casts_to_float_outside_the_islands() -> None:
    """A ``Cast(to=FLOAT)`` between fp16 nodes casts to fp16 (onnxconverter-common 1.16 leaves it
    fp32 while declaring its output fp16: an invalid model)."""
    w = numpy_helper.from_array(np.array([[1.0, -2.0], [0.5, 3.0]], np.float32), "w")
    nodes = [
        _scoped(helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"), ["", "fc", "linear"]),
        _scoped(helper.make_node("Cast", ["y"], ["c"], to=TensorProto.FLOAT, name="cast"), ["", "fc", "to"]),
        _scoped(helper.make_node("Relu", ["c"], ["z"], name="relu"), ["", "act", "relu"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 2])],
        [w],
    )
    m16 = convert_onnx_fp16(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10))
    onnx.checker.check_model(m16, full_check=True)
    types = _float_types(m16)
    assert types["y"] == types["c"] == types["z__fp16"] == F16 and types["z"] == TensorProto.FLOAT
    x = np.array([[1.0, 2.0]], np.float32)
    out = ort.InferenceSession(m16.SerializeToString()).run(None, {"x": x})[0]
    assert out.dtype == np.float32 and out.tolist() == [[2.0, 4.0]]


def test_fp16_conversion_refuses_a_graph_without_name_scopes() -> None:
    model = _tiny_onnx()
    for n in model.graph.node:
        del n.metadata_props[:]
    with pytest.raises(ConfigError, match="name_scopes metadata"):
        convert_onnx_fp16(model)


# --------------------------------------------------------------------------- the real model


@pytest.fixture(scope="module")
def digits(digits_checkpoint, tmp_path_factory) -> dict:
    """The session's T2T-ViT-7 trained briefly on the bundled digits at the recipe's 32 px
    (``conftest.digits_checkpoint``), its held-out validation images for parity and a disjoint set for
    calibration, and its fp32 ONNX (the `onnx` format's)."""
    model = digits_checkpoint(IMG)["model"]
    images, _ = load_images(bundled_dataset_path() / "val", eval_transform_for(model), N_PARITY + N_CALIB)
    onnx_path = tmp_path_factory.mktemp("digits") / "model-fp32.onnx"
    export_fp32(model, onnx_path, ExportContext(img_size=(IMG, IMG), batch=(1, 8, 32)))
    return {"model": model, "parity": images[:N_PARITY], "calib": images[N_PARITY:], "onnx": onnx_path}


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every Cast
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


class _Ort:
    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"images": images})[0]


@pytest.mark.slow
def test_fp16_onnx_of_the_trained_digits_model_keeps_its_islands_and_its_answers(digits) -> None:
    fp32 = onnx.load(str(digits["onnx"]))
    islands = [n for n in fp32.graph.node if fp32_island(n)]
    kinds = {"LayerNormalization", "Softmax"}
    assert {n.op_type for n in islands} >= kinds | {"ReduceLogSumExp", "Exp", "MatMul"}
    assert sum(performer_core(n) for n in fp32.graph.node) >= 20  # both Performers' own arithmetic
    assert all(fp32_island(n) for n in fp32.graph.node if n.op_type in kinds)
    m16 = convert_onnx_fp16(fp32)
    types = _float_types(m16)
    island_names = {n.name for n in islands}
    converted = {n.name: n for n in m16.graph.node}
    for name in island_names:  # every LayerNorm / Softmax / Performer node computes in fp32
        floats = [types[t] for t in _io(converted[name]) if types.get(t) in (TensorProto.FLOAT, TensorProto.FLOAT16)]
        assert floats and all(t == TensorProto.FLOAT for t in floats), name
    products = [n for n in m16.graph.node if n.op_type in ("MatMul", "Gemm", "Conv") and n.name not in island_names]
    assert products and all(types[n.output[0]] == TensorProto.FLOAT16 for n in products)  # the rest is fp16
    # fp32 end to end: no tensor goes fp32 -> fp16 -> fp32 (onnxconverter-common 1.16 leaves such Cast
    # pairs between island nodes where the tensor has several readers) ...
    to = {n.output[0]: helper.get_attribute_value(n.attribute[0]) for n in m16.graph.node if n.op_type == "Cast"}
    pairs = [t for t, dst in to.items() if dst == TensorProto.FLOAT and to.get(_producer(m16, t).input[0]) == F16]
    assert not pairs, pairs
    # ... and every island reads its weights exactly, as fp32 initializers (not an fp16 copy cast up)
    originals = {t.name: t for t in fp32.graph.initializer if t.data_type == TensorProto.FLOAT}
    inits = {t.name: t for t in m16.graph.initializer}
    weights = [(n.name, t) for n in islands for t in n.input if t in originals]
    assert len(weights) > 30
    for name, t in weights:
        assert t in converted[name].input and inits[t].data_type == TensorProto.FLOAT, (name, t)
        assert np.array_equal(numpy_helper.to_array(inits[t]), numpy_helper.to_array(originals[t])), (name, t)
    halves = [numpy_helper.to_array(t) for t in m16.graph.initializer if t.data_type == TensorProto.FLOAT16]
    assert len(halves) > 40 and all(np.isfinite(a).all() and np.abs(a).max() <= FP16_MAX for a in halves)
    # parity with the fp32 PyTorch model on held-out digits, at the export's fp16 threshold
    reference = reference_logits(digits["model"], digits["parity"])
    record = check_parity(_Ort(_session(m16)), digits["parity"], reference, PARITY["fp16"])
    assert record["passed"], record
    assert record["max_abs_diff"] < 0.05 * np.abs(reference).max()


@pytest.mark.slow
def test_performer_found_by_scope_after_its_formula_changes(monkeypatch, tmp_path) -> None:
    """Another formulation of the same core (the epsilon as a sigmoid gate on ``log D - log 1e-8``
    instead of a null feature) adds a ReduceLogSumExp, a Sigmoid and elementwise nodes: all of
    them are still kept in fp32, because the island is found by scope, not by a list of ops."""
    import timm

    import t2tvit  # noqa: F401
    from t2tvit.models import layers

    def gated(q, k, v, w):
        q, k, v, w = q.float(), k.float(), v.float(), w.float()
        wk = k @ w.t() - 0.5 * (k * k).sum(dim=-1, keepdim=True)
        log_k = torch.logsumexp(wk, dim=1, keepdim=True)
        scores = q @ w.t() + log_k
        log_d = torch.logsumexp(scores, dim=-1, keepdim=True)
        gate = torch.sigmoid(log_d - np.log(1e-8))
        return gate * (torch.softmax(scores, dim=-1) @ (torch.exp(wk - log_k).transpose(1, 2) @ v))

    monkeypatch.setattr(layers, "_performer_core_fp32", gated)
    torch.manual_seed(0)
    model = timm.create_model("t2t_vit_7", img_size=IMG, num_classes=10).eval()
    path = tmp_path / "gated.onnx"
    export_fp32(model, path, ExportContext(img_size=(IMG, IMG), batch=(1, 2, 4)))
    fp32 = onnx.load(str(path))
    performer_ops = {n.op_type for n in fp32.graph.node if performer_core(n)}
    assert {"Sigmoid", "ReduceLogSumExp", "Sub"} <= performer_ops
    types = _float_types(convert_onnx_fp16(fp32))
    gates = [n for n in fp32.graph.node if n.op_type == "Sigmoid"]
    assert gates and all(types[n.output[0]] == TensorProto.FLOAT for n in gates)


# --------------------------------------------------------------------------- the ONNX each engine is parsed from


@pytest.mark.slow
def test_tensorrt_bound_qdq_model_has_no_int32_dequantize(digits, tmp_path) -> None:
    ort_bound, trt_bound = tmp_path / "ort.onnx", tmp_path / "trt.onnx"
    info = quantize_onnx_static(digits["onnx"], trt_bound, digits["calib"], for_tensorrt=True)
    assert info["quantization"]["bias"] == "float (TensorRT-bound)"
    assert int32_dequantize_inputs(trt_bound) == []  # read from the file
    quantize_onnx_static(digits["onnx"], ort_bound, digits["calib"])
    assert int32_dequantize_inputs(ort_bound) == ["head.bias_quantized"]  # what TensorRT cannot parse
    reference = reference_logits(digits["model"], digits["parity"])
    record = check_parity(_Ort(_session(onnx.load(str(trt_bound)))), digits["parity"], reference, PARITY["int8"])
    assert record["passed"], record


def test_a_searchs_trials_share_one_calibration_and_write_the_same_files(digits, tmp_path) -> None:
    """``static_quantizer`` (the budget search's quantizer) prepares and calibrates once; each trial's file
    is the one a fresh ``quantize_onnx_static`` call writes, and its cache refuses another model."""
    import hashlib

    from compress.budget import quantizable_layers
    from compress.quantize import static_quantizer

    head = [node for node, module in quantizable_layers(digits["onnx"]) if module == "head"]
    assert len(head) == 1

    def digest(path: Path) -> str:
        return hashlib.sha256(onnx.load(str(path)).SerializeToString()).hexdigest()

    quantize = static_quantizer(digits["calib"], tmp_path, for_tensorrt=True)
    (cache,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    ranges = cache / "calibration.json"  # ONNX Runtime's calibration cache: written once, read by later trials
    written = []
    for i, exclude in enumerate(([], head, [])):
        fresh = quantize_onnx_static(digits["onnx"], tmp_path / f"fresh{i}.onnx", digits["calib"], for_tensorrt=True,
                                     exclude=exclude)  # fmt: skip
        assert quantize(digits["onnx"], tmp_path / f"trial{i}.onnx", exclude) == fresh
        assert digest(tmp_path / f"trial{i}.onnx") == digest(tmp_path / f"fresh{i}.onnx")
        written.append(ranges.stat().st_mtime_ns)
    assert len(set(written)) == 1  # not calibrated again
    with pytest.raises(ValueError, match="holds"):
        quantize(tmp_path / "fresh0.onnx", tmp_path / "other.onnx", [])


@pytest.mark.slow
def test_static_batch_one_gets_its_onnx_in_the_scratch_folder(digits, tmp_path) -> None:
    """``--batch 1,1,1``: the `onnx` format's static export (a dynamic dimension with min 1 would be
    specialised away), one file per precision (no external data), none next to the engine."""
    engine_dir, scratch = tmp_path / "export", tmp_path / "scratch"
    engine_dir.mkdir()
    ctx = ExportContext(img_size=(IMG, IMG), batch=(1, 1, 1), calib=digits["calib"], scratch=scratch)
    assert profile_shapes(ctx.batch, ctx.img_size) == ((1, 3, IMG, IMG),) * 3
    reference = reference_logits(digits["model"], digits["parity"][:4])
    for precision in ("fp32", "fp16", "int8"):
        src, made = trtmod._source_onnx(digits["model"], build_plan(11, precision), ctx)
        assert made == {}  # no budget asked
        assert src.parent == scratch and not any(engine_dir.iterdir())
        model = onnx.load(str(src))
        dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
        assert dims == [1, 3, IMG, IMG], precision
        run = _Ort(_session(model))
        out = np.concatenate([run(digits["parity"][i : i + 1]) for i in range(4)])
        if precision == "fp32":
            assert np.abs(out - reference).max() <= 1e-3 * max(1.0, np.abs(reference).max())
        else:
            assert (out.argmax(1) == reference.argmax(1)).all(), precision
    assert sorted(p.name for p in scratch.iterdir()) == [
        "model-fp32.onnx",
        "model-tensorrt-fp16.onnx",
        "model-tensorrt-int8.onnx",
    ]  # the fp32 export is made once and shared; no .onnx.data beside any of them


def test_tensorrt_int8_needs_calibration_images(tmp_path) -> None:
    ctx = ExportContext(img_size=(IMG, IMG), scratch=tmp_path)
    with pytest.raises(ConfigError, match="calibration images"):  # before any export work
        trtmod._source_onnx(torch.nn.Identity(), build_plan(10, "int8"), ctx)
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------------- real TensorRT on a GPU


@pytest.mark.gpu
@pytest.mark.skipif(
    not HAS_TRT or not torch.cuda.is_available(),
    reason="needs TensorRT and a CUDA GPU" if not HAS_TRT else "needs a CUDA GPU",
)
@pytest.mark.parametrize("batch", [(2, 4, 8), (1, 1, 1)])
@pytest.mark.parametrize("name", ["tensorrt", "tensorrt-fp16", "tensorrt-int8"])
def test_engine_builds_inspects_and_answers_like_pytorch(name, batch, digits, tmp_path) -> None:
    from deploy.tensorrt import load

    fmt = FORMATS[name]
    cache = tmp_path / "timing.cache"
    ctx = ExportContext(img_size=(IMG, IMG), batch=batch, calib=digits["calib"], timing_cache=cache)
    path = tmp_path / "engine" / fmt.filename
    extra = fmt.impl().export(digits["model"], path, fmt, ctx)
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([path.name, sidecar_path(path).name])
    meta = json.loads(sidecar_path(path).read_text())
    assert meta["precision"] == fmt.precision and meta["layer_precisions"] == extra["layer_precisions"]
    assert meta["typing"] == "strong" and cache.stat().st_size > 0 and meta["timing_cache"] == "new"
    predictor = load(path, fmt)
    images = digits["parity"][:9]  # 9 > max batch: full chunks, then a short one (padded below min)
    expected = reference_logits(digits["model"], images)
    logits = predictor(images)
    assert logits.shape == (9, 10)
    if fmt.precision == "fp32":
        assert np.abs(logits - expected).max() <= 1e-3 * max(1.0, np.abs(expected).max())
    else:
        reference = reference_logits(digits["model"], digits["parity"])
        record = check_parity(predictor, digits["parity"], reference, PARITY[fmt.precision])
        assert record["passed"], record
    again = fmt.impl().export(digits["model"], path, fmt, ctx)  # the timing cache is read back
    assert again["timing_cache"] == "reused"
