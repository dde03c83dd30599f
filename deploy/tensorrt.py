"""TensorRT engines (fp32 / fp16 / int8) built from the ONNX export with the TensorRT Python API.

How each precision is built depends on the TensorRT major version:

- TensorRT 10 (weakly typed networks): the fp32 ONNX with no precision flag (TF32 off, so fp32
  means fp32), the fp32 ONNX with ``BuilderFlag.FP16``, or the QDQ ONNX (``onnx-int8-static``)
  with ``BuilderFlag.INT8`` (explicit quantization: the scales come from the Q/DQ nodes).
- TensorRT 11 (strongly typed only; the precision flags are gone): precision comes from the
  tensor types in the ONNX file. fp16 builds from an fp16 copy of the ONNX written next to the
  engine by :func:`convert_onnx_fp16`, int8 from the QDQ ONNX.

In both, the token performer's core (exponentials whose sums reach ~1e5, beyond fp16's range,
which the PyTorch model also runs in float32 under autocast) stays float32 in an fp16 engine.

Every engine has one optimization profile over the batch range ``ctx.batch``, a workspace limit,
an optional timing cache reused across builds, and a JSON sidecar (``<engine>.json``): TensorRT
version, precision, batch profile, workspace, layer precision counts, ONNX sha256 and GPU name.
After the build the engine inspector's per-layer formats are counted, so an engine asked to be
fp16 (or int8) that came out fp32 is an error, not a silently mislabelled artifact.

TensorRT (and pycuda) are imported inside the functions: importing this module never needs them.
The runner uses PyTorch CUDA tensors as device buffers when CUDA PyTorch is there, else pycuda.
"""

from __future__ import annotations

import ast
import copy
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from deploy.base import ExportContext, Format, Predictor, get_format, sha256_file
from t2tvit.errors import ConfigError

__all__ = [
    "TensorRTPredictor",
    "build_plan",
    "check_precision",
    "convert_onnx_fp16",
    "export",
    "layer_precisions",
    "load",
    "performer_core",
    "profile_shapes",
    "sidecar",
    "trt_major",
]

INPUT, OUTPUT = "images", "logits"
# Layers that move or reinterpret data without computing: they say nothing about the precision
# the engine computes in (a Reformat from Float to Half exists only because something else is fp16).
_DATA_MOVEMENT = {"reformat", "noop", "shuffle", "constant", "shape", "identity", "slice", "concatenation"}


# --------------------------------------------------------------------------- pure helpers


def trt_major(version: str) -> int:
    """``"10.13.0.35"`` -> 10."""
    return int(version.split(".")[0])


def build_plan(major: int, precision: str) -> dict[str, Any]:
    """How to build ``precision`` on TensorRT ``major``, as names (no TensorRT needed to decide).

    ``onnx``: which ONNX the network is parsed from ("fp32", "fp16" = converted copy, "qdq");
    ``network_flags`` / ``builder_flags`` / ``clear_flags``: ``NetworkDefinitionCreationFlag`` and
    ``BuilderFlag`` member names; ``fp32_layers``: pin the performer core to float32 with layer
    precisions (weak typing) rather than through the ONNX types (strong typing).
    """
    if precision not in ("fp32", "fp16", "int8"):
        raise ConfigError(f"TensorRT engines are fp32, fp16 or int8, not {precision!r}")
    if major < 10:
        raise ConfigError(f"TensorRT {major}.x is too old; install TensorRT 10 or newer")
    onnx = {"fp32": "fp32", "fp16": "fp32", "int8": "qdq"}[precision]
    plan: dict[str, Any] = {"onnx": onnx, "network_flags": [], "builder_flags": [], "clear_flags": ["TF32"]}
    plan["fp32_layers"] = False
    if major == 10:  # weakly typed: precision flags let the builder pick lower-precision kernels
        if precision == "fp16":
            plan["builder_flags"] = ["FP16", "OBEY_PRECISION_CONSTRAINTS"]
            plan["fp32_layers"] = True
        elif precision == "int8":
            plan["builder_flags"] = ["INT8"]  # required to honour Q/DQ nodes in a weakly typed network
    else:  # 11+: strongly typed only; the ONNX tensor types are the precision
        if precision == "fp16":
            plan["onnx"] = "fp16"
    return plan


def profile_shapes(batch: tuple[int, int, int], img_size: tuple[int, int]) -> tuple[tuple[int, ...], ...]:
    """(min, opt, max) input shapes of the one optimization profile."""
    bmin, bopt, bmax = batch
    if not 1 <= bmin <= bopt <= bmax:
        raise ConfigError(f"batch range must satisfy 1 <= min <= opt <= max, got {batch}")
    return tuple((b, 3, *img_size) for b in (bmin, bopt, bmax))


def _datatype(text: str) -> str:
    """Precision named by an inspector ``Format/Datatype`` string ("Row major linear FP16 format", "Half", ...)."""
    t = text.lower()
    if not t or t.startswith("n/a"):
        return "unknown"
    if "int8" in t:
        return "int8"
    if "fp8" in t or "e4m3" in t:
        return "fp8"
    if "bf16" in t or "bfloat" in t:
        return "bf16"
    if "fp16" in t or "half" in t or "float16" in t:
        return "fp16"
    if "fp32" in t or "float" in t:
        return "fp32"
    if re.search(r"int(32|64)|bool|uint8", t):
        return "int"
    return "unknown"


_RANK = {"int8": 0, "fp8": 1, "fp16": 2, "bf16": 2, "fp32": 3}


def layer_precisions(info: str | dict[str, Any]) -> dict[str, int]:
    """Count an engine's compute layers by precision from the inspector's JSON.

    ``info`` is ``EngineInspector.get_engine_information(LayerInformationFormat.JSON)`` (a string
    or its parsed form): ``{"Layers": [{"Name", "LayerType", "Inputs": [{"Format/Datatype": ...}],
    "Outputs": [...]}, ...], "Bindings": [...]}``. A layer counts at the lowest float/int8
    precision among its tensors (an int8 GEMM with a fused float output is int8). Pure data-movement
    layers (Reformat, NoOp, Shuffle, ...) are skipped; layers whose formats are not shown (a
    ``LAYER_NAMES_ONLY`` engine gives bare names) count as "unknown".
    """
    data = json.loads(info) if isinstance(info, str) else info
    layers = data.get("Layers", []) if isinstance(data, dict) else data
    counts: Counter[str] = Counter()
    for layer in layers:
        if not isinstance(layer, dict):  # LAYER_NAMES_ONLY: a list of names
            counts["unknown"] += 1
            continue
        if str(layer.get("LayerType", "")).lower() in _DATA_MOVEMENT:
            continue
        tensors = [*layer.get("Inputs", []), *layer.get("Outputs", [])]
        kinds = {_datatype(str(t.get("Format/Datatype", ""))) for t in tensors if isinstance(t, dict)}
        ranked = [k for k in kinds if k in _RANK]
        counts[min(ranked, key=_RANK.__getitem__) if ranked else "unknown" if "unknown" in kinds else "int"] += 1
    return dict(sorted(counts.items()))


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
) -> dict[str, Any]:
    """The JSON written next to an engine: what it is and what it was built from."""
    return {
        "tensorrt_version": trt_version,
        "precision": precision,
        "input": INPUT,
        "output": OUTPUT,
        "profile": {"min": list(shapes[0]), "opt": list(shapes[1]), "max": list(shapes[2])},
        "workspace_mib": workspace_mib,
        "layer_precisions": counts,
        "onnx_sha256": onnx_sha256,
        "gpu": gpu,
        "builder_flags": plan["builder_flags"],
        "source_onnx": plan["onnx"],
    }


def sidecar_path(engine: Path) -> Path:
    return engine.with_name(engine.name + ".json")


def describe(path: Path) -> dict[str, Any] | None:
    """The format row hook: an engine's sidecar names its precision (engines themselves are opaque)."""
    try:
        precision = json.loads(sidecar_path(Path(path)).read_text()).get("precision")
    except (OSError, ValueError, AttributeError):
        return None
    name = {"fp32": "tensorrt", "fp16": "tensorrt-fp16", "int8": "tensorrt-int8"}.get(precision)
    return {"format": name} if name else None


# --------------------------------------------------------------------------- fp16 ONNX


def _scopes(node: Any) -> list[str]:
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                return [str(s) for s in ast.literal_eval(prop.value)]
            except (ValueError, SyntaxError):
                return []
    return []


def performer_core(node: Any) -> bool:
    """True for the ONNX nodes of a token performer's own arithmetic (not its Linear layers).

    The exporter records each node's module path in ``pkg.torch.onnx.name_scopes``; the core's
    nodes sit directly in ``tokens_to_token.attentionN`` (its kqv / proj / mlp live one level down).
    A T2T-ViT-t token transformer puts its softmax attention under ``.attn``, so it is not matched.
    """
    scopes = _scopes(node)
    return len(scopes) >= 2 and re.fullmatch(r"(.*\.)?tokens_to_token\.attention\d+", scopes[-2]) is not None


def convert_onnx_fp16(model: Any, keep_fp32: Callable[[Any], bool] = performer_core) -> Any:
    """An fp16 copy of an fp32 ONNX model for strongly typed TensorRT; I/O stay float32.

    Every float tensor becomes float16 except the outputs of nodes ``keep_fp32`` selects; Casts
    are inserted wherever a tensor meets a consumer of the other precision (the graph input, the
    fp32 islands, the graph output). Float initializers only read by fp32 nodes stay fp32; Cast
    and Constant nodes outside the islands are retargeted to float16.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.shape_inference.infer_shapes(model)
    graph = model.graph
    f32, f16 = TensorProto.FLOAT, TensorProto.FLOAT16
    dtype: dict[str, int] = {}
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        dtype[vi.name] = vi.type.tensor_type.elem_type
    inits = {t.name: t for t in graph.initializer}
    for t in graph.initializer:
        dtype[t.name] = t.data_type
    # One list of the node objects: protobuf may hand out a new wrapper on every access, and the
    # id()s used below must stay the same.
    nodes = list(graph.node)
    island = {id(n) for n in nodes if keep_fp32(n)}
    consumers: dict[str, list[Any]] = {}
    for n in nodes:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    graph_inputs = {i.name for i in graph.input}
    graph_outputs = {o.name for o in graph.output}

    # Which float tensors are float16 after conversion.
    home16: set[str] = set()
    for name, t in inits.items():
        if t.data_type == f32 and not all(id(c) in island for c in consumers.get(name, [])):
            home16.add(name)
    for n in nodes:
        if id(n) in island:
            continue
        for out in n.output:
            if dtype.get(out) == f32 or (n.op_type == "Cast" and _cast_to(n) == f32):
                home16.add(out)

    casts: dict[tuple[str, int], str] = {}
    new_nodes: list[Any] = []

    def cast(name: str, to: int) -> str:
        key = (name, to)
        if key not in casts:
            casts[key] = f"{name}__to_{'fp16' if to == f16 else 'fp32'}"
            new_nodes.append(helper.make_node("Cast", [name], [casts[key]], to=to, name=f"cast_{casts[key]}"))
        return casts[key]

    body: list[Any] = []
    for n in nodes:
        fp32_node = id(n) in island
        if not fp32_node:
            _retarget_to_fp16(n, f32, f16, numpy_helper)
        for i, name in enumerate(n.input):
            if not name or dtype.get(name) != f32:
                continue
            is16 = name in home16
            if fp32_node and is16:
                n.input[i] = cast(name, f32)
            elif not fp32_node and not is16:  # graph input or an island output feeding fp16 work
                n.input[i] = cast(name, f16)
        body.append(n)
    for name, t in inits.items():
        if name in home16:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), name))
    # Graph outputs stay float32.
    for out in graph.output:
        if out.name in home16:
            inner = f"{out.name}__fp16"
            for n in body:
                n.output[:] = [inner if o == out.name else o for o in n.output]
                n.input[:] = [inner if o == out.name else o for o in n.input]
            new_nodes.append(helper.make_node("Cast", [inner], [out.name], to=f32, name=f"cast_{out.name}_fp32"))
    # Inputs' casts first, output casts last, the rest right after their producers: a topological order.
    ordered = [copy.deepcopy(n) for n in _topological(body + new_nodes, graph_inputs | set(inits))]
    del graph.node[:]
    graph.node.extend(ordered)
    del graph.value_info[:]  # stale float32 annotations; consumers re-infer
    assert graph_outputs == {o.name for o in graph.output}
    return model


def _cast_to(node: Any) -> int | None:
    for a in node.attribute:
        if a.name == "to":
            return int(a.i)
    return None


def _retarget_to_fp16(node: Any, f32: int, f16: int, numpy_helper: Any) -> None:
    for a in node.attribute:
        if node.op_type == "Cast" and a.name == "to" and a.i == f32:
            a.i = f16
        elif a.t is not None and a.t.data_type == f32 and a.type == a.TENSOR:  # Constant, ConstantOfShape
            arr = numpy_helper.to_array(a.t).astype(np.float16)
            a.t.CopyFrom(numpy_helper.from_array(arr, a.t.name))


def _topological(nodes: list[Any], available: Iterable[str]) -> list[Any]:
    ready = set(available)
    pending = list(nodes)
    ordered: list[Any] = []
    while pending:
        rest = []
        for n in pending:
            if all(not i or i in ready for i in n.input):
                ordered.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise ConfigError("cannot order the fp16 ONNX graph: it has a cycle or a missing input")
        pending = rest
    return ordered


# --------------------------------------------------------------------------- export


def _source_onnx(model: Any, path: Path, plan: dict[str, Any], ctx: ExportContext) -> Path:
    """The ONNX the engine is parsed from: the exporter's artifact, or a fresh fp32 export."""
    if plan["onnx"] == "qdq":
        src = ctx.built.get("onnx-int8-static")
        if src is None:
            raise ConfigError("tensorrt-int8 builds from the QDQ ONNX; export onnx-int8-static in the same run")
        return Path(src)
    if "onnx" in ctx.built:
        return Path(ctx.built["onnx"])
    import torch

    onnx_path = path.with_name(path.stem + ".source.onnx")
    bmin, bopt, bmax = ctx.batch
    n = min(max(bopt, 2), bmax)  # torch.export specialises an example batch of 1
    dims = ({0: torch.export.Dim("batch", min=bmin, max=max(bmax, 2))},)
    torch.onnx.export(
        model,
        (ctx.example(n),),
        str(onnx_path),
        dynamo=True,
        dynamic_shapes=dims,
        input_names=[INPUT],
        output_names=[OUTPUT],
        opset_version=ctx.opset,
    )
    return onnx_path


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


def export(model: Any, path: Path | str, fmt: Format | str, ctx: ExportContext) -> dict[str, Any]:
    """Build and write the engine ``path`` plus its sidecar; returns manifest fields."""
    import onnx
    import tensorrt as trt

    fmt = get_format(fmt)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plan = build_plan(trt_major(trt.__version__), fmt.precision)
    shapes = profile_shapes(ctx.batch, ctx.img_size)
    onnx_path = _source_onnx(model, path, plan, ctx)
    onnx_sha = sha256_file(onnx_path)
    keep_fp32: set[str] = set()
    if plan["onnx"] == "fp16":
        fp16_path = path.with_name(path.stem + ".fp16.onnx")
        onnx.save(convert_onnx_fp16(onnx.load(str(onnx_path))), str(fp16_path))
        onnx_path = fp16_path
    elif plan["fp32_layers"]:
        keep_fp32 = {
            n.name for n in onnx.load(str(onnx_path), load_external_data=False).graph.node if performer_core(n)
        }

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
        if hasattr(trt.BuilderFlag, name):
            config.clear_flag(getattr(trt.BuilderFlag, name))
    if keep_fp32:
        pinned = _pin_fp32(network, keep_fp32, trt)
        if not pinned:
            raise ConfigError("found none of the performer's layers to keep in fp32 in the parsed network")
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT, *shapes)
    config.add_optimization_profile(profile)
    cache_file = ctx.timing_cache
    cache_bytes = cache_file.read_bytes() if cache_file is not None and cache_file.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ConfigError(f"TensorRT failed to build the {fmt.name} engine; see the TensorRT log above")
    path.write_bytes(bytes(serialized))
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        cache_file.write_bytes(bytes(config.get_timing_cache().serialize()))

    counts = _inspect(path, shapes[1], trt, logger)
    try:
        check_precision(counts, fmt.precision)
    except ConfigError:
        path.unlink()  # never leave a mislabelled engine behind
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
    )
    sidecar_path(path).write_text(json.dumps(meta, indent=2) + "\n")
    return {
        "tensorrt_version": meta["tensorrt_version"],
        "gpu": meta["gpu"],
        "profile": meta["profile"],
        "layer_precisions": counts,
        "sidecar": sidecar_path(path).name,
        "source_onnx_sha256": onnx_sha,
    }


def _pin_fp32(network: Any, names: set[str], trt: Any) -> int:
    """Weak typing: pin the named layers (and their float outputs) to float32."""
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.name not in names:
            continue
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            if layer.get_output(j).dtype in (trt.float32, trt.float16):
                layer.set_output_type(j, trt.float32)
        pinned += 1
    return pinned


def _inspect(path: Path, opt_shape: tuple[int, ...], trt: Any, logger: Any) -> dict[str, int]:
    """Layer precision counts of the built engine, read through an execution context at ``opt``
    (without one, dynamic-shape engines report their formats as "N/A due to dynamic shapes")."""
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise ConfigError(f"TensorRT could not load the engine it just built ({path.name})")
    context = engine.create_execution_context()
    context.set_input_shape(INPUT, opt_shape)
    inspector = engine.create_engine_inspector()
    inspector.execution_context = context
    return layer_precisions(inspector.get_engine_information(trt.LayerInformationFormat.JSON))


# --------------------------------------------------------------------------- runtime


class TensorRTPredictor(Predictor):
    """Runs an engine with ``execute_async_v3``; device buffers from PyTorch CUDA tensors or pycuda."""

    def __init__(self, path: Path | str, fmt: Format | str) -> None:
        import tensorrt as trt

        fmt = get_format(fmt)
        self.format, self.precision, self.device = fmt.name, fmt.precision, "cuda"
        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError(f"no TensorRT engine at {self.path}; build it first with `t2t export`")
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise ConfigError(
                f"TensorRT {trt.__version__} cannot load {self.path.name}; an engine only runs on the "
                "TensorRT version and GPU it was built with: rebuild it here"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        ins = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(ins) != 1 or len(outs) != 1:
            raise ConfigError(f"{self.path.name} has inputs {ins} and outputs {outs}; expected one of each")
        self.input, self.output = ins[0], outs[0]
        self.in_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.input)))
        self.out_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.output)))
        _, _, max_shape = self.engine.get_tensor_profile_shape(self.input, 0)
        self.max_shape = tuple(int(s) for s in max_shape)
        self.min_batch = int(self.engine.get_tensor_profile_shape(self.input, 0)[0][0])
        import torch

        self.backend = "torch" if torch.cuda.is_available() else "pycuda"
        if self.backend == "pycuda":
            self._init_pycuda()

    @property
    def input_hw(self) -> tuple[int, int] | None:
        return int(self.max_shape[2]), int(self.max_shape[3])

    # -- pycuda buffers, sized once for the profile's max shape
    def _init_pycuda(self) -> None:
        import pycuda.driver as cuda

        cuda.init()
        self._cuda = cuda
        self._cuda_ctx = cuda.Device(0).retain_primary_context()  # the context TensorRT's runtime uses
        self._cuda_ctx.push()
        try:
            self._stream = cuda.Stream()
            out_max = self._output_shape(self.max_shape)
            self._d_in = cuda.mem_alloc(int(np.prod(self.max_shape)) * self.in_dtype.itemsize)
            self._d_out = cuda.mem_alloc(int(np.prod(out_max)) * self.out_dtype.itemsize)
        finally:
            self._cuda_ctx.pop()

    def _output_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        self.context.set_input_shape(self.input, in_shape)
        return tuple(int(s) for s in self.context.get_tensor_shape(self.output))

    def predict(self, images: np.ndarray) -> np.ndarray:
        if tuple(images.shape[1:]) != self.max_shape[1:]:
            raise ConfigError(
                f"{self.path.name} takes (N, {', '.join(map(str, self.max_shape[1:]))}) images, not {images.shape}"
            )
        if len(images) < self.min_batch:
            raise ConfigError(f"{self.path.name} needs batches of at least {self.min_batch} images")
        step = self.max_shape[0]
        run = self._run_torch if self.backend == "torch" else self._run_pycuda
        return np.concatenate([run(images[i : i + step]) for i in range(0, len(images), step)], axis=0)

    def _run_torch(self, chunk: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(chunk, dtype=self.in_dtype)).cuda()
        out_shape = self._output_shape(tuple(chunk.shape))
        y = torch.empty(out_shape, dtype=_torch_dtype(self.out_dtype), device="cuda")
        self.context.set_tensor_address(self.input, x.data_ptr())
        self.context.set_tensor_address(self.output, y.data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT execution of {self.path.name} failed")
        stream.synchronize()
        return y.float().cpu().numpy()

    def _run_pycuda(self, chunk: np.ndarray) -> np.ndarray:
        cuda = self._cuda
        host_in = np.ascontiguousarray(chunk, dtype=self.in_dtype)
        self._cuda_ctx.push()
        try:
            out_shape = self._output_shape(tuple(chunk.shape))
            host_out = cuda.pagelocked_empty(out_shape, self.out_dtype)
            cuda.memcpy_htod_async(self._d_in, host_in, self._stream)
            self.context.set_tensor_address(self.input, int(self._d_in))
            self.context.set_tensor_address(self.output, int(self._d_out))
            if not self.context.execute_async_v3(self._stream.handle):
                raise RuntimeError(f"TensorRT execution of {self.path.name} failed")
            cuda.memcpy_dtoh_async(host_out, self._d_out, self._stream)
            self._stream.synchronize()
        finally:
            self._cuda_ctx.pop()
        return np.asarray(host_out, dtype=np.float32)


def _torch_dtype(dtype: np.dtype) -> Any:
    import torch

    return {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16}[np.dtype(dtype)]


def load(path: Path | str, fmt: Format | str, device: str = "cuda") -> TensorRTPredictor:
    """Load an engine built by :func:`export`; TensorRT engines run on a CUDA GPU only."""
    if not device.startswith("cuda"):
        raise ConfigError(f"TensorRT engines run on a CUDA GPU, not on {device!r}; use device='cuda'")
    return TensorRTPredictor(path, fmt)
