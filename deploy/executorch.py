"""ExecuTorch ``.pte`` files, lowered to the XNNPACK delegate: fp32 and int8.

The successor of the lite-interpreter ``.ptl``: ``torch.export`` captures the model's deploy graph
(:func:`deploy.graph.checked_graph`) with a
dynamic batch dimension bounded by ``ctx.batch``, ``to_edge_transform_and_lower`` hands every
subgraph XNNPACK supports to its delegate (the rest runs on ExecuTorch's portable kernels) and
``to_executorch`` memory-plans it for the batch upper bound. int8 goes through the PT2E flow
with the ``XNNPACKQuantizer`` (symmetric int8, per-channel weights, static activations
calibrated on ``ctx.calib``), so the delegate runs quantized linears.

ExecuTorch is an optional extra (``pip install "t2tvit-edge[executorch]"``): it is imported
inside the functions below, so importing this module never fails without it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from deploy import manifest as mf
from deploy.base import ExportContext, Format, Predictor, get_format, tool_versions
from t2tvit.errors import ConfigError

__all__ = ["ExecuTorchPredictor", "describe", "export", "load"]

_MAGIC = b"ET12"  # the program flatbuffer's file identifier at bytes 4..8 of a .pte
# Constant methods (ExecuTorch's place for values that travel with a program) holding the self-description.
ABOUT_METHOD, FORMAT_METHOD = "t2t_about", "t2t_format"

# torch.export treats a dimension whose example size is 0 or 1 as static, so the example batch
# used for capture is at least this (when the batch range allows it).
_MIN_DYNAMIC_EXAMPLE = 2
# Calibration batches for int8: enough to keep the histogram observers fed, small enough for RAM.
_CALIB_CHUNK = 16


def _capture_args(ctx: ExportContext) -> tuple[Any, Any]:
    """(example batch, dynamic_shapes) for ``torch.export`` from the ``ctx.batch`` range."""
    import torch

    bmin, bopt, bmax = ctx.batch
    if bmax < _MIN_DYNAMIC_EXAMPLE:  # batch fixed at 1: a static program
        return ctx.example(bmax), None
    n = min(max(bopt, _MIN_DYNAMIC_EXAMPLE), bmax)
    return ctx.example(n), ({0: torch.export.Dim("batch", min=max(bmin, 1), max=bmax)},)


def _calibration_batches(calib: np.ndarray, bmin: int, bmax: int) -> list[np.ndarray]:
    """Split the calibration images into batches the captured graph accepts (``bmin..bmax``)."""
    size = max(min(_CALIB_CHUNK, bmax), bmin)
    chunks = [calib[i : i + size] for i in range(0, len(calib), size)]
    return [c for c in chunks if len(c) >= bmin]


def _int8(
    module: Any, example: Any, dynamic_shapes: Any, ctx: ExportContext, path: Path, fmt: Format
) -> tuple[Any, dict[str, Any]]:
    """The int8 module to lower, and its manifest fields: every layer quantized, or within ``ctx.max_drop``
    (:func:`compress.budget.fit_module_budget`, each trial the PT2E reference model run in PyTorch on the
    validation images; the artifact is measured again by its parity check)."""
    from compress.budget import fit_module_budget

    from . import budget

    quantize = lambda keep: _quantize_int8(module, example, dynamic_shapes, ctx, float_layers=keep)  # noqa: E731
    if not budget.asked(ctx):
        return quantize(()), {}
    images, labels = budget.val_images(ctx)
    batch = (ctx.batch[0], ctx.batch[2]) if dynamic_shapes is not None else (len(example),) * 2
    fit = fit_module_budget(module, quantize, images, labels, ctx.max_drop, rank=ctx.sensitivity, batch=batch,
                            timed=False)  # fmt: skip
    record = budget.record(fit, path, fmt, ctx) | {"measured_in": "the PT2E reference model (PyTorch), unlowered"}
    return quantize(fit.kept_nodes), {"accuracy_budget": record, "float_layers": list(fit.kept_nodes)}


def _quantize_int8(model: Any, example: Any, dynamic_shapes: Any, ctx: ExportContext, float_layers: Any = ()) -> Any:
    """PT2E static int8 for XNNPACK: capture, observe ``ctx.calib``, convert; returns a module. The modules
    named in ``float_layers`` are left unannotated, so they stay float (XNNPACK runs them in fp32)."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if ctx.calib is None or len(ctx.calib) == 0:
        raise ConfigError("executorch-int8 needs calibration images; pass real images as ExportContext.calib")
    expected = (3, *ctx.img_size)
    if tuple(ctx.calib.shape[1:]) != expected:
        raise ConfigError(
            f"calibration images have shape {tuple(ctx.calib.shape[1:])}, the model takes {expected}; "
            "prepare them at the export image size"
        )
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    # set_module_name(name, None) asserts "not supported yet" in ExecuTorch 1.5, while its annotate skips a
    # None entry and keeps the name out of the global config: the module stays unannotated, float
    for name in float_layers:
        quantizer.module_name_config[name] = None
    captured = torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes).module()
    prepared = prepare_pt2e(captured, quantizer)
    batches = _calibration_batches(np.asarray(ctx.calib, dtype=np.float32), ctx.batch[0], ctx.batch[2])
    if not batches:
        raise ConfigError(f"need at least {ctx.batch[0]} calibration images for the batch range {ctx.batch}")
    with torch.no_grad():
        for batch in batches:
            prepared(torch.from_numpy(np.ascontiguousarray(batch)))
    return convert_pt2e(prepared)


def export(model: Any, path: Path | str, fmt: Format | str, ctx: ExportContext) -> dict[str, Any]:
    """Write ``path`` (.pte) for ``fmt`` ("executorch" fp32 or "executorch-int8"); returns manifest fields."""
    import torch
    from executorch.devtools.backend_debug import get_delegation_info
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower

    fmt = get_format(fmt)
    if fmt.precision not in ("fp32", "int8"):
        raise ConfigError(f"ExecuTorch exports fp32 or int8, not {fmt.precision}")
    path = Path(path)
    from deploy.graph import checked_graph

    example, dynamic_shapes = _capture_args(ctx)
    module, record = checked_graph(model, "executorch", ctx)
    fitted: dict[str, Any] = {}
    if fmt.precision == "int8":
        module, fitted = _int8(module, example, dynamic_shapes, ctx, path, fmt)
    with torch.no_grad():
        program = torch.export.export(module, (example,), dynamic_shapes=dynamic_shapes)
        # The edge IR validity check replays every op on fake tensors; for split_with_sizes_copy
        # (the performer's k/q/v split) that replay guards the symbolic batch to the example size,
        # which leaves every tensor static and the .pte rejecting any other batch. The program is
        # valid either way: skipping the check keeps the batch dynamic.
        edge = to_edge_transform_and_lower(
            program,
            partitioner=[_partitioner(fmt.precision)],
            constant_methods={ABOUT_METHOD: json.dumps(ctx.about), FORMAT_METHOD: fmt.name} if ctx.about else None,
            compile_config=EdgeCompileConfig(_check_ir_validity=False),
        )
        info = get_delegation_info(edge.exported_program().graph_module)
        pte = edge.to_executorch()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pte.buffer)
    bmax = ctx.batch[2] if dynamic_shapes is not None else int(example.shape[0])
    extra: dict[str, Any] = {
        "backend": "XnnpackBackend",
        "batch_range": [ctx.batch[0] if dynamic_shapes is not None else bmax, bmax],
        "delegated_subgraphs": info.num_delegated_subgraphs,
        "delegated_nodes": info.num_delegated_nodes,
        "non_delegated_nodes": info.num_non_delegated_nodes,
        "executorch_version": tool_versions(("executorch",))["executorch"],
        "deploy_graph": record,
    }
    if fmt.precision == "int8":
        extra["quantization"] = "pt2e XNNPACKQuantizer: symmetric int8, per-channel weights, calibrated activations"
    return extra | fitted


def _partitioner(precision: str) -> Any:
    """The XNNPACK partitioner; int8 leaves constant padding to the portable kernels.

    XNNPACK 1.5.1 lowers a quantized ``constant_pad_nd`` (the soft split's padding between two
    quantized Linears) but then refuses it when the program loads (``StaticConstantPad ...
    xnn_status_invalid_parameter``), so the whole method fails to load. The three pads are cheap.
    """
    from executorch.backends.xnnpack.partition.config import ALL_PARTITIONER_CONFIGS
    from executorch.backends.xnnpack.partition.config.generic_node_configs import ConstantPadConfig
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    if precision == "int8":
        return XnnpackPartitioner(configs=[c for c in ALL_PARTITIONER_CONFIGS if c is not ConstantPadConfig])
    return XnnpackPartitioner()


def describe(path: Path) -> dict[str, Any] | None:
    """The format row hook: a ``.pte`` written by :func:`export` names its row, class names and preprocessing
    in its constant methods (:data:`ABOUT_METHOD`, :data:`FORMAT_METHOD`); its input size is the forward
    method's. Another program (no such methods) says nothing, so its row comes from the file name."""
    try:
        with open(path, "rb") as f:
            if f.read(8)[4:8] != _MAGIC:
                return None
        from executorch.runtime import Runtime

        program = Runtime.get().load_program(Path(path))
        if FORMAT_METHOD not in program.method_names:
            return None
        row = program.load_method(FORMAT_METHOD).execute([])[0]
        about = program.load_method(ABOUT_METHOD).execute([])[0]
        sizes = tuple(program.load_method("forward").metadata.input_tensor_meta(0).sizes())
    except Exception:  # noqa: BLE001 - unreadable or damaged: the loader says why when it is loaded
        return None
    size = (int(sizes[2]), int(sizes[3])) if len(sizes) == 4 else None
    return mf.read_about(about) | {"format": row, "img_size": size}


class ExecuTorchPredictor(Predictor):
    """Runs a ``.pte`` with the ExecuTorch runtime's Python bindings (XNNPACK kernels on CPU).

    The program is memory-planned for its batch upper bound: larger inputs are run in chunks.
    """

    def __init__(self, path: Path | str, fmt: Format | str) -> None:
        from executorch.runtime import Runtime

        fmt = get_format(fmt)
        self.format, self.precision, self.device = fmt.name, fmt.precision, "cpu"
        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError(f"no ExecuTorch program at {self.path}; export it first with `t2t export`")
        runtime = Runtime.get()
        self._program = runtime.load_program(self.path)
        method = self._program.load_method("forward")
        if method is None:
            raise ConfigError(f"{self.path} has no 'forward' method; re-export it with `t2t export`")
        self._method = method
        sizes = tuple(method.metadata.input_tensor_meta(0).sizes())
        self.max_batch, self.input_chw = int(sizes[0]), tuple(int(s) for s in sizes[1:])

    @property
    def input_hw(self) -> tuple[int, int] | None:
        return int(self.input_chw[1]), int(self.input_chw[2])

    def predict(self, images: np.ndarray) -> np.ndarray:
        import torch

        if tuple(images.shape[1:]) != self.input_chw:
            raise ConfigError(
                f"{self.path.name} takes (N, {', '.join(map(str, self.input_chw))}) images, not {tuple(images.shape)}"
            )
        outs = []
        for start in range(0, len(images), self.max_batch):
            chunk = torch.from_numpy(np.ascontiguousarray(images[start : start + self.max_batch]))
            outs.append(self._method.execute([chunk])[0].detach().numpy().copy())
        return np.concatenate(outs, axis=0)


def load(path: Path | str, fmt: Format | str, device: str = "cpu", threads: int | None = None) -> ExecuTorchPredictor:
    """A ``.pte`` on the CPU; ``threads`` sizes ExecuTorch's process-wide XNNPACK thread pool first."""
    if device != "cpu":
        raise ConfigError(f"ExecuTorch .pte files run on the CPU (XNNPACK), not on {device!r}; use device='cpu'")
    if threads:
        _set_threads(int(threads))
    return ExecuTorchPredictor(path, fmt)


def _set_threads(threads: int) -> None:
    """Size ExecuTorch's process-wide XNNPACK thread pool (it defaults to every core). The call is
    experimental in ExecuTorch and safe only while nothing runs, as here: before a load."""
    try:
        from executorch.extension.pybindings import portable_lib

        if portable_lib._threadpool_get_thread_count() != threads:
            portable_lib._unsafe_reset_threadpool(threads)
    except (ImportError, AttributeError):  # another ExecuTorch version: its default pool size stays
        pass
