"""The machine's peak GEMM rate per precision, measured in the same run as the artifacts.

An artifact's MAC rate means something only next to what this machine can reach for the same
precision: the profiler divides by this measured peak rather than by a datasheet number.

The sweep takes ~5 s at one thread. A process that profiles again within :data:`PEAK_REUSE_S` with the
same threads and device (a notebook, a comparison, the test suite) reuses its own measurement
(:func:`peak_rate`); a new process always measures.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from ..base import first_line

__all__ = ["PEAK_REUSE_S", "measure_peak", "peak_rate"]

PEAK_REUSE_S = 600.0  # how long a process reuses its own peak measurement (same threads and device)
_MEASURED: dict[tuple[int | None, str], tuple[float, dict[str, Any]]] = {}


def peak_rate(threads: int | None = None, device: str = "cpu") -> dict[str, Any]:
    """:func:`measure_peak` with its default sweep, or this process's own result of it for the same
    ``threads`` and ``device`` when that is under :data:`PEAK_REUSE_S` old."""
    key = (threads, device)
    when, peak = _MEASURED.get(key, (float("-inf"), {}))
    if time.monotonic() - when > PEAK_REUSE_S:
        peak = measure_peak(threads, device)
        _MEASURED[key] = (time.monotonic(), peak)
    return copy.deepcopy(peak)


def _best_seconds(fn: Callable[[], Any], reps: int, sync: Callable[[], None]) -> float:
    sync()
    t0 = time.perf_counter()
    fn()  # warm-up (packing, allocator, thread pool start)
    sync()
    first = time.perf_counter() - t0
    best = first
    for _ in range(reps if first < 0.3 else 1):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def measure_peak(
    threads: int | None = None,
    device: str = "cpu",
    *,
    sizes: Sequence[int] = (512, 1024, 2048),
    reps: int = 3,
) -> dict[str, Any]:
    """The machine's best measured GEMM rate per precision, in GMAC/s (max over ``sizes`` and reps).

    CPU fp32: ``torch.matmul`` of square fp32 matrices with ``threads`` intra-op threads (bf16 too where the
    CPU has native bf16, for OpenVINO's bf16 inference precision). CPU int8:
    the best of ``torch._int_mm`` (int8 x int8 -> int32) and a dynamically quantized int8
    ``nn.Linear`` under each quantized engine this PyTorch build has (the kernels the int8 PyTorch
    artifacts use). CUDA (not run on this project's CPU-only test machines): fp32 and fp16 matmul
    and ``torch._int_mm``. Each entry says which op and shape reached it; ``candidates`` lists all.
    """
    import torch

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        if device == "cuda":
            return _peak_cuda(sizes, reps)
        return _peak_cpu(sizes, reps)
    finally:
        torch.set_num_threads(previous)


def _pick(candidates: list[dict[str, Any]]) -> dict[str, Any] | None:
    ok = [c for c in candidates if c.get("gmacs_per_s")]
    if not ok:
        return None
    best = max(ok, key=lambda c: c["gmacs_per_s"])
    return {**best, "candidates": candidates}


_PEAK_CALL_S = 0.5  # a larger shape is skipped when one call of it would take longer than this


def _sweep(
    op: str, sizes: Sequence[int], make: Callable[[int], Callable[[], Any]], reps: int, sync: Callable[[], None]
) -> list[dict[str, Any]]:
    """GMAC/s of ``make(n)()`` (an n x n x n product) for each size, smallest first; stops at the first
    error, and before a size whose call would take over :data:`_PEAK_CALL_S` (slow kernels on slow
    machines: the smaller shapes already show they are not the peak)."""
    out: list[dict[str, Any]] = []
    last: tuple[int, float] | None = None
    for n in sorted(sizes):
        if last is not None and last[1] * (n / last[0]) ** 3 > _PEAK_CALL_S:
            break
        try:
            t = _best_seconds(make(n), reps, sync)
        except Exception as e:  # noqa: BLE001 - not every build has every kernel
            out.append({"op": op, "shape": f"{n}x{n}x{n}", "error": first_line(e)})
            break
        out.append({"op": op, "shape": f"{n}x{n}x{n}", "gmacs_per_s": n**3 / t / 1e9})
        last = (n, t)
    return out


def _peak_cpu(sizes: Sequence[int], reps: int) -> dict[str, Any]:
    import torch

    from compress.quantize import qengine, quiet_quantization_warnings

    g = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    none = lambda: None  # noqa: E731

    def matmul(n: int, dtype: Any = torch.float32) -> Callable[[], Any]:
        a, b = torch.randn(n, n, generator=g).to(dtype), torch.randn(n, n, generator=g).to(dtype)
        return lambda: torch.matmul(a, b)

    def int_mm(n: int) -> Callable[[], Any]:
        a = torch.randint(-128, 128, (n, n), dtype=torch.int8, generator=g)
        b = torch.randint(-128, 128, (n, n), dtype=torch.int8, generator=g)
        return lambda: torch._int_mm(a, b)

    def dynamic_linear(engine: str) -> Callable[[int], Callable[[], Any]]:
        def make(n: int) -> Callable[[], Any]:
            with qengine(engine), quiet_quantization_warnings():
                lin = torch.ao.nn.quantized.dynamic.Linear(n, n, bias_=False, dtype=torch.qint8)
                lin.set_weight_bias(
                    torch.quantize_per_tensor(torch.randn(n, n, generator=g), 0.02, 0, torch.qint8), None
                )
            x = torch.randn(n, n, generator=g)

            def call() -> Any:
                with qengine(engine), quiet_quantization_warnings(), torch.no_grad():
                    return lin(x)

            return call

        return make

    fp32 = _sweep(f"torch.matmul fp32 ({threads} threads)", sizes, matmul, reps, none)
    int8 = _sweep(f"torch._int_mm int8xint8->int32 ({threads} threads)", sizes, int_mm, reps, none)
    with warnings.catch_warnings():  # the quantized kernels warn about deprecations and engine quirks
        warnings.simplefilter("ignore")
        for engine in [e for e in torch.backends.quantized.supported_engines if e != "none"]:
            op = f"dynamic int8 nn.Linear, {engine} engine ({threads} threads; fp32 activations quantized per call)"
            int8 += _sweep(op, sizes, dynamic_linear(engine), reps, none)
    out = {"fp32": _pick(fp32), "int8": _pick(int8)}
    # bf16 only where the CPU computes it natively (AVX512_BF16 / AMX: OpenVINO's bf16 inference precision);
    # elsewhere PyTorch emulates it and the number would not be a peak of anything an artifact runs
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        bf16 = lambda n: matmul(n, torch.bfloat16)  # noqa: E731
        out["bf16"] = _pick(_sweep(f"torch.matmul bf16 ({threads} threads)", sizes, bf16, reps, none))
    return out


def _peak_cuda(sizes: Sequence[int], reps: int) -> dict[str, Any]:  # untested: no GPU on the test machines
    import torch

    sizes = [*sizes, 4096, 8192]

    def matmul(dtype: Any) -> Callable[[int], Callable[[], Any]]:
        def make(n: int) -> Callable[[], Any]:
            a = torch.randn(n, n, device="cuda", dtype=dtype)
            b = torch.randn(n, n, device="cuda", dtype=dtype)
            return lambda: torch.matmul(a, b)

        return make

    def int_mm(n: int) -> Callable[[], Any]:
        a = torch.randint(-128, 128, (n, n), dtype=torch.int8, device="cuda")
        b = torch.randint(-128, 128, (n, n), dtype=torch.int8, device="cuda")
        return lambda: torch._int_mm(a, b)

    sync = torch.cuda.synchronize
    return {
        "fp32": _pick(_sweep("torch.matmul fp32 (cuda)", sizes, matmul(torch.float32), reps, sync)),
        "fp16": _pick(_sweep("torch.matmul fp16 (cuda)", sizes, matmul(torch.float16), reps, sync)),
        "int8": _pick(_sweep("torch._int_mm int8 (cuda)", sizes, int_mm, reps, sync)),
    }
