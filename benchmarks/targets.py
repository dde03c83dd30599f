"""The project's own speed targets, checked on a profile of an export folder with the reference row.

These are this project's goals for its own implementation, not a user's limits (a user's report
carries only the checks they ask for: ``t2t bench --max-latency-ms ...``):

* fp32 eager (``torch``) p50 / the straightforward formulation's p50 <= 0.8 (batch 1);
* best int8 artifact p50 / fp32 eager p50 <= 0.4;
* best artifact's MAC rate / the measured peak GEMM rate of its precision >= 0.35.

``python -m benchmarks.targets EXPORT_DIR [--batch-sizes 1,8] [--threads 2] [--duration 6] [--rounds 6]
[--data DIR|digits] [--out DIR]`` profiles the folder with the reference row
(:mod:`benchmarks.reference_row`), writes the report (``deploy.report``) and appends the targets to
``report.md`` and ``targets.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["TARGETS", "compute_targets", "main"]

# (name, value the ratio must reach, "<=" or ">="): all at batch 1.
TARGETS = {
    "eager_vs_reference": 0.8,  # fp32 eager (format `torch`) p50 / straightforward formulation p50
    "int8_vs_fp32": 0.4,  # best int8 artifact p50 / fp32 eager p50
    "peak_share": 0.35,  # best artifact's MAC rate / measured peak GEMM rate of its precision
}


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


def target_lines(targets: Sequence[dict[str, Any]]) -> list[str]:
    out = []
    for t in targets:
        verdict = "met" if t["met"] is True else "NOT MET" if t["met"] is False else "not measured"
        value = "-" if t["value"] is None else f"{t['value']:.3f}"
        out.append(f"{t['name']}: {value} (target {t['target']}) {verdict} — {t['note']}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    from benchmarks.reference_row import REFERENCE
    from deploy.profiler import ProfileConfig, profile_folder
    from deploy.report import MD_NAME, print_table, write_report

    p = argparse.ArgumentParser(prog="python -m benchmarks.targets", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path, help="export folder with model-torch.pt")
    p.add_argument("--batch-sizes", default="1,8")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--duration", type=float, default=6.0)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--data", default=None, help="labelled images (or 'digits') for accuracy and agreement")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    config = ProfileConfig(
        batch_sizes=tuple(int(b) for b in args.batch_sizes.split(",")),
        threads=args.threads,
        duration=args.duration,
        rounds=args.rounds,
        memory=not args.no_memory,
        data=args.data,
    )
    files = [(REFERENCE, args.folder / "model-torch.pt")]
    command = " ".join(["python -m benchmarks.targets", *(argv if argv is not None else sys.argv[1:])])
    report = profile_folder(args.folder, config, files=files, command=command)
    out = args.out or args.folder / "bench"
    write_report(report, out)
    targets = compute_targets(report.to_dict())
    (out / "targets.json").write_text(json.dumps(targets, indent=2) + "\n")
    lines = target_lines(targets)
    with open(out / MD_NAME, "a") as f:
        f.write("\n## The project's targets\n\n" + "".join(f"- {line}\n" for line in lines))
    print_table(report)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
