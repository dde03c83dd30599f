"""Whole-model speed: our T2T-ViT against the straightforward reference formulation.

Measures, per model (``--models``):

1. forward latency (eval mode, ``torch.inference_mode()``) at each ``--batch`` size; ratio = ours / ref time
   (target <= 0.8);
2. training-step throughput (forward + cross-entropy + backward + AdamW step on the ``requires_grad``
   parameters, train mode) at ``--train-batch``; ratio = ours / ref img/s (target >= 1.3).

Both models hold the same weights (ours is loaded into the reference) and are checked to agree in eval mode
before any timing. Timing is *interleaved* in one process: after warming up both, each of R rounds times a
block of N iterations of ours and a block of the reference, alternating which goes first. Shared or noisy
machines drift over seconds to minutes (other tenants, turbo, thermals); timing the two models back to back
exposes both to the same conditions, so the per-round ratio cancels most of that drift, and the median
over rounds discards the rounds a noise burst hit only one side of. N is calibrated from the warm-up so a
block lasts about ``--fwd-block-s`` / ``--train-block-s`` seconds.

Usage: ``python -m benchmarks.bench_model [--device cuda --amp-dtype bf16]`` (see ``--help``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deploy.profiler import device_name
from t2tvit.progress import Progress as _Progress

ROOT = Path(__file__).resolve().parents[1]
FWD_TARGET, TRAIN_TARGET, PARITY_TOL = 0.8, 1.3, 1e-4
AMP = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help if action.default is None else super()._get_help_string(action)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_model",
        description=__doc__.split("\n\n")[0] + " Forward latency (ours/ref time, target <= 0.8) and training "
        "throughput (ours/ref img/s, target >= 1.3), timed interleaved in one process (alternating blocks of "
        "ours and reference per round, median of per-round ratios) so machine noise cancels.",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--models", nargs="+", default=["t2t_vit_7", "t2t_vit_14"], help="timm model names")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda syncs around timed blocks")
    p.add_argument(
        "--amp-dtype",
        default="none",
        choices=list(AMP),
        help="torch.autocast dtype around forward+loss (fp16 training uses GradScaler)",
    )
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--batch", type=int, nargs="+", help="forward batch sizes [default: cpu 1, cuda 1 64]")
    p.add_argument("--train-batch", type=int, help="training batch size [default: cpu 16, cuda 64]")
    p.add_argument("--rounds", type=int, default=15, help="interleaved rounds for forward timing")
    p.add_argument("--train-rounds", type=int, default=7, help="interleaved rounds for training timing")
    p.add_argument("--fwd-block-s", type=float, default=0.4, help="target seconds per timed forward block")
    p.add_argument(
        "--train-block-s", type=float, default=2.5, help="target seconds per timed training block (at least one step)"
    )
    p.add_argument("--no-train", action="store_true", help="skip the training measurement")
    p.add_argument(
        "--out",
        type=Path,
        help="output path stem (.md and .json written) [default: benchmarks/results/bench_model_<device>[_<amp>]]",
    )
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    cuda = a.device == "cuda"
    a.batch = a.batch or ([1, 64] if cuda else [1])
    a.train_batch = a.train_batch or (64 if cuda else 16)
    suffix = "" if a.amp_dtype == "none" else f"_{a.amp_dtype}"
    a.out = a.out or ROOT / "benchmarks" / "results" / f"bench_model_{a.device}{suffix}"
    return a


def run_meta(device: torch.device, elapsed: float, load_start: float, **extra: Any) -> dict[str, Any]:
    """What a result file records about its run: command, versions, machine, time and load."""
    return {
        "command": shlex.join(sys.orig_argv),
        "torch": torch.__version__,
        "device": device.type,
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        **extra,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "elapsed_s": round(elapsed, 1),
        "load_start": load_start,
        "load_end": round(os.getloadavg()[0], 2),
    }


class Progress(_Progress):
    """The toolkit's progress bar, every message also kept on screen (the scripts' own log)."""

    def __init__(self, total: int) -> None:
        super().__init__(total, transient=False)

    def log(self, msg: str, advance: int = 0) -> None:
        self.step(msg, advance)
        if self.bar is not None:
            self.bar.console.print(msg)


def timed(step: Callable[[], Any], n: int, sync: Callable[[], None]) -> float:
    """Seconds per iteration of ``n`` back-to-back calls, device-synchronised at both ends."""
    sync()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    sync()
    return (time.perf_counter() - t0) / n


def interleave(
    steps: dict[str, Callable[[], Any]],
    sync: Callable[[], None],
    rounds: int,
    warmup: int,
    block_s: float,
    prog: Progress,
    label: str,
) -> tuple[int, dict[str, list[float]]]:
    """Warm up each step, calibrate N, then time N-iteration blocks per round, alternating the order.

    Returns N and, per name, the per-iteration seconds of each round.
    """
    # N from the fastest warm-up iteration of each model: robust to a noise spike during warm-up
    per_iter = [min(timed(step, 1, sync) for _ in range(warmup)) for step in steps.values()]
    n = max(1, round(block_s / statistics.mean(per_iter)))
    times: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(timed(steps[name], n, sync))
        ratio = times["ours"][-1] / times["ref"][-1]
        prog.log(f"{label} round {r + 1}/{rounds}: N={n} ours/ref time {ratio:.3f}", advance=1)
    return n, times


def summarize(
    kind: str,
    model: str,
    batch: int,
    n: int,
    rounds: int,
    times: dict[str, list[float]],
    parity: float,
    notes: list[str],
) -> dict[str, Any]:
    t_ours, t_ref = statistics.median(times["ours"]), statistics.median(times["ref"])
    ratios = [o / r for o, r in zip(times["ours"], times["ref"], strict=True)]
    if kind == "train":  # throughput ratio: (batch / t_ours) / (batch / t_ref)
        ratios = [1 / x for x in ratios]
    ratio = statistics.median(ratios)
    best = min(times["ours"]) / min(times["ref"])
    best = best if kind == "forward" else 1 / best
    met = ratio <= FWD_TARGET if kind == "forward" else ratio >= TRAIN_TARGET
    return {
        "model": model,
        "kind": kind,
        "batch": batch,
        "iters_per_block": n,
        "rounds": rounds,
        "ours_s_per_iter": t_ours,
        "ref_s_per_iter": t_ref,
        "ratios": ratios,
        "ratio": ratio,
        "ratio_best": best,
        "target": f"<= {FWD_TARGET}" if kind == "forward" else f">= {TRAIN_TARGET}",
        "met": met,
        "parity_max_abs_diff": parity,
        "parity_ok": parity <= PARITY_TOL,
        "notes": "; ".join(notes),
    }


def flag_nonfinite(bad: dict[str, torch.Tensor], k: str, t: torch.Tensor) -> None:
    """Accumulate "``t`` had a non-finite value" on the device: no host sync inside the timed blocks."""
    flag = ~torch.isfinite(t.detach()).all()
    bad[k] = bad[k] | flag if k in bad else flag


def nonfinite_notes(bad: dict[str, torch.Tensor], what: str) -> list[str]:
    return [f"{k} non-finite {what}" for k, v in sorted(bad.items()) if v.item()]


def fwd_step(
    m: nn.Module,
    k: str,
    x: torch.Tensor,
    amp: torch.dtype | None,
    bad: dict[str, torch.Tensor],
) -> Callable[[], None]:
    """One inference forward (autocast when ``amp``; overflowing outputs are flagged in ``bad``)."""

    def step() -> None:
        with torch.inference_mode(), torch.autocast(x.device.type, dtype=amp, enabled=amp is not None):
            out = m(x)
            if amp is not None:
                flag_nonfinite(bad, k, out)

    return step


def bench_model(name: str, a: argparse.Namespace, device: torch.device, prog: Progress) -> list[dict[str, Any]]:
    import timm

    import t2tvit.models  # noqa: F401  (registers the variants with timm)
    from benchmarks.reference import reference_model

    torch.manual_seed(a.seed)
    ours = timm.create_model(name).to(device)
    ref = reference_model(name).to(device)
    ref.load_state_dict(ours.state_dict())
    models = {"ours": ours, "ref": ref}
    cuda, amp = device.type == "cuda", AMP[a.amp_dtype]
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    for m in models.values():
        m.eval()
    with torch.inference_mode():  # parity in fp32, no autocast
        x = torch.randn(4, 3, 224, 224, device=device)
        diff = (ours(x).float() - ref(x).float()).abs().max().item()
    prog.log(f"{name}: eval-mode parity max |logit diff| = {diff:.2e} ({'ok' if diff <= PARITY_TOL else 'FAIL'})")
    rows = []
    warm_f = 10 if cuda else 3
    for bs in a.batch:
        x = torch.randn(bs, 3, 224, 224, device=device)
        bad: dict[str, torch.Tensor] = {}
        steps = {k: fwd_step(m, k, x, amp, bad) for k, m in models.items()}
        n, times = interleave(steps, sync, a.rounds, warm_f, a.fwd_block_s, prog, f"{name} fwd b{bs}")
        rows.append(summarize("forward", name, bs, n, a.rounds, times, diff, nonfinite_notes(bad, "output")))
    if a.no_train:
        return rows
    x = torch.randn(a.train_batch, 3, 224, 224, device=device)
    y = torch.randint(0, 1000, (a.train_batch,), device=device)
    bad = {}

    def train(k: str) -> Callable[[], None]:
        m = models[k].train()
        opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
        scaler = torch.amp.GradScaler(device.type, enabled=amp is torch.float16)

        def step() -> None:
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                loss = F.cross_entropy(m(x), y)
            if amp is not None:
                flag_nonfinite(bad, k, loss)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

        return step

    n, times = interleave(
        {k: train(k) for k in models},
        sync,
        a.train_rounds,
        3 if cuda else 2,
        a.train_block_s,
        prog,
        f"{name} train b{a.train_batch}",
    )
    rows.append(summarize("train", name, a.train_batch, n, a.train_rounds, times, diff, nonfinite_notes(bad, "loss")))
    return rows


def table_rows(rows: list[dict[str, Any]]) -> Iterator[list[str]]:
    for r in rows:
        if r["kind"] == "forward":
            ours, ref = f"{r['ours_s_per_iter'] * 1e3:.2f} ms", f"{r['ref_s_per_iter'] * 1e3:.2f} ms"
        else:
            ours, ref = (f"{r['batch'] / r[k]:.1f} img/s" for k in ("ours_s_per_iter", "ref_s_per_iter"))
        spread = f"{min(r['ratios']):.3f}-{max(r['ratios']):.3f}"
        yield [
            r["model"],
            r["kind"],
            str(r["batch"]),
            f"{r['rounds']}x{r['iters_per_block']}",
            ours,
            ref,
            f"{r['ratio']:.3f}",
            spread,
            f"{r['ratio_best']:.3f}",
            r["target"],
            "yes" if r["met"] else "NO",
            f"{r['parity_max_abs_diff']:.1e} {'ok' if r['parity_ok'] else 'FAIL'}",
            r["notes"],
        ]


HEADER = [
    "model",
    "measure",
    "batch",
    "rounds x N",
    "ours",
    "ref",
    "ratio (median)",
    "ratio range",
    "best/best",
    "target",
    "met",
    "parity (max abs diff)",
    "notes",
]


def print_table(rows: list[dict[str, Any]], title: str) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(title)
        for line in [HEADER, *table_rows(rows)]:
            print(" | ".join(line))
        return
    table = Table(*HEADER, title=title)
    for line in table_rows(rows):
        table.add_row(*line)
    console = Console()
    (console if console.is_terminal else Console(width=200)).print(table)


def main(argv: list[str] | None = None) -> int:
    if str(ROOT) not in sys.path:  # `python benchmarks/bench_model.py` puts benchmarks/ first, not the repo
        sys.path.insert(0, str(ROOT))
    a = parse_args(argv)
    device = torch.device(a.device)
    torch.set_num_threads(a.threads)
    steps = len(a.models) * (len(a.batch) * a.rounds + (0 if a.no_train else a.train_rounds))
    start, load_start = time.perf_counter(), round(os.getloadavg()[0], 2)
    rows: list[dict[str, Any]] = []
    with Progress(steps) as prog:
        for name in a.models:
            rows += bench_model(name, a, device, prog)
    elapsed = time.perf_counter() - start
    meta = run_meta(device, elapsed, load_start, amp_dtype=a.amp_dtype)
    title = f"{meta['device_name']} ({a.device}, {meta['threads']} threads, amp {a.amp_dtype})"
    print_table(rows, title)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    md, js = a.out.with_suffix(".md"), a.out.with_suffix(".json")
    js.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    lines = [
        "# Whole-model benchmark: ours vs reference formulation",
        "",
        f"- command: `{meta['command']}`",
        f"- torch {meta['torch']}, python {meta['python']}",
        f"- device: {meta['device_name']} (`{a.device}`), threads: {meta['threads']}, amp: {a.amp_dtype}",
        f"- date: {meta['date']}, total runtime {elapsed:.0f} s",
        f"- load average (1 min) at start / end: {meta['load_start']} / {meta['load_end']}",
        "",
        "Per round one block of N iterations of ours and one of the reference, alternating which goes first; N is "
        f"calibrated from warm-up to ~{a.fwd_block_s:g} s (forward) / {a.train_block_s:g} s (training) per block. "
        "Forward: eval, `torch.inference_mode()`, ratio = ours/ref time. Training: train mode, forward + "
        "cross-entropy + backward + AdamW on `requires_grad` params, ratio = ours/ref img/s. `ratio (median)` = "
        "median of per-round ratios (decides `met`); ours/ref = medians over rounds; `best/best` = the ratio of "
        "each model's fastest round (noise only adds time: a second robust view).",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
        *("| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in table_rows(rows)),
        "",
    ]
    md.write_text("\n".join(lines))
    print(f"wrote {md} and {js} ({elapsed:.0f} s)")
    return 0 if all(r["parity_ok"] for r in rows) else 1  # targets are reported, only parity fails the run


if __name__ == "__main__":
    sys.exit(main())
