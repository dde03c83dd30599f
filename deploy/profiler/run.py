"""The profile: every artifact of an export folder, measured the same way in one run.

For each artifact of a ``manifest.json`` (or artifact files given directly) :func:`profile_folder`
records load time and first-inference time; latency at each batch size after ``warmup`` untimed
runs (at least ``min_runs`` timed runs *and* ``duration`` seconds per variant per batch size,
interleaved, :mod:`deploy.profiler.timing`) with mean, std, min, p50/p90/p95/p99 and a
distribution-free interval of the median (:mod:`deploy.profiler.stats`), and throughput; peak
memory in a process of its own per artifact (:mod:`deploy.profiler.memory`); file size, MACs per
image and the MAC rate at batch 1 against this machine's peak GEMM rate for the precision, measured
by the same process (:mod:`deploy.profiler.peak`); top-1/top-5 on labelled images and top-1 agreement with the fp32
``torch`` artifact; and the user's own checks (:mod:`deploy.profiler.checks`).

``ProfileConfig.data`` takes a folder of ``<class>/<image>`` files or a bundled dataset's name
(``digits``: its validation split).
"""

from __future__ import annotations

import contextlib
import gc
import os
import platform
import shlex
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from t2tvit.errors import ConfigError
from t2tvit.progress import Progress

from .. import manifest as mf
from ..base import first_line, tool_versions
from ..manifest import Manifest
from . import variants as var
from .checks import Checks
from .memory import measure_all
from .peak import peak_rate
from .schema import Report, Row
from .stats import CI_LEVEL, latency_stats
from .timing import make_timer, run_interleaved

__all__ = ["ProfileConfig", "device_name", "profile_folder"]


@dataclass
class ProfileConfig:
    """What :func:`profile_folder` measures and how long it spends on it.

    ``duration`` and ``min_runs`` apply per variant per batch size: timing stops when both are
    reached. ``threads`` is the intra-op thread count of every runtime (default: the CPU count, at
    most 4). ``data``: a folder of ``<class>/<image>`` files (or ``digits``) for accuracy (classes are
    the sorted sub-folder names, as in training), or None. ``formats``: only these formats
    (comma-separated names or groups, see :func:`deploy.base.resolve_formats`). ``checks``: the
    user's limits (a latency ceiling, agreement and accuracy floors).
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
    device: str = "cpu"
    formats: str | Sequence[str] | None = None
    checks: Checks = field(default_factory=Checks)
    # Also time artifacts that were built and ran at export but failed their parity check. For random-weight
    # baselines: int8 of an untrained CNN moves its nearly tied logits past the random-weights threshold
    # (MobileNetV3 at 64 px: max |dlogit| 8.1, allowed 0.81), yet it runs the kernels a trained one would.
    # Their rows keep the failure in their reason.
    time_unverified: bool = False
    # Check every manifest artifact's files against the sha256 recorded at export before timing it; a file that
    # changed is a failed row (exit status 1). False: for a file edited on purpose (its row says it was not checked).
    verify: bool = True

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
        self.checks.check_settings(self.data is not None)


def profile_folder(
    folder: str | Path | None,
    config: ProfileConfig | None = None,
    *,
    files: Sequence[Any] | None = None,
    command: str | None = None,
    progress: bool = True,
) -> Report:
    """Profile every artifact of the export ``folder`` (its ``manifest.json``) and/or ``files``.

    ``files``: artifact paths besides (or instead of) the manifest's; the format comes from what the
    file says about itself or its name (:func:`deploy.artifacts.identify`), a ``FORMAT=PATH`` prefix,
    or a ``(Format, path)`` pair for a row outside the table. Returns the :class:`Report`.
    """
    from t2tvit.data import image_folder

    config = config or ProfileConfig()
    config.check()
    folder_path = Path(folder) if folder is not None else None
    if folder_path is not None and not folder_path.is_dir():
        raise ConfigError(f"artifacts folder {folder_path} does not exist; run `t2t export --out {folder_path}` first")
    manifest = None
    if folder_path is not None and mf.exists(folder_path):
        manifest = mf.read(folder_path)
    elif not files:
        where = folder_path if folder_path is not None else "no folder"
        raise ConfigError(
            f"{where} has no {mf.FILE} and no artifact files were given; pass an export folder or --files"
        )
    variants = var.collect(
        folder_path, manifest, list(files or []), config.device, config.formats, config.time_unverified, config.verify
    )
    group = Group(variants, var.model_info(manifest, variants), manifest)
    data = image_folder(config.data) if config.data is not None else None
    if data is not None:
        var.data_classes(data, group.info.get("num_classes"))  # a bad folder fails now, not after the timing
    with _threads(config.resolved_threads()):
        peaks = measure_groups([group], data, config, progress)
    group.agree()
    params, macs = _counts(group.info)
    rows = [v.row(macs, *peaks) for v in variants]
    model = {
        "name": group.info.get("name"),
        "num_classes": group.info.get("num_classes"),
        "params": params,
        "macs_per_image": macs,
        "source": group.info.get("source"),
    }
    n_images = 0 if group.images is None else len(group.images)
    report = build_report(rows, model, int(group.info["img_size"][0]), peaks, config, data, n_images, command)
    report.integrity = integrity_summary(variants, config.verify)
    config.checks.apply(report)
    report.conclude()
    return report


def integrity_summary(variants: Sequence[var.Variant], verify: bool) -> dict[str, Any] | None:
    """The report's integrity block: whether files were checked against their manifest, and which changed."""
    if not any(v.sha256 for v in variants):
        return None  # files given directly: no manifest recorded their digests
    failures = [v.name for v in variants if v.changed]
    return {"verified": bool(verify), "failures": failures, "passed": not failures}


@dataclass
class Group:
    """One model's variants in a profile (a comparison has one per model): what the model is (``info``: name,
    classes, input size, source), its export manifest, and the data images its accuracy was measured on."""

    variants: list[var.Variant]
    info: dict[str, Any]
    manifest: Manifest | None
    images: Any = None

    def agree(self) -> None:
        """Top-1 agreement of each variant with this model's own fp32 torch artifact. Parity agreement from an
        export of random weights (no source checkpoint) says nothing: the logits of an untrained model are
        nearly tied, so it is left out rather than shown."""
        use_manifest = self.manifest is None or bool(self.manifest.source_checkpoint)
        var.agreements(self.variants, self.images is not None, use_manifest=use_manifest)


@contextlib.contextmanager
def _threads(threads: int) -> Iterator[None]:
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def measure_groups(
    groups: Sequence[Group], data: Path | None, config: ProfileConfig, progress: bool = True
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Peak rates, loads, timing interleaved across *every* group's variants (so drift hits all models alike),
    accuracy per group (its own preprocessing, ``group.images``) and memory; returns the peak rates.
    Variant names must be unique across the groups (they key the timing)."""
    threads = config.resolved_threads()
    batch_sizes = sorted({int(b) for b in config.batch_sizes})
    variants = [v for g in groups for v in g.variants]
    for g in groups:
        for v in g.variants:
            v.hw = tuple(int(s) for s in g.info["img_size"])
    runnable = [v for v in variants if v.status == "ok"]
    total = 1 + len(runnable) * (1 + int(data is not None) + int(config.memory)) + len(batch_sizes) * config.rounds
    try:
        with Progress(total, "profile", enabled=progress, prefix="profile") as bar:
            peaks = _peaks(runnable, threads, bar)
            for v in runnable:
                bar.step(f"{v.name}: loading", 0)
                var.load(v, v.hw, batch_sizes, threads)
                bar.step(f"{v.name}: loaded" if v.status == "ok" else f"{v.name}: {v.status}")
            for b in batch_sizes:
                _time_batch([v for v in runnable if v.status == "ok"], b, config, bar)
            for v in runnable:
                if v.status == "ok" and not v.latency:
                    v.fail("failed", "; ".join(v.notes) or "no batch size could be timed")
                    v.notes = []
            if data is not None:  # loaded only now: the images would sit in memory during the timing
                ran = {id(v) for v in runnable}
                for g in groups:
                    mine = [v for v in g.variants if id(v) in ran]
                    g.images = _accuracy(mine, g.info, g.manifest, data, config.max_images, bar)
            for v in runnable:  # free the loaded runtimes before the memory probes
                v.predictor = None
            gc.collect()
            if config.memory:
                measure_all(runnable, runnable[0].hw if runnable else (224, 224), batch_sizes, threads, bar)
    finally:
        for v in variants:
            v.predictor = None
    return peaks


def _peaks(runnable: Sequence[var.Variant], threads: int, bar: Progress) -> tuple[dict[str, Any], Any]:
    bar.step(f"measuring peak GEMM rate ({threads} threads)", 0)
    peak = peak_rate(threads, "cpu")
    peak_cuda = None
    if any(v.device == "cuda" for v in runnable) and var._cuda_available():
        try:  # untested: no GPU on the test machines
            peak_cuda = peak_rate(threads, "cuda")
        except Exception as e:  # noqa: BLE001 - the rows still get their latencies
            peak_cuda = {"error": first_line(e)}
    bar.step("peak GEMM rate measured")
    return peak, peak_cuda


def _time_batch(variants: Sequence[var.Variant], batch: int, config: ProfileConfig, bar: Progress) -> None:
    todo = [v for v in variants if v.accepts(batch)]
    for v in variants:
        if not v.accepts(batch):
            lo, hi = v.batch_range or (0, 0)
            v.notes.append(f"batch {batch} not timed: the artifact accepts {lo}..{hi}")
    steps = {v.name: make_timer(v.predictor, var.inputs(batch, v.hw), v.device) for v in todo}

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


def _accuracy(
    runnable: Sequence[var.Variant],
    info: dict[str, Any],
    manifest: Manifest | None,
    data: Path,
    max_images: int,
    bar: Progress,
) -> Any:
    from t2tvit.data import eval_transform_for

    # the model's preprocessing as the export recorded it (the trainer's --crop-pct / --interpolation)
    cfg = _meta_model(info) or {}  # an unknown model: timm's default preprocessing
    transform = eval_transform_for(cfg, info["img_size"], **(manifest.transform_keywords() if manifest else {}))
    bar.step(f"loading up to {max_images} images from {data}", 0)
    images, labels, _ = var.load_labelled(data, transform, max_images, info.get("num_classes"))
    for v in runnable:
        if v.status == "ok":
            bar.step(f"{v.name}: accuracy on {len(images)} images", 0)
            var.accuracy(v, images, labels)
        bar.step(f"{v.name}: accuracy done")
    return images


def _meta_model(info: dict[str, Any]) -> Any:
    """The model on the meta device (no memory): for its parameter and MAC counts and eval transform."""
    if not info.get("name"):
        return None
    import torch

    from t2tvit import build_model

    try:
        with torch.device("meta"):
            return build_model(info["name"], num_classes=info["num_classes"], img_size=info["img_size"])
    except Exception:  # noqa: BLE001 - an unknown name only costs the MAC count
        return None


def _counts(info: dict[str, Any]) -> tuple[int | None, int | None]:
    model = _meta_model(info)
    if model is None:
        return None, None
    from t2tvit.models import is_t2t_vit
    from t2tvit.summary import count_macs, summarize

    try:
        if is_t2t_vit(model):
            s = summarize(model, info["name"])
            return s.params, s.macs
        # a baseline (CNN, DeiT): the same MAC counter, at the input size the profile times
        return sum(p.numel() for p in model.parameters()), count_macs(model, (3, *info["img_size"]))
    except Exception:  # noqa: BLE001 - without a MAC count the rows just have no MAC rate
        return None, None


def build_report(
    rows: list[Row],
    model: dict[str, Any],
    img_size: int | list[int],
    peaks: tuple[dict[str, Any], dict[str, Any] | None],
    config: ProfileConfig,
    data: Path | None,
    n_images: int,
    command: str | None,
) -> Report:
    """The report of measured ``rows``: machine, versions, the settings of ``config``, ``model`` and the peaks."""
    peak, peak_cuda = peaks
    threads = config.resolved_threads()
    return Report(
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        command=command if command is not None else shlex.join(sys.argv),
        machine=_machine(threads),
        versions=_versions(),
        settings={
            "batch_sizes": sorted({int(b) for b in config.batch_sizes}),
            "threads": threads,
            "duration_s": float(config.duration),
            "min_runs": int(config.min_runs),
            "warmup": int(config.warmup),
            "img_size": img_size,
            "data": str(data) if data is not None else None,
            "images": int(n_images),
            "rounds": int(config.rounds),
            "device": config.device,
            "ci_level": CI_LEVEL,
            "timing": "interleaved round-robin, order rotated per round; random fixed-seed inputs",
        },
        model=model,
        peak=peak,
        peak_cuda=peak_cuda,
        rows=rows,
    )


def device_name(device: Any = "cpu") -> str:
    """The CPU's model name (``/proc/cpuinfo``), or the GPU's for ``cuda`` (a name or a ``torch.device``)."""
    import torch

    if str(device).startswith("cuda"):
        return torch.cuda.get_device_name(0)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _machine(threads: int) -> dict[str, Any]:
    import psutil
    import torch

    return {
        "cpu": device_name("cpu"),
        "cores": psutil.cpu_count(logical=False) or os.cpu_count() or 1,
        "logical_cpus": psutil.cpu_count(logical=True) or os.cpu_count() or 1,
        "threads": threads,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def _versions() -> dict[str, str]:
    runtimes = ("onnxruntime", "onnx", "onnxscript", "openvino", "nncf", "executorch", "tensorrt")
    packages = ("torch", *runtimes, "timm", "numpy", "psutil")
    return {k: v for k, v in tool_versions(packages).items() if v != "not installed"}
