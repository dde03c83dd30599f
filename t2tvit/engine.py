"""One training epoch and one evaluation pass (DeiT's ``engine.py`` idea).

Both functions take everything they use as arguments (no globals), so the trainer, the
distillation command and tests drive the same loop. The loss is called as
``criterion(images, outputs, targets)``: a plain loss ignores ``images``, a distillation loss
(``compress.distill``) feeds them to its teacher. Under DDP every rank runs these functions;
metrics come back already reduced across ranks.

A batch is ``(images, targets, skipped)``: ``skipped`` lists the samples the dataset dropped
(:class:`t2tvit.data.SkippedSample`: unreadable file or failed transform), or is a plain count.
:class:`SkipGuard` names each skipped file once per run, counts them per epoch by reason, and
stops a run where so many samples fail that the data or the transform must be broken.
"""

from __future__ import annotations

import math
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .data import SKIP_REASONS
from .errors import T2TError

__all__ = [
    "LabelLoss",
    "NonFiniteGuard",
    "SkipGuard",
    "StepLog",
    "TooManySkipped",
    "TrainStep",
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
    """Counts non-finite steps; after ``max_consecutive`` in a row the run is stopped.

    A step whose loss or (without a GradScaler) gradient norm is NaN/inf is skipped (no
    optimizer step) and reported with its epoch and step, so one bad batch does not end a
    long run, but a diverged run does not burn GPU hours producing NaN either.

    With fp16 a GradScaler skips overflowing steps itself and halves its scale, with no floor:
    gradients that are non-finite at every scale drive the scale to 0 and every later step is
    skipped while the run seems to go on. So an overflow counts as non-finite once the scale
    after it is below ``min_scale`` or once ``max_overflows`` overflows came in a row (a healthy
    run overflows a few times in a row at its start, then once per growth interval).
    """

    max_consecutive: int = 10
    min_scale: float = 1.0
    max_overflows: int = 50
    consecutive: int = 0
    total: int = 0
    consecutive_overflows: int = 0
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

    def observe_scaler(self, overflowed: bool, scale: float, epoch: int, step: int) -> bool:
        """Record one fp16 step: ``overflowed`` if the GradScaler skipped it, ``scale`` its scale after ``update()``.

        Returns whether the step counted as non-finite. Every rank sees the same verdict (DDP has
        averaged the gradients the scaler checked), so all ranks stop at the same step.
        """
        if not overflowed:
            self.consecutive_overflows = 0
            self.observe(True, epoch, step)
            return False
        self.consecutive_overflows += 1
        if scale < self.min_scale:
            self.observe(False, epoch, step, f"fp16 gradients (loss scale {scale:g} < {self.min_scale:g})")
            return True
        if self.consecutive_overflows >= self.max_overflows:
            self.observe(False, epoch, step, f"fp16 gradients ({self.consecutive_overflows} overflows in a row)")
            return True
        return False


class TooManySkipped(T2TError):
    """So many samples of an epoch were skipped that the data or the transform is broken: the run stops."""


class SkipGuard:
    """Names each skipped sample's file once per run, counts skips by reason, and stops a broken run.

    One bad file among millions, or a library augmentation that fails on one sample in a
    thousand, must not end a multi-day run: such samples are dropped from their batch and
    counted. But a genuine bug (a transform that fails on every image, a dataset of corrupt
    files) must not train for days on nothing either, so the run stops with one sentence when
    more than ``max_fraction`` of the samples tried in an epoch (all ranks together) were
    skipped. The training loop checks this after every step once ``min_samples`` samples were
    tried (1,000 is enough that a dataset with 5% bad files never trips a 10% limit by chance:
    that is 7 standard deviations), and every pass checks it at its end. Every rank decides on
    the same all-reduced counts, so all ranks stop together and none waits in a collective.

    The warning naming a file is issued in the process that iterates the loader, not in a
    loader worker: workers are recreated every epoch and would forget what they had named.
    """

    def __init__(self, max_fraction: float = 0.1, min_samples: int = 1000):
        self.max_fraction, self.min_samples = max_fraction, min_samples
        self.named: set[str] = set()
        self.last: str | None = None

    def note(self, skipped: int | Sequence[Any]) -> Counter[str]:
        """Count one batch's skipped samples by reason, warning once for each file not named before."""
        if isinstance(skipped, int):  # a plain count from a loader without records
            return Counter({"unreadable": skipped} if skipped else {})
        counts: Counter[str] = Counter()
        for sample in skipped:
            counts[sample.reason] += 1
            self.last = f"{sample.path} ({sample.error})"
            if sample.path not in self.named:
                self.named.add(sample.path)
                warnings.warn(str(sample), RuntimeWarning, stacklevel=3)
        return counts

    def check(self, skipped: float, tried: float, what: str, final: bool) -> None:
        """Stop if more than ``max_fraction`` of the ``tried`` samples of ``what`` ("training epoch 3") were skipped.

        Before the end of a pass (``final`` False) only once ``min_samples`` were tried, so a few
        bad files early in an epoch cannot stop a healthy run.
        """
        if tried <= 0 or (not final and tried < self.min_samples) or skipped <= self.max_fraction * tried:
            return
        last = f"; last on this rank: {self.last}" if self.last else ""
        raise TooManySkipped(
            f"stopped: {int(skipped)} of the {int(tried)} samples tried in {what} were skipped "
            f"({100 * skipped / tried:.0f}%, more than --max-skipped-fraction {self.max_fraction:g}){last}; "
            "fix the data or the transform named in the warnings, or raise --max-skipped-fraction"
        )


@dataclass
class _EpochSkips:
    """One training epoch's skipped samples: per reason on this rank, and all ranks' running totals."""

    guard: SkipGuard
    what: str  # e.g. "training epoch 3", for the guard's message
    counts: Counter[str] = field(default_factory=Counter)
    skipped: float = 0.0
    tried: float = 0.0

    def agree(self, dropped: int | Sequence[Any], n_good: int, device: torch.device) -> bool:
        """Count a batch's skipped samples and agree with every rank whether any rank's batch is empty.

        Agreed before the forward pass: DDP's forward runs collectives of its own (the bucket rebuild
        after the first backward; a buffer broadcast every step for models with buffers, e.g.
        BatchNorm), so a rank that skipped it would leave the others waiting. Every rank sees the same
        totals, so the skip guard stops all ranks at the same step.
        """
        batch = self.guard.note(dropped)
        self.counts.update(batch)
        n_skipped = sum(batch.values())
        any_empty, step_skipped, step_tried = _all_reduce(
            [float(n_good == 0), float(n_skipped), float(n_good + n_skipped)], device
        )
        self.skipped, self.tried = self.skipped + step_skipped, self.tried + step_tried
        self.guard.check(self.skipped, self.tried, self.what, final=False)
        return bool(any_empty)


def _skip_metrics(prefix: str, counts: Sequence[float]) -> dict[str, int]:
    """``{prefix}skipped_images`` and one ``{prefix}skipped_{reason}`` per reason, from per-reason counts."""
    out = {f"{prefix}skipped_images": int(sum(counts))}
    out |= {f"{prefix}skipped_{reason}": int(n) for reason, n in zip(SKIP_REASONS, counts, strict=True)}
    return out


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
    """Backward and optimizer step; ``"ok"``, ``"overflow"`` (the fp16 scaler skipped it, normal),
    ``"diverging"`` (an overflow at a collapsed scale or after too many in a row: counted by the guard) or
    ``"nonfinite"`` (non-finite gradients without a scaler: the weights were left untouched)."""
    if scaler is not None and scaler.is_enabled():
        scaler.scale(loss).backward()
        if clip_grad:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        scaler.step(optimizer)
        # The scaler's own verdict (found_inf, all-reduced gradients: the same on every rank), read
        # before update() clears it. Comparing scales instead misses the collapsed case: 0 halved is 0.
        found = getattr(scaler, "_found_inf_per_device", None)  # torch 2.x; a private helper, so checked
        scale = scaler.get_scale()
        overflowed = any(bool(v) for v in found(optimizer).values()) if found else None
        scaler.update()
        if overflowed is None:
            overflowed = scaler.get_scale() < scale or scale == 0.0
        if guard.observe_scaler(overflowed, scaler.get_scale(), epoch, step):
            return "diverging"  # an overflow the guard counts as non-finite (the scaler skipped it too)
        return "overflow" if overflowed else "ok"
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


def _forward_loss(
    model: nn.Module,
    criterion: Callable[[torch.Tensor, Any, torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    targets: torch.Tensor,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    mixup_fn: Callable | None,
) -> tuple[torch.Tensor, int]:
    """One batch on ``device``, mixed up, through the model and the loss; returns the loss and the
    number of images it covers (timm's Mixup needs an even batch, so an odd one drops a sample)."""
    images = images.to(device, non_blocking=True)
    targets = targets.to(device, non_blocking=True)
    if mixup_fn is not None and len(images) > 1:
        if len(images) % 2:
            images, targets = images[:-1], targets[:-1]
        images, targets = mixup_fn(images, targets)
    with autocast(device, amp_dtype):
        outputs = model(images)
        loss = criterion(images, outputs, targets)
    return loss, len(images)


class _PeakMemory:
    """On CUDA, ``peak_mem_mib``: the largest rank's peak of tensors allocated since construction."""

    def __init__(self, device: torch.device):
        self.device = device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def metrics(self) -> dict[str, float]:
        if self.device.type != "cuda":
            return {}
        (peak,) = _all_reduce([torch.cuda.max_memory_allocated(self.device) / 2**20], self.device, dist.ReduceOp.MAX)
        return {"peak_mem_mib": round(peak, 1)}


def _after_update(model: nn.Module, model_ema: Any, lr_scheduler: Any, num_updates: int) -> int:
    """The EMA and the per-update LR schedule follow optimizer update ``num_updates``; returns it."""
    if model_ema is not None:
        model_ema.update(model, step=num_updates)
    if lr_scheduler is not None:
        lr_scheduler.step_update(num_updates=num_updates)
    return num_updates


def _progress_info(loss_sum: float, seen: int, optimizer: torch.optim.Optimizer, elapsed: float) -> str:
    lr = optimizer.param_groups[-1]["lr"]
    return f"loss {loss_sum / max(seen, 1):.4f} lr {lr:.2e} {seen / max(elapsed, 1e-9):.1f} img/s"


@dataclass
class TrainStep:
    """What every optimisation step of a run uses: the model and its loss, optimizer and precision, what
    follows an update (EMA, per-update schedule), and the run's watchers (non-finite steps, skipped samples,
    progress). The same object serves every epoch of the run.

    ``scaler`` is a GradScaler for fp16 autocast (bf16 needs none); ``criterion(images, outputs, targets)``
    (:class:`LabelLoss` wraps a plain loss; ``compress.distill`` gives the distillation one).
    """

    model: nn.Module
    criterion: Callable[[torch.Tensor, Any, torch.Tensor], torch.Tensor]
    optimizer: torch.optim.Optimizer
    device: torch.device
    amp_dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None
    mixup_fn: Callable | None = None
    model_ema: Any = None
    clip_grad: float | None = None
    lr_scheduler: Any = None  # stepped per update (``step_update``), when it has one
    guard: NonFiniteGuard = field(default_factory=NonFiniteGuard)
    skip_guard: SkipGuard = field(default_factory=SkipGuard)
    log: StepLog = field(default_factory=lambda: StepLog(False))


def train_one_epoch(
    step: TrainStep, loader: Iterable, *, epoch: int, num_updates: int = 0, max_steps: int | None = None
) -> dict[str, float]:
    """Train for one pass over ``loader`` (at most ``max_steps`` batches) with ``step``'s parts; returns
    rank-averaged metrics and the update count after it (``num_updates`` before it).

    A step whose fp16 gradients overflow is skipped by the scaler and counted in ``overflow_steps`` (and by
    ``step.guard`` once the scale collapses). A non-finite loss, or a batch with no usable sample on any rank,
    is agreed on by all ranks and the step skipped everywhere (so DDP's collective backward never hangs);
    non-finite ones are reported through ``step.guard``. Skipped samples are counted by reason, named once and
    limited by ``step.skip_guard``.
    """
    model, optimizer, device, guard, skip_guard, log = (
        step.model, step.optimizer, step.device, step.guard, step.skip_guard, step.log
    )  # fmt: skip
    model.train()
    total = len(loader) if max_steps is None else min(len(loader), max_steps)  # type: ignore[arg-type]
    log.start(f"epoch {epoch}", total)
    loss_sum, seen, overflow, nonfinite = 0.0, 0, 0, 0
    skips = _EpochSkips(skip_guard, f"training epoch {epoch}")
    memory = _PeakMemory(device)
    t0 = time.perf_counter()
    for n_step, (images, targets, dropped) in enumerate(loader, start=1):
        if max_steps is not None and n_step > max_steps:
            break
        any_empty = skips.agree(dropped, len(images), device)
        optimizer.zero_grad(set_to_none=True)
        if any_empty:
            continue
        loss, n_images = _forward_loss(model, step.criterion, images, targets, device, step.amp_dtype, step.mixup_fn)
        value = float(loss.detach())
        # A non-finite loss on any rank skips the backward everywhere, so DDP's collective backward
        # never waits for a rank that skipped it.
        (any_bad,) = _all_reduce([0.0 if math.isfinite(value) else 1.0], device)
        if any_bad:
            nonfinite += 1
            guard.observe(False, epoch, n_step, f"loss {value}")
            continue
        result = _backward_step(loss, model, optimizer, step.scaler, step.clip_grad, guard, epoch, n_step)
        overflow += result in ("overflow", "diverging")
        if result in ("nonfinite", "diverging"):
            nonfinite += 1
            continue
        num_updates = _after_update(model, step.model_ema, step.lr_scheduler, num_updates + 1)
        loss_sum += value * n_images
        seen += n_images
        log.update(n_step, _progress_info(loss_sum, seen, optimizer, time.perf_counter() - t0))
    log.stop()
    elapsed = time.perf_counter() - t0
    loss_sum, seen_all, overflow, *skipped = _all_reduce(
        [loss_sum, seen, overflow, *(skips.counts[r] for r in SKIP_REASONS)], device
    )
    skip_guard.check(skips.skipped, skips.tried, skips.what, final=True)
    return {
        "train_loss": loss_sum / max(seen_all, 1),
        "lr": max(g["lr"] for g in optimizer.param_groups),
        "train_images": int(seen_all),
        "img_per_s": seen_all / elapsed if elapsed > 0 else 0.0,
        "epoch_time_s": elapsed,
        **_skip_metrics("", skipped),
        "overflow_steps": int(overflow),
        "nonfinite_steps": nonfinite,
        **memory.metrics(),
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
    skip_guard: SkipGuard | None = None,
) -> dict[str, float]:
    """Cross-entropy, top-1 and top-5 (in %) over every image of ``loader``, summed over ranks.

    Skipped samples are counted by reason (``val_skipped_*``) and named once through
    ``skip_guard``, which also stops the run if more than its fraction of the pass was skipped.
    """
    model.eval()
    skip_guard = skip_guard or SkipGuard()
    log = log or StepLog(False)
    log.start("eval", len(loader))  # type: ignore[arg-type]
    loss_sum, top1, top5, n = 0.0, 0, 0, 0
    skips: Counter[str] = Counter()
    for step, (images, targets, dropped) in enumerate(loader, start=1):
        skips.update(skip_guard.note(dropped))
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
    loss_sum, top1, top5, n, *skipped = _all_reduce(
        [loss_sum, top1, top5, n, *(skips[r] for r in SKIP_REASONS)], device
    )
    skip_guard.check(sum(skipped), n + sum(skipped), "the validation pass", final=True)
    return {
        "val_loss": loss_sum / max(n, 1),
        "top1": 100.0 * top1 / max(n, 1),
        "top5": 100.0 * top5 / max(n, 1),
        "val_images": int(n),
        **_skip_metrics("val_", skipped),
    }
