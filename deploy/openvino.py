"""OpenVINO IR artifacts: ``openvino`` (fp32), ``openvino-fp16`` (fp16-compressed weights) and ``openvino-int8``.

On an x86 CPU OpenVINO is the runtime a user would pick instead of ours, so the toolkit builds its
files too and holds them to the same manifest, parity, profiler and predict paths as every other format.

* The IR is converted from OpenVINO's deploy graph of the model (:func:`deploy.graph.checked_graph`,
  proven equal to the model; ``ov.convert_model``), not from our ONNX file: the PyTorch frontend keeps
  each layer's module path in the node names (``__module.tokens_to_token.attention1...``), which is
  what NNCF's ignored scope matches. The plain model's soft-split gather would become 5-D/6-D
  Transposes run by OpenVINO's reference kernel. The batch dimension is dynamic over the export's batch
  range; height and width are fixed.
* An IR is two files, ``model-<row>.xml`` (the graph) and ``model-<row>.bin`` (the weights); the row's
  ``companions`` makes the manifest's size and sha256 cover both.
* ``openvino-int8``: NNCF post-training quantization (``model_type=TRANSFORMER``: per-channel
  symmetric weights, SmoothQuant, fast bias correction) calibrated on ``ctx.calib``, real images held
  apart from the parity images, the deploy graph's T2T convolutions included. What is kept in floating point is
  :data:`INT8_KEEP_FLOAT` (nothing), chosen from measurement (``benchmarks/bench_openvino_int8.py``).
* The *inference precision* (``auto``, ``f32``, ``bf16``, ``f16``) is a load-time setting of OpenVINO's CPU
  plugin, not a property of the file: :func:`export` records the one asked for (``ctx.inference_precision``)
  in the IR's ``rt_info`` and the manifest, and :func:`load` applies it (or the ``inference_precision=``
  it is given). ``auto`` (the default) is resolved on the CPU that loads the file: OpenVINO's own default
  hint there (bf16 where the plugin reports BF16, i.e. AVX512_BF16 or AMX; f32 otherwise), measured to pay on
  both host classes (``benchmarks/results/openvino_precision/``). What the compiled model actually runs in is
  read back from it (``INFERENCE_PRECISION_HINT``) and is what the Predictor, the manifest and every report row
  say. An explicit precision this CPU lacks is refused at export in one sentence; a file recorded with one,
  loaded on such a CPU, runs f32 and says so. An ``auto`` artifact whose bf16/f16 misses parity at export is
  recorded f32 with a note (:func:`parity_fallback`).
* The Predictor compiles a **static** copy of the IR per batch size it is called with (cached): OpenVINO's
  dynamic batch cost 10-29% at batch 1 in f32 against the same model reshaped to a static one (Zen4, two runs).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import numpy as np
from torch import nn

from t2tvit.errors import CheckpointError, ConfigError

from . import manifest as mf
from .base import ExportContext, Format, Predictor, require_artifact

__all__ = [
    "AUTO",
    "BUDGET_SMOOTH_QUANT",
    "INFERENCE_PRECISIONS",
    "INT8_KEEP_FLOAT",
    "OpenVINOPredictor",
    "auto_inference_precision",
    "check_context",
    "check_inference_precision",
    "cpu_inference_precisions",
    "describe",
    "export",
    "load",
    "parity_fallback",
    "precision_name",
]

INPUT_NAME, OUTPUT_NAME = "images", "logits"
# OpenVINO's names for the inference precision -> the precision the report shows.
INFERENCE_PRECISIONS = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}
AUTO = "auto"  # the default: what OpenVINO itself picks on the CPU that loads the file
# The CPU plugin's OPTIMIZATION_CAPABILITIES entry that says it runs that precision natively.
_CAPABILITY = {"bf16": "BF16", "f16": "FP16"}
_RT = "t2tvit"  # our key in the IR's rt_info
# Module-path patterns whose activations NNCF leaves in floating point (their weights still stored int8): none. On the
# deploy graph OpenVINO converts, the channel-major T2T module's soft splits are convolutions, so NNCF quantizes them
# too (NNCF's TRANSFORMER defaults: per-channel weights, SmoothQuant alpha 0.95 on MatMuls; what int8 leaves float
# runs in the inference precision, bf16 by ``auto`` here). benchmarks/bench_openvino_int8.py (results:
# benchmarks/results/openvino_int8/avx2-avx512-vnni-avx512_bf16-noamx{,-run1}.md; T2T-ViT-7, 224 px, batch 1, 2
# threads, interleaved, 2-core AMD EPYC Zen4 with AVX512+VNNI+BF16, no AMX, shared): this recipe was the fastest row
# in both runs, 0.77x / 0.77x the float ``openvino`` row in bf16 (run 1 with the rest in bf16, run 2 in f32: which
# precision the rest takes was within noise, so ``auto`` stays), against 0.85x / 0.90x with the T2T module kept
# float (the previous recipe); SmoothQuant 0.5, none, and per-tensor weights were no faster. A third, quiet run
# (12 rounds, -run3.md) agreed: 0.80x with the rest in f32, 0.81x in bf16, the T2T module float 0.88x; the other
# recipes 0.72-0.83x, in another order than before (noise). Agreement with fp32 on
# the trained digits student's 359 val digits: 99.72% at 32 px and at 224 px (T2T module kept float: 98.6% at 224
# px, under the 99% bar; per-tensor 98.6-99.4%). ``keep_float=("tokens_to_token",)`` is still a row option.
# The channel-major graph folds LayerNorm's variance into int8 convolutions (E[p^2] - mean^2), which can cancel
# badly: on a T2T-ViT-7 trained 60 steps on the digits at 64 px (tests/test_deploy.py) it agreed 94.0% with fp32
# (in f32 as in bf16; keeping the T2T module float: 94.5%). The one-hot graph's int8 agreed 100% in f32 but 7% in
# bf16: OpenVINO's int8 GroupConvolution of the one-hot soft split (a pure gather of pixels) came out wrong in bf16
# (every later layer differed; found by comparing each op's f32 and bf16 outputs); with the soft splits left out
# of int8 (``keep_float=("soft_split",)``, their 0/1 kernels stored int8 without loss) it agreed 99.0% in bf16. So
# the row's second recipe (``fallback_options``) is that: the export tries it when the first misses parity, and
# the manifest says so.
INT8_KEEP_FLOAT: tuple[str, ...] = ()
# SmoothQuant's alpha in the accuracy-controlled search of ``--max-drop`` (negative: off); why: :func:`_within_budget`.
BUDGET_SMOOTH_QUANT = -1.0


_CORE: list[Any] = []


def _core() -> Any:
    """The process's one ``ov.Core``: every compiled model and infer request comes from it and keeps it
    alive (a Core destroyed while models it compiled still exist is a crash in some OpenVINO releases)."""
    if not _CORE:
        import openvino as ov

        _CORE.append(ov.Core())
    return _CORE[0]


def cpu_inference_precisions(core: Any = None) -> list[str]:
    """The inference precisions this CPU runs natively (``f32`` always; ``bf16``/``f16`` where the CPU has them)."""
    caps = set((core or _core()).get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    return ["f32", *[p for p, cap in _CAPABILITY.items() if cap in caps]]


def precision_name(hint: Any) -> str:
    """OpenVINO's element type (``ov.Type.bf16``, as ``INFERENCE_PRECISION_HINT`` returns it) as our name (``bf16``)."""
    name = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
    return {"bfloat16": "bf16", "float32": "f32", "float16": "f16"}.get(name, name)


def auto_inference_precision(core: Any = None) -> str:
    """What ``auto`` means on this CPU: the CPU plugin's own default ``INFERENCE_PRECISION_HINT`` (bf16 where it
    reports BF16, f32 otherwise; f16 where OpenVINO itself defaults to it), kept only if this CPU runs it natively.
    Measured (``benchmarks/results/openvino_precision/``): bf16 0.57-0.61x f32 on a 2-core Zen4 with AVX512_BF16
    and no AMX; issue 27 measured about 0.5x on an AMX Xeon."""
    core = core or _core()
    chosen = precision_name(core.get_property("CPU", "INFERENCE_PRECISION_HINT"))
    return chosen if chosen in cpu_inference_precisions(core) else "f32"


def _known_precision(precision: str) -> None:
    """A ConfigError in one sentence for a name that is neither ``auto`` nor an OpenVINO inference precision."""
    if precision != AUTO and precision not in INFERENCE_PRECISIONS:
        choices = ", ".join([AUTO, *INFERENCE_PRECISIONS])
        raise ConfigError(f"unknown OpenVINO inference precision {precision!r}; choose from: {choices}")


def check_inference_precision(precision: str, core: Any = None) -> str:
    """``precision`` if OpenVINO runs it natively on this CPU (``auto`` always), else a ConfigError in one sentence."""
    _known_precision(precision)
    if precision == AUTO:
        return precision
    core = core or _core()
    if precision not in cpu_inference_precisions(core):
        caps = ", ".join(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        name = core.get_property("CPU", "FULL_DEVICE_NAME")
        raise ConfigError(
            f"this CPU ({name}) cannot run OpenVINO in {precision}: OpenVINO reports only {caps} "
            f"(bf16 needs AVX512_BF16 or AMX, f16 AVX512_FP16 or AMX-FP16); use --inference-precision auto or f32"
        )
    return precision


def check_context(ctx: ExportContext) -> None:
    """The exporter's pre-flight hook: refuse an inference precision this CPU lacks before anything is written."""
    check_inference_precision(ctx.inference_precision)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The converters' chatter (TorchScript deprecation warnings, NNCF's progress bars and INFO logs) is not
    the user's business; an error still propagates."""
    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    nncf_log.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        nncf_log.setLevel(level)


def _convert(model: nn.Module, ctx: ExportContext) -> Any:
    import openvino as ov
    import torch

    bmin, bopt, bmax = ctx.batch
    batch = ov.Dimension(bmin, bmax) if bmin != bmax else ov.Dimension(bmin)
    shape = ov.PartialShape([batch, ov.Dimension(3), *(ov.Dimension(int(s)) for s in ctx.img_size)])
    n = min(max(1, bopt), bmax)
    with torch.no_grad(), _quiet():
        ov_model = ov.convert_model(model.eval(), example_input=ctx.example(n), input=[shape])
    ov_model.inputs[0].get_tensor().set_names({INPUT_NAME})
    ov_model.outputs[0].get_tensor().set_names({OUTPUT_NAME})
    return ov_model


def _quantize(ov_model: Any, calib: np.ndarray | None, options: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """NNCF post-training int8 of ``ov_model``. ``options`` (the row's): ``keep_float``, module-path patterns
    whose activations stay in floating point (default :data:`INT8_KEEP_FLOAT`); ``kept_weights``, ``"int8"``
    (default: their weights stored int8, weight-only) or ``"float"``; ``smooth_quant``, SmoothQuant's alpha for
    MatMuls (NNCF's default for transformers when absent; a negative value turns it off); ``per_channel``, False
    for per-tensor weight scales (NNCF's default, per-channel, when absent)."""
    import nncf

    if calib is None or len(calib) == 0:
        raise ConfigError("openvino-int8 needs calibration images; pass --calib-data with a folder of real images")
    items = [np.ascontiguousarray(calib[i : i + 1], dtype=np.float32) for i in range(len(calib))]
    asked = tuple(options.get("keep_float", INT8_KEEP_FLOAT))
    keep, settings = _nncf_settings(ov_model, asked, options)
    with _quiet():
        q = nncf.quantize(ov_model, nncf.Dataset(items), subset_size=len(items), **settings)
    kept_weights = options.get("kept_weights", "int8")
    if asked and kept_weights == "int8":  # what quantize left float gets int8 weights (computed in float)
        with _quiet():
            q = nncf.compress_weights(q, mode=nncf.CompressWeightsMode.INT8_SYM)
    info = {
        "quantizer": "nncf.quantize(model_type=TRANSFORMER)",
        "kept_float_weights": kept_weights if keep else None,
        "calibration_images": len(items),
        "kept_float": list(keep),
        **({"keep_float_unmatched": [p for p in asked if p not in keep]} if len(keep) < len(asked) else {}),
        "smooth_quant": options.get("smooth_quant", "NNCF default"),
        "per_channel_weights": options.get("per_channel", "NNCF default (per-channel)"),
    }
    return q, info


def _nncf_settings(ov_model: Any, asked: tuple[str, ...], options: dict[str, Any]) -> tuple[tuple[str, ...], dict]:
    """The patterns of ``asked`` that name layers of ``ov_model``, and the keyword arguments of ``nncf.quantize``
    (and of its accuracy-controlled twin) for the row's ``options``."""
    import nncf
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
        QuantizationParameters,
    )

    # A pattern that names no layer of this model (a CNN or DeiT has no ``tokens_to_token``) keeps nothing
    # float: the whole model is quantized, and the manifest says which patterns applied.
    names = [op.get_friendly_name() for op in ov_model.get_ops()]
    keep = tuple(p for p in asked if any(p in n for n in names))
    ignored = nncf.IgnoredScope(patterns=[f".*{p}.*" for p in keep], validate=False)
    advanced = None
    sq, per_channel = options.get("smooth_quant"), options.get("per_channel")
    if sq is not None or per_channel is not None:
        kw: dict[str, Any] = {}
        if sq is not None:
            kw["smooth_quant_alphas"] = AdvancedSmoothQuantParameters(matmul=float(sq))
        if per_channel is not None:
            kw["weights_quantization_params"] = QuantizationParameters(per_channel=bool(per_channel))
        advanced = AdvancedQuantizationParameters(**kw)
    return keep, {"model_type": nncf.ModelType.TRANSFORMER, "ignored_scope": ignored, "advanced_parameters": advanced}


def _within_budget(
    fp32: Any, q: Any, info: dict[str, Any], ctx: ExportContext, options: dict[str, Any]
) -> tuple[Any, dict[str, Any]]:
    """``q`` if it loses at most ``ctx.max_drop`` points of top-1 against ``fp32`` on ``ctx.val``; else NNCF's
    accuracy-aware quantization (``nncf.quantize_with_accuracy_control``: it ranks the quantized operations by
    their output error and reverts the worst to float until the drop holds), weights of what it reverts kept
    float. Both measured here in the inference precision the artifact records, compiled for a static batch as
    the Predictor compiles it: the same int8 IR compiled with a dynamic batch answered differently (OpenVINO
    2026.4, trained digits student, bf16: 91.1% against 96.1% top-1), so NNCF searches on a static-batch copy too.

    The search quantizes without SmoothQuant (:data:`BUDGET_SMOOTH_QUANT`): NNCF 3.4's accuracy control reverts a
    MatMul to float by restoring the weights it had before SmoothQuant scaled them, and leaves SmoothQuant's
    ``Multiply`` on its input, so the layer it "returns to float" computes on rescaled inputs. On the demo student
    and ``digits-hard`` that model met the top-1 budget by chance (two layers reverted, 0.0 points lost) while it
    agreed with fp32 on 93.8% of the parity images, and the export refused it; the same two layers kept float by
    ``nncf.quantize`` agreed 99.2% (``benchmarks/results/int8_budget/``)."""
    import nncf

    from compress.budget import BudgetFit, latency_ms

    from .budget import val_images

    images, labels = val_images(ctx)
    n = ctx.batch[0] if ctx.batch[0] == ctx.batch[2] else 1  # the items' batch: what a static model takes
    items = _val_items(images, labels, n)
    compiled = {"fp32": _compiled(fp32, n, ctx), "int8": _compiled(q, n, ctx)}
    top1 = {k: _nncf_top1(c, items) for k, c in compiled.items()}
    fit = BudgetFit(ctx.max_drop, len(labels), top1["fp32"], top1["int8"], top1["int8"])
    fit.quantizable = len(_weighted_ops(q))
    if fit.drop > ctx.max_drop:
        search = {**options, "smooth_quant": BUDGET_SMOOTH_QUANT}
        _, settings = _nncf_settings(fp32, tuple(options.get("keep_float", INT8_KEEP_FLOAT)), search)
        settings["advanced_quantization_parameters"] = settings.pop("advanced_parameters")
        calib = nncf.Dataset([x for x, _ in _val_items(ctx.calib, np.zeros(len(ctx.calib), np.int64), n)])
        val = nncf.Dataset(items, lambda item: item[0])
        shape = fp32.input(0).get_partial_shape()
        with _quiet():
            q = nncf.quantize_with_accuracy_control(
                _static(fp32, n), calib, val, _nncf_top1, max_drop=float(ctx.max_drop), subset_size=len(ctx.calib),
                **settings,
            )  # fmt: skip
        q.reshape({q.input(0): shape})  # the artifact keeps the batch range it was asked for
        compiled["budget"] = _compiled(q, n, ctx)
        fit.top1 = _nncf_top1(compiled["budget"], items)
        fit.kept_float = fit.kept_nodes = float_layers(q)
        fit.met = fit.drop <= ctx.max_drop
        x = np.ascontiguousarray(images[:n])
        fit.latency_ms = latency_ms({k: (lambda c=c: c(x)) for k, c in compiled.items()})
        info = {**info, "quantizer": "nncf.quantize_with_accuracy_control(model_type=TRANSFORMER)"}
        info.update(kept_float_weights="float", smooth_quant="off (the accuracy-controlled search)")
    return q, {**info, "accuracy_budget": fit.record() | {"measured_in": _precision(ctx)}}


def _static(model: Any, n: int) -> Any:
    """A copy of ``model`` reshaped to the static batch ``n``."""
    static = model.clone()
    shape = static.input(0).get_partial_shape()
    shape[0] = n
    static.reshape({static.input(0): shape})
    return static


def _compiled(model: Any, n: int, ctx: ExportContext) -> Any:
    """``model`` compiled for this CPU for a static batch of ``n`` (as :class:`OpenVINOPredictor` compiles) in the
    inference precision the artifact records."""
    return _core().compile_model(_static(model, n), "CPU", {"INFERENCE_PRECISION_HINT": _precision(ctx)})


def _precision(ctx: ExportContext) -> str:
    """The inference precision the artifact records, resolved on this CPU (``auto``: its fastest native one)."""
    return auto_inference_precision() if ctx.inference_precision == AUTO else ctx.inference_precision


def _val_items(images: np.ndarray, labels: np.ndarray, n: int) -> list[tuple[Any, Any]]:
    """``images`` as NNCF's items of ``n`` images (the last zero-padded with label -1, which no prediction matches
    and :func:`_nncf_top1` does not count)."""
    items = []
    for start in range(0, len(images), n):
        x, y = images[start : start + n], labels[start : start + n]
        if len(x) < n:
            x = np.concatenate([x, np.zeros((n - len(x), *x.shape[1:]), x.dtype)])
            y = np.concatenate([y, -np.ones(n - len(y), y.dtype)])
        items.append((np.ascontiguousarray(x, dtype=np.float32), y))
    return items


def _nncf_top1(compiled: Any, items: Any) -> float:
    """Top-1 in percent of a compiled model on :func:`_val_items`: NNCF's ``validation_fn`` (so its absolute
    ``max_drop`` is in points, as ours) and the budget's own measure before and after."""
    right = seen = 0
    for x, y in items:
        pred = np.asarray(compiled(x)[0]).argmax(1)
        right += int((pred == y).sum())
        seen += int((y >= 0).sum())
    return 100.0 * right / max(seen, 1)


_WEIGHTED = ("MatMul", "Convolution", "GroupConvolution")
_SHAPE_ONLY = ("Reshape", "Transpose", "Squeeze", "Unsqueeze")


def _weighted_ops(model: Any) -> list[tuple[Any, bool]]:
    """Every product of an activation with a weight in ``model`` and whether its activation is quantized (read
    from a ``FakeQuantize`` on its input), in graph order."""

    def is_constant(node: Any, depth: int = 0) -> bool:  # a Constant, or computed from Constants only
        if node.get_type_name() == "Constant":
            return True
        if depth > 6 or node.get_input_size() == 0:  # a weight's path (Convert, Multiply, ...) is short
            return False
        return all(is_constant(v.get_node(), depth + 1) for v in node.input_values())

    out = []
    for op in model.get_ordered_ops():
        if op.get_type_name() in _WEIGHTED and op.get_input_size() == 2:
            act, weight = (v.get_node() for v in op.input_values())
            if is_constant(weight) and not is_constant(act):
                while act.get_type_name() in _SHAPE_ONLY:  # NNCF quantizes before a reshape of the input
                    act = act.input_value(0).get_node()
                out.append((op, act.get_type_name() == "FakeQuantize"))
    return out


def float_layers(model: Any) -> list[str]:
    """The module paths (``blocks.3.attn.proj``) of the weighted layers of an NNCF-quantized IR whose activations
    stay in floating point."""
    names = []
    for op, quantized in _weighted_ops(model):
        if not quantized:
            name = op.get_friendly_name().removeprefix("__module.").split("/")[0]
            if name not in names:
                names.append(name)
    return names


def export(model: nn.Module, path: Path, fmt: Format, ctx: ExportContext) -> dict[str, Any]:
    """Write the IR of ``model`` for the row ``fmt`` in a child process (:mod:`deploy.child`): converting
    in-process left objects of OpenVINO's PyTorch frontend whose later collection crashed the interpreter
    (a segmentation fault at the end of ``t2t compress --demo``, after export, verify and the report's
    timing had all passed); in a child the converter's state ends with the child."""
    from .child import export_in_child

    check_inference_precision(ctx.inference_precision)
    return export_in_child("deploy.openvino", model, path, fmt, ctx)


def _write(model: nn.Module, path: Path, fmt: Format, ctx: ExportContext) -> dict[str, Any]:
    import openvino as ov

    from .graph import checked_graph

    precision = ctx.inference_precision  # checked by export() in the parent, before the child started
    # a row may prefer another form than the runtime's (openvino-int8: channel_major); it still falls back
    graph, record = checked_graph(model, "openvino", ctx, t2t=fmt.options.get("t2t_form"), fallback=True)
    ov_model = _convert(graph, ctx)
    extra: dict[str, Any] = {"converter": "openvino.convert_model (PyTorch frontend)", "deploy_graph": record}
    if fmt.options.get("int8"):
        fp32 = ov_model.clone() if ctx.max_drop is not None else None  # the budget's reference and NNCF's input
        ov_model, info = _quantize(ov_model, ctx.calib, fmt.options)
        if ctx.max_drop is not None:
            ov_model, info = _within_budget(fp32, ov_model, info, ctx, fmt.options)
        info["float_layers"] = float_layers(ov_model)
        extra.update(info)
    h, w = ctx.img_size
    for key, value in {
        "format": fmt.name,
        "inference_precision": precision,
        "model": (getattr(model, "pretrained_cfg", None) or {}).get("architecture") or type(model).__name__,
        "img_size": f"{h},{w}",
        "num_classes": str(int(getattr(model, "num_classes", 0) or 0)),
        mf.ABOUT_KEY: json.dumps(ctx.about),
    }.items():
        ov_model.set_rt_info(str(value), [_RT, key])
    fp16 = bool(fmt.options.get("fp16_weights"))
    ov.save_model(ov_model, str(path), compress_to_fp16=fp16)
    extra.update(
        weights="fp16" if fp16 else ("int8" if fmt.options.get("int8") else "fp32"),
        inference_precision=precision,
        dynamic_batch=[ctx.batch[0], ctx.batch[2]] if ctx.batch[0] != ctx.batch[2] else False,
    )
    if precision not in ("f32", AUTO) and fmt.precision == "fp32":
        extra["precision"] = INFERENCE_PRECISIONS[precision]  # fp32 weights computed in bf16/f16
    return extra


def _rt_info(path: Path) -> dict[str, str] | None:
    """Our ``rt_info`` entries of an IR's ``.xml`` (None: not an OpenVINO IR). Read from the XML alone, so a
    damaged ``.bin`` still identifies the file and its load says what is wrong."""
    try:
        root = ElementTree.parse(path).getroot()
    except (ElementTree.ParseError, OSError):
        return None
    if root.tag != "net":
        return None
    node = root.find(f"rt_info/{_RT}")
    return {child.tag: child.get("value", "") for child in node} if node is not None else {}


def describe(path: Path) -> dict[str, Any] | None:
    """The format row hook: which OpenVINO row wrote this ``.xml``, its model, input size and classes."""
    info = _rt_info(path)
    if info is None:
        return None
    size = info.get("img_size", "")
    hw = tuple(int(s) for s in size.split(",")) if size.count(",") == 1 else None
    classes = int(info["num_classes"]) if info.get("num_classes", "").isdigit() else None
    return mf.read_about(info.get(mf.ABOUT_KEY)) | {
        "format": info.get("format") or "openvino",
        "model": info.get("model"),
        "img_size": hw,
        "num_classes": classes or None,
        "inference_precision": info.get("inference_precision"),
    }


class OpenVINOPredictor(Predictor):
    """A compiled OpenVINO model on the CPU with one infer request per batch size (latency mode, one stream).

    A dynamic-batch IR is compiled as a static copy for each batch size the Predictor is called with (the first
    call at a new size pays the compile; at most :attr:`MAX_COMPILED` sizes are kept). ``inference_precision`` is
    what the compiled model reports it runs in, ``requested`` what was asked for (``auto`` included)."""

    MAX_COMPILED = 8

    def __init__(self, model: Any, config: dict[str, Any], fmt: Format, path: Path, requested: str, note: str | None):
        self.core = _core()  # outlives the compiled models and their requests
        self.format, self.path, self.device = fmt.name, Path(path), "cpu"
        self.model, self.config, self.requested, self.note = model, config, requested, note
        shape = model.inputs[0].get_partial_shape()
        self._hw = (shape[2].get_length(), shape[3].get_length())
        batch = shape[0]
        self.dynamic = batch.is_dynamic
        self.min_batch = batch.get_min_length() if batch.is_dynamic else batch.get_length()
        self._max_batch = batch.get_max_length() if batch.is_dynamic else batch.get_length()
        self._requests: dict[int, Any] = {}
        self.compiled = self._compile(max(1, self.min_batch))  # the file is checked at load, not at first call
        self.inference_precision = precision_name(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        self.precision = fmt.precision if fmt.precision != "fp32" else INFERENCE_PRECISIONS[self.inference_precision]

    def _compile(self, n: int) -> Any:
        model = self.model
        if self.dynamic:
            model = self.model.clone()
            model.reshape({0: [n, 3, *self._hw]})
        try:
            compiled = self.core.compile_model(model, "CPU", self.config)
        except Exception as e:  # noqa: BLE001 - OpenVINO raises its own exception types
            raise CheckpointError(f"{self.path} could not be compiled by OpenVINO ({_native_reason(e)})") from None
        if len(self._requests) >= self.MAX_COMPILED:
            self._requests.pop(next(iter(self._requests)))
        self._requests[n] = compiled.create_infer_request()
        return compiled

    @property
    def request(self) -> Any:
        """The infer request of the smallest batch (for callers that drive OpenVINO directly)."""
        return self._requests.get(max(1, self.min_batch)) or self._request(max(1, self.min_batch))

    def _request(self, n: int) -> Any:
        req = self._requests.get(n if self.dynamic else self.min_batch)
        if req is None:
            self._compile(n)
            req = self._requests[n]
        return req

    @property
    def input_hw(self) -> tuple[int, int]:
        return self._hw

    @property
    def runtime_notes(self) -> list[str]:
        asked = f" ({self.requested})" if self.requested == AUTO else ""
        return [f"OpenVINO inference precision {self.inference_precision}{asked}", *([self.note] if self.note else [])]

    def predict(self, images: np.ndarray) -> np.ndarray:
        n, _, h, w = images.shape
        if (h, w) != self._hw:
            raise ConfigError(
                f"{self.path.name} takes {self._hw[0]}x{self._hw[1]} images, not {h}x{w}; "
                "resize the images or export at that size"
            )
        if self._max_batch > 0 and not self.min_batch <= n <= self._max_batch:
            raise ConfigError(
                f"{self.path.name} takes batches of {self.min_batch} to {self._max_batch} images, not {n}; "
                "export with a wider --batch range"
            )
        request = self._request(n)
        request.infer({0: images}, share_inputs=True)
        return request.get_output_tensor(0).data.copy()


def load(
    path: Path,
    fmt: Format,
    device: str = "cpu",
    threads: int | None = None,
    inference_precision: str | None = None,
) -> OpenVINOPredictor:
    """Compile the IR ``path`` for the CPU. ``inference_precision``: the row's option, else what the export
    recorded, else ``auto`` (:func:`auto_inference_precision` on this CPU); an explicit one this CPU lacks runs
    f32 with a note saying so. ``threads``: OpenVINO's ``INFERENCE_NUM_THREADS`` (default: the plugin's own)."""
    if device != "cpu":
        raise ConfigError(f"OpenVINO artifacts run on the CPU here, not on {device!r}")
    path = require_artifact(path, weights=".bin")
    recorded = (_rt_info(path) or {}).get("inference_precision")
    requested = inference_precision or fmt.options.get("inference_precision") or recorded or AUTO
    core = _core()
    try:
        model = core.read_model(str(path))
    except Exception as e:  # noqa: BLE001 - OpenVINO raises its own exception types for bad files
        raise CheckpointError(
            f"{path} is not a loadable OpenVINO IR ({_native_reason(e)}); re-export it (t2t export --formats openvino)"
        ) from None
    note = None
    _known_precision(requested)
    wanted = auto_inference_precision(core) if requested == AUTO else requested
    if wanted not in cpu_inference_precisions(core):
        note = f"{wanted} was asked for but this CPU cannot run it; running f32"
        wanted = "f32"
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": wanted, "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return OpenVINOPredictor(model, config, fmt, path, requested, note)


def parity_fallback(path: Path, fmt: Format, predictor: Predictor) -> tuple[str, Predictor] | None:
    """The export's second chance for an ``auto`` artifact whose reduced precision missed parity: record f32 in
    the IR (its ``rt_info``) and return a note and the f32 Predictor to check again; None when there is nothing
    to fall back to (f32 already, or a precision the user asked for explicitly)."""
    used = getattr(predictor, "inference_precision", "f32")
    if getattr(predictor, "requested", None) != AUTO or used == "f32":
        return None
    tree = ElementTree.parse(path)
    node = tree.getroot().find(f"rt_info/{_RT}/inference_precision")
    if node is None:
        return None
    node.set("value", "f32")
    tree.write(path, encoding="utf-8", xml_declaration=True)
    note = f"auto chose {used}, which missed parity; recorded f32 instead"
    return note, load(path, fmt, threads=None)


def _native_reason(e: BaseException) -> str:
    """OpenVINO's multi-line native message reduced to its last informative line (not the C++ source
    locations of "Exception from ..." / "Check '...' failed at ...")."""
    import re

    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not re.match(r"(Exception from |Check '.*' failed at )", ln)]
    return (lines[-1].rstrip(":") if lines else type(e).__name__)[:240]


if __name__ == "__main__":
    from deploy.child import run_child

    sys.exit(run_child(_write))
