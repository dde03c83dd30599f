"""Peak memory of each artifact, in a fresh subprocess per artifact.

Memory is per process, and the profiling process holds every runtime and artifact at once, so each
artifact is measured alone: a fresh Python imports the runtime, settles, resets the kernel's
peak-RSS mark, loads the artifact and runs it; the reported peak is that peak minus the resident
set just before the load (and, for CUDA runtimes, the device memory it allocated). The subprocess
gets the format row itself (not its name), so rows outside the table are measured the same way.
"""

from __future__ import annotations

import gc
import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from t2tvit.progress import Progress

from .variants import Variant

__all__ = ["measure_all", "probe"]

_PROBE_MARK = "T2T-MEMORY-PROBE "


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


def probe(argv: Sequence[str] | None = None) -> None:
    """Entry point of the memory subprocess: import, settle, load, run, report (one JSON line)."""
    import importlib
    import resource

    import torch

    from ..base import Format

    spec = json.loads((argv or sys.argv[1:])[0])
    row = spec["row"]
    fmt = Format(**{k: tuple(v) if isinstance(v, list) else v for k, v in row.items()})
    torch.set_num_threads(int(spec["threads"]))
    for name in ("timm", "t2tvit", fmt.module, *fmt.runtime_imports, *fmt.requires):
        try:
            importlib.import_module(name)
        except ImportError:
            pass
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
    predictor = fmt.load(spec["path"], spec["device"], spec["threads"])
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
        if fmt.cuda_memory == "torch":
            result["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        else:  # ONNX Runtime and TensorRT allocate outside PyTorch: what the device lost meanwhile
            result["cuda_peak_mb"] = (free_before - torch.cuda.mem_get_info()[0]) / 2**20
    print(_PROBE_MARK + json.dumps(result), flush=True)


def _measure(v: Variant, img_size: tuple[int, int], batch_sizes: Sequence[int], threads: int) -> None:
    spec = {
        "row": asdict(v.fmt),
        "path": str(v.path),
        "device": v.device,
        "threads": threads,
        "img_size": list(img_size),
        "batch_sizes": [b for b in batch_sizes if v.accepts(b)] or [1],
    }
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)  # the modules this process can import
    code = "from deploy.profiler.memory import probe; probe()"
    try:
        res = subprocess.run(
            [sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True, env=env, timeout=600
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


def measure_all(
    variants: Sequence[Variant], hw: tuple[int, int], batch_sizes: Sequence[int], threads: int, bar: Progress
) -> None:
    """Peak memory of every variant, after all timing. The CPU probes run a few at a time: each is its
    own process and resident sets are per process, so they do not disturb one another's numbers (only
    the wall time). CUDA probes run one by one: they read device-wide free memory."""
    todo = [v for v in variants if v.status == "ok"]
    for v in variants:
        if v.status != "ok":
            bar.step(f"{v.name}: no memory probe ({v.status})")

    def one(v: Variant) -> None:
        _measure(v, v.hw or hw, batch_sizes, threads)

    cpu = [v for v in todo if v.device == "cpu"]
    bar.step(f"peak memory: {len(todo)} subprocesses", 0)
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        for v, _ in zip(cpu, pool.map(one, cpu), strict=True):
            bar.step(f"{v.name}: memory measured")
    for v in todo:
        if v.device != "cpu":
            one(v)
            bar.step(f"{v.name}: memory measured")
