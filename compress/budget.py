"""An accuracy budget for int8: the fewest layers kept in float so that an int8 model loses at most
``max_drop`` points of top-1 against its fp32 source on labelled validation images.

:func:`fit_budget` is the search, the same for every int8 row that can leave named layers in float (ONNX
Runtime's ``nodes_to_exclude``, PyTorch's per-module qconfig): it quantizes the whole model first; when that
already meets the budget nothing is kept in float. Otherwise it ranks every quantizable layer by the error
that quantizing *that layer alone* causes -- the mean absolute logit change against fp32, relative to the
fp32 logits' mean magnitude -- and returns the most sensitive layers to float one at a time, most sensitive
first, until the top-1 drop is within the budget. With every layer back in float the model is the fp32 one,
so the search ends within the budget at the latest there. The row supplies ``run(keep_float) -> logits``.

:class:`BudgetFit` is what the manifest records (``details.accuracy_budget``): the layers kept in float by
their PyTorch module path, the drop before and after, the ranking, and the speed the fallback costs
(:func:`latency_ms`: fp32, all-int8 and the fitted artifact timed interleaved at batch 1 on the export host).
:func:`write_sensitivity` writes the ranking as a table and a plot (``t2t export --sensitivity``).
OpenVINO's row uses NNCF's own accuracy-aware quantization instead (``deploy/openvino.py``).
"""

from __future__ import annotations

import ast
import csv
import functools
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from t2tvit.data import in_batches

__all__ = [
    "ONNX_RUNTIME",
    "BudgetFit",
    "FileRuntime",
    "LayerSensitivity",
    "fit_budget",
    "fit_file_budget",
    "fit_module_budget",
    "latency_ms",
    "quantizable_layers",
    "top1",
    "write_sensitivity",
]

Run = Callable[[Sequence[str]], np.ndarray]  # the int8 model's logits on the images, these layers kept float


@dataclass
class LayerSensitivity:
    """One quantizable layer: its id in the quantizer (ONNX node, module name), module path, and the error of
    quantizing it alone."""

    node: str
    layer: str
    error: float  # mean |logit change| / mean |fp32 logit|, this layer alone in int8
    top1_drop: float  # points of top-1 lost, this layer alone in int8


@dataclass
class BudgetFit:
    """What :func:`fit_budget` found (``max_drop`` None: a sensitivity ranking without a budget)."""

    max_drop: float | None
    images: int
    fp32_top1: float
    int8_top1: float  # every layer in int8 (the row's default)
    top1: float  # the artifact written
    kept_float: list[str] = field(default_factory=list)  # module paths, most sensitive first
    kept_nodes: list[str] = field(default_factory=list)  # their ids in the quantizer
    quantizable: int = 0
    met: bool = True
    ranking: list[LayerSensitivity] = field(default_factory=list)  # empty when int8 met the budget as it was
    # fp32 / int8 / budget, batch 1, interleaved; None where not measured (the timing says nothing of what ships)
    latency_ms: dict[str, float] | None = field(default_factory=dict)
    sensitivity: dict[str, str] = field(default_factory=dict)  # the table and plot files, when written

    @property
    def drop(self) -> float:
        return self.fp32_top1 - self.top1

    def record(self) -> dict[str, Any]:
        """The manifest's ``details.accuracy_budget``."""
        out = asdict(self)
        out["drop"] = self.drop
        out["int8_drop"] = self.fp32_top1 - self.int8_top1
        out["ranking"] = out["ranking"][:20]  # the most sensitive; the full table is the sensitivity report's
        if self.latency_ms is None:
            del out["latency_ms"]  # not measured, rather than an empty table
        return out


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of ``logits`` against ``labels``, in percent."""
    return float((logits.argmax(1) == labels).mean() * 100)


def rank_layers(
    layers: Sequence[tuple[str, str]], run: Run, ref: np.ndarray, labels: np.ndarray
) -> list[LayerSensitivity]:
    """Every layer's error when it alone is int8 (``run`` with all the others kept float), most sensitive first."""
    scale = float(np.abs(ref).mean()) or 1.0
    fp32_top1 = top1(ref, labels)
    nodes = [n for n, _ in layers]
    ranking = []
    for node, layer in layers:
        out = run([m for m in nodes if m != node])
        error = float(np.abs(out - ref).mean()) / scale
        ranking.append(LayerSensitivity(node, layer, error, fp32_top1 - top1(out, labels)))
    return sorted(ranking, key=lambda s: (-s.error, s.node))


def fit_budget(
    layers: Sequence[tuple[str, str]],
    run: Run,
    ref: np.ndarray,
    labels: np.ndarray,
    max_drop: float | None,
    *,
    rank: bool = False,
) -> BudgetFit:
    """The fewest, most sensitive of ``layers`` (``(id, module path)``) to keep in float for a top-1 drop of
    at most ``max_drop`` points against the fp32 logits ``ref`` (see the module docstring). ``rank`` ranks
    the layers even when the all-int8 model meets the budget (or no budget is given)."""
    fp32_top1 = top1(ref, labels)
    int8_top1 = top1(run([]), labels)
    fit = BudgetFit(max_drop, len(labels), fp32_top1, int8_top1, int8_top1, quantizable=len(layers))
    within = max_drop is None or fp32_top1 - int8_top1 <= max_drop
    if rank or not within:
        fit.ranking = rank_layers(layers, run, ref, labels)
    if within:
        return fit
    for k in range(1, len(fit.ranking) + 1):  # the most sensitive back to float, one more at a time
        keep = [s.node for s in fit.ranking[:k]]
        kept_top1 = top1(run(keep), labels)
        if fp32_top1 - kept_top1 <= max_drop or k == len(fit.ranking):
            fit.top1, fit.kept_nodes = kept_top1, keep
            fit.kept_float = [s.layer for s in fit.ranking[:k]]
            fit.met = fp32_top1 - kept_top1 <= max_drop
            break
    return fit


def latency_ms(calls: dict[str, Callable[[], Any]], rounds: int = 15) -> dict[str, float]:
    """Median milliseconds of each call, timed in interleaved rounds (one warm-up each) so that the machine's
    drift falls on every call alike."""
    for call in calls.values():
        call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            t0 = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: round(statistics.median(t), 3) for name, t in times.items()}


# ---- ONNX: the products with a weight, ONNX Runtime sessions ----


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


def _session(path: Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _onnx_logits(path: Path, images: np.ndarray) -> np.ndarray:
    session = _session(path)
    inp = session.get_inputs()[0]
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) else None
    return in_batches(lambda x: session.run(None, {inp.name: x})[0], images, fixed or 32, min_batch=fixed or 1)


def _onnx_call(path: Path, x: np.ndarray) -> Callable[[], Any]:
    session = _session(path)
    name = session.get_inputs()[0].name
    return lambda: session.run(None, {name: x})


@dataclass(frozen=True)
class FileRuntime:
    """How the budget search reads and runs one kind of model file (ONNX Runtime here, LiteRT in
    ``deploy/litert.py``)."""

    suffix: str
    layers: Callable[[Path, Path], list[tuple[str, str]]]  # (fp32 file, its all-int8 file) -> (id, module path)
    logits: Callable[[Path, np.ndarray], np.ndarray]  # the file's logits on the images
    # one call of the file on these images, ready to time (None: the fallback's latency is not recorded)
    call: Callable[[Path, np.ndarray], Callable[[], Any]] | None


ONNX_RUNTIME = FileRuntime(".onnx", lambda src, _int8: quantizable_layers(src), _onnx_logits, _onnx_call)


def fit_file_budget(
    src: str | Path,
    dst: str | Path,
    quantize: Callable[[Path, Path, list[str]], dict[str, Any]],
    runtime: FileRuntime,
    images: np.ndarray,
    labels: np.ndarray,
    max_drop: float | None,
    scratch: str | Path,
    *,
    rank: bool = False,
) -> tuple[BudgetFit, dict[str, Any]]:
    """Write to ``dst`` the int8 of the fp32 model file ``src`` that keeps the fewest, most sensitive layers in
    float for ``max_drop`` (:func:`fit_budget`). ``quantize(src, dst, exclude)`` writes the int8 model leaving
    the layers named in ``exclude`` in float and returns its manifest fields; returned with the fit. The
    search's own all-int8 file and last trial become the artifact and its latency reference."""
    src, dst, scratch = Path(src), Path(dst), Path(scratch)
    int8, trial = scratch / f"budget-int8{runtime.suffix}", scratch / f"budget-trial{runtime.suffix}"
    made = {int8: ([], quantize(src, int8, []))}  # file -> the layers it keeps float, its fields

    def run(keep: Sequence[str]) -> np.ndarray:
        if keep:
            made[trial] = (list(keep), quantize(src, trial, list(keep)))
        return runtime.logits(trial if keep else int8, images)

    ref = runtime.logits(src, images)
    fit = fit_budget(runtime.layers(src, int8), run, ref, labels, max_drop, rank=rank)
    kept, info = made[trial if fit.kept_nodes else int8]
    if kept != fit.kept_nodes:  # the search's last trial was another one (a ranking after the fit)
        info = quantize(src, trial, fit.kept_nodes)
    shutil.copyfile(trial if fit.kept_nodes else int8, dst)
    if runtime.call is None:
        fit.latency_ms = None
    elif fit.kept_nodes:  # what the fallback costs: fp32, all-int8 and this artifact
        files = {"fp32": src, "int8": int8, "budget": dst}
        fit.latency_ms = latency_ms({k: runtime.call(f, images[:1]) for k, f in files.items()})
    return fit, info


# ---- PyTorch: nn.Linear modules by name ----


def fit_module_budget(
    model: Any,
    quantize: Callable[[Sequence[str]], Any],
    images: np.ndarray,
    labels: np.ndarray,
    max_drop: float | None,
    *,
    rank: bool = False,
    batch: tuple[int, int] = (1, 32),
    timed: bool = True,
    layers: Sequence[str] | None = None,
) -> BudgetFit:
    """:func:`fit_budget` over the ``nn.Linear`` modules of the fp32 ``model`` (or the module paths ``layers``);
    ``quantize(keep_float)`` returns its int8 copy with the named modules left float (run under the caller's
    quantized engine). ``batch``: the smallest and largest batch the models take (a captured graph's range);
    ``timed``: record the fallback's latency (False where these PyTorch models are not what ships)."""
    import torch
    from torch import nn

    def logits(module: Any) -> Callable[[np.ndarray], np.ndarray]:
        def forward(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return module(torch.from_numpy(x)).float().numpy()

        return forward

    if layers is None:
        layers = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    ref = in_batches(logits(model.eval()), images, batch[1], min_batch=batch[0])
    run = lambda keep: in_batches(logits(quantize(keep)), images, batch[1], min_batch=batch[0])  # noqa: E731
    fit = fit_budget([(name, name) for name in layers], run, ref, labels, max_drop, rank=rank)
    if not timed:
        fit.latency_ms = None
    elif fit.kept_nodes:
        x = images[:1]
        forwards = {"fp32": logits(model), "int8": logits(quantize([])), "budget": logits(quantize(fit.kept_nodes))}
        fit.latency_ms = latency_ms({k: functools.partial(f, x) for k, f in forwards.items()})
    return fit


# ---- the sensitivity report ----


def write_sensitivity(fit: BudgetFit, stem: Path, title: str) -> dict[str, str]:
    """``<stem>.sensitivity.csv`` (every layer, most sensitive first) and ``<stem>.sensitivity.png`` (error and
    top-1 drop per layer); returns their file names for the manifest."""
    csv_path = stem.with_name(stem.name + ".sensitivity.csv")
    png_path = stem.with_name(stem.name + ".sensitivity.png")
    kept = set(fit.kept_nodes)
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["rank", "layer", "node", "int8_error", "top1_drop_alone", "kept_float"])
        for i, s in enumerate(fit.ranking, 1):
            w.writerow([i, s.layer, s.node, f"{s.error:.6g}", f"{s.top1_drop:.2f}", s.node in kept])
    _plot(fit, png_path, title)
    return {"table": csv_path.name, "plot": png_path.name}


def _plot(fit: BudgetFit, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = fit.ranking[:40]
    kept = set(fit.kept_nodes)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 0.22 * len(rows) + 1.6), sharey=True)
    y = np.arange(len(rows))
    colors = ["tab:red" if s.node in kept else "tab:blue" for s in rows]
    ax1.barh(y, [s.error for s in rows], color=colors)
    ax1.set_yticks(y, [s.layer for s in rows], fontsize=7)
    ax1.invert_yaxis()
    if rows and min(s.error for s in rows) > 0:
        ax1.set_xscale("log")  # one outlier layer would flatten every other bar
    ax1.set_xlabel("logit error, this layer alone int8 (relative)")
    ax2.barh(y, [s.top1_drop for s in rows], color=colors)
    ax2.set_xlabel("top-1 drop, this layer alone int8 (points)")
    fig.suptitle(f"{title}: {len(fit.ranking)} layers, {fit.images} images (red: kept float)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
