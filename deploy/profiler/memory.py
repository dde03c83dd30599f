"""Peak memory of each artifact, each measured in a process of its own.

Memory is per process, and the profiling process holds every runtime and artifact at once, so each
artifact is measured alone: in a process that has imported the runtime and settled, the kernel's
peak-RSS mark is reset, the artifact is loaded and run, and the reported peak is that peak minus the
resident set just before the load (and, for CUDA runtimes, the device memory it allocated). The
process gets the format row itself (not its name), so rows outside the table are measured the same
way.

On Linux the CPU rows' processes are forked from one server (:func:`serve`) that imports the runtimes
of all of them once: a fresh Python pays ~5 s of interpreter start and imports before it measures
anything, which was most of the report stage's time. A forked process starts with the server's
anonymous pages resident but not its file pages (library code: the kernel maps them again on first
touch), so it touches the pages the server had resident (``/proc/self/pagemap``) before it takes its
baseline, and its peak is the artifact's alone (``benchmarks/bench_memory_probe.py``: within 3 MB of a
fresh Python on 16 of the demo's 17 artifacts, in a quarter of the time). CUDA rows (a CUDA context does
not survive a fork) and other systems start a fresh Python per artifact (:func:`probe`).
"""

from __future__ import annotations

import gc
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from t2tvit.progress import Progress

from ..base import first_line, last_line
from .variants import Variant

__all__ = ["measure_all", "probe", "serve"]

_PROBE_MARK = "T2T-MEMORY-PROBE "
TIMEOUT_S = 600  # one artifact's load and runs


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


def _row(spec: dict[str, Any]) -> Any:
    from ..base import Format

    row = spec["row"]
    return Format(**{k: tuple(v) if isinstance(v, list) else v for k, v in row.items()})


def _import_runtimes(specs: Sequence[dict[str, Any]]) -> None:
    """Import what loading each spec's row needs, so the imports are not counted as the artifact's."""
    import importlib

    for name in dict.fromkeys(n for s in specs for f in [_row(s)] for n in (f.module, *f.runtime_imports, *f.requires)):
        try:
            importlib.import_module(name)
        except ImportError:
            pass


def _measure_here(spec: dict[str, Any]) -> dict[str, Any]:
    """In this process (imports done): settle, reset the peak mark, load the artifact, run it; the peak."""
    import resource

    import torch

    fmt = _row(spec)
    torch.set_num_threads(int(spec["threads"]))
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
    return result


def probe(argv: Sequence[str] | None = None) -> None:
    """Entry point of a fresh process measuring one artifact: import, settle, load, run, report (one JSON line)."""
    import timm  # noqa: F401 - what every profiling process has imported

    import t2tvit  # noqa: F401

    spec = json.loads((argv or sys.argv[1:])[0])
    _import_runtimes([spec])
    print(_PROBE_MARK + json.dumps(_measure_here(spec)), flush=True)


def serve(argv: Sequence[str] | None = None) -> None:
    """Entry point of the fork server: reads a JSON list of specs on stdin and the number of artifacts to
    measure at a time from ``argv``; imports every runtime once, then forks a process per spec (that many at a
    time) that measures it and writes ``{"index": i, ...}`` as one line. A process that dies or runs past
    :data:`TIMEOUT_S`, or cannot measure, is reported as ``{"index": i, "note": the row's note saying why}``."""
    import signal

    import timm  # noqa: F401
    import torch  # noqa: F401

    import t2tvit  # noqa: F401

    specs = json.loads(sys.stdin.read())
    parallel = max(1, int((argv or sys.argv[1:])[0]))
    _import_runtimes(specs)
    gc.collect()
    resident = _resident_file_pages()
    sys.stdout.flush()
    running: dict[int, tuple[int, float]] = {}  # pid -> (index, deadline)
    todo = list(range(len(specs)))

    def emit(record: dict[str, Any]) -> None:
        os.write(1, (_PROBE_MARK + json.dumps(record) + "\n").encode())  # one write: lines do not interleave

    while todo or running:
        while todo and len(running) < parallel:
            i = todo.pop(0)
            pid = os.fork()
            if pid == 0:  # the measuring process
                try:
                    _touch(resident)
                    emit({"index": i, **_measure_here(specs[i])})
                    code = 0
                except BaseException as e:  # noqa: BLE001 - reported as this artifact's note, the others go on
                    emit({"index": i, "note": f"memory probe failed: {first_line(e)}"})
                    code = 1
                os._exit(code)
            running[pid] = (i, time.monotonic() + TIMEOUT_S)
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            for p, (i, deadline) in list(running.items()):
                if time.monotonic() > deadline:
                    os.kill(p, signal.SIGKILL)
                    os.waitpid(p, 0)
                    del running[p]
                    emit({"index": i, "note": f"memory probe timed out after {TIMEOUT_S} s"})
            time.sleep(0.02)
            continue
        i, _ = running.pop(pid)
        if os.WIFSIGNALED(status):
            why = f"the measuring process was killed by signal {os.WTERMSIG(status)}"
            emit({"index": i, "note": f"memory probe failed: {why}"})


def _resident_file_pages() -> list[np.ndarray]:
    """The addresses of the file-backed pages (library code and data) this process has resident: a forked
    process inherits its anonymous pages resident, but the kernel leaves file pages to be faulted in again,
    which would count the server's imports as the artifact's memory. Empty where /proc says nothing."""
    pages: list[np.ndarray] = []
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
        with open("/proc/self/pagemap", "rb") as pagemap:
            for line in maps:
                parts = line.split(maxsplit=5)
                if len(parts) < 6 or not parts[1].startswith("r") or not parts[5].startswith("/"):
                    continue
                start, end = (int(a, 16) for a in parts[0].split("-"))
                pagemap.seek(start // 4096 * 8)
                entries = np.frombuffer(pagemap.read((end - start) // 4096 * 8), np.uint64)
                present = np.nonzero(entries >> np.uint64(63))[0]
                if len(present):
                    pages.append(start + present.astype(np.int64) * 4096)
    except OSError:
        return []
    return pages


def _touch(pages: list[np.ndarray]) -> None:
    """Fault in ``pages`` (:func:`_resident_file_pages` of the server) in this forked process."""
    import ctypes

    for block in pages:
        for address in block.tolist():
            ctypes.c_char.from_address(address).value  # noqa: B018 - the read is the point


def _spec(v: Variant, img_size: tuple[int, int], batch_sizes: Sequence[int], threads: int) -> dict[str, Any]:
    return {
        "row": asdict(v.fmt),
        "path": str(v.path),
        "device": v.device,
        "threads": threads,
        "img_size": list(img_size),
        "batch_sizes": [b for b in batch_sizes if v.accepts(b)] or [1],
    }


def _python(code: str, *args: str) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of a Python child that runs ``code``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)  # the modules this process can import
    return [sys.executable, "-c", code, *args], env


def _marked(line: str) -> dict[str, Any] | None:
    """A probe's record in ``line`` (a runtime may have printed before it on the same line)."""
    _, mark, record = line.partition(_PROBE_MARK)
    return json.loads(record) if mark else None


def _record(v: Variant, out: dict[str, Any]) -> None:
    if "note" in out:  # it was not measured: why, as the row says it
        v.notes.append(out["note"])
        return
    v.peak_rss_mb = out.get("peak_rss_mb")
    v.cuda_peak_mb = out.get("cuda_peak_mb")
    if not out.get("peak_mark_reset"):
        v.notes.append("peak RSS since process start (the peak mark could not be reset): includes the imports")


def _measure(v: Variant, spec: dict[str, Any]) -> None:
    """One artifact in a fresh Python (:func:`probe`)."""
    argv, env = _python("from deploy.profiler.memory import probe; probe()", json.dumps(spec))
    try:
        res = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        v.notes.append(f"memory probe timed out after {TIMEOUT_S} s")
        return
    out = next((r for ln in reversed(res.stdout.splitlines()) if (r := _marked(ln)) is not None), None)
    if res.returncode != 0 or out is None:
        v.notes.append(f"memory probe failed: {last_line(res.stderr, f'exit status {res.returncode}')[:300]}")
        return
    _record(v, out)


def _measure_forked(variants: Sequence[Variant], specs: list[dict[str, Any]], parallel: int, bar: Progress) -> None:
    """Every variant in a process forked from one :func:`serve` server, ``parallel`` at a time."""
    done: set[int] = set()
    with tempfile.TemporaryFile("w+", errors="replace") as err:
        argv, env = _python("from deploy.profiler.memory import serve; serve()", str(parallel))
        proc = subprocess.Popen(
            argv, env=env, text=True, errors="replace", stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err
        )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(json.dumps(specs))
            proc.stdin.close()
            for line in proc.stdout:
                if (out := _marked(line)) is not None:
                    v = variants[out.pop("index")]
                    _record(v, out)
                    done.add(id(v))
                    bar.step(f"{v.name}: memory measured")
        except BaseException:  # interrupted: the server does not measure on for nobody
            proc.kill()
            proc.wait()
            raise
        proc.wait()
        err.seek(0)
        why = last_line(err.read(), f"exit status {proc.returncode}")[:300]
    for v in variants:
        if id(v) not in done:
            v.notes.append(f"memory probe failed: {why}")
            bar.step(f"{v.name}: no memory measured")


def measure_all(
    variants: Sequence[Variant],
    hw: tuple[int, int],
    batch_sizes: Sequence[int],
    threads: int,
    bar: Progress,
    fork: bool | None = None,
) -> None:
    """Peak memory of every variant, after all timing. The CPU probes run a few at a time: each is its
    own process and resident sets are per process, so they do not disturb one another's numbers (only
    the wall time). CUDA probes run one by one, each in a fresh Python: they read device-wide free memory.
    ``fork``: the CPU probes forked from one server (default on Linux) or each a fresh Python."""
    todo = [v for v in variants if v.status == "ok"]
    for v in variants:
        if v.status != "ok":
            bar.step(f"{v.name}: no memory probe ({v.status})")
    cpu = [v for v in todo if v.device == "cpu"]
    specs = {id(v): _spec(v, v.hw or hw, batch_sizes, threads) for v in todo}
    parallel = max(1, min(4, os.cpu_count() or 1))
    bar.step(f"peak memory: {len(todo)} artifacts", 0)
    if cpu and (sys.platform.startswith("linux") if fork is None else fork):
        _measure_forked(cpu, [specs[id(v)] for v in cpu], parallel, bar)
    else:
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            for v, _ in zip(cpu, pool.map(lambda v: _measure(v, specs[id(v)]), cpu), strict=True):
                bar.step(f"{v.name}: memory measured")
    for v in todo:
        if v.device != "cpu":
            _measure(v, specs[id(v)])
            bar.step(f"{v.name}: memory measured")
