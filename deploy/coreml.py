"""Core ML artifacts: ``coreml`` (ML program, fp16 compute) and ``coreml-int8`` (int8 weights), as ``.mlpackage``.

* Converted by ``coremltools.convert`` from ``torch.export`` of :func:`deploy.graph.deploy_graph` (the
  model rewritten with operators coremltools converts; proven equal to the model at export). The TorchScript
  path fails on the traced batch size of the class-token concat, ``torch.export`` does not.
  ``compute_precision=FLOAT16``: weights and activations in fp16, input ``images`` and output ``logits`` float32.
* ``coreml-int8``: ``coremltools.optimize.coreml.linear_quantize_weights`` (int8, linear symmetric, per output
  channel) of the fp16 program; activations stay fp16. With ``--max-drop`` the weights to keep fp16 are fitted
  (:func:`_within_budget`) on the converted module run in PyTorch with the package's own dequantized int8
  weights, since no Core ML runtime runs here; the kept ones are ``op_name_configs`` entries of the quantizer.
* An ``.mlpackage`` is a folder: the row's ``bundle`` makes the manifest's size and sha256 walk it.
* **Batch**: fixed at 1 (the shape Xcode shows); :meth:`CoreMLPredictor.predict` loops over a batch.
* **Running it needs macOS or iOS** (coremltools has no Core ML runtime on Linux), so off macOS the row's
  ``runs_on`` keeps its parity ``skipped`` and the profiler from timing it. What *is* checked here, at export
  and at every load, is the file's structure (:func:`structure`): an ML program whose input is float32
  ``images`` (1, 3, H, W) and output float32 ``logits`` (1, classes), whose weights are fp16 (``coreml``) or
  int8 ``constexpr`` dequantizations (``coreml-int8``). coremltools offers no way to evaluate the converted
  program numerically off macOS (its MIL ops have no reference interpreter), so the numbers are not checked here.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from t2tvit.errors import CheckpointError, ConfigError

from . import manifest as mf
from .base import ExportContext, Format, Predictor

__all__ = ["CoreMLPredictor", "describe", "export", "load", "structure"]

INPUT_NAME, OUTPUT_NAME = "images", "logits"
_KEY = "t2tvit."  # our keys in the package's user-defined metadata


@contextlib.contextmanager
def _quiet() -> Iterator[Any]:
    """coremltools' import and conversion chatter (untested torch/sklearn versions, progress bars, the missing
    macOS runtime) is not the user's business; an error still propagates."""
    log = logging.getLogger("coremltools")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            import coremltools as ct

            yield ct
    finally:
        log.setLevel(level)


def export(model: nn.Module, path: Path, fmt: Format, ctx: ExportContext) -> dict[str, Any]:
    """Convert the converter-ready model to an ML program at batch 1 and save ``path`` (a folder)."""
    import torch

    from . import budget
    from .graph import checked_graph
    from .torch_eager import model_spec

    captured, record = checked_graph(model, "coreml", ctx)
    extra: dict[str, Any] = {"deploy_graph": record}
    h, w = ctx.img_size
    spec = model_spec(model)
    with _quiet() as ct, torch.no_grad():
        program = torch.export.export(captured, (ctx.example(1),)).run_decompositions({})
        ml = ct.convert(
            program,
            convert_to="mlprogram",
            compute_precision=ct.precision.FLOAT16,
            inputs=[ct.TensorType(name=INPUT_NAME, shape=(1, 3, h, w), dtype=np.float32)],
            outputs=[ct.TensorType(name=OUTPUT_NAME, dtype=np.float32)],
            minimum_deployment_target=ct.target.iOS16,
        )
        if fmt.options.get("int8"):
            int8 = _quantize(ct, ml)
            if budget.asked(ctx):
                keep, extra["accuracy_budget"] = _within_budget(captured, int8, path, fmt, ctx)
                int8 = _quantize(ct, ml, keep) if keep else int8
            ml = int8
        meta = {"format": fmt.name, "model": spec.get("model"), "img_size": f"{h},{w}"}
        for key, value in {**meta, "num_classes": spec.get("num_classes")}.items():
            ml.user_defined_metadata[_KEY + key] = str(value)
        ml.user_defined_metadata[mf.ABOUT_KEY] = json.dumps(ctx.about)
        ml.short_description = f"{spec.get('model')} ({fmt.name}), {h}x{w} float32 NCHW images -> logits"
        ml.save(str(path))
    found = structure(path, fmt, ctx.img_size, spec.get("num_classes"))
    extra.update(
        converter="coremltools.convert (torch.export of deploy.graph.deploy_graph), mlprogram, iOS16",
        compute_precision="fp16",
        weights="int8 (linear symmetric, per channel)" if fmt.options.get("int8") else "fp16",
        batch="fixed 1; predict loops over a batch",
        structure=found,
        checked_structurally=_summary(found),
    )
    return extra


# coremltools' default: weight tensors of at most this many elements stay fp16 in an int8 package
WEIGHT_THRESHOLD = 2048


def _quantize(ct: Any, ml: Any, keep: Sequence[str] = ()) -> Any:
    """The int8-weight copy of the fp16 program ``ml`` (linear symmetric, per output channel), the weight
    ``const`` ops named in ``keep`` left fp16."""
    cfg = ct.optimize.coreml.OpLinearQuantizerConfig(
        mode="linear_symmetric", dtype="int8", weight_threshold=WEIGHT_THRESHOLD
    )
    config = ct.optimize.coreml.OptimizationConfig(global_config=cfg, op_name_configs=dict.fromkeys(keep))
    return ct.optimize.coreml.linear_quantize_weights(ml, config)


def _int8_weights(ml: Any) -> dict[str, np.ndarray]:
    """The weights of an int8 package as Core ML computes with them (dequantized from the program), by the name
    of the fp16 ``const`` each replaced."""
    out = {}
    for op in ml._mil_program.functions["main"].operations:
        if op.op_type == "constexpr_affine_dequantize":
            out[op.name.removesuffix("_quantized")] = np.asarray(op.materialized_val_inference(), np.float32)
    return out


def _within_budget(
    captured: nn.Module, int8: Any, path: Path, fmt: Format, ctx: ExportContext
) -> tuple[list[str], dict[str, Any]]:
    """The weight ``const`` ops to leave fp16 for ``ctx.max_drop`` and the row's ``accuracy_budget``. Core ML runs
    on macOS only, so the search (:func:`compress.budget.fit_module_budget`) runs the converted module in PyTorch
    with each quantized layer's weights replaced by the dequantized int8 weights of the package ``int8`` (what
    Core ML computes with; activations fp32 here, fp16 there)."""
    import copy

    import torch

    from compress.budget import fit_module_budget

    from . import budget

    def tensors(module: nn.Module) -> dict[str, Any]:
        return dict(module.named_parameters()) | dict(module.named_buffers())

    # torch.export names the placeholder of a parameter p_<path, dots as underscores>, of a buffer (T2T-ViT's
    # sinusoid position table) b_<path>; coremltools adds _to_fp16
    own = tensors(captured)
    names = {f"{'p' if isinstance(t, nn.Parameter) else 'b'}_{n.replace('.', '_')}_to_fp16": n
             for n, t in own.items()}  # fmt: skip
    layers: dict[str, tuple[str, str, np.ndarray]] = {}  # layer -> (tensor, const op, int8 weights)
    for const, weights in _int8_weights(int8).items():
        name = names.get(const)
        if name is None or tuple(weights.shape) != tuple(own[name].shape):
            raise RuntimeError(f"coreml-int8: the package's weight {const} {weights.shape} is no tensor of the model")
        layers[name.removesuffix(".weight")] = (name, const, weights)  # a layer by its module path

    def quantize(keep: Sequence[str]) -> nn.Module:
        sim = copy.deepcopy(captured)
        found = tensors(sim)
        with torch.no_grad():
            for layer, (name, _, weights) in layers.items():
                if layer not in keep:
                    found[name].copy_(torch.from_numpy(weights))
        return sim

    images, labels = budget.val_images(ctx)
    fit = fit_module_budget(
        captured, quantize, images, labels, ctx.max_drop, rank=ctx.sensitivity, timed=False, layers=list(layers)
    )
    record = budget.record(fit, path, fmt, ctx)
    record["measured_in"] = "PyTorch with the package's int8 weights (fp32 activations; Core ML runs on macOS)"
    return [layers[k][1] for k in fit.kept_nodes], record


def _spec(path: Path) -> Any:
    with _quiet() as ct:
        try:
            return ct.utils.load_spec(str(path))
        except Exception as e:  # noqa: BLE001 - coremltools raises its own types for a damaged package
            raise CheckpointError(f"{path} is not a readable Core ML package ({type(e).__name__}: {e})") from None


def _array(feature: Any) -> tuple[str, list[int]]:
    from coremltools.proto import FeatureTypes_pb2

    arr = feature.type.multiArrayType
    return FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(arr.dataType), [int(d) for d in arr.shape]


def _weights(spec: Any) -> tuple[dict[str, int], list[str]]:
    """How many weight tensors of each kind the program holds: ``const`` tensors with more than one element by
    dtype, and ``constexpr_*`` dequantizations by their stored dtype; and the names of the float ``const``
    tensors large enough for int8 (more than :data:`WEIGHT_THRESHOLD` elements)."""
    from coremltools.proto import MIL_pb2

    counts: collections.Counter[str] = collections.Counter()
    large: list[str] = []
    for f in spec.mlProgram.functions.values():
        for op in f.block_specializations[f.opset].operations:
            for key in ("val", "quantized_data", "data"):
                a = op.attributes.get(key) if op.type.startswith("const") else None
                if a is None or a.type.WhichOneof("type") != "tensorType":
                    continue
                t = a.type.tensorType
                sizes = [d.constant.size for d in t.dimensions]
                if t.rank > 0 and any(n > 1 for n in sizes):
                    counts[f"{op.type}:{MIL_pb2.DataType.Name(t.dataType).lower()}"] += 1
                    if op.type == "const" and int(np.prod(sizes)) > WEIGHT_THRESHOLD:
                        large.append(op.outputs[0].name)
    return dict(counts), large


def structure(
    path: Path, fmt: Format | None = None, img_size: tuple[int, int] | None = None, num_classes: int | None = None
) -> dict[str, Any]:
    """What the package declares (inputs, outputs, weight tensors), checked against what ``fmt`` must be;
    raises CheckpointError in one sentence when it is not that."""
    spec = _spec(path)
    if spec.WhichOneof("Type") != "mlProgram" or len(spec.description.input) != 1:
        raise CheckpointError(f"{path} is not a one-input Core ML ML program")
    (in_dtype, in_shape), (out_dtype, out_shape) = _array(spec.description.input[0]), _array(spec.description.output[0])
    found = {
        "input": {"name": spec.description.input[0].name, "dtype": in_dtype.lower(), "shape": in_shape},
        "output": {"name": spec.description.output[0].name, "dtype": out_dtype.lower(), "shape": out_shape},
    }
    found["weights"], large = _weights(spec)
    if fmt is not None and fmt.options.get("int8"):
        found["float_weights"] = large  # the weights int8 would take that this package keeps fp16
    want_in = [1, 3, *img_size] if img_size else in_shape
    problems = []
    if found["input"]["name"] != INPUT_NAME or in_dtype != "FLOAT32" or in_shape != want_in:
        problems.append(f"input {found['input']} is not float32 {INPUT_NAME} {want_in}")
    classes = [num_classes] if num_classes else out_shape[-1:]
    if found["output"]["name"] != OUTPUT_NAME or out_dtype != "FLOAT32" or out_shape[-1:] != classes:
        problems.append(f"output {found['output']} is not float32 {OUTPUT_NAME} (1, {num_classes})")
    w = found["weights"]
    int8 = sum(n for k, n in w.items() if k.startswith("constexpr") and k.endswith("int8"))
    fp32 = sum(n for k, n in w.items() if k.endswith(":fp32"))
    if fp32:
        problems.append(f"{fp32} weight tensors are fp32 (fp16 compute stores fp16 weights)")
    if fmt is not None and fmt.options.get("int8") and not int8:
        problems.append("no int8 weights (constexpr dequantizations) in an int8 package")
    if problems:
        raise CheckpointError(f"{path.name}: " + "; ".join(problems))
    return found


def _summary(found: dict[str, Any]) -> str:
    i, o = found["input"], found["output"]
    weights = ", ".join(f"{n} {k}" for k, n in sorted(found["weights"].items()))
    return (
        f"{i['dtype']} {i['name']} {i['shape']} -> {o['dtype']} {o['name']} {o['shape']}; constant tensors: {weights}"
    )


def describe(path: Path) -> dict[str, Any] | None:
    """The format row hook: which Core ML row wrote this ``.mlpackage``, its model, input size and classes."""
    if not (Path(path) / "Manifest.json").is_file():
        return None
    try:
        meta = dict(_spec(path).description.metadata.userDefined)
    except CheckpointError:
        return None
    size = meta.get(_KEY + "img_size", "")
    classes = meta.get(_KEY + "num_classes", "")
    return mf.read_about(meta.get(mf.ABOUT_KEY)) | {
        "format": meta.get(_KEY + "format") or "coreml",
        "model": meta.get(_KEY + "model"),
        "img_size": tuple(int(s) for s in size.split(",")) if size.count(",") == 1 else None,
        "num_classes": int(classes) if classes.isdigit() else None,
    }


class CoreMLPredictor(Predictor):
    """A Core ML package: run by Core ML on macOS; elsewhere only its structure is known (:meth:`predict` says so)."""

    def __init__(self, path: Path, fmt: Format, found: dict[str, Any], model: Any = None):
        self.path, self.format, self.precision, self.device = Path(path), fmt.name, fmt.precision, "cpu"
        self.structure, self.model, self._elsewhere = found, model, fmt.not_here()

    @property
    def input_hw(self) -> tuple[int, int]:
        shape = self.structure["input"]["shape"]
        return int(shape[2]), int(shape[3])

    @property
    def runtime_notes(self) -> list[str]:
        return [f"not run here: {self._elsewhere}; checked structurally"] if self._elsewhere else []

    def predict(self, images: np.ndarray) -> np.ndarray:
        if self.model is None:
            raise ConfigError(f"{self.path.name} cannot run here: {self._elsewhere} (Core ML has no Linux runtime)")
        if tuple(images.shape[2:]) != self.input_hw:
            h, w = self.input_hw
            raise ConfigError(f"{self.path.name} takes {h}x{w} images, not {images.shape[2]}x{images.shape[3]}")
        return np.concatenate([self.model.predict({INPUT_NAME: x[None]})[OUTPUT_NAME] for x in images])


def load(path: Path, fmt: Format, device: str = "cpu") -> CoreMLPredictor:
    """The package's structure (checked, see :func:`structure`), and on macOS the Core ML model that runs it."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"artifact {path} does not exist (a .mlpackage is a folder); run `t2t export` first")
    found = structure(path, fmt)
    model = None
    if fmt.not_here() is None:
        with _quiet() as ct:
            model = ct.models.MLModel(
                str(path), compute_units=ct.ComputeUnit.CPU_ONLY if device == "cpu" else ct.ComputeUnit.ALL
            )
    return CoreMLPredictor(path, fmt, found, model)
