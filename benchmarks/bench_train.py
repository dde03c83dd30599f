"""Training throughput of the trainer's own step: img/s per model, precision and ``--compile``.

Each variant runs :func:`t2tvit.engine.train_one_epoch` (the exact loop ``t2t train`` runs:
autocast, loss, backward, GradScaler for fp16, AdamW step, the per-step loss check) over
pre-built batches, so data loading is excluded and the number is the model+optimizer cost.
Variants of one model are timed **interleaved**: every round runs one block of each variant,
rotating the order, and a variant's speed relative to fp32 eager is the median of the per-round
ratios, so machine drift hits all variants alike. ``--compile`` variants are compiled and warmed
up before the first round (their compile time is reported separately).

Usage: ``python -m benchmarks.bench_train`` (CPU, fp32 eager vs compiled) or, on a GPU,
``python -m benchmarks.bench_train --device cuda`` (adds bf16 and fp16 autocast). ``--official``
adds the official code's formulation (:mod:`benchmarks.reference`, eager) at each precision, and
then runs ours without drop path too, since the official model has none: the same work per step.
On CUDA, TF32 is on for fp32 (the trainer's default there) and each row records its peak memory.
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
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/bench_train.py` puts benchmarks/ first, not the repo
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_model import Progress, run_meta  # noqa: E402

AMP = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_train",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--models", nargs="+", default=["t2t_vit_7", "t2t_vit_14"])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--precisions", nargs="+", choices=list(AMP), help="default: cpu fp32; cuda fp32 bf16 fp16")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    p.add_argument("--batch", type=int, help="batch size (default: cpu 16, cuda 128)")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (CPU)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--block-s", type=float, default=3.0, help="target seconds per timed block")
    p.add_argument("--official", action="store_true", help="also time the official code's model (eager)")
    p.add_argument("--out", type=Path, help="output stem (default: benchmarks/results/bench_train_<device>)")
    a = p.parse_args(argv)
    a.precisions = a.precisions or (["fp32"] if a.device == "cpu" else ["fp32", "bf16", "fp16"])
    a.batch = a.batch or (16 if a.device == "cpu" else 128)
    a.out = a.out or ROOT / "benchmarks" / "results" / f"bench_train_{a.device}"
    return a


class Variant:
    """One (model, precision, compiled?) configuration with its own model copy and optimizer."""

    def __init__(
        self,
        name: str,
        precision: str,
        compiled: bool,
        a: argparse.Namespace,
        device: torch.device,
        official: bool = False,
    ):
        import t2tvit
        from t2tvit.engine import LabelLoss, NonFiniteGuard, StepLog

        torch.manual_seed(0)
        self.label = f"{'official ' if official else ''}{precision}{' compile' if compiled else ''}"
        self.precision, self.compiled, self.device = precision, compiled, device
        if official:
            from benchmarks.reference import reference_model

            self.model = reference_model(name, img_size=a.img_size).to(device)
        else:
            drop_path = 0.0 if a.official else 0.1  # the official formulation has no drop path
            self.model = t2tvit.create_model(name, img_size=a.img_size, drop_path_rate=drop_path).to(device)
        self.run_model: nn.Module = torch.compile(self.model) if compiled else self.model
        self.optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=1e-4)
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.criterion = LabelLoss(nn.CrossEntropyLoss())
        self.guard, self.log = NonFiniteGuard(10**9), StepLog(False)
        g = torch.Generator().manual_seed(1)
        self.batches = [
            (torch.randn(a.batch, 3, a.img_size, a.img_size, generator=g).to(device),
             torch.randint(0, 1000, (a.batch,), generator=g).to(device), 0)
            for _ in range(2)
        ]  # fmt: skip
        self.batch = a.batch

    def run(self, steps: int) -> float:
        """Seconds per step over ``steps`` steps of the trainer's loop."""
        from t2tvit.engine import TrainStep, train_one_epoch

        loader = [self.batches[i % 2] for i in range(steps)]
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(self.device)
        t0 = time.perf_counter()
        step = TrainStep(
            self.run_model, self.criterion, self.optimizer, self.device, amp_dtype=AMP[self.precision],
            scaler=self.scaler, guard=self.guard, log=self.log,
        )  # fmt: skip
        train_one_epoch(step, loader, epoch=0)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_mib = torch.cuda.max_memory_allocated(self.device) / 2**20
        return (time.perf_counter() - t0) / steps


def bench(name: str, a: argparse.Namespace, device: torch.device, prog: Progress) -> list[dict[str, Any]]:
    variants: list[Variant] = []
    warm: dict[str, float] = {}
    for precision in a.precisions:
        for compiled in [False] + ([] if a.no_compile else [True]):
            v = Variant(name, precision, compiled, a, device)
            t0 = time.perf_counter()
            v.run(3)  # compiles (when compiled) and warms up
            warm[v.label] = time.perf_counter() - t0
            prog.log(f"{name} {v.label}: warm-up {warm[v.label]:.1f} s", advance=1)
            variants.append(v)
        if a.official:
            v = Variant(name, precision, False, a, device, official=True)
            t0 = time.perf_counter()
            v.run(3)
            warm[v.label] = time.perf_counter() - t0
            prog.log(f"{name} {v.label}: warm-up {warm[v.label]:.1f} s", advance=1)
            variants.append(v)
    per_step = min(v.run(1) for v in variants)
    steps = max(1, round(a.block_s / per_step))
    times: dict[str, list[float]] = {v.label: [] for v in variants}
    for r in range(a.rounds):
        order = variants[r % len(variants) :] + variants[: r % len(variants)]
        for v in order:
            times[v.label].append(v.run(steps))
        prog.log(f"{name} round {r + 1}/{a.rounds}: {steps} steps per block", advance=1)
    base = times[variants[0].label]
    rows = []
    for v in variants:
        t = times[v.label]
        ratios = [b / x for b, x in zip(base, t, strict=True)]  # throughput relative to the first variant
        rows.append(
            {
                "model": name,
                "variant": v.label,
                "batch": a.batch,
                "img_size": a.img_size,
                "steps_per_block": steps,
                "img_per_s": a.batch / statistics.median(t),
                "img_per_s_best": a.batch / min(t),
                "speedup_vs_" + variants[0].label: statistics.median(ratios),
                "warmup_s": warm[v.label],
                "nonfinite_steps": v.guard.total,
                "peak_mem_mib": getattr(v, "peak_mib", None),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU visible; run with --device cpu", file=sys.stderr)
        return 2
    torch.set_num_threads(a.threads)
    if device.type == "cuda":  # the trainer's default on CUDA (t2t train --tf32)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    n_variants = len(a.precisions) * ((1 if a.no_compile else 2) + a.official)
    start, load_start = time.perf_counter(), round(os.getloadavg()[0], 2)
    rows: list[dict[str, Any]] = []
    with Progress(len(a.models) * (n_variants + a.rounds)) as prog:
        for name in a.models:
            rows += bench(name, a, device, prog)
    meta = run_meta(device, time.perf_counter() - start, load_start)
    speed_key = next(k for k in rows[0] if k.startswith("speedup_vs_"))
    header = ["model", "variant", "batch", "img/s (median)", "img/s (best)", speed_key.replace("_", " "), "warm-up s"]
    header.append("peak MiB")
    lines = [
        "# Training-step throughput (`benchmarks/bench_train.py`)",
        "",
        f"- command: `{meta['command']}`",
        f"- torch {meta['torch']}, python {meta['python']}, {meta['device_name']} (`{a.device}`), "
        f"threads {meta['threads']}",
        f"- date {meta['date']}, runtime {meta['elapsed_s']:.0f} s, load average start/end "
        f"{meta['load_start']} / {meta['load_end']}",
        "",
        "The trainer's loop (`t2tvit.engine.train_one_epoch`: autocast, cross-entropy, backward, AdamW, loss "
        f"check) on pre-built {a.img_size}px batches, train mode with drop path 0.1; variants of a model timed "
        "interleaved, rotating the order each round; the speed-up is the median of per-round ratios to the "
        "first variant. Warm-up includes `torch.compile`'s compilation.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['variant']} | {r['batch']} | {r['img_per_s']:.1f} | {r['img_per_s_best']:.1f} | "
            f"{r[speed_key]:.3f} | {r['warmup_s']:.1f} | "
            f"{'–' if r['peak_mem_mib'] is None else format(r['peak_mem_mib'], '.0f')} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".md").write_text(text)
    a.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    print(f"wrote {a.out.with_suffix('.md')} and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
