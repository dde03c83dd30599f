"""OpenVINO's per-node profile (``PERF_COUNT``) of a model, summed the ways the CPU benchmarks read it: by kernel
precision, by op kind and for the T2T module. Used by ``bench_cpu_formats`` and ``bench_openvino_int8``."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["profile", "render_ops"]


def _precision(exec_type: str) -> str:
    kind = exec_type.upper()
    if "I8" in kind or "U8" in kind:
        return "int8"
    if "BF16" in kind:
        return "bf16"
    return "f32" if ("FP32" in kind or "F32" in kind) else "other"


def profile(core: Any, model: Any, config: dict[str, Any], x: np.ndarray, runs: int = 10) -> dict[str, Any]:
    """``model`` (an ``ov.Model``; a copy reshaped to ``x``'s shape) compiled with ``config`` and the profiler
    on, run ``runs`` times on ``x``. Per inference: ``node_ms`` (the nodes' summed time), ``precision`` (share of
    it in int8 / bf16 / f32 / other kernels, from OpenVINO's ``exec_type``), ``ops`` (ms per op kind, the
    ``node_type`` as the CPU plugin fused it) and ``t2t_module`` (share in nodes named ``tokens_to_token``)."""
    copy = model.clone()
    copy.reshape({copy.input(0): list(x.shape)})
    request = core.compile_model(copy, "CPU", {**config, "PERF_COUNT": True}).create_infer_request()
    request.infer({0: x})  # the first call allocates; not profiled
    precision: dict[str, float] = {}
    ops: dict[str, float] = {}
    t2t = 0.0
    for _ in range(runs):
        request.infer({0: x})
        for p in request.get_profiling_info():
            ms = p.real_time.total_seconds() * 1e3
            if ms <= 0:
                continue
            precision[_precision(p.exec_type)] = precision.get(_precision(p.exec_type), 0.0) + ms
            ops[p.node_type] = ops.get(p.node_type, 0.0) + ms
            if "tokens_to_token" in p.node_name:
                t2t += ms
    total = sum(precision.values()) or 1.0
    return {
        "node_ms": total / runs,
        "precision": {k: v / total for k, v in sorted(precision.items())},
        "ops": {k: v / runs for k, v in sorted(ops.items(), key=lambda kv: -kv[1])},
        "t2t_module": t2t / total,
    }


def render_ops(prof: dict[str, Any], top: int = 8) -> str:
    """``FullyConnected 3.10 ms (41%), ...``: the op kinds that take the most time, with their share."""
    total = prof["node_ms"] or 1.0
    parts = [f"{k} {v:.2f} ms ({v / total:.0%})" for k, v in list(prof["ops"].items())[:top]]
    return ", ".join(parts)
