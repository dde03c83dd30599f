"""Peak memory per artifact measured by forked probes against fresh processes, and what each costs.

``python -m benchmarks.bench_memory_probe [FOLDER] [--rounds 2] [--threads 1]
--out benchmarks/results/memory_probe/NAME``

``FOLDER`` is an export folder (default: the quick start's demo export, ``runs/compress/t2t_vit_7_distilled/export``).
Every runnable CPU artifact in it is measured by ``deploy.profiler.memory.measure_all`` both ways, the two
alternating round by round: ``fork=False`` starts a fresh Python per artifact (as the profiler did before), and
``fork=True`` forks each probe from one server that imported every runtime once (the profiler's default on
Linux). Printed and saved (``<out>.json``, ``<out>.md``, with the host's CPU class): each artifact's peak RSS by
both (the median over rounds) and the wall time of each way per round.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import record

DEMO_EXPORT = Path("runs/compress/t2t_vit_7_distilled/export")


def run(folder: Path, rounds: int, threads: int) -> dict[str, Any]:
    from deploy import manifest as mf
    from deploy.profiler.memory import measure_all
    from deploy.profiler.variants import collect
    from t2tvit.progress import Progress

    manifest = mf.read(folder)
    hw = tuple(manifest.img_size)
    peaks: dict[str, dict[str, list[float]]] = {}
    walls: dict[str, list[float]] = {"fresh": [], "forked": []}
    for r in range(rounds):
        for way in ("fresh", "forked") if r % 2 == 0 else ("forked", "fresh"):
            variants = [v for v in collect(folder, manifest, [], "cpu") if v.status == "ok"]
            t0 = time.perf_counter()
            with Progress(len(variants) + 1, f"{way} round {r + 1}", prefix="memory") as bar:
                measure_all(variants, hw, [1], threads, bar, fork=way == "forked")
            walls[way].append(time.perf_counter() - t0)
            for v in variants:
                peaks.setdefault(v.name, {"fresh": [], "forked": []})[way].append(v.peak_rss_mb or float("nan"))
    rows = [{"artifact": name, **{way: statistics.median(xs) for way, xs in by.items()}} for name, by in peaks.items()]
    return {"folder": str(folder), "rounds": rounds, "threads": threads, "rows": rows, "wall_s": walls}


def _markdown(res: dict[str, Any]) -> str:
    fresh, forked = statistics.median(res["wall_s"]["fresh"]), statistics.median(res["wall_s"]["forked"])
    lines = [
        f"# Memory probes: forked from one server against a fresh Python each ({res['host_class']}, {res['cpu']})",
        "",
        f"`{res['folder']}`, {len(res['rows'])} artifacts, {res['rounds']} rounds alternating, "
        f"{res['threads']} thread(s), batch 1. Wall time of all probes (median): fresh {fresh:.1f} s, "
        f"forked {forked:.1f} s ({fresh / forked:.1f}x).",
        "",
        "| artifact | peak RSS, fresh (MB) | peak RSS, forked (MB) | forked - fresh (MB) |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {r['artifact']} | {r['fresh']:.1f} | {r['forked']:.1f} | {r['forked'] - r['fresh']:+.1f} |"
        for r in res["rows"]
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", nargs="?", default=str(DEMO_EXPORT), help="export folder (default: the demo's)")
    p.add_argument("--rounds", type=int, default=2, help="rounds, each measuring every artifact both ways")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True, help="results path without suffix")
    args = p.parse_args(argv)
    folder = Path(args.folder)
    if not (folder / "manifest.json").is_file():
        p.error(f"{folder} is not an export folder (no manifest.json); run `t2t compress --demo` first")
    res = run(folder, args.rounds, args.threads) | record.host()
    record.save(args.out, res, _markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
