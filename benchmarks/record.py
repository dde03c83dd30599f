"""What every benchmark result file says about where it was measured, and how it is written.

``host()``: the CPU's name, its host class (``bench_cpu_formats.host_class``: the ISA features that change
which kernels run, e.g. ``avx2-noamx``), the core count and the time; ``save(out, doc, text)``: ``<out>.json``
and ``<out>.md`` (folders made), the markdown printed.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks.bench_cpu_formats import cpu_flags, host_class


def cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "unknown CPU"
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "unknown CPU")


def host() -> dict[str, Any]:
    return {
        "host_class": host_class(cpu_flags()),
        "cpu": cpu_name(),
        "cpus": os.cpu_count(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def save(out: str | Path, doc: dict[str, Any], text: str) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    out.with_suffix(".md").write_text(text)
    print(text)
