"""Does DeiT distillation help a T2T-ViT-7 on the bundled digits? ``none`` vs ``soft`` vs ``hard``.

One CNN teacher (ResNet-18 by default) is trained on the digits with the trainer; then the same
``t2t_vit_7_distilled`` student recipe (the bundled ``digits`` config: epochs, schedule, batch)
is run once per distillation type and seed, the seed being the only thing that differs between
repeats. ``none`` trains both heads on labels, so the three arms differ in the loss only.

Reported per type: the final-epoch val top-1 (the budget's answer; best-epoch top-1 is also
given but is chosen on the validation set, so it flatters), mean ± sample std and min/max over
seeds, and the per-seed differences to ``none`` (paired: same seed, same data order).

    python benchmarks/distill_digits.py                 # 3 seeds, about 12 minutes on 2 CPU cores
    python benchmarks/distill_digits.py --seeds 0,1,2,3,4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_model import run_meta  # noqa: E402

TYPES = ("none", "soft", "hard")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2", help="comma-separated student seeds (default: 0,1,2)")
    p.add_argument("--types", default=",".join(TYPES), help="distillation types to compare")
    p.add_argument("--teacher-model", default="resnet18", help="timm CNN trained as the teacher")
    p.add_argument("--teacher-epochs", type=int, default=12, help="teacher epochs (digits recipe otherwise)")
    p.add_argument("--epochs", type=int, default=None, help="student epochs (default: the digits config's 12)")
    p.add_argument("--alpha", type=float, default=0.5, help="--distillation-alpha")
    p.add_argument("--tau", type=float, default=1.0, help="--distillation-tau (soft)")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "distill_digits", help="run folders")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "distill_digits")
    a = p.parse_args(argv)
    a.seeds = [int(s) for s in a.seeds.split(",")]
    a.types = [t for t in a.types.split(",") if t]
    bad = sorted(set(a.types) - set(TYPES))
    if bad:
        p.error(f"unknown distillation types: {', '.join(bad)}")
    return a


def _last_row(out: Path) -> dict[str, Any]:
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return {"final_top1": rows[-1]["top1"], "best_top1": max(r["top1"] for r in rows), "epochs": len(rows)}


def _run(fn: Any, argv: list[str], out: Path) -> dict[str, Any]:
    """Run a training command unless ``out`` already holds its finished summary (resumable sweep)."""
    if not (out / "summary.json").is_file():
        if out.exists():  # an interrupted run: start it again from scratch
            import shutil

            shutil.rmtree(out)
        t0 = time.perf_counter()
        if fn([*argv, "--output", str(out)]) != 0:
            raise SystemExit(f"run failed: {' '.join(argv)}")
        (out / "wall_s.txt").write_text(f"{time.perf_counter() - t0:.1f}\n")
    return _last_row(out) | {"wall_s": float((out / "wall_s.txt").read_text())}


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def main(argv: list[str] | None = None) -> int:
    from compress.distill import main as distill_main
    from t2tvit.train import main as train_main

    a = parse_args(argv)
    start, load_start = time.perf_counter(), round(os.getloadavg()[0], 2)
    common = ["digits", "--config", "digits", "--log-interval", "100000"]
    teacher_dir = a.work / f"teacher-{a.teacher_model}"
    print(f"teacher: {a.teacher_model}, {a.teacher_epochs} epochs", flush=True)
    teacher = _run(train_main, [*common, "--model", a.teacher_model, "--epochs", str(a.teacher_epochs)], teacher_dir)
    print(f"teacher final top-1 {teacher['final_top1']:.2f}%", flush=True)
    student = [*common, "--model", "t2t_vit_7_distilled", "--teacher-model", a.teacher_model]
    student += ["--teacher-path", str(teacher_dir / "best.pth"), "--distillation-alpha", str(a.alpha)]
    student += ["--distillation-tau", str(a.tau)]
    if a.epochs:
        student += ["--epochs", str(a.epochs)]
    runs: list[dict[str, Any]] = []
    for seed in a.seeds:  # seed-major order: an interrupted sweep still has complete pairs
        for kind in a.types:
            out = a.work / f"{kind}-seed{seed}"
            r = _run(distill_main, [*student, "--distillation-type", kind, "--seed", str(seed)], out)
            runs.append({"type": kind, "seed": seed, **r})
            print(f"{kind:>4} seed {seed}: final top-1 {r['final_top1']:.2f}%  best {r['best_top1']:.2f}%", flush=True)

    summary: dict[str, Any] = {}
    for kind in a.types:
        mine = sorted((r for r in runs if r["type"] == kind), key=lambda r: r["seed"])
        summary[kind] = {
            "final_top1": _stats([r["final_top1"] for r in mine]),
            "best_top1": _stats([r["best_top1"] for r in mine]),
        }
        if kind != "none" and "none" in a.types:
            base = {r["seed"]: r["final_top1"] for r in runs if r["type"] == "none"}
            diffs = [r["final_top1"] - base[r["seed"]] for r in mine]
            summary[kind]["paired_diff_vs_none"] = _stats(diffs) | {"wins": sum(d > 0 for d in diffs), "n": len(diffs)}

    meta = run_meta(torch.device("cpu"), time.perf_counter() - start, load_start)
    result = {
        "meta": meta,
        "teacher": {"model": a.teacher_model, "epochs": a.teacher_epochs, **teacher},
        "student": {"model": "t2t_vit_7_distilled", "recipe": "--config digits", "alpha": a.alpha, "tau": a.tau},
        "seeds": a.seeds,
        "summary": summary,
        "runs": runs,
    }
    text = _markdown(result)
    print(text)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    a.out.with_suffix(".md").write_text(text)
    print(f"wrote {a.out.with_suffix('.md')} and .json")
    return 0


def _markdown(r: dict[str, Any]) -> str:
    m, t = r["meta"], r["teacher"]
    n = len(r["seeds"])
    lines = [
        "# Distillation on the bundled digits (`benchmarks/distill_digits.py`)",
        "",
        f"- command: `{m['command']}`",
        f"- torch {m['torch']}, python {m['python']}, {m['device_name']}, threads {m['threads']}",
        f"- date {m['date']}; training time {t['wall_s'] + sum(x['wall_s'] for x in r['runs']):.0f} s in all "
        "(runs finished earlier in `--work` are reused, with their recorded wall time)",
        f"- teacher: {t['model']} trained with `--config digits --epochs {t['epochs']}`: "
        f"val top-1 {t['final_top1']:.2f}% (best epoch {t['best_top1']:.2f}%)",
        f"- student: t2t_vit_7_distilled, `--config digits` (32 px, 12 epochs, AdamW 1e-3, cosine), "
        f"alpha {r['student']['alpha']}, tau {r['student']['tau']}; seeds {', '.join(map(str, r['seeds']))}",
        "- `none` trains both heads on labels; `soft` and `hard` give the distillation head the teacher; "
        "evaluation averages the heads",
        "",
        f"| type | final top-1 mean ± std (n={n}) | min - max | best-epoch top-1 mean | paired diff vs none | wins |",
        "|---|---|---|---|---|---|",
    ]
    for kind, s in r["summary"].items():
        f, b = s["final_top1"], s["best_top1"]
        d = s.get("paired_diff_vs_none")
        diff = f"{d['mean']:+.2f} ± {d['std']:.2f}" if d else "-"
        wins = f"{d['wins']}/{d['n']}" if d else "-"
        lines.append(
            f"| {kind} | {f['mean']:.2f} ± {f['std']:.2f} | {f['min']:.2f} - {f['max']:.2f} | {b['mean']:.2f} | "
            f"{diff} | {wins} |"
        )
    lines += ["", "| type | seed | final top-1 | best top-1 | wall s |", "|---|---|---|---|---|"]
    for run in r["runs"]:
        cells = [
            run["type"],
            run["seed"],
            f"{run['final_top1']:.2f}",
            f"{run['best_top1']:.2f}",
            f"{run['wall_s']:.0f}",
        ]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
