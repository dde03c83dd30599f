"""One training epoch and one evaluation pass (DeiT's ``engine.py`` idea).

Both functions take everything they use as arguments (no globals), so the trainer, the
distillation command and tests drive the same loop. The loss is called as
``criterion(images, outputs, targets)``: a plain loss ignores ``images``, a distillation loss
(``compress.distill``) feeds them to its teacher. Under DDP every rank runs these functions;
metrics come back already reduced across ranks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .errors import T2TError

__all__ = [
    "LabelLoss",
    "NonFiniteGuard",
    "StepLog",
    "TrainingDiverged",
    "accuracy_counts",
    "autocast",
    "evaluate",
    "train_one_epoch",
]


class TrainingDiverged(T2TError):
    """Too many consecutive non-finite losses: the run stops, its last good checkpoint is kept."""


class LabelLoss(nn.Module):
    """Wraps a ``loss(outputs, targets)`` into the loop's ``(images, outputs, targets)`` call.

    A distilled student in training returns ``(cls_logits, dist_logits)``; without a teacher
    both heads learn from the labels (the mean of the two losses).
    """

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base

    def forward(self, images: torch.Tensor, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, (tuple, list)):
            return sum(self.base(o, targets) for o in outputs) / len(outputs)
        return self.base(outputs, targets)


@dataclass
class NonFiniteGuard:
    """Counts non-finite losses; after ``max_consecutive`` in a row the run is stopped.

    A step whose loss or (without a GradScaler) gradient norm is NaN/inf is skipped (no
    optimizer step) and reported with its epoch and step, so one bad batch does not end a
    long run, but a diverged run does not burn GPU hours producing NaN either.
    """

    max_consecutive: int = 10
    consecutive: int = 0
    total: int = 0
    events: list[str] = field(default_factory=list)

    def observe(self, finite: bool, epoch: int, step: int, what: str = "") -> None:
        """Record one step; ``what`` names the non-finite quantity (e.g. ``"loss nan"``)."""
        if finite:
            self.consecutive = 0
            return
        self.consecutive += 1
        self.total += 1
        self.events.append(f"epoch {epoch} step {step}: {what}")
        print(f"warning: non-finite {what} at epoch {epoch} step {step}; step skipped", flush=True)
        if self.consecutive >= self.max_consecutive:
            raise TrainingDiverged(
                f"stopped: {self.consecutive} consecutive non-finite steps (last: {what} at epoch {epoch} "
                f"step {step}); "
                "lower --lr, set --clip-grad, or use --amp-dtype bf16; the last good checkpoint is kept"
            )


def autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    """``torch.autocast`` for ``dtype`` (fp16/bf16), or a no-op when ``dtype`` is None (fp32)."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _all_reduce(values: list[float], device: torch.device, op: Any = None) -> list[float]:
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t.tolist()


def accuracy_counts(logits: torch.Tensor, targets: torch.Tensor, topk: Iterable[int] = (1, 5)) -> list[int]:
    """Number of samples whose target is among the top-k logits, for each k."""
    k_max = min(max(topk), logits.shape[1])
    pred = logits.topk(k_max, dim=1).indices
    hit = pred.eq(targets.view(-1, 1))
    return [int(hit[:, : min(k, k_max)].any(dim=1).sum()) for k in topk]


class StepLog:
    """Rank-0 progress: a live bar (loss, lr, img/s, ETA) on a terminal, log lines otherwise."""

    def __init__(self, enabled: bool, log_interval: int = 50):
        self.enabled, self.log_interval = enabled, max(1, log_interval)
        self._progress: Any = None

    def start(self, description: str, total: int) -> None:
        if not self.enabled:
            return
        from .progress import Progress

        self._progress = Progress(total, description, info=True, every=self.log_interval, eta=True).__enter__()

    def update(self, step: int, info: str) -> None:
        if self._progress is not None:
            self._progress.update(step, info)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None


def _backward_step(
    loss: torch.Tensor,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    clip_grad: float | None,
    guard: NonFiniteGuard,
    epoch: int,
    step: int,
) -> str:
    """Backward and optimizer step; ``"ok"``, ``"overflow"`` (the fp16 scaler skipped it, normal) or
    ``"nonfinite"`` (non-finite gradients without a scaler: the weights were left untouched)."""
    if scaler is not None and scaler.is_enabled():
        scaler.scale(loss).backward()
        if clip_grad:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        scale = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        guard.observe(True, epoch, step)
        return "overflow" if scaler.get_scale() < scale else "ok"  # inf/NaN gradients: the scaler skipped
    loss.backward()
    norm = nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
    finite = bool(torch.isfinite(norm))  # DDP has averaged the gradients: every rank agrees
    guard.observe(finite, epoch, step, "" if finite else f"gradient norm {float(norm)}")
    if not finite:  # one bad backward must not write NaN into the weights
        return "nonfinite"
    if clip_grad:
        nn.utils.clip_grads_with_norm_(model.parameters(), clip_grad, norm)
    optimizer.step()
    return "ok"


def train_one_epoch(
    model: nn.Module,
    loader: Iterable,
    criterion: Callable[[torch.Tensor, Any, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    *,
    epoch: int,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    mixup_fn: Callable | None = None,
    model_ema: Any = None,
    clip_grad: float | None = None,
    lr_scheduler: Any = None,
    guard: NonFiniteGuard | None = None,
    log: StepLog | None = None,
    num_updates: int = 0,
    max_steps: int | None = None,
) -> dict[str, float]:
    """Train for one pass over ``loader``; returns rank-averaged metrics and the update count.

    ``scaler`` is a GradScaler for fp16 autocast (bf16 needs none); a step whose gradients
    overflow is skipped by the scaler and counted in ``overflow_steps``. A non-finite loss,
    or a batch with no readable image on any rank, is agreed on by all ranks and the step
    skipped everywhere (so DDP's collective backward never hangs); non-finite ones are
    reported through ``guard``.
    """
    model.train()
    guard = guard or NonFiniteGuard()
    log = log or StepLog(False)
    total = len(loader) if max_steps is None else min(len(loader), max_steps)  # type: ignore[arg-type]
    log.start(f"epoch {epoch}", total)
    loss_sum, seen, skipped, overflow, nonfinite = 0.0, 0, 0, 0, 0
    t0 = time.perf_counter()
    for step, (images, targets, n_bad) in enumerate(loader, start=1):
        if max_steps is not None and step > max_steps:
            break
        skipped += n_bad
        empty = len(images) == 0  # every image of the batch was unreadable
        value = 0.0
        if not empty:
            images = images.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            if mixup_fn is not None and len(images) > 1:
                if len(images) % 2:  # timm's Mixup needs an even batch; drop one sample
                    images, targets = images[:-1], targets[:-1]
                images, targets = mixup_fn(images, targets)
            with autocast(device, amp_dtype):
                outputs = model(images)
                loss = criterion(images, outputs, targets)
            value = float(loss.detach())
        # Every rank skips together, so DDP's collective backward never waits for a rank that skipped.
        any_empty, any_bad = _all_reduce(
            [float(empty), 0.0 if math.isfinite(value) else 1.0], device, dist.ReduceOp.MAX
        )
        optimizer.zero_grad(set_to_none=True)
        if any_empty:
            continue
        if any_bad:
            nonfinite += 1
            guard.observe(False, epoch, step, f"loss {value}")
            continue
        result = _backward_step(loss, model, optimizer, scaler, clip_grad, guard, epoch, step)
        overflow += result == "overflow"
        if result == "nonfinite":
            nonfinite += 1
            continue
        num_updates += 1
        if model_ema is not None:
            model_ema.update(model, step=num_updates)
        if lr_scheduler is not None:
            lr_scheduler.step_update(num_updates=num_updates)
        loss_sum += value * len(images)
        seen += len(images)
        elapsed = time.perf_counter() - t0
        lr = optimizer.param_groups[-1]["lr"]
        log.update(step, f"loss {loss_sum / max(seen, 1):.4f} lr {lr:.2e} {seen / elapsed:.1f} img/s")
    log.stop()
    elapsed = time.perf_counter() - t0
    loss_sum, seen_all, skipped, overflow = _all_reduce([loss_sum, seen, skipped, overflow], device)
    return {
        "train_loss": loss_sum / max(seen_all, 1),
        "lr": max(g["lr"] for g in optimizer.param_groups),
        "train_images": int(seen_all),
        "img_per_s": seen_all / elapsed if elapsed > 0 else 0.0,
        "epoch_time_s": elapsed,
        "skipped_images": int(skipped),
        "overflow_steps": int(overflow),
        "nonfinite_steps": nonfinite,
        "num_updates": num_updates,
    }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    *,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    log: StepLog | None = None,
) -> dict[str, float]:
    """Cross-entropy, top-1 and top-5 (in %) over every image of ``loader``, summed over ranks."""
    model.eval()
    log = log or StepLog(False)
    log.start("eval", len(loader))  # type: ignore[arg-type]
    loss_sum, top1, top5, n, skipped = 0.0, 0, 0, 0, 0
    for step, (images, targets, n_bad) in enumerate(loader, start=1):
        skipped += n_bad
        if len(images) == 0:
            continue
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            logits = model(images)
        logits = logits.float()
        loss_sum += float(nn.functional.cross_entropy(logits, targets, reduction="sum"))
        c1, c5 = accuracy_counts(logits, targets, (1, 5))
        top1, top5, n = top1 + c1, top5 + c5, n + len(images)
        log.update(step, f"top-1 {100.0 * top1 / n:.2f}%")
    log.stop()
    loss_sum, top1, top5, n, skipped = _all_reduce([loss_sum, top1, top5, n, skipped], device)
    return {
        "val_loss": loss_sum / max(n, 1),
        "top1": 100.0 * top1 / max(n, 1),
        "top5": 100.0 * top5 / max(n, 1),
        "val_images": int(n),
        "val_skipped_images": int(skipped),
    }
