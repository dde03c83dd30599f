"""The Python steps of ``benchmarks/gpu_check.sh``: each measures one thing, writes ``OUT/<step>.json``
with the command that made it, prints a line, and exits 1 when its check fails (2 on bad usage).

``python -m benchmarks.gpu_check STEP --help`` lists a step's options. Every step also runs on CPU
(``--device cpu``, small sizes) so that the script's first GPU run is not its first run; CPU results
are written where the dry run says (never under ``benchmarks/results/gpu/``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/gpu_check.py` puts benchmarks/ first, not the repo
    sys.path.insert(0, str(ROOT))

AMP = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _write(out: Path, step: str, record: dict[str, Any], ok: bool) -> int:
    record = {"step": step, "ok": ok, "command": " ".join(["python -m benchmarks.gpu_check", *sys.argv[1:]])} | record
    if torch.cuda.is_available():
        record["gpu"] = torch.cuda.get_device_name()
    record["torch"] = torch.__version__
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{step}.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(f"{step}: {'ok' if ok else 'FAILED'} -> {out / (step + '.json')}")
    return 0 if ok else 1


# --------------------------------------------------------------------------- 1. one training run's verdict


def run_summary(a: argparse.Namespace) -> int:
    """The verdict on one ``t2t train`` run of the precision matrix, read from its log and console."""
    rows = [json.loads(line) for line in (a.run / "log.jsonl").read_text().splitlines()]
    console = a.console.read_text() if a.console and a.console.is_file() else ""
    last = rows[-1]
    record = {
        "name": a.name,
        "train_command": a.train_command,
        "epochs": len(rows),
        "train_loss": [r["train_loss"] for r in rows],
        "top1": last["top1"],
        "min_top1": a.min_top1,
        "nonfinite_steps": sum(r["nonfinite_steps"] for r in rows),
        "overflow_steps": sum(r["overflow_steps"] for r in rows),
        "img_per_s": [round(r["img_per_s"], 1) for r in rows],
        "peak_mem_mib": max((r.get("peak_mem_mib") or 0.0) for r in rows) or None,
        "recompiles": console.count("Recompiling function"),
        "args": json.loads((a.run / "args.json").read_text()),
    }
    problems = []
    if not all(math.isfinite(x) for x in record["train_loss"]):
        problems.append("non-finite train loss")
    if record["nonfinite_steps"]:
        problems.append(f"{record['nonfinite_steps']} non-finite steps")
    if last["top1"] < a.min_top1:
        problems.append(f"top-1 {last['top1']:.2f}% < {a.min_top1:.2f}%")
    record["problems"] = problems
    return _write(a.out, f"train-{a.name}", record, not problems)


# --------------------------------------------------------------------------- 2. numerics at 224


def numerics(a: argparse.Namespace) -> int:
    """fp16 / bf16 autocast logits against a float64 evaluation of the same weights, gradients, and the
    GradScaler's scale over ``--steps`` fp16 steps of the recipe's optimizer."""
    import timm

    import t2tvit  # noqa: F401  (registers the variants)
    from benchmarks.faithful import perturb_

    device = torch.device(a.device)
    torch.manual_seed(0)
    model = perturb_(timm.create_model(a.model, img_size=a.img_size)).to(device)
    x = torch.randn(a.batch, 3, a.img_size, a.img_size, generator=torch.Generator().manual_seed(1)).to(device)
    y = torch.randint(0, 1000, (a.batch,), generator=torch.Generator().manual_seed(2)).to(device)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # the fp32 reference is fp32
    model.eval()
    with torch.no_grad():
        exact = model.double()(x.double())
        model.float()
        scale = exact.abs().max().item()
        errors = {}
        for name, dtype in AMP.items():
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                errors[name] = (model(x).double() - exact).abs().max().item() / scale
    grads_finite = {}
    model.train()
    for name, dtype in AMP.items():
        model.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        grads_finite[name] = all(bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.grad is not None)
    scaler = torch.amp.GradScaler(device.type)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.05)
    scales, overflows = [], 0
    t0 = time.perf_counter()
    for _ in range(a.steps):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.float16):
            loss = nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        before = scaler.get_scale()
        scaler.step(opt)
        scaler.update()
        overflows += scaler.get_scale() < before
        scales.append(scaler.get_scale())
    elapsed = time.perf_counter() - t0
    bounds = {"fp16": 2 * a.cpu_fp16, "bf16": 2 * a.cpu_bf16}
    problems = [f"{k} logit error {errors[k]:.2e} > {v:.2e}" for k, v in bounds.items() if errors[k] > v]
    problems += [f"{k} gradients not finite" for k, ok in grads_finite.items() if not ok]
    if scales[-1] < 1.0:
        problems.append(f"GradScaler scale fell to {scales[-1]:g}")
    record = {
        "model": a.model,
        "img_size": a.img_size,
        "batch": a.batch,
        "logit_error_rel_max": errors,
        "cpu_figures": {"fp16": a.cpu_fp16, "bf16": a.cpu_bf16},
        "bounds (2x the CPU figures)": bounds,
        "gradients_finite": grads_finite,
        "scaler_steps": a.steps,
        "scaler_overflows": overflows,
        "scale_first_last_min": [scales[0], scales[-1], min(scales)],
        "fp16_step_ms": 1000 * elapsed / a.steps,
        "final_loss": float(loss.detach()),
        "problems": problems,
    }
    return _write(a.out, "numerics", record, not problems)


# --------------------------------------------------------------------------- 3. the fp16 NaN guard


def nan_guard(a: argparse.Namespace) -> int:
    """A real model under fp16 autocast whose gradients are made inf at every scale: the guard must stop it."""
    import t2tvit
    from t2tvit.engine import LabelLoss, NonFiniteGuard, TrainingDiverged, TrainStep, train_one_epoch

    device = torch.device(a.device)
    torch.manual_seed(0)
    model = t2tvit.create_model(a.model, img_size=a.img_size, num_classes=10).to(device)

    class Diverged(nn.Module):  # the injected fault: every gradient reaching the model is inf
        def __init__(self, inner: nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            out = self.inner(images)
            if out.requires_grad:
                out.register_hook(lambda g: torch.full_like(g, float("inf")))
            return out

    before = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(8, 3, a.img_size, a.img_size, generator=g), torch.randint(0, 10, (8,), generator=g), 0)
        for _ in range(a.steps)
    ]
    scaler = torch.amp.GradScaler(device.type)  # default init scale 2**16: 17 halvings to fall below 1
    guard = NonFiniteGuard(a.max_nonfinite, min_scale=1.0)
    stopped, message = False, ""
    try:
        step = TrainStep(
            Diverged(model), LabelLoss(nn.CrossEntropyLoss()), torch.optim.AdamW(model.parameters()), device,
            amp_dtype=torch.float16, scaler=scaler, guard=guard,
        )  # fmt: skip
        train_one_epoch(step, batches, epoch=0)
    except TrainingDiverged as e:
        stopped, message = True, str(e)
    unchanged = all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    record = {
        "model": a.model,
        "stopped": stopped,
        "message": message,
        "nonfinite_events": guard.events,
        "final_scale": scaler.get_scale(),
        "weights_unchanged": unchanged,
    }
    return _write(a.out, "nan-guard", record, stopped and unchanged and len(guard.events) == a.max_nonfinite)


# --------------------------------------------------------------------------- 4. distillation


def distill(a: argparse.Namespace) -> int:
    """``t2t distill``'s run in-process, its teacher kept: state unchanged (BN buffers too) and its time share."""
    from compress.distill import DistillConfig, distillation_criterion
    from t2tvit.checkpoint import read_checkpoint, read_state_dict
    from t2tvit.train import parse_args
    from t2tvit.train import run as train

    argv = [str(a.data), "--config", "digits", "--model", "t2t_vit_7_distilled", "--teacher-path", str(a.teacher)]
    argv += ["--output", str(a.run), *a.extra]
    args = parse_args(argv, DistillConfig)  # the settings and defaults of `t2t distill`
    kept: dict[str, Any] = {}
    timing: list[tuple[Any, Any]] = []

    def criterion_factory(args: DistillConfig, model: nn.Module, mixup_active: bool) -> nn.Module:
        crit = distillation_criterion(args, model, mixup_active)
        teacher = crit.teacher
        kept["teacher"] = teacher
        inner = teacher.forward

        def timed(images: torch.Tensor) -> torch.Tensor:
            if images.is_cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                out = inner(images)
                end.record()
                timing.append((start, end))
                return out
            t0 = time.perf_counter()
            out = inner(images)
            timing.append((t0, time.perf_counter()))
            return out

        teacher.forward = timed
        return crit

    from t2tvit.errors import T2TError

    try:
        train(args, criterion_factory=criterion_factory)
    except T2TError as e:
        print(f"distill: {e}", file=sys.stderr)
        return 1
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    teacher_s = sum(s.elapsed_time(e) * 1e-3 if hasattr(s, "elapsed_time") else e - s for s, e in timing)
    rows = [json.loads(line) for line in (a.run / "log.jsonl").read_text().splitlines()]
    train_s = sum(r["epoch_time_s"] for r in rows)
    saved, _, _ = read_state_dict(read_checkpoint(a.teacher))
    now = kept["teacher"].model.state_dict()
    changed = [k for k, v in saved.items() if not torch.equal(v.to(now[k].device), now[k])]
    buffers = [k for k in saved if "running_" in k or "num_batches_tracked" in k]
    record = {
        "distill_command": "t2t distill " + " ".join(argv),
        "distillation_type": args.distillation_type,
        "amp": args.amp,
        "top1": rows[-1]["top1"],
        "train_loss": [r["train_loss"] for r in rows],
        "nonfinite_steps": sum(r["nonfinite_steps"] for r in rows),
        "teacher_tensors_changed": changed,
        "teacher_bn_buffers_checked": len(buffers),
        "teacher_channels_last": kept["teacher"].channels_last,
        "teacher_s": teacher_s,
        "train_s": train_s,
        "teacher_share_of_train_time": teacher_s / train_s if train_s else None,
    }
    ok = not changed and bool(buffers) and record["nonfinite_steps"] == 0
    return _write(a.out, f"distill-{args.distillation_type}", record, ok)


# --------------------------------------------------------------------------- 5. resume


def compare(a: argparse.Namespace) -> int:
    """Two runs' final weights (and EMA): bit-exact or by how much they differ."""
    from t2tvit.checkpoint import read_checkpoint

    x, y = read_checkpoint(a.first), read_checkpoint(a.second)
    diffs: dict[str, float] = {}
    for key in ("model", "model_ema"):
        if x.get(key) is None:
            continue
        for name, t in x[key].items():
            if t.is_floating_point():
                diffs[f"{key}.{name}"] = float((t.double() - y[key][name].double()).abs().max())
    worst = max(diffs.values())
    record = {
        "name": a.name,
        "first": str(a.first),
        "second": str(a.second),
        "bit_exact": worst == 0.0,
        "max_abs_diff": worst,
        "differing_tensors": sum(v > 0 for v in diffs.values()),
        "tensors": len(diffs),
        "must_be_exact": a.exact,
    }
    return _write(a.out, f"resume-{a.name}", record, worst == 0.0 or not a.exact)


# --------------------------------------------------------------------------- 7. DDP


def ddp(a: argparse.Namespace) -> int:
    """The ranks' weights after a torchrun run agree (summary.json's digests)."""
    summary = json.loads((a.run / "summary.json").read_text())
    rows = [json.loads(line) for line in (a.run / "log.jsonl").read_text().splitlines()]
    record = {
        "train_command": a.train_command,
        "ranks": len(summary["rank_weight_digests"]),
        "ranks_in_sync": summary["ranks_in_sync"],
        "top1": rows[-1]["top1"],
        "train_images": rows[-1]["train_images"],
        "val_images": rows[-1]["val_images"],
    }
    return _write(a.out, "ddp", record, summary["ranks_in_sync"] and record["ranks"] == a.ranks)


def summary(a: argparse.Namespace) -> int:
    """``summary.md``: one line per result file, its verdict and the numbers a reader looks for first."""
    keys = (
        "top1", "nonfinite_steps", "overflow_steps", "img_per_s", "peak_mem_mib", "recompiles", "logit_error_rel_max",
        "scale_first_last_min", "stopped", "teacher_tensors_changed", "teacher_share_of_train_time", "bit_exact",
        "max_abs_diff", "ranks_in_sync", "problems",
    )  # fmt: skip
    lines = [f"# GPU check ({a.out})", "", "| result | ok | numbers |", "|---|---|---|"]
    failed = 0
    for path in sorted(a.out.glob("*/*.json")):
        r = json.loads(path.read_text())
        if "step" not in r:
            continue
        failed += not r["ok"]
        numbers = "; ".join(f"{k} {r[k]}" for k in keys if k in r and r[k] not in (None, [], ""))
        lines.append(f"| {path.relative_to(a.out)} | {'yes' if r['ok'] else '**no**'} | {numbers} |")
    lines += ["", "Commands, in the order run: [commands.txt](commands.txt)."]
    (a.out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if failed == 0 else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="step", required=True)
    s = sub.add_parser("run-summary", help="verdict on one precision-matrix training run")
    s.add_argument("name")
    s.add_argument("run", type=Path)
    s.add_argument("--console", type=Path)
    s.add_argument("--train-command", default="")
    s.add_argument("--min-top1", type=float, default=0.0)
    s.set_defaults(fn=run_summary)
    s = sub.add_parser("numerics", help="fp16/bf16 logits, gradients, GradScaler at 224")
    s.add_argument("--model", default="t2t_vit_14")
    s.add_argument("--img-size", type=int, default=224)
    s.add_argument("--batch", type=int, default=64)
    s.add_argument("--steps", type=int, default=200)
    s.add_argument("--cpu-fp16", type=float, default=1.3e-3, help="the CPU figure (benchmarks/results/faithful)")
    s.add_argument("--cpu-bf16", type=float, default=9.4e-3)
    s.set_defaults(fn=numerics)
    s = sub.add_parser("nan-guard", help="the fp16 guard stops an injected divergence")
    s.add_argument("--model", default="t2t_vit_7")
    s.add_argument("--img-size", type=int, default=32)
    s.add_argument("--steps", type=int, default=40)
    s.add_argument("--max-nonfinite", type=int, default=10)
    s.set_defaults(fn=nan_guard)
    s = sub.add_parser("distill", help="distillation in-process: teacher state and time share")
    s.add_argument("data", type=Path)
    s.add_argument("teacher", type=Path)
    s.add_argument("run", type=Path)
    s.add_argument("extra", nargs=argparse.REMAINDER, help="more `t2t distill` flags")
    s.set_defaults(fn=distill)
    s = sub.add_parser("compare", help="two runs' final weights")
    s.add_argument("name")
    s.add_argument("first", type=Path)
    s.add_argument("second", type=Path)
    s.add_argument("--exact", action="store_true", help="fail unless bit-exact")
    s.set_defaults(fn=compare)
    s = sub.add_parser("ddp", help="the ranks of a torchrun run stayed in sync")
    s.add_argument("run", type=Path)
    s.add_argument("--ranks", type=int, default=2)
    s.add_argument("--train-command", default="")
    s.set_defaults(fn=ddp)
    s = sub.add_parser("summary", help="summary.md of every result under --out")
    s.set_defaults(fn=summary)
    for sp in sub.choices.values():
        sp.add_argument("--out", type=Path, required=True, help="results folder")
        if sp.get_default("fn") in (numerics, nan_guard):
            sp.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    a = p.parse_args(argv)
    if getattr(a, "device", None) == "cuda" and not torch.cuda.is_available():
        print(f"{a.step}: no CUDA GPU visible; pass --device cpu for a dry run", file=sys.stderr)
        return 2
    return a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
