"""TensorRT engines: the decisions and checks that need no GPU run everywhere; the real build and
run needs TensorRT and a CUDA GPU and is skipped without them."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from deploy.base import FORMATS, ExportContext
from deploy.tensorrt import (
    build_plan,
    check_precision,
    convert_onnx_fp16,
    layer_precisions,
    performer_core,
    profile_shapes,
    sidecar,
    sidecar_path,
    trt_major,
)
from t2tvit.errors import ConfigError

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def _layer(name: str, kind: str, fmt_in: str, fmt_out: str | None = None) -> dict:
    return {
        "Name": name,
        "LayerType": kind,
        "Inputs": [
            {"Name": f"{name}_in", "Location": "Device", "Dimensions": [4, 197, 256], "Format/Datatype": fmt_in}
        ],
        "Outputs": [
            {
                "Name": f"{name}_out",
                "Location": "Device",
                "Dimensions": [4, 197, 256],
                "Format/Datatype": fmt_out or fmt_in,
            }
        ],
        "TacticValue": "0x0000000000000000",
    }


# Shaped like EngineInspector.get_engine_information(LayerInformationFormat.JSON) with DETAILED verbosity.
FP16_ENGINE = {
    "Layers": [
        _layer(
            "Reformatting CopyNode for Input Tensor 0 to /blocks.0/norm1",
            "Reformat",
            "Row major linear FP32",
            "Row major linear FP16 format",
        ),
        _layer("/blocks.0/attn/qkv/MatMul", "CaskGemmMatrixMultiply", "Row major linear FP16 format"),
        _layer("{ForeignNode[/blocks.0/norm1...]}", "Myelin", "Row major linear FP16 format"),
        _layer("/tokens_to_token/attention1/Exp", "PointWiseV2", "Row major linear FP32"),
    ],
    "Bindings": ["images", "logits"],
}
FP32_ENGINE = {
    "Layers": [
        _layer("/blocks.0/attn/qkv/MatMul", "CaskGemmMatrixMultiply", "Row major linear FP32"),
        _layer("{ForeignNode[/blocks.0/norm1...]}", "Myelin", "Row major linear FP32"),
        _layer("shuffle", "Shuffle", "Row major linear FP16 format"),  # data movement does not count
    ],
    "Bindings": ["images", "logits"],
}
INT8_ENGINE = {
    "Layers": [
        _layer(
            "/blocks.0/attn/qkv/MatMul",
            "CaskConvolution",
            "Thirty-two wide channel vectorized row major Int8 format.",
            "Row major linear FP32",
        ),
        _layer("/blocks.0/mlp/fc1/MatMul", "CaskGemmMatrixMultiply", "Int8", "Int8"),  # TensorRT 10.9+ short names
        _layer("/head/Gemm", "CaskGemmMatrixMultiply", "Float"),
    ],
    "Bindings": ["images", "logits"],
}


def test_layer_precisions_count_compute_layers_by_their_lowest_precision() -> None:
    assert layer_precisions(json.dumps(FP16_ENGINE)) == {"fp16": 2, "fp32": 1}
    assert layer_precisions(FP32_ENGINE) == {"fp32": 2}
    assert layer_precisions(INT8_ENGINE) == {"fp32": 1, "int8": 2}
    half = {"Layers": [_layer("a", "CaskGemmMatrixMultiply", "Half")], "Bindings": []}
    assert layer_precisions(half) == {"fp16": 1}


def test_layer_precisions_without_formats_are_unknown() -> None:
    names_only = {"Layers": ["/blocks.0/attn/qkv/MatMul", "/head/Gemm"], "Bindings": ["images", "logits"]}
    assert layer_precisions(names_only) == {"unknown": 2}
    dynamic = {"Layers": [_layer("a", "CaskGemmMatrixMultiply", "N/A due to dynamic shapes")], "Bindings": []}
    assert layer_precisions(dynamic) == {"unknown": 1}


def test_check_precision_refuses_an_engine_that_is_not_what_was_asked() -> None:
    check_precision(layer_precisions(FP16_ENGINE), "fp16")
    check_precision(layer_precisions(FP32_ENGINE), "fp32")
    check_precision(layer_precisions(INT8_ENGINE), "int8")
    with pytest.raises(ConfigError, match="no fp16 layers"):
        check_precision(layer_precisions(FP32_ENGINE), "fp16")
    with pytest.raises(ConfigError, match="no int8 layers"):
        check_precision(layer_precisions(FP16_ENGINE), "int8")
    with pytest.raises(ConfigError, match="reduced-precision"):
        check_precision(layer_precisions(FP16_ENGINE), "fp32")
    with pytest.raises(ConfigError, match="DETAILED"):
        check_precision({"unknown": 3}, "fp16")


def test_build_plan_per_tensorrt_version() -> None:
    assert trt_major("10.13.0.35") == 10 and trt_major("11.4.0.106") == 11
    p = build_plan(10, "fp16")
    assert p["builder_flags"] == ["FP16", "OBEY_PRECISION_CONSTRAINTS"] and p["onnx"] == "fp32" and p["fp32_layers"]
    assert build_plan(10, "int8")["builder_flags"] == ["INT8"] and build_plan(10, "int8")["onnx"] == "qdq"
    assert build_plan(10, "fp32")["builder_flags"] == [] and "TF32" in build_plan(10, "fp32")["clear_flags"]
    for precision, source in [("fp32", "fp32"), ("fp16", "fp16"), ("int8", "qdq")]:
        p = build_plan(11, precision)  # strongly typed: no precision flags exist any more
        assert p["builder_flags"] == [] and p["onnx"] == source and not p["fp32_layers"]
    with pytest.raises(ConfigError, match="too old"):
        build_plan(8, "fp16")
    with pytest.raises(ConfigError, match="fp32, fp16 or int8"):
        build_plan(10, "bf16")


def test_profile_shapes_and_sidecar(tmp_path) -> None:
    shapes = profile_shapes((1, 8, 32), (224, 224))
    assert shapes == ((1, 3, 224, 224), (8, 3, 224, 224), (32, 3, 224, 224))
    with pytest.raises(ConfigError, match="batch range"):
        profile_shapes((4, 2, 8), (224, 224))
    meta = sidecar(
        trt_version="10.13.0.35",
        precision="fp16",
        shapes=shapes,
        workspace_mib=1024,
        counts={"fp16": 40, "fp32": 6},
        onnx_sha256="ab" * 32,
        gpu="NVIDIA H100",
        plan=build_plan(10, "fp16"),
    )
    assert meta["profile"] == {"min": [1, 3, 224, 224], "opt": [8, 3, 224, 224], "max": [32, 3, 224, 224]}
    assert meta["layer_precisions"] == {"fp16": 40, "fp32": 6} and meta["gpu"] == "NVIDIA H100"
    json.dumps(meta)  # serialisable as is
    assert sidecar_path(tmp_path / "model-tensorrt-fp16.engine").name == "model-tensorrt-fp16.engine.json"


def test_tensorrt_rows_are_skipped_here_with_a_reason() -> None:
    for name in ("tensorrt", "tensorrt-fp16", "tensorrt-int8"):
        reason = FORMATS[name].missing()
        if not HAS_TRT:
            assert "tensorrt not installed" in reason and "t2tvit-edge[tensorrt]" in reason
        elif not torch.cuda.is_available():
            assert reason is not None


def _scoped(node, scopes: list[str]):
    node.metadata_props.add(key="pkg.torch.onnx.name_scopes", value=repr(scopes))
    return node


def _tiny_performer_onnx() -> onnx.ModelProto:
    """images -> MatMul (a Linear) -> Exp (performer core) -> ReduceSum (core) -> Div (core) -> MatMul -> logits."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32) * 0.1, "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w2")
    core = ["", "tokens_to_token", "tokens_to_token.attention1"]
    nodes = [
        _scoped(
            helper.make_node("MatMul", ["images", "w1"], ["h"], name="kqv"),
            [*core, "tokens_to_token.attention1.kqv", "linear"],
        ),
        _scoped(helper.make_node("Exp", ["h"], ["e"], name="exp"), [*core, "exp"]),
        _scoped(helper.make_node("ReduceSum", ["e"], ["s"], keepdims=1, name="sum"), [*core, "sum"]),
        _scoped(helper.make_node("Div", ["e", "s"], ["n"], name="div"), [*core, "div"]),
        _scoped(helper.make_node("MatMul", ["n", "w2"], ["logits"], name="head"), ["", "head", "linear_1"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        [w1, w2],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def test_fp16_onnx_keeps_io_and_the_performer_core_in_fp32() -> None:
    model = _tiny_performer_onnx()
    assert [performer_core(n) for n in model.graph.node] == [False, True, True, True, False]
    m16 = convert_onnx_fp16(model)
    onnx.checker.check_model(m16, full_check=True)
    assert m16.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert m16.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert {t.name: t.data_type for t in m16.graph.initializer} == {
        "w1": TensorProto.FLOAT16,
        "w2": TensorProto.FLOAT16,
    }
    inferred = onnx.shape_inference.infer_shapes(m16)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    assert types["h"] == TensorProto.FLOAT16  # the Linear runs in fp16
    assert types["e"] == types["s"] == types["n"] == TensorProto.FLOAT  # the core stays fp32
    x = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    ref = ort.InferenceSession(model.SerializeToString()).run(None, {"images": x})[0]
    out = ort.InferenceSession(m16.SerializeToString()).run(None, {"images": x})[0]
    assert out.dtype == np.float32 and np.abs(out - ref).max() < 1e-2


@pytest.mark.slow
def test_fp16_onnx_of_a_real_t2t_vit_runs_and_agrees(tmp_path) -> None:
    import timm

    import t2tvit  # noqa: F401

    torch.manual_seed(0)
    model = timm.create_model("t2t_vit_7", img_size=32, num_classes=10).eval()
    path = tmp_path / "m.onnx"
    torch.onnx.export(
        model,
        (torch.randn(2, 3, 32, 32),),
        str(path),
        dynamo=True,
        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=8)},),
        input_names=["images"],
        output_names=["logits"],
    )
    fp32 = onnx.load(str(path))
    assert sum(performer_core(n) for n in fp32.graph.node) > 10  # both performers' cores found
    m16 = convert_onnx_fp16(fp32)
    onnx.checker.check_model(m16, full_check=True)
    assert sum(t.data_type == TensorProto.FLOAT16 for t in m16.graph.initializer) > 40
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)).numpy()
    ref = ort.InferenceSession(str(path)).run(None, {"images": x})[0]
    out = ort.InferenceSession(m16.SerializeToString()).run(None, {"images": x})[0]
    assert np.abs(out - ref).max() < 5e-3 * max(1.0, np.abs(ref).max())


@pytest.mark.gpu
@pytest.mark.skipif(
    not HAS_TRT or not torch.cuda.is_available(),
    reason="TensorRT not installed" if not HAS_TRT else "needs a CUDA GPU",
)
@pytest.mark.parametrize("name", ["tensorrt", "tensorrt-fp16"])
def test_engine_builds_inspects_and_answers_like_pytorch(name, tmp_path) -> None:
    import timm

    import t2tvit  # noqa: F401
    from deploy.tensorrt import load

    torch.manual_seed(0)
    model = timm.create_model("t2t_vit_7", img_size=64, num_classes=10).eval()
    fmt = FORMATS[name]
    ctx = ExportContext(img_size=(64, 64), batch=(1, 2, 4), timing_cache=tmp_path / "timing.cache")
    path = tmp_path / fmt.filename
    extra = fmt.impl().export(model, path, fmt, ctx)  # no ctx.built["onnx"]: it exports the ONNX itself
    meta = json.loads(sidecar_path(path).read_text())
    assert meta["precision"] == fmt.precision and meta["layer_precisions"] == extra["layer_precisions"]
    assert (tmp_path / "timing.cache").stat().st_size > 0
    predictor = load(path, fmt)
    x = torch.randn(6, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(x).numpy()
    logits = predictor(x.numpy())  # 6 > max batch 4: two runs
    tol = 1e-3 if fmt.precision == "fp32" else 5e-2 * np.abs(expected).max()
    assert logits.shape == (6, 10) and np.abs(logits - expected).max() <= tol
