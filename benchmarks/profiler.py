"""The latency profiler: every artifact of an export folder, measured the same way in one run.

For each artifact of a ``manifest.json`` (or artifact files given directly) :func:`profile_folder`
records:

* load time (the format's own ``load``, its modules already imported) and first-inference time;
* latency at each batch size after ``warmup`` untimed runs: at least ``min_runs`` timed runs *and*
  at least ``duration`` seconds per variant per batch size; mean, std, min, p50/p90/p95/p99 and a
  distribution-free confidence interval of the median (:func:`median_ci`), and throughput;
* peak memory: the peak resident set of a fresh subprocess that imports the runtime, loads the
  artifact and runs it, minus the same subprocess's resident set just before the load (and, for CUDA
  runtimes, the device memory it allocated);
* file size, MACs per image (:func:`t2tvit.summary.summarize` of the model the manifest describes)
  and the MAC rate reached at batch 1, against the machine's peak GEMM rate for the artifact's
  precision measured in the same run (:func:`measure_peak`);
* top-1/top-5 accuracy on a labelled image folder and top-1 agreement with the fp32 ``torch``
  artifact.

Variants are timed *interleaved* in one process: each of ``rounds`` rounds gives every variant a
chunk of its runs, in an order rotated every round (:func:`interleave_schedule`), so the drift of a
shared machine (other tenants, turbo, thermals) hits every variant alike instead of whichever ran
last. Artifacts that failed at export, cannot run here (missing package, needs a GPU) or fail to
load or run are rows with their status and reason, never missing rows.

The report is a plain dict (schema 1, see :func:`profile_folder`); ``benchmarks.report`` writes it
as Markdown, JSON, CSV and plots.
"""

from __future__ import annotations

import gc
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from t2tvit.errors import ConfigError

__all__ = [
    "CI_LEVEL",
    "SCHEMA",
    "TARGETS",
    "ProfileConfig",
    "compute_targets",
    "infer_format",
    "interleave_schedule",
    "latency_stats",
    "load_labelled",
    "load_predictor",
    "measure_peak",
    "median_ci",
    "median_ci_ranks",
    "percentile",
    "profile_folder",
    "run_interleaved",
]

SCHEMA = 1
CI_LEVEL = 0.95
ROOT = Path(__file__).resolve().parents[1]
# (name, value the ratio must reach, "<=" or ">="): all at batch 1.
TARGETS = {
    "eager_vs_reference": 0.8,  # fp32 eager (format `torch`) p50 / straightforward formulation p50
    "int8_vs_fp32": 0.4,  # best int8 artifact p50 / fp32 eager p50
    "peak_share": 0.35,  # best artifact's MAC rate / measured peak GEMM rate of its precision
}
_PROBE_MARK = "T2T-MEMORY-PROBE "
# Formats whose artifact only accepts the export's batch range (ONNX's dynamic axis bounds, TensorRT's
# optimisation profile, ExecuTorch's memory plan); the PyTorch ones take any batch.
_BOUNDED_BATCH = ("deploy.onnx", "deploy.tensorrt", "deploy.executorch")
_TORCH_MODULES = ("deploy.torch_eager", "deploy.torchscript", "deploy.ptl", "benchmarks.reference")


@dataclass
class ProfileConfig:
    """What :func:`profile_folder` measures and how long it spends on it.

    ``duration`` and ``min_runs`` apply per variant per batch size: timing stops when both are
    reached. ``threads`` is the intra-op thread count of PyTorch and ONNX Runtime (default: the
    CPU count, at most 4). ``data``: a folder of ``<class>/<image>`` files for accuracy (classes
    are the sorted sub-folder names, as in training), or None. ``formats``: only these formats
    (comma-separated names or groups, see :func:`deploy.base.resolve_formats`).
    """

    batch_sizes: Sequence[int] = (1,)
    threads: int | None = None
    duration: float = 2.0
    min_runs: int = 10
    warmup: int = 3
    rounds: int = 5
    data: str | Path | None = None
    max_images: int = 500
    memory: bool = True
    reference: bool = False
    device: str = "cpu"
    formats: str | Sequence[str] | None = None

    def resolved_threads(self) -> int:
        return int(self.threads) if self.threads else min(4, os.cpu_count() or 1)

    def check(self) -> None:
        """One-sentence :class:`ConfigError` for a setting that cannot work."""
        sizes = list(self.batch_sizes)
        if not sizes or any(not isinstance(b, int) or isinstance(b, bool) or b < 1 for b in sizes):
            raise ConfigError(f"batch sizes must be positive integers (e.g. 1,8), not {sizes}")
        if self.threads is not None and int(self.threads) < 1:
            raise ConfigError(f"threads must be at least 1, not {self.threads}")
        if self.duration < 0 or self.min_runs < 1 or self.rounds < 1 or self.warmup < 0:
            raise ConfigError("duration must be >= 0, min runs and rounds >= 1, and warm-up runs >= 0")
        if self.max_images < 1:
            raise ConfigError(f"max images must be at least 1, not {self.max_images}")
        if self.device not in ("cpu", "cuda"):
            raise ConfigError(f"device must be 'cpu' or 'cuda', not {self.device!r}")


# --------------------------------------------------------------------------------------------------
# statistics


def percentile(samples: Iterable[float], q: float) -> float:
    """The ``q``-th percentile (0..100), linear between the closest ranks (numpy's default method).

    ``percentile([1, 2, 3, 4], 50) == 2.5``; ``percentile(range(1, 11), 90) == 9.1``.
    """
    xs = sorted(float(x) for x in samples)
    if not xs:
        raise ValueError("percentile of no samples")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be within 0..100, not {q}")
    h = (len(xs) - 1) * q / 100
    lo = math.floor(h)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (h - lo) * (xs[hi] - xs[lo])


def _half_binomial_cdf(n: int) -> Callable[[int], float]:
    """``k -> P(B <= k)`` for ``B ~ Binomial(n, 1/2)``: exact (integer) up to n = 2000, log-space above."""
    if n <= 2000:
        cum, acc = [], 0
        for i in range(n + 1):
            acc += math.comb(n, i)
            cum.append(acc)
        total = 2**n
        return lambda k: 0.0 if k < 0 else 1.0 if k >= n else cum[k] / total
    log_half = n * math.log(0.5)
    lg = math.lgamma(n + 1)
    pmf = [math.exp(lg - math.lgamma(i + 1) - math.lgamma(n - i + 1) + log_half) for i in range(n + 1)]
    cum_f = list(np.cumsum(pmf))
    return lambda k: 0.0 if k < 0 else 1.0 if k >= n else float(cum_f[k])


def median_ci_ranks(n: int, level: float = CI_LEVEL) -> tuple[int, int, float]:
    """1-based order-statistic ranks ``(l, u)`` with ``P(x_(l) <= median <= x_(u)) >= level``, and that coverage.

    Distribution-free: the number of samples below the true median is Binomial(n, 1/2), so
    ``[x_(l), x_(u)]`` with ``u = n + 1 - l`` covers it with probability ``1 - 2 P(B <= l - 1)``;
    ``l`` is the largest rank that keeps this at or above ``level``. With too few samples for the
    level (n < 6 at 95%) it is the whole range ``(1, n)`` with the (lower) coverage it really has.
    For n = 10 at 95%: ranks (2, 9), coverage 1 - 2 * 11/1024 = 0.9785.
    """
    if n < 1:
        raise ValueError("a median interval needs at least one sample")
    if not 0 < level < 1:
        raise ValueError(f"confidence level must be within (0, 1), not {level}")
    cdf = _half_binomial_cdf(n)
    alpha_half = (1 - level) / 2
    l = 1
    while l + 1 <= (n + 1) // 2 and cdf(l) <= alpha_half:  # rank l + 1 still keeps the coverage
        l += 1
    return l, n + 1 - l, 1 - 2 * cdf(l - 1)


def median_ci(samples: Iterable[float], level: float = CI_LEVEL) -> tuple[float, float]:
    """Distribution-free ``level`` confidence interval of the median (see :func:`median_ci_ranks`)."""
    xs = sorted(float(x) for x in samples)
    l, u, _ = median_ci_ranks(len(xs), level)
    return xs[l - 1], xs[u - 1]


def latency_stats(samples_ms: Sequence[float], batch: int = 1, level: float = CI_LEVEL) -> dict[str, Any]:
    """Summary of per-call latencies (milliseconds) at ``batch`` images per call.

    ``std_ms`` is the sample standard deviation (0 for one run); ``throughput_ips`` is images per
    second over the timed runs (``batch / mean``: sustained, outliers included).
    """
    xs = sorted(float(x) for x in samples_ms)
    if not xs:
        raise ValueError("latency statistics of no samples")
    n = len(xs)
    mean = math.fsum(xs) / n
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
    lo, hi = median_ci(xs, level)
    return {
        "runs": n,
        "mean_ms": mean,
        "std_ms": std,
        "min_ms": xs[0],
        "p50_ms": percentile(xs, 50),
        "p90_ms": percentile(xs, 90),
        "p95_ms": percentile(xs, 95),
        "p99_ms": percentile(xs, 99),
        "p50_ci_ms": [lo, hi],
        "ci_level": level,
        "throughput_ips": batch * 1000.0 / mean if mean > 0 else float("inf"),
    }


# --------------------------------------------------------------------------------------------------
# interleaved timing


def interleave_schedule(names: Sequence[str], rounds: int) -> list[list[str]]:
    """The order of the variants in each round: rotated by one every round, so each one runs first,
    last and in between equally often (``[[a, b, c], [b, c, a], [c, a, b], [a, b, c], ...]``)."""
    names = list(names)
    if not names:
        return [[] for _ in range(rounds)]
    return [names[r % len(names) :] + names[: r % len(names)] for r in range(rounds)]


def run_interleaved(
    steps: Mapping[str, Callable[[], float]],
    *,
    rounds: int,
    min_runs: int,
    duration: float,
    warmup: int = 0,
    on_round: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Time every step interleaved; returns per name its samples and, for the steps that raised, why.

    Each step runs once per call and returns its own latency in ms (so CPU and CUDA steps time
    themselves correctly). After ``warmup`` untimed calls each, every round runs each step (in the
    order of :func:`interleave_schedule`) for a chunk of at least ``ceil(min_runs / rounds)`` calls
    and at least ``duration / rounds`` seconds. A step that raises is dropped from later rounds and
    keeps the samples it had.
    """
    samples: dict[str, list[float]] = {name: [] for name in steps}
    errors: dict[str, str] = {}
    schedule = interleave_schedule(list(steps), rounds)
    for name in schedule[0] if schedule else []:
        try:
            for _ in range(warmup):
                steps[name]()
        except Exception as e:  # noqa: BLE001 - one variant's failure must not stop the others
            errors[name] = _first_line(e)
    chunk_runs = max(1, math.ceil(min_runs / max(1, rounds)))
    chunk_s = duration / max(1, rounds)
    for r, order in enumerate(schedule):
        gc.collect()
        for name in order:
            if name in errors:
                continue
            step, out = steps[name], samples[name]
            n, t0 = 0, time.perf_counter()
            try:
                while n < chunk_runs or time.perf_counter() - t0 < chunk_s:
                    out.append(float(step()))
                    n += 1
            except Exception as e:  # noqa: BLE001
                errors[name] = _first_line(e)
        if on_round is not None:
            on_round(r, rounds)
    return samples, errors


def _timer(predictor: Any, images: np.ndarray, device: str) -> Callable[[], float]:
    """One call of ``predictor`` on ``images``, timed in ms.

    CPU: ``perf_counter`` around the call. CUDA: CUDA events around the call with synchronisation
    before and after (the predictors take and return host arrays, so the copies are included: what a
    caller of ``predict`` pays). The CUDA path has not been run on this project's CPU-only test
    machines.
    """
    import torch

    if device == "cuda" and torch.cuda.is_available():
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def cuda_step() -> float:
            torch.cuda.synchronize()
            start.record()
            predictor(images)
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end))

        return cuda_step

    def cpu_step() -> float:
        t0 = time.perf_counter_ns()
        predictor(images)
        return (time.perf_counter_ns() - t0) / 1e6

    return cpu_step


# --------------------------------------------------------------------------------------------------
# peak GEMM rate


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

    CPU fp32: ``torch.matmul`` of square fp32 matrices with ``threads`` intra-op threads. CPU int8:
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
            out.append({"op": op, "shape": f"{n}x{n}x{n}", "error": _first_line(e)})
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

    def matmul(n: int) -> Callable[[], Any]:
        a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
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
    return {"fp32": _pick(fp32), "int8": _pick(int8)}


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


# --------------------------------------------------------------------------------------------------
# artifacts: which, how to load them


@dataclass
class _Variant:
    """One row in the making."""

    name: str
    format: str
    precision: str
    device: str
    file: str | None = None
    path: Path | None = None
    fmt: Any = None  # deploy.base.Format, or the reference's own row
    batch_range: tuple[int, int] | None = None
    status: str = "ok"
    reason: str | None = None
    notes: list[str] = field(default_factory=list)
    manifest_agreement: float | None = None
    sha256: str | None = None  # what the manifest recorded
    predictor: Any = None
    load_s: float | None = None
    first_ms: float | None = None
    latency: dict[str, Any] = field(default_factory=dict)
    peak_rss_mb: float | None = None
    cuda_peak_mb: float | None = None
    top1: float | None = None
    top5: float | None = None
    agreement: float | None = None
    preds: np.ndarray | None = None  # top-1 class per data image

    def fail(self, status: str, reason: str) -> None:
        self.status, self.reason, self.predictor = status, reason, None

    def accepts(self, batch: int) -> bool:
        return self.batch_range is None or self.batch_range[0] <= batch <= self.batch_range[1]


def infer_format(path: str | Path) -> tuple[Any, str | None]:
    """The format row of an artifact file from its name, and a note when it had to be guessed.

    ``model-<format><suffix>`` (what ``t2t export`` writes) names it exactly; otherwise the longest
    format name the file name ends with; otherwise the first format in the table with that suffix
    (e.g. ``.onnx`` -> ``onnx``), with a note saying so.
    """
    from deploy.base import FORMATS

    path = Path(path)
    for f in FORMATS.values():
        if path.name == f.filename:
            return f, None
    suffix = path.suffix
    candidates = [f for f in FORMATS.values() if f.suffix == suffix]
    if not candidates:
        suffixes = ", ".join(sorted({f.suffix for f in FORMATS.values()}))
        raise ConfigError(f"cannot tell the format of {path.name} from its suffix; artifacts end in {suffixes}")
    stem = path.name[: -len(suffix)] if suffix else path.name
    named = [f for f in candidates if stem.endswith(f.name)]
    if named:
        return max(named, key=lambda f: len(f.name)), None
    return candidates[0], (
        f"format guessed from the suffix {suffix} as {candidates[0].name}; name the file "
        f"model-<format>{suffix} or pass FORMAT=PATH to choose"
    )


def _device_for(fmt: Any, wanted: str) -> str:
    if wanted == "cuda" and fmt.gpu:
        return "cuda"
    return "cpu" if fmt.cpu else "cuda"


def load_predictor(fmt: Any, path: str | Path, device: str = "cpu", threads: int | None = None) -> Any:
    """``fmt``'s own ``load``, with the runtime's intra-op threads set to ``threads``.

    PyTorch-based formats follow ``torch.set_num_threads`` (set by the caller); ONNX Runtime takes
    ``threads`` in ``deploy.onnx.load``; ExecuTorch's XNNPACK thread pool is resized. TensorRT runs
    on the GPU.
    """
    mod = fmt.impl()
    if threads and fmt.module == "deploy.executorch":
        _executorch_threads(int(threads))
    if threads and fmt.module == "deploy.onnx":
        return mod.load(path, fmt, device=device, threads=int(threads))
    return mod.load(path, fmt, device=device)


def _executorch_threads(threads: int) -> None:
    """Size ExecuTorch's process-wide XNNPACK thread pool (it defaults to every core). The call is
    experimental in ExecuTorch and safe only while nothing runs, as here: before a load."""
    try:
        from executorch.extension.pybindings import portable_lib

        if portable_lib._threadpool_get_thread_count() != threads:
            portable_lib._unsafe_reset_threadpool(threads)
    except (ImportError, AttributeError):  # another ExecuTorch version: its default pool size stays
        pass


def _reference_format() -> Any:
    from deploy.base import Format

    return Format(
        "reference",
        "benchmarks.reference",
        "fp32",
        ".pt",
        True,
        True,
        "the straightforward T2T-ViT formulation with the fp32 eager artifact's weights",
    )


def load_reference(torch_artifact: str | Path, device: str = "cpu") -> Any:
    """The straightforward formulation (:mod:`benchmarks.reference`) holding the weights of the fp32
    ``torch`` artifact, behind the same Predictor as that artifact (so the two differ in the model only)."""
    import torch

    from benchmarks.reference import reference_model
    from deploy.torch_eager import TorchPredictor
    from t2tvit.errors import CheckpointError

    obj = torch.load(torch_artifact, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or "model" not in obj or "args" not in obj:
        raise CheckpointError(f"{torch_artifact} is not an fp32 eager artifact written by `t2t export`")
    args = obj["args"]
    h, w = args["img_size"]
    if h != w:
        raise ConfigError("the reference formulation takes square images only")
    model = reference_model(args["model"], img_size=int(h), num_classes=int(args["num_classes"]))
    model.load_state_dict(obj["model"])
    return TorchPredictor(model.eval().to(device), _reference_format(), Path(torch_artifact), device)


def _variants(
    folder: Path | None, manifest: dict[str, Any] | None, files: Sequence[str | Path], config: ProfileConfig
) -> list[_Variant]:
    from deploy.base import FORMATS, get_format, resolve_formats
    from deploy.export import sha256_file

    wanted = {f.name for f in resolve_formats(config.formats)} if config.formats else None
    out: list[_Variant] = []
    names: set[str] = set()

    def unique(name: str) -> str:
        k, candidate = 2, name
        while candidate in names:
            candidate, k = f"{name}-{k}", k + 1
        names.add(candidate)
        return candidate

    seen_paths: set[Path] = set()
    for entry in (manifest or {}).get("artifacts", []):
        name = entry.get("format", "?")
        if wanted is not None and name not in wanted:
            continue
        fmt = FORMATS.get(name)
        v = _Variant(
            name=unique(name),
            format=name,
            precision=entry.get("precision") or (fmt.precision if fmt else "fp32"),
            device=_device_for(fmt, config.device) if fmt else config.device,
            file=entry.get("file"),
            fmt=fmt,
        )
        batch = entry.get("batch")
        if fmt is not None and fmt.module in _BOUNDED_BATCH and isinstance(batch, list | tuple) and len(batch) == 3:
            v.batch_range = (int(batch[0]), int(batch[2]))
        parity = entry.get("parity") or {}
        v.manifest_agreement, v.sha256 = parity.get("top1_agreement"), entry.get("sha256")
        if v.file and folder is not None:
            v.path = folder / v.file
            seen_paths.add(v.path.resolve())
        status = entry.get("status")
        if status != "ok":
            v.fail(status if status in ("failed", "skipped") else "failed", entry.get("reason") or f"status {status}")
        elif fmt is None:
            v.fail("failed", f"unknown format {name!r} in the manifest")
        out.append(v)
    for spec in files:
        text = str(spec)
        forced = None
        if "=" in text and text.split("=", 1)[0] in FORMATS:
            forced, text = text.split("=", 1)
        path = Path(text).expanduser()
        if path.resolve() in seen_paths:
            continue
        seen_paths.add(path.resolve())
        try:
            fmt, note = (get_format(forced), None) if forced else infer_format(path)
        except ConfigError as e:
            v = _Variant(name=unique(path.name), format="?", precision="fp32", device=config.device, file=str(path))
            v.path = path
            v.fail("failed", str(e))
            out.append(v)
            continue
        if wanted is not None and fmt.name not in wanted:
            continue
        v = _Variant(unique(fmt.name), fmt.name, fmt.precision, _device_for(fmt, config.device), str(path), path, fmt)
        if note:
            v.notes.append(note)
        out.append(v)
    for v in out:  # what this machine can run at all
        if v.status != "ok":
            continue
        why = v.fmt.missing()
        if why:
            v.fail("skipped", why)
        elif v.device == "cuda" and v.fmt.module != "deploy.tensorrt" and not _cuda_available():
            v.fail("skipped", "needs a CUDA GPU; none is visible on this machine")
        elif v.path is None or not v.path.is_file():
            v.fail("failed", f"artifact file {v.file} is missing")
        elif v.sha256 and sha256_file(v.path) != v.sha256:
            v.notes.append("sha256 differs from the manifest: the file changed after export and parity")
    return out


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


# --------------------------------------------------------------------------------------------------
# the model behind the artifacts, and labelled data


def _model_info(manifest: dict[str, Any] | None, variants: Sequence[_Variant]) -> dict[str, Any]:
    """Name, classes and input size of the model: from the manifest, else from a given torch
    artifact, else the input shape of a given ONNX file (name unknown: no MAC count then)."""
    if manifest and isinstance(manifest.get("model"), dict):
        m = manifest["model"]
        return {
            "name": m.get("model"),
            "num_classes": m.get("num_classes"),
            "img_size": tuple(int(s) for s in m.get("img_size", (224, 224))),
            "source": manifest.get("source_checkpoint"),
        }
    for v in variants:
        if v.fmt is not None and v.fmt.module == "deploy.torch_eager" and v.path is not None and v.path.is_file():
            try:
                import torch

                obj = torch.load(v.path, map_location="cpu", weights_only=True)
                args = obj["args"]
                return {
                    "name": args["model"],
                    "num_classes": int(args["num_classes"]),
                    "img_size": tuple(int(s) for s in args["img_size"]),
                    "source": str(v.path),
                }
            except Exception:  # noqa: BLE001 - a broken file becomes a failed row later; try the next one
                continue
    for v in variants:
        if v.fmt is not None and v.fmt.suffix == ".onnx" and v.path is not None and v.path.is_file():
            try:
                import onnx

                graph = onnx.load(str(v.path), load_external_data=False).graph
                dims = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
                classes = [d.dim_value for d in graph.output[0].type.tensor_type.shape.dim]
                if len(dims) == 4 and dims[2] > 0 and dims[3] > 0:
                    return {
                        "name": None,
                        "num_classes": classes[-1] if classes and classes[-1] > 0 else None,
                        "img_size": (dims[2], dims[3]),
                        "source": str(v.path),
                    }
            except Exception:  # noqa: BLE001
                continue
    raise ConfigError(
        "cannot tell the model's input size from the files given; pass the export folder with its manifest.json "
        "or add its model-torch.pt to --files"
    )


def _meta_model(info: dict[str, Any]) -> Any:
    """The model on the meta device (no memory): for its parameter and MAC counts and eval transform."""
    if not info.get("name"):
        return None
    import timm
    import torch

    import t2tvit  # noqa: F401 - registers the variants with timm

    try:
        with torch.device("meta"):
            return timm.create_model(info["name"], num_classes=info["num_classes"], img_size=info["img_size"])
    except Exception:  # noqa: BLE001 - an unknown name only costs the MAC count
        return None


def _data_classes(folder: str | Path, num_classes: int | None = None) -> list[str]:
    """The class names of a labelled folder (sorted sub-folders), or a ConfigError saying what is wrong."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"data folder {folder} does not exist; pass a folder of <class>/<image> files or 'digits'")
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ConfigError(f"data folder {folder} has no class sub-folders; lay it out as {folder}/<class>/<image>")
    if num_classes is not None and len(classes) > num_classes:
        raise ConfigError(
            f"data folder {folder} has {len(classes)} classes but the model has {num_classes}; "
            "pass the validation folder of the dataset it was trained on"
        )
    return classes


def load_labelled(
    folder: str | Path, transform: Any, max_images: int | None = None, num_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Up to ``max_images`` images of ``folder/<class>/<image>`` (a fixed random sample across classes),
    transformed, with their labels: the index of the class among the sorted sub-folder names, as in
    training. Returns ``(images, labels, classes)``."""
    from compress.quantize import load_images

    folder = Path(folder)
    classes = _data_classes(folder, num_classes)
    index = {c: i for i, c in enumerate(classes)}
    images, files = load_images(folder, transform, max_images, what="data")
    labels = [
        index.get(f.relative_to(folder).parts[0], -1) if len(f.relative_to(folder).parts) > 1 else -1 for f in files
    ]
    keep = np.array([lab >= 0 for lab in labels], dtype=bool)
    if not keep.any():
        raise ConfigError(f"data folder {folder} has no images inside its class sub-folders")
    return images[keep], np.array(labels)[keep], classes


# --------------------------------------------------------------------------------------------------
# memory, in a fresh subprocess per artifact


def _status_kb(key: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) if m else None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process (Linux >= 4.0), so the next peak is
    the peak of what follows, not of the imports before."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _memory_probe(argv: Sequence[str] | None = None) -> None:
    """Entry point of the memory subprocess: import, settle, load, run, report (one JSON line)."""
    import importlib
    import resource

    spec = json.loads((argv or sys.argv[1:])[0])
    import torch

    torch.set_num_threads(int(spec["threads"]))
    for name in ("timm", "t2tvit", "deploy.torch_eager", *spec.get("imports", [])):
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    fmt = None
    if spec["format"] != "reference":
        from deploy.base import get_format

        fmt = get_format(spec["format"])
        fmt.impl()
    h, w = spec["img_size"]
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((b, 3, h, w), dtype=np.float32) for b in spec["batch_sizes"]]
    cuda = spec["device"] == "cuda" and torch.cuda.is_available()
    if cuda:  # untested: no GPU on the test machines
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats()
        free_before = torch.cuda.mem_get_info()[0]
    gc.collect()
    reset = _reset_peak_rss()
    base_kb = _status_kb("VmRSS")
    if spec["format"] == "reference":
        predictor = load_reference(spec["path"], spec["device"])
    else:
        predictor = load_predictor(fmt, spec["path"], spec["device"], spec["threads"])
    for x in inputs:
        for _ in range(3):
            predictor(x)
    peak_kb = _status_kb("VmHWM") if reset else None
    if peak_kb is None:  # no /proc: peak since the start of the process (imports included), in KiB on Linux
        peak_kb, reset = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, False
    result: dict[str, Any] = {
        "peak_rss_mb": (peak_kb - (base_kb or 0)) / 1024 if base_kb is not None else None,
        "baseline_rss_mb": base_kb / 1024 if base_kb is not None else None,
        "peak_mark_reset": reset,
    }
    if cuda:
        torch.cuda.synchronize()
        if spec["module"] in _TORCH_MODULES:
            result["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        else:  # ONNX Runtime and TensorRT allocate outside PyTorch: what the device lost meanwhile
            result["cuda_peak_mb"] = (free_before - torch.cuda.mem_get_info()[0]) / 2**20
    print(_PROBE_MARK + json.dumps(result), flush=True)


def _measure_memory(v: _Variant, img_size: tuple[int, int], batch_sizes: Sequence[int], threads: int) -> None:
    module = v.fmt.module
    # the runtime libraries, imported before the baseline: their code is not the artifact's memory
    imports = {
        "deploy.onnx": ["onnxruntime", "onnx"],
        "deploy.ptl": ["torch.jit.mobile"],
        "deploy.executorch": ["executorch.runtime", "executorch.extension.pybindings.portable_lib"],
    }.get(module, [])
    spec = {
        "format": v.format if v.format == "reference" else v.fmt.name,
        "module": module,
        "path": str(v.path),
        "device": v.device,
        "threads": threads,
        "img_size": list(img_size),
        "batch_sizes": [b for b in batch_sizes if v.accepts(b)] or [1],
        "imports": [*imports, *v.fmt.requires],
    }
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    code = "from benchmarks.profiler import _memory_probe; _memory_probe()"
    try:
        res = subprocess.run(
            [sys.executable, "-c", code, json.dumps(spec)],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
    except subprocess.TimeoutExpired:
        v.notes.append("memory probe timed out after 600 s")
        return
    line = next((ln for ln in reversed(res.stdout.splitlines()) if ln.startswith(_PROBE_MARK)), None)
    if res.returncode != 0 or line is None:
        err = (res.stderr.strip().splitlines() or [f"exit status {res.returncode}"])[-1]
        v.notes.append(f"memory probe failed: {err[:300]}")
        return
    out = json.loads(line[len(_PROBE_MARK) :])
    v.peak_rss_mb = out.get("peak_rss_mb")
    v.cuda_peak_mb = out.get("cuda_peak_mb")
    if not out.get("peak_mark_reset"):
        v.notes.append("peak RSS since process start (the peak mark could not be reset): includes the imports")


def _memory_all(
    variants: Sequence[_Variant], hw: tuple[int, int], batch_sizes: Sequence[int], threads: int, bar: Any
) -> None:
    """Peak memory of every variant, after all timing. The CPU probes run a few at a time: each is its
    own process and resident sets are per process, so they do not disturb one another's numbers (only
    the wall time). CUDA probes run one by one: they read device-wide free memory."""
    from concurrent.futures import ThreadPoolExecutor

    todo = [v for v in variants if v.status == "ok"]
    for v in variants:
        if v.status != "ok":
            bar.step(f"{v.name}: no memory probe ({v.status})")

    def one(v: _Variant) -> None:
        _measure_memory(v, hw, batch_sizes, threads)

    cpu = [v for v in todo if v.device == "cpu"]
    bar.step(f"peak memory: {len(todo)} subprocesses", 0)
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        for v, _ in zip(cpu, pool.map(one, cpu), strict=True):
            bar.step(f"{v.name}: memory measured")
    for v in todo:
        if v.device != "cpu":
            one(v)
            bar.step(f"{v.name}: memory measured")


# --------------------------------------------------------------------------------------------------
# progress


class _Progress:
    """A rich progress bar when stderr is a terminal, plain lines otherwise, nothing when disabled."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total, self.done, self.bar, self.task = enabled, total, 0, None, None
        if not enabled:
            return
        from rich.console import Console

        console = Console(stderr=True)
        if console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
                transient=True,
            )
            self.task = self.bar.add_task("profile", total=total)

    def __enter__(self) -> _Progress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def step(self, msg: str, advance: int = 1) -> None:
        self.done += advance
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(self.task, advance=advance, description=msg)
        else:
            print(f"[profile {self.done}/{self.total}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# the profile


def profile_folder(
    folder: str | Path | None,
    config: ProfileConfig | None = None,
    *,
    files: Sequence[str | Path] | None = None,
    command: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Profile every artifact of the export ``folder`` (its ``manifest.json``) and/or ``files``.

    ``files``: artifact paths besides (or instead of) the manifest's; the format comes from the
    name (:func:`infer_format`) or a ``FORMAT=PATH`` prefix. Returns the report dict (schema 1):
    ``schema, created, command, machine, versions, settings, model, peak, rows, targets``; each row
    has ``name, format, precision, device, file, file_bytes, status, reason, load_s,
    first_inference_ms, latency{str(batch): stats}, peak_rss_mb, cuda_peak_mb, gmacs_per_s,
    peak_share, top1, top5, agreement``.
    """
    import torch

    from deploy.export import read_manifest

    config = config or ProfileConfig()
    config.check()
    files = list(files or [])
    folder_path = Path(folder) if folder is not None else None
    if folder_path is not None and not folder_path.is_dir():
        raise ConfigError(f"artifacts folder {folder_path} does not exist; run `t2t export --out {folder_path}` first")
    manifest = None
    if folder_path is not None and (folder_path / "manifest.json").is_file():
        manifest = read_manifest(folder_path)
    elif not files:
        where = folder_path if folder_path is not None else "no folder"
        raise ConfigError(
            f"{where} has no manifest.json and no artifact files were given; pass an export folder or --files"
        )
    variants = _variants(folder_path, manifest, files, config)
    info = _model_info(manifest, variants)
    threads = config.resolved_threads()
    batch_sizes = sorted(set(int(b) for b in config.batch_sizes))
    hw = info["img_size"]

    meta_model = _meta_model(info)
    params = macs = None
    if meta_model is not None:
        from t2tvit.summary import summarize

        try:
            s = summarize(meta_model, info["name"])
            params, macs = s.params, s.macs
        except Exception:  # noqa: BLE001 - without a MAC count the rows just have no MAC rate
            pass

    images = labels = None
    data = None
    if config.data is not None:
        data = str(config.data)
        _data_classes(config.data, info.get("num_classes"))  # a bad folder fails now, not after the timing

    if config.reference:
        variants.append(_reference_variant(variants, folder_path, config))

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    runnable = [v for v in variants if v.status == "ok"]
    total = 1 + len(runnable) * (1 + int(data is not None) + int(config.memory)) + len(batch_sizes) * config.rounds
    try:
        with _Progress(progress, total) as bar:
            bar.step(f"measuring peak GEMM rate ({threads} threads)", 0)
            peak = measure_peak(threads, "cpu")
            peak_cuda = None
            if any(v.device == "cuda" for v in runnable) and _cuda_available():
                try:  # untested: no GPU on the test machines
                    peak_cuda = measure_peak(threads, "cuda")
                except Exception as e:  # noqa: BLE001 - the rows still get their latencies
                    peak_cuda = {"error": _first_line(e)}
            bar.step("peak GEMM rate measured")
            for v in runnable:
                bar.step(f"{v.name}: loading", 0)
                _load(v, hw, batch_sizes, threads)
                bar.step(f"{v.name}: loaded" if v.status == "ok" else f"{v.name}: {v.status}")
            for b in batch_sizes:
                _time_batch([v for v in runnable if v.status == "ok"], b, hw, config, bar)
            for v in runnable:
                if v.status == "ok" and not v.latency:
                    v.fail("failed", "; ".join(v.notes) or "no batch size could be timed")
                    v.notes = []
            if config.data is not None:  # loaded only now: the images would sit in memory during the timing
                from deploy.export import manifest_preprocessing
                from t2tvit.data import eval_transform_for

                # the preprocessing the export recorded (the trainer's --crop-pct / --interpolation)
                prep = manifest_preprocessing(manifest)
                bar.step(f"loading up to {config.max_images} images from {config.data}", 0)
                images, labels, _ = load_labelled(
                    config.data, eval_transform_for(meta_model, hw, **prep), config.max_images, info.get("num_classes")
                )
                for v in runnable:
                    if v.status == "ok":
                        bar.step(f"{v.name}: accuracy on {len(images)} images", 0)
                        _accuracy(v, images, labels)
                    bar.step(f"{v.name}: accuracy done")
            for v in runnable:  # free the loaded runtimes before the memory probes
                v.predictor = None
            gc.collect()
            if config.memory:
                _memory_all(runnable, hw, batch_sizes, threads, bar)
    finally:
        torch.set_num_threads(previous_threads)
        for v in variants:
            v.predictor = None

    # Parity agreement from an export of random weights (no source checkpoint) says nothing: the
    # logits of an untrained model are nearly tied, so it is left out rather than shown.
    trained = manifest is None or bool(manifest.get("source_checkpoint"))
    _agreements(variants, images is not None, use_manifest=trained)
    rows = [_row(v, macs, peak, peak_cuda) for v in variants]
    report = {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command if command is not None else shlex.join(sys.argv),
        "machine": _machine(threads),
        "versions": _versions(),
        "settings": {
            "batch_sizes": batch_sizes,
            "threads": threads,
            "duration_s": float(config.duration),
            "min_runs": int(config.min_runs),
            "warmup": int(config.warmup),
            "img_size": int(hw[0]),
            "data": data,
            "images": 0 if images is None else int(len(images)),
            "rounds": int(config.rounds),
            "device": config.device,
            "ci_level": CI_LEVEL,
            "timing": "interleaved round-robin, order rotated per round; random fixed-seed inputs",
        },
        "model": {
            "name": info.get("name"),
            "num_classes": info.get("num_classes"),
            "params": params,
            "macs_per_image": macs,
            "source": info.get("source"),
        },
        "peak": peak,
        "rows": rows,
    }
    if peak_cuda is not None:
        report["peak_cuda"] = peak_cuda
    report["targets"] = compute_targets(report)
    return report


def _reference_variant(variants: Sequence[_Variant], folder: Path | None, config: ProfileConfig) -> _Variant:
    fmt = _reference_format()
    v = _Variant("reference", "reference", "fp32", _device_for(fmt, config.device), fmt=fmt)
    torch_rows = [x for x in variants if x.format == "torch" and x.path is not None]
    src = next((x for x in torch_rows if x.status == "ok"), None)
    if src is None and folder is not None and (folder / "model-torch.pt").is_file():  # filtered out by --formats
        src = _Variant("torch", "torch", "fp32", "cpu", "model-torch.pt", folder / "model-torch.pt")
    if src is None:
        v.fail("skipped", "the reference needs the fp32 `torch` artifact's weights; export the torch format")
    elif v.device == "cuda" and not _cuda_available():
        v.fail("skipped", "needs a CUDA GPU; none is visible on this machine")
    else:
        v.path, v.file = src.path, src.file
        v.notes.append(f"weights of {src.file}")
    return v


def _load(v: _Variant, hw: tuple[int, int], batch_sizes: Sequence[int], threads: int) -> None:
    """Load ``v`` (timed; its modules imported first, so imports are not counted) and time its first call."""
    with warnings.catch_warnings():  # the runtimes' own deprecation chatter says nothing about the artifact
        for category in (DeprecationWarning, FutureWarning, UserWarning):
            warnings.simplefilter("ignore", category)
        _load_quietly(v, hw, batch_sizes, threads)


def _load_quietly(v: _Variant, hw: tuple[int, int], batch_sizes: Sequence[int], threads: int) -> None:
    usable = [b for b in batch_sizes if v.accepts(b)]
    if not usable:
        lo, hi = v.batch_range or (0, 0)
        v.fail("skipped", f"accepts batch sizes {lo}..{hi}, none of the requested {list(batch_sizes)}")
        return
    try:
        if v.format == "reference":
            import benchmarks.reference  # noqa: F401
            import deploy.torch_eager  # noqa: F401

            t0 = time.perf_counter()
            v.predictor = load_reference(v.path, v.device)
        else:
            v.fmt.impl()
            if v.fmt.module == "deploy.onnx":
                import onnxruntime  # noqa: F401
            t0 = time.perf_counter()
            v.predictor = load_predictor(v.fmt, v.path, v.device, threads)
        v.load_s = time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001 - a bad file is a failed row, not a crash
        v.fail("failed", f"load failed: {_first_line(e)}")
        return
    x = _inputs(usable[0], hw)
    try:
        v.first_ms = _timer(v.predictor, x, v.device)()
    except Exception as e:  # noqa: BLE001
        v.fail("failed", f"run failed (batch {usable[0]}): {_first_line(e)}")


_INPUTS: dict[tuple[int, int, int], np.ndarray] = {}


def _inputs(batch: int, hw: tuple[int, int]) -> np.ndarray:
    """The same fixed-seed random batch for every variant (latency does not depend on the pixels)."""
    key = (batch, *hw)
    if key not in _INPUTS:
        _INPUTS.clear()
        _INPUTS[key] = np.random.default_rng(0).standard_normal((batch, 3, *hw), dtype=np.float32)
    return _INPUTS[key]


def _time_batch(variants: Sequence[_Variant], batch: int, hw: tuple[int, int], config: ProfileConfig, bar: Any) -> None:
    x = _inputs(batch, hw)
    todo = [v for v in variants if v.accepts(batch)]
    for v in variants:
        if not v.accepts(batch):
            lo, hi = v.batch_range or (0, 0)
            v.notes.append(f"batch {batch} not timed: the artifact accepts {lo}..{hi}")
    steps = {v.name: _timer(v.predictor, x, v.device) for v in todo}

    def on_round(r: int, rounds: int) -> None:
        bar.step(f"batch {batch}: round {r + 1}/{rounds} of {len(steps)} variants")

    samples, errors = run_interleaved(
        steps,
        rounds=config.rounds,
        min_runs=config.min_runs,
        duration=config.duration,
        warmup=config.warmup,
        on_round=on_round,
    )
    for v in todo:
        if v.name in errors:
            v.notes.append(f"batch {batch}: run failed: {errors[v.name]}")
        if samples[v.name] and v.name not in errors:
            v.latency[str(batch)] = latency_stats(samples[v.name], batch)


def _accuracy(v: _Variant, images: np.ndarray, labels: np.ndarray) -> None:
    lo, hi = v.batch_range or (1, 32)
    chunk = max(lo, min(32, hi))
    outs = []
    try:
        for i in range(0, len(images), chunk):
            x = images[i : i + chunk]
            n = len(x)
            if n < lo:  # an artifact with a fixed batch: pad, then drop the padding
                x = np.concatenate([x, np.zeros((lo - n, *x.shape[1:]), np.float32)])
            outs.append(v.predictor(x)[:n])
    except Exception as e:  # noqa: BLE001
        v.notes.append(f"accuracy not measured: {_first_line(e)}")
        return
    logits = np.concatenate(outs)
    k = min(5, logits.shape[1])
    topk = np.argsort(-logits, axis=1)[:, :k]
    v.preds = topk[:, 0]
    v.top1 = float((topk[:, 0] == labels).mean() * 100)
    v.top5 = float((topk == labels[:, None]).any(axis=1).mean() * 100)


def _agreements(variants: Sequence[_Variant], measured: bool, use_manifest: bool = True) -> None:
    """Top-1 agreement with the fp32 ``torch`` artifact on the data images; without data (or without a
    usable torch row) the export's own parity agreement with the fp32 model, from the manifest
    (unless ``use_manifest`` is False)."""
    ref = next((v for v in variants if v.format == "torch" and v.preds is not None), None) if measured else None
    for v in variants:
        if v.status != "ok":
            continue
        if ref is not None and v.preds is not None:
            v.agreement = float((v.preds == ref.preds).mean())
        elif use_manifest and v.manifest_agreement is not None:
            v.agreement = float(v.manifest_agreement)
            if measured:
                v.notes.append("agreement from the export's parity check (no fp32 torch predictions here)")


def _row(v: _Variant, macs: int | None, peak: dict[str, Any], peak_cuda: dict[str, Any] | None) -> dict[str, Any]:
    b1 = v.latency.get("1")
    gmacs = macs / (b1["p50_ms"] / 1e3) / 1e9 if (b1 and macs and b1["p50_ms"] > 0) else None
    table = peak_cuda if v.device == "cuda" and peak_cuda else peak
    ref = (table or {}).get(v.precision) or {}
    share = gmacs / ref["gmacs_per_s"] if gmacs is not None and ref.get("gmacs_per_s") else None
    file_bytes = v.path.stat().st_size if v.path is not None and v.path.is_file() else None
    if v.format == "reference":
        file_bytes = None  # it has no file of its own (the weights are the torch artifact's)
    reason = v.reason
    if v.notes:
        reason = "; ".join([*([reason] if reason else []), *v.notes])
    return {
        "name": v.name,
        "format": v.format,
        "precision": v.precision,
        "device": v.device,
        "file": v.file,
        "file_bytes": file_bytes,
        "status": v.status,
        "reason": reason,
        "load_s": v.load_s,
        "first_inference_ms": v.first_ms,
        "latency": v.latency,
        "peak_rss_mb": v.peak_rss_mb,
        "cuda_peak_mb": v.cuda_peak_mb,
        "gmacs_per_s": gmacs,
        "peak_share": share,
        "top1": v.top1,
        "top5": v.top5,
        "agreement": v.agreement,
    }


# --------------------------------------------------------------------------------------------------
# targets


def _p50(row: dict[str, Any] | None) -> float | None:
    if row is None or row.get("status") != "ok":
        return None
    b1 = (row.get("latency") or {}).get("1")
    return b1["p50_ms"] if b1 else None


def _target(name: str, value: float | None, limit: float, op: str, note: str) -> dict[str, Any]:
    met = None if value is None else (value <= limit if op == "<=" else value >= limit)
    if met is False:
        note = f"{note}; not met" if note else "not met"
    return {"name": name, "value": value, "target": f"{op} {limit:g}", "met": met, "note": note}


def compute_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's three targets at batch 1, from the rows of ``report`` (numbers are never tuned)."""
    rows = report["rows"]
    by_name = {r["name"]: r for r in rows}
    eager = next((r for r in rows if r["format"] == "torch" and r["status"] == "ok"), None)
    ok = [r for r in rows if r["status"] == "ok" and r["format"] != "reference" and _p50(r) is not None]
    no_b1 = 1 not in report["settings"]["batch_sizes"]
    targets = []

    if "reference" in by_name:
        ref = by_name["reference"]
        a, b = _p50(eager), _p50(ref)
        value = a / b if a and b else None
        if value is None:
            why = (
                "batch 1 was not timed"
                if no_b1
                else f"reference row {ref['status']}: {ref['reason']}"
                if ref["status"] != "ok"
                else "no fp32 `torch` artifact was timed"
            )
        else:
            why = f"torch p50 {a:.3f} ms vs reference p50 {b:.3f} ms"
        lim = TARGETS["eager_vs_reference"]
        targets.append(_target("fp32 eager (torch) / reference latency, batch 1", value, lim, "<=", why))

    int8 = [r for r in ok if r["precision"] == "int8"]
    best8 = min(int8, key=_p50) if int8 else None
    a, b = _p50(best8), _p50(eager)
    value = a / b if a and b else None
    if value is None:
        why = "batch 1 was not timed" if no_b1 else "no int8 artifact was timed" if not int8 else "no fp32 torch row"
    else:
        why = f"best int8 artifact: {best8['name']} (p50 {a:.3f} ms vs torch {b:.3f} ms)"
    targets.append(
        _target("best int8 / fp32 eager (torch) latency, batch 1", value, TARGETS["int8_vs_fp32"], "<=", why)
    )

    best = min(ok, key=_p50) if ok else None
    value = best["peak_share"] if best else None
    if best is None:
        why = "batch 1 was not timed" if no_b1 else "no artifact was timed"
    elif value is None:
        why = f"best artifact {best['name']}: no MAC count or no measured {best['precision']} peak"
    else:
        table = report.get("peak_cuda") if best["device"] == "cuda" else report["peak"]
        pk = (table or {}).get(best["precision"]) or {}
        why = (
            f"best artifact: {best['name']} at {best['gmacs_per_s']:.1f} GMAC/s vs {best['precision']} peak "
            f"{pk.get('gmacs_per_s', float('nan')):.1f} GMAC/s ({pk.get('op')}, {pk.get('shape')})"
        )
        top = max((r for r in ok if r.get("peak_share") is not None), key=lambda r: r["peak_share"], default=None)
        if top is not None and top is not best:
            why += f"; highest share: {top['name']} {top['peak_share']:.2f}"
    name = "best artifact MAC rate / measured peak of its precision, batch 1"
    targets.append(_target(name, value, TARGETS["peak_share"], ">=", why))
    return targets


# --------------------------------------------------------------------------------------------------
# machine and versions


def _machine(threads: int) -> dict[str, Any]:
    import psutil
    import torch

    from benchmarks.bench_model import device_name

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": device_name(torch.device("cpu")),
        "cores": psutil.cpu_count(logical=False) or os.cpu_count() or 1,
        "logical_cpus": psutil.cpu_count(logical=True) or os.cpu_count() or 1,
        "threads": threads,
        "gpu": gpu,
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def _versions() -> dict[str, str]:
    from deploy.export import tool_versions

    packages = ("torch", "onnxruntime", "onnx", "onnxscript", "timm", "numpy", "executorch", "tensorrt", "psutil")
    return {k: v for k, v in tool_versions(packages).items() if v != "not installed"}


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}".rstrip(": ")
