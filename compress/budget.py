"""An accuracy budget for int8: the fewest layers kept in float so that an int8 ONNX model loses at most
``max_drop`` points of top-1 against its fp32 source on labelled validation images.

:func:`fit_onnx_budget` quantizes the whole model first; when that already meets the budget nothing is kept
in float. Otherwise it ranks every quantizable layer (a ``MatMul``/``Gemm`` with a constant weight, what the
int8 rows quantize) by the error that quantizing *that layer alone* causes -- the mean absolute logit change
against fp32, relative to the fp32 logits' mean magnitude -- and returns the most sensitive layers to float
one at a time, most sensitive first, until the top-1 drop is within the budget. The result
(:class:`BudgetFit`) names the layers kept in float by their PyTorch module path (the exporter's
``pkg.torch.onnx.name_scopes``), the drop before and after, and the ranking, for the manifest.

The quantizer is passed in (``quantize(src, dst, exclude)``), so the search is the same for every ONNX
Runtime int8 row that can leave named nodes in float.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["BudgetFit", "LayerSensitivity", "fit_onnx_budget", "quantizable_layers"]


@dataclass
class LayerSensitivity:
    """One quantizable layer: its ONNX node, module path, and the error of quantizing it alone."""

    node: str
    layer: str
    error: float  # mean |logit change| / mean |fp32 logit|, this layer alone in int8
    top1_drop: float  # points of top-1 lost, this layer alone in int8


@dataclass
class BudgetFit:
    """What :func:`fit_onnx_budget` found and wrote."""

    max_drop: float
    images: int
    fp32_top1: float
    int8_top1: float  # every layer in int8 (the row's default)
    top1: float  # the artifact written
    kept_float: list[str] = field(default_factory=list)  # module paths, most sensitive first
    kept_nodes: list[str] = field(default_factory=list)  # their ONNX node names
    quantizable: int = 0
    met: bool = True
    ranking: list[LayerSensitivity] = field(default_factory=list)  # empty when int8 met the budget as it was

    @property
    def drop(self) -> float:
        return self.fp32_top1 - self.top1

    def record(self) -> dict[str, Any]:
        """The manifest's ``details.accuracy_budget``."""
        out = asdict(self)
        out["drop"] = self.drop
        out["int8_drop"] = self.fp32_top1 - self.int8_top1
        out["ranking"] = out["ranking"][:20]  # the most sensitive; the full table is the sensitivity report's
        return out


def quantizable_layers(path: str | Path, op_types: Sequence[str] = ("MatMul", "Gemm")) -> list[tuple[str, str]]:
    """``(node name, module path)`` of every ``op_types`` node of an fp32 ONNX file whose second input is a
    constant (a weight): the products the int8 rows quantize, in graph order."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    consts = {i.name for i in model.graph.initializer}
    consts |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    out = []
    for node in model.graph.node:
        if node.op_type in op_types and len(node.input) > 1 and node.input[1] in consts:
            out.append((node.name, _module_path(node)))
    return out


def _module_path(node: Any) -> str:
    """The PyTorch module a node came from (``blocks.3.attn.proj``), from the exporter's name scopes."""
    meta = {p.key: p.value for p in node.metadata_props}
    try:
        scopes = [s for s in ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes", "[]")) if s]
    except (ValueError, SyntaxError):
        scopes = []
    if len(scopes) >= 2:
        module, op = scopes[-2], scopes[-1]
        return module if op.startswith("linear") else f"{module} ({op})"
    return node.name


def _logits(path: Path, images: np.ndarray, batch: int = 32) -> np.ndarray:
    """The model's logits on ``images``, in batches it accepts (a fixed-batch model: zero-padded, padding dropped)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) else None
    step = fixed or batch
    out = []
    for i in range(0, len(images), step):
        chunk = images[i : i + step]
        n = len(chunk)
        if fixed and n < fixed:
            chunk = np.concatenate([chunk, np.zeros((fixed - n, *chunk.shape[1:]), chunk.dtype)])
        out.append(session.run(None, {inp.name: chunk})[0][:n])
    return np.concatenate(out)


def _top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean() * 100)


def fit_onnx_budget(
    src: str | Path,
    dst: str | Path,
    quantize: Callable[[Path, Path, list[str]], dict[str, Any]],
    images: np.ndarray,
    labels: np.ndarray,
    max_drop: float,
    scratch: str | Path,
) -> tuple[BudgetFit, dict[str, Any]]:
    """Write to ``dst`` the int8 of fp32 ONNX ``src`` that keeps the fewest, most sensitive layers in float
    for a top-1 drop of at most ``max_drop`` points on ``images`` / ``labels`` (see the module docstring).

    ``quantize(src, dst, exclude)`` writes the int8 model leaving the nodes named in ``exclude`` in float and
    returns its manifest fields. Returns the fit and the fields of the quantization that was kept. With every
    layer back in float the model is the fp32 one, so the search ends within the budget at the latest there;
    ``met`` says whether the artifact written holds it.
    """
    src, dst, scratch = Path(src), Path(dst), Path(scratch)
    layers = quantizable_layers(src)
    ref = _logits(src, images)
    fp32_top1 = _top1(ref, labels)
    info = quantize(src, dst, [])
    int8_top1 = _top1(_logits(dst, images), labels)
    fit = BudgetFit(max_drop, len(images), fp32_top1, int8_top1, int8_top1, quantizable=len(layers))
    if fp32_top1 - int8_top1 <= max_drop:
        return fit, info
    scale = float(np.abs(ref).mean()) or 1.0
    trial = scratch / "budget-trial.onnx"
    nodes = [n for n, _ in layers]
    for node, layer in layers:  # each layer alone in int8
        quantize(src, trial, [m for m in nodes if m != node])
        out = _logits(trial, images)
        fit.ranking.append(
            LayerSensitivity(node, layer, float(np.abs(out - ref).mean()) / scale, fp32_top1 - _top1(out, labels))
        )
    fit.ranking.sort(key=lambda s: (-s.error, s.node))
    for k in range(1, len(fit.ranking) + 1):  # the most sensitive back to float, one more at a time
        keep = [s.node for s in fit.ranking[:k]]
        info = quantize(src, trial, keep)
        top1 = _top1(_logits(trial, images), labels)
        if fp32_top1 - top1 <= max_drop or k == len(fit.ranking):
            trial.replace(dst)
            fit.top1, fit.kept_nodes = top1, keep
            fit.kept_float = [s.layer for s in fit.ranking[:k]]
            fit.met = fp32_top1 - top1 <= max_drop
            break
    return fit, info
