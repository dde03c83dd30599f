"""``t2t train`` / ``python -m t2tvit.train``: train, fine-tune or evaluate a T2T-ViT (or any timm model).

Launch with ``torchrun`` for several processes or nodes (DDP over NCCL on GPUs, gloo on CPU);
a plain ``python -m t2tvit.train`` is one process. The flags follow the official T2T-ViT
trainer where they overlap, with its paper recipe as the defaults.

The file is the wiring (DeiT's ``main.py``): parse, build, loop. The loop itself is
:mod:`t2tvit.engine`; checkpoints are written by :class:`CheckpointSaver`.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as _dt
import json
import os
import random
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .checkpoint import read_checkpoint, recorded_args
from .config import config_parser, parse_command, parse_config, recipe_text
from .errors import CheckpointError, ConfigError, T2TError
from .faults import interrupt_note, interrupts_deferred, output_dir
from .train_config import TrainConfig

__all__ = [
    "CheckpointSaver",
    "agree",
    "apply_sync_bn",
    "atomic_save",
    "backend_settings",
    "build_parser",
    "build_transforms",
    "data_config",
    "label_loss",
    "main",
    "param_groups",
    "parse_args",
    "run",
    "TrainConfig",
]

CHECKPOINT_VERSION = 1


# --------------------------------------------------------------------------- arguments


def build_parser() -> argparse.ArgumentParser:
    """``t2t train``'s command line, generated from :class:`~t2tvit.train_config.TrainConfig`'s fields."""
    return config_parser(TrainConfig)


def parse_args(argv: Sequence[str] | None = None, config_class: type[TrainConfig] = TrainConfig) -> TrainConfig:
    """The settings of a command line; ``--config`` values become defaults that explicit flags override."""
    return parse_config(config_class, argv)


# --------------------------------------------------------------------------- distributed


@dataclass
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_arg: str | None, backend: str | None = None) -> Dist:
    """Join the torchrun process group when launched by torchrun (NCCL on GPUs, gloo on CPU, or ``backend``).

    With gloo, more processes than GPUs share them round-robin (a DDP check on one GPU); NCCL
    refuses two ranks on one device, so that case is a one-sentence error, not NCCL's.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    want = device_arg or ("cuda" if torch.cuda.is_available() else "cpu")
    if want == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    if want == "cpu" and backend == "nccl":
        raise ConfigError("--dist-backend nccl needs CUDA GPUs; use --dist-backend gloo on CPU")
    backend = backend or ("nccl" if want == "cuda" else "gloo")
    if want == "cuda":
        count = torch.cuda.device_count()
        if local_rank >= count and backend == "nccl":
            raise ConfigError(
                f"local rank {local_rank} has no GPU of its own ({count} visible) and NCCL cannot share one; "
                "launch at most one process per GPU, or pass --dist-backend gloo"
            )
        index = local_rank % count
        torch.cuda.set_device(index)
        device = torch.device("cuda", index)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return Dist(rank, world, local_rank, device)


def agree(d: Dist, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` on every rank, raising the same one-sentence error on every rank if any rank failed.

    A user error found on one rank alone (rank 0's check of the output folder, a ``--resume`` or
    ``--teacher-path`` file another node cannot read) would otherwise end that rank while the
    others wait in DDP's first collective until the backend's timeout (10 minutes with NCCL).
    ``fn`` must run the same collectives on every rank before it can raise.
    """
    failure: T2TError | None = None
    try:
        result = fn(*args, **kwargs)
    except T2TError as e:
        failure, result = e, None
    if not d.distributed:
        if failure is not None:
            raise failure
        return result
    verdicts: list[Any] = [None] * d.world_size
    mine = None if failure is None else (type(failure).__name__, str(failure))
    dist.all_gather_object(verdicts, mine)
    for rank, verdict in enumerate(verdicts):
        if verdict is not None:
            kind, message = verdict
            where = "" if rank == 0 or d.world_size == 1 else f"on rank {rank}: "
            error = CheckpointError if kind == "CheckpointError" else ConfigError
            raise error(where + message)
    return result


def _broadcast(obj: Any, d: Dist) -> Any:
    if not d.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# --------------------------------------------------------------------------- model and optimiser


def _is_t2t(name: str) -> bool:
    from .models import list_variants

    return name in list_variants()


def build_model(args: TrainConfig, num_classes: int) -> nn.Module:
    """The model named by ``--model`` (T2T-ViT or any timm model), with weights from
    ``--finetune`` / ``--initial-checkpoint`` when given."""
    from .models.factory import make_model

    t2t = _is_t2t(args.model)
    # --finetune: another class count gets a fresh head (a timm model's always does); --initial-checkpoint
    # must fit, head included.
    head = ("auto" if t2t else "new") if args.finetune else "keep"
    model, _ = make_model(
        args.model,
        checkpoint=args.finetune or args.initial_checkpoint,
        num_classes=num_classes,
        img_size=args.img_size if t2t else None,
        head=head,
        drop_path_rate=args.drop_path,
        drop_rate=args.drop,
    )
    return model


def _classifier_prefix(model: nn.Module) -> str:
    for name, module in model.named_modules():
        if module is model.get_classifier():
            return name.split(".")[0]
    return "head"


def param_groups(model: nn.Module, weight_decay: float, backbone_lr_scale: float | None = None) -> list[dict]:
    """Parameter groups: no weight decay on 1-D tensors, biases and ``no_weight_decay()`` names
    (cls/dist tokens, position table); frozen tensors left out; with ``backbone_lr_scale``,
    everything but the classifier head(s) gets ``lr_scale`` (read by timm's schedulers)."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    head_prefixes = {_classifier_prefix(model)}
    if hasattr(model, "head_dist"):
        head_prefixes.add("head_dist")
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = not (param.ndim <= 1 or name.endswith(".bias") or name in skip)
        head = name.split(".")[0] in head_prefixes
        groups.setdefault((decay, head), []).append(param)
    out = []
    for (decay, head), params in sorted(groups.items()):
        g: dict[str, Any] = {"params": params, "weight_decay": weight_decay if decay else 0.0}
        if backbone_lr_scale is not None:
            g["lr_scale"] = 1.0 if head else backbone_lr_scale
        out.append(g)
    return out


# --------------------------------------------------------------------------- checkpoints


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    A crash or kill mid-write leaves the previous file untouched (rename is atomic on POSIX)
    and at most a ``.tmp`` file, which is removed on the next successful write. Ctrl-C during the
    write lets it finish, then interrupts.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with interrupts_deferred():
        try:
            with open(tmp, "wb") as f:
                torch.save(obj, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()


def _link_or_copy(src: Path, dst: Path) -> None:
    """Atomically make ``dst`` hold the same bytes as ``src`` (a hard link where possible)."""
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:
        import shutil

        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


class CheckpointSaver:
    """Writes ``checkpoint-EPOCH.pth`` (keeps the newest ``keep``), ``last.pth`` and ``best.pth``."""

    def __init__(self, folder: Path, keep: int = 3):
        self.folder, self.keep = folder, keep

    def save(self, state: dict[str, Any], epoch: int, is_best: bool) -> Path:
        path = self.folder / f"checkpoint-{epoch}.pth"
        atomic_save(state, path)
        _link_or_copy(path, self.folder / "last.pth")
        if is_best:
            _link_or_copy(path, self.folder / "best.pth")
        epochs = sorted(int(p.stem.split("-")[1]) for p in self.folder.glob("checkpoint-*.pth"))
        for old in epochs[: max(0, len(epochs) - self.keep)]:
            (self.folder / f"checkpoint-{old}.pth").unlink(missing_ok=True)
        return path


def _rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """This process's random generators; of CUDA, only the device this rank trains on.

    One state per rank, not one per visible device: a run resumed on another layout (1 node of 8
    GPUs, then 2 of 4) gives each rank the state it saved, whatever its device index now is.
    """
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device is not None and device.type == "cuda" else None,
    }


def _cuda_rng_for(saved: Any, index: int) -> torch.Tensor | None:
    """The CUDA generator state to restore on device ``index`` from a checkpoint's ``saved`` entry.

    Checkpoints since this fix hold this rank's one state; older ones held a list, one per device
    visible to the process (all of them under torchrun), whose ``index``-th entry is this rank's
    when it exists.
    """
    if isinstance(saved, torch.Tensor):
        return saved
    if isinstance(saved, (list, tuple)) and 0 <= index < len(saved):
        return saved[index]
    return None


def _set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if device is not None and device.type == "cuda":
        cuda = _cuda_rng_for(state.get("cuda"), device.index or 0)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)


# --------------------------------------------------------------------------- data


def _data_root(args: TrainConfig) -> Path:
    from .data import dataset_path

    if args.data is None:
        raise ConfigError("give a dataset folder (DATA/train, DATA/val) or 'digits' for the bundled dataset")
    return dataset_path(args.data)


def data_config(args: TrainConfig, model: nn.Module) -> dict[str, Any]:
    """timm's data config of ``model`` at ``--img-size`` (mean, std, interpolation, crop_pct),
    with ``--interpolation`` / ``--crop-pct`` overrides: what the loaders normalise with."""
    from timm.data import resolve_data_config

    overrides = {"input_size": (3, args.img_size, args.img_size)}
    if args.interpolation:
        overrides["interpolation"] = args.interpolation
    if args.crop_pct:
        overrides["crop_pct"] = args.crop_pct
    return resolve_data_config(overrides, model=model)


def _datasets(root: Path) -> tuple[Any, Any]:
    """The train and val image folders (listed once; transforms are set by :func:`_set_transforms`)."""
    from .data import SafeImageFolder, find_split

    train = SafeImageFolder(find_split(root, "train"))
    val = SafeImageFolder(find_split(root, "val"), class_to_idx=train.class_to_idx)
    return train, val


def _loader(dataset: Any, args: TrainConfig, d: Dist, *, training: bool) -> Any:
    """The loader of ``dataset`` for this rank: ``args``' batch size and workers; a training loader shuffles,
    seeded by ``--seed``."""
    from .data import build_loader

    return build_loader(
        dataset,
        args.batch_size,
        training=training,
        workers=args.workers,
        rank=d.rank,
        world_size=d.world_size,
        seed=args.seed if training else 0,
        pin_memory=d.device.type == "cuda",
    )


def build_transforms(args: TrainConfig, cfg: dict[str, Any]) -> tuple[Any, Any]:
    """The trainer's ``(train, eval)`` transforms for ``args`` and the model's data config ``cfg``.

    timm's training augmentation (crop, flip, RandAugment ``--aa``, colour jitter, random
    erasing; its ops repaired for today's Pillow by :func:`t2tvit.data.build_transform`) and the
    model's eval resize/crop, both normalised as the model expects. Public so that tests and
    tools apply exactly what ``t2t train`` applies.
    """
    from .data import build_transform, eval_transform_for

    train = build_transform(
        True,
        args.img_size,
        mean=cfg["mean"],
        std=cfg["std"],
        interpolation=cfg["interpolation"],
        auto_augment=args.aa,
        re_prob=args.reprob,
        hflip=args.hflip,
        scale=args.scale,
        color_jitter=args.color_jitter or None,
    )
    return train, eval_transform_for(cfg, args.img_size)


def _set_transforms(args: TrainConfig, cfg: dict[str, Any], train: Any, val: Any) -> None:
    train_transform, val.transform = build_transforms(args, cfg)
    if train is not None:
        train.transform = train_transform


# --------------------------------------------------------------------------- the run


def _amp_dtype(args: TrainConfig) -> torch.dtype | None:
    if not args.amp:
        return None
    return torch.bfloat16 if args.amp_dtype == "bf16" else torch.float16


def _resolve_output(args: TrainConfig, d: Dist) -> Path:
    if args.output:
        out = Path(args.output)
    elif args.resume:
        out = Path(args.resume).resolve().parent
    else:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path("runs") / "train" / f"{args.model}-{stamp}"
    out = Path(_broadcast(str(out), d))
    if d.main:
        if (out / "last.pth").exists() and not args.resume:
            raise ConfigError(
                f"{out} already holds a run (last.pth); pass --resume {out / 'last.pth'} to continue it "
                "or choose another --output"
            )
    return out


def _resume_note(out: Path) -> str:
    """What an interrupted run left: the checkpoint to resume from, or nothing (its folder is removed)."""
    last = out / "last.pth"
    if last.is_file():
        return f"resume with --resume {last}"
    return "no checkpoint was written yet, so there is nothing to resume"


def _ranks_digest(model: nn.Module, d: Dist) -> list[list[float]]:
    """Per-rank (sum, sum of squares, sum of |x|) over all weights, gathered on every rank."""
    with torch.no_grad():
        params = [p.detach().double() for p in model.state_dict().values() if p.is_floating_point()]
        mine = torch.tensor(
            [
                sum(float(p.sum()) for p in params),
                sum(float((p * p).sum()) for p in params),
                sum(float(p.abs().sum()) for p in params),
            ],
            dtype=torch.float64,
            device=d.device,
        )
    if not d.distributed:
        return [mine.tolist()]
    everyone = [torch.zeros_like(mine) for _ in range(d.world_size)]
    dist.all_gather(everyone, mine)
    return [t.tolist() for t in everyone]


def evaluate_checkpoint(args: TrainConfig, d: Dist) -> dict[str, float]:
    """``--eval-checkpoint``: top-1/top-5 of a checkpoint (its EMA weights when it has them)."""
    from .engine import SkipGuard, StepLog, evaluate

    root = _data_root(args)
    saved = recorded_args(read_checkpoint(args.eval_checkpoint))
    if args.model == type(args).default("model") and saved.get("model"):
        args.model = saved["model"]  # the checkpoint knows its architecture
    if saved.get("img_size") and args.img_size == type(args).default("img_size"):
        args.img_size = saved["img_size"]
    _, val = _datasets(root)
    args.initial_checkpoint, args.finetune = args.eval_checkpoint, None
    model = build_model(args, args.num_classes or saved.get("num_classes") or len(val.classes)).to(d.device)
    _set_transforms(args, data_config(args, model), None, val)
    loader = _loader(val, args, d, training=False)
    metrics = evaluate(
        model,
        loader,
        device=d.device,
        amp_dtype=_amp_dtype(args),
        log=StepLog(d.main),
        skip_guard=SkipGuard(args.max_skipped_fraction),
    )
    if d.main:
        skipped = _skip_note(metrics, "val_", "")
        print(
            f"{args.eval_checkpoint}: top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%  "
            f"loss {metrics['val_loss']:.4f}  ({metrics['val_images']} images"
            f"{'; skipped ' + skipped if skipped else ''})"
        )
    return metrics


def label_loss(args: TrainConfig, mixup_active: bool) -> nn.Module:
    """The ``loss(logits, targets)`` against labels: soft-target cross-entropy for mixed-up
    targets, label smoothing when ``--smoothing`` > 0, else plain cross-entropy."""
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if mixup_active:
        return SoftTargetCrossEntropy()
    if args.smoothing > 0:
        return LabelSmoothingCrossEntropy(args.smoothing)
    return nn.CrossEntropyLoss()


def _read_resume(args: TrainConfig) -> dict[str, Any] | None:
    """The checkpoint ``--resume`` names, checked to be this trainer's and of the same model."""
    if not args.resume:
        return None
    state = read_checkpoint(args.resume)
    if not isinstance(state, dict) or "optimizer" not in state:
        raise CheckpointError(f"{args.resume} is not a training checkpoint of this trainer; use --initial-checkpoint")
    if state["args"].get("model") != args.model:
        raise CheckpointError(
            f"{args.resume} was trained as {state['args'].get('model')}, not {args.model}; pass --model "
            f"{state['args'].get('model')}"
        )
    return state


@dataclass
class _Training:
    """What one run builds before its first epoch and updates as it goes (the loop's own state)."""

    model: nn.Module
    optimizer: Any
    lr_scheduler: Any
    num_epochs: int
    model_ema: Any
    scaler: Any
    mixup_fn: Any
    criterion: Any
    start_epoch: int = 0
    best: float | None = None
    num_updates: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def _build_training(
    args: TrainConfig, model: nn.Module, num_classes: int, steps: int, criterion_factory: Any
) -> _Training:
    """Optimizer, schedule, EMA, scaler, mixup and loss, as ``args`` says."""
    from timm.data import Mixup
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from timm.utils import ModelEmaV3

    from .engine import LabelLoss

    groups = param_groups(model, args.weight_decay, args.backbone_lr_scale if args.finetune else None)
    optimizer = create_optimizer_v2(
        groups, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay, momentum=args.momentum
    )
    amp_dtype = _amp_dtype(args)
    lr_scheduler, num_epochs = create_scheduler_v2(
        optimizer,
        sched=args.sched,
        num_epochs=args.epochs,
        warmup_epochs=args.warmup_epochs,
        cooldown_epochs=args.cooldown_epochs,
        warmup_lr=args.warmup_lr,
        min_lr=args.min_lr,
        updates_per_epoch=steps,
        step_on_epochs=not args.sched_on_updates,
    )
    mixup_active = args.mixup > 0 or args.cutmix > 0
    mixup_fn = None
    if mixup_active:
        mixup_fn = Mixup(
            mixup_alpha=args.mixup,
            cutmix_alpha=args.cutmix,
            prob=args.mixup_prob,
            switch_prob=args.mixup_switch_prob,
            label_smoothing=args.smoothing,
            num_classes=num_classes,
        )
    if criterion_factory is not None:
        criterion = criterion_factory(args, model, mixup_active)
    else:
        criterion = LabelLoss(label_loss(args, mixup_active))
    return _Training(
        model=model,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        num_epochs=num_epochs,
        model_ema=ModelEmaV3(model, decay=args.model_ema_decay) if args.model_ema else None,
        scaler=torch.amp.GradScaler(next(model.parameters()).device.type, enabled=amp_dtype == torch.float16),
        mixup_fn=mixup_fn,
        criterion=criterion,
    )


def _restore(t: _Training, state: dict[str, Any], steps: int, d: Dist, path: str) -> None:
    """Continue exactly where the checkpoint ``state`` stopped: weights, optimizer, schedule, RNGs."""
    t.model.load_state_dict(state["model"])
    if t.model_ema is not None and state.get("model_ema") is not None:
        t.model_ema.module.load_state_dict(state["model_ema"])
    t.optimizer.load_state_dict(state["optimizer"])
    t.lr_scheduler.load_state_dict(state["scheduler"])
    if state.get("scaler"):
        t.scaler.load_state_dict(state["scaler"])
    t.start_epoch = state["epoch"] + 1
    t.best = state.get("best_metric")
    t.num_updates = state.get("num_updates", t.start_epoch * steps)
    t.history = list(state.get("history", []))
    rng = state.get("rng_per_rank", {}).get(d.rank)
    if rng is not None:
        _set_rng_state(rng, d.device)
    t.lr_scheduler.step(t.start_epoch)
    t.lr_scheduler.step_update(t.num_updates)
    if d.main:
        print(f"resumed {path} at epoch {t.start_epoch}")


@contextlib.contextmanager
def backend_settings(args: TrainConfig, device: torch.device) -> Iterator[None]:
    """TF32, cuDNN autotuning and deterministic kernels as ``args`` says, restored afterwards.

    ``--tf32`` unset becomes True on CUDA (timm's and DeiT's default: fp32 matmuls and convolutions
    in TF32, ~10 bits of mantissa, several times faster on Ampere and later) and False elsewhere;
    ``args.tf32`` and ``args.cudnn_benchmark`` then hold what was used, so args.json and the
    checkpoint record it. ``--deterministic`` turns off cuDNN autotuning and asks torch for
    deterministic kernels (ops without one warn, naming themselves); cuBLAS needs
    ``CUBLAS_WORKSPACE_CONFIG`` before its first call, so it is set here, before any CUDA work.
    """
    cuda = device.type == "cuda"
    if args.tf32 is None:
        args.tf32 = cuda
    args.cudnn_benchmark = cuda and not args.deterministic
    saved = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    )
    try:
        if args.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.deterministic = True
        if cuda:
            # The legacy switches timm's train.py sets; torch 2.15 maps them onto fp32_precision.
            torch.backends.cuda.matmul.allow_tf32 = bool(args.tf32)
            torch.backends.cudnn.allow_tf32 = bool(args.tf32)
            torch.backends.cudnn.benchmark = args.cudnn_benchmark
        yield
    finally:
        (
            torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32,
            torch.backends.cudnn.benchmark,
            torch.backends.cudnn.deterministic,
        ) = saved[:4]
        torch.use_deterministic_algorithms(saved[4], warn_only=saved[5])
        if saved[6] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


def apply_sync_bn(model: nn.Module, args: TrainConfig, d: Dist) -> nn.Module:
    """``--sync-bn``: BatchNorm layers become ``SyncBatchNorm`` (statistics over every rank's batch) under DDP.

    The layers keep their parameters and buffers (the optimizer and EMA built later see the same
    tensors). One process has nothing to synchronise, as in timm; torch's SyncBatchNorm runs on
    GPUs only, so a CPU run under DDP is refused.
    """
    if not args.sync_bn or not d.distributed:
        return model
    if d.device.type != "cuda":
        raise ConfigError("--sync-bn needs CUDA GPUs (torch's SyncBatchNorm does not run on CPU); drop --sync-bn")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def _wrap(model: nn.Module, args: TrainConfig, d: Dist) -> nn.Module:
    """DDP across processes, then ``torch.compile`` (after DDP, so the compiler sees DDP's buckets)."""
    train_model: nn.Module = model
    if d.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            train_model, device_ids=[d.device.index] if d.device.type == "cuda" else None
        )
    if args.compile:
        train_model = torch.compile(train_model)
    return train_model


def _tensorboard(args: TrainConfig, d: Dist, out: Path) -> Any:
    if not (args.tensorboard and d.main):
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(str(out / "tensorboard"))


def _checkpoint_state(
    t: _Training,
    args: TrainConfig,
    epoch: int,
    row: dict[str, Any],
    rngs: list[Any],
    num_classes: int,
    classes: Any,
) -> dict[str, Any]:
    return {
        "version": CHECKPOINT_VERSION,
        "model": t.model.state_dict(),
        "model_ema": t.model_ema.module.state_dict() if t.model_ema is not None else None,
        "optimizer": t.optimizer.state_dict(),
        "scheduler": t.lr_scheduler.state_dict(),
        "scaler": t.scaler.state_dict() if t.scaler.is_enabled() else None,
        "epoch": epoch,
        "num_updates": t.num_updates,
        "best_metric": t.best,
        "metrics": row,
        "history": t.history,
        "rng_per_rank": dict(enumerate(rngs)),
        "args": args.record() | {"num_classes": num_classes},
        "classes": classes,
    }


def _epoch_line(row: dict[str, Any]) -> str:
    msg = (
        f"epoch {row['epoch']}: train loss {row['train_loss']:.4f}  val top-1 {row['top1']:.2f}%  "
        f"top-5 {row['top5']:.2f}%  {row['img_per_s']:.1f} img/s"
    )
    if "ema_top1" in row:
        msg += f"  EMA top-1 {row['ema_top1']:.2f}%"
    skipped = "; ".join(filter(None, (_skip_note(row, "", "train"), _skip_note(row, "val_", "val"))))
    if skipped:
        msg += f"  (images skipped: {skipped}; each file named once in a warning)"
    return msg


def run(args: TrainConfig, criterion_factory: Any = None) -> dict[str, Any]:
    """Train as ``args`` says and return the final summary (also written to ``summary.json``).

    ``criterion_factory(args, model, mixup_active) -> loss`` replaces the label loss; the
    distillation command plugs its teacher in here, so there is one loop.
    """
    if not 0.0 <= args.max_skipped_fraction <= 1.0:
        raise ConfigError(
            f"--max-skipped-fraction {args.max_skipped_fraction:g} is not a fraction; give a value from 0 "
            "(stop on skipped samples) to 1 (never stop)"
        )
    d = setup_distributed(args.device, args.dist_backend)
    with backend_settings(args, d.device):
        if args.eval_checkpoint:
            return evaluate_checkpoint(args, d)
        return _train(args, d, criterion_factory)


def _train(args: TrainConfig, d: Dist, criterion_factory: Any) -> dict[str, Any]:

    if args.amp and args.amp_dtype == "fp16" and d.device.type == "cpu":
        print("note: fp16 autocast on CPU is slow and partial; --amp-dtype bf16 is the CPU choice", file=sys.stderr)
    seed = args.seed + d.rank
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

    root = agree(d, _data_root, args)
    resume_state = agree(d, _read_resume, args)
    out = agree(d, _resolve_output, args, d)
    # The run folder is made now (an unwritable --output fails before any work) and removed again
    # if the run stops before writing anything but args.json: no empty folder after an early error.
    made = output_dir(out, "--output", disposable=("args.json",)) if d.main else contextlib.nullcontext(out)
    with made, interrupt_note(lambda: _resume_note(out)):
        return _train_into(args, d, out, root, resume_state, criterion_factory)


def _train_into(
    args: TrainConfig, d: Dist, out: Path, root: Path, resume_state: Any, criterion_factory: Any
) -> dict[str, Any]:
    train_set, val_set = agree(d, _datasets, root)
    num_classes = args.num_classes or len(train_set.classes)
    if num_classes < len(train_set.classes):
        raise ConfigError(f"--num-classes {num_classes} is less than the {len(train_set.classes)} class folders")
    model = agree(d, build_model, args, num_classes)
    _set_transforms(args, data_config(args, model), train_set, val_set)
    model.to(d.device)
    model = agree(d, apply_sync_bn, model, args, d)
    if getattr(model, "load_report", None) is not None and d.main:
        print(model.load_report)

    train_loader = _loader(train_set, args, d, training=True)
    val_loader = _loader(val_set, args, d, training=False)
    if len(train_loader) == 0:
        raise ConfigError(
            f"{len(train_set)} training images make no full batch of {args.batch_size} per process; lower -b"
        )
    steps = len(train_loader) if args.steps_per_epoch is None else min(len(train_loader), args.steps_per_epoch)
    t = agree(d, _build_training, args, model, num_classes, steps, criterion_factory)
    if resume_state is not None:
        _restore(t, resume_state, steps, d, args.resume)
    if d.main:
        (out / "args.json").write_text(json.dumps(args.record(), indent=2))
        print(
            f"training {args.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, "
            f"{num_classes} classes) on {len(train_set)} images, {d.world_size} process(es) on {d.device.type}, "
            f"{t.num_epochs} epochs of {steps} steps; output {out}"
        )
    guard = _epochs(t, args, d, out, train_loader, val_loader, num_classes, train_set.classes)
    return _summary(t, d, out, guard)


def _epochs(
    t: _Training,
    args: TrainConfig,
    d: Dist,
    out: Path,
    train_loader: Any,
    val_loader: Any,
    num_classes: int,
    classes: Any,
) -> Any:
    """The epoch loop: train, evaluate (EMA too), checkpoint, log; returns the non-finite guard."""
    from .data import set_epoch
    from .engine import NonFiniteGuard, SkipGuard, StepLog, TrainStep, evaluate, train_one_epoch

    train_model = _wrap(t.model, args, d)
    writer = _tensorboard(args, d, out)
    saver = CheckpointSaver(out, keep=args.keep)
    guard = NonFiniteGuard(args.max_nonfinite, min_scale=args.min_loss_scale)
    skip_guard = SkipGuard(args.max_skipped_fraction)  # one per run: each skipped file is named once
    log = StepLog(d.main, args.log_interval)
    amp_dtype = _amp_dtype(args)
    step = TrainStep(
        train_model, t.criterion, t.optimizer, d.device, amp_dtype=amp_dtype, scaler=t.scaler, mixup_fn=t.mixup_fn,
        model_ema=t.model_ema, clip_grad=args.clip_grad, lr_scheduler=t.lr_scheduler, guard=guard,
        skip_guard=skip_guard, log=log,
    )  # fmt: skip
    for epoch in range(t.start_epoch, t.num_epochs):
        set_epoch(train_loader, epoch)
        stats = train_one_epoch(
            step, train_loader, epoch=epoch, num_updates=t.num_updates, max_steps=args.steps_per_epoch
        )
        t.num_updates = int(stats.pop("num_updates"))
        t.lr_scheduler.step(epoch + 1)
        metrics = evaluate(t.model, val_loader, device=d.device, amp_dtype=amp_dtype, skip_guard=skip_guard)
        row: dict[str, Any] = {"epoch": epoch, **stats, **metrics}
        if t.model_ema is not None:
            ema_metrics = evaluate(
                t.model_ema.module, val_loader, device=d.device, amp_dtype=amp_dtype, skip_guard=skip_guard
            )
            row.update({"ema_top1": ema_metrics["top1"], "ema_top5": ema_metrics["top5"]})
        # With EMA, the EMA weights are what a checkpoint is read for (create_model prefers them),
        # so they also decide which checkpoint is best (as timm's trainer does).
        score = row.get("ema_top1", row["top1"])
        is_best = t.best is None or score > t.best
        t.best = score if is_best else t.best
        t.history.append(row)
        rngs = [_rng_state(d.device)]
        if d.distributed:
            gathered: list[Any] = [None] * d.world_size
            dist.all_gather_object(gathered, rngs[0])
            rngs = gathered
        if d.main:
            saver.save(_checkpoint_state(t, args, epoch, row, rngs, num_classes, classes), epoch, is_best)
            _append_logs(out, row, writer)
            print(_epoch_line(row), flush=True)
    if writer is not None:
        writer.close()
    return guard


def _summary(t: _Training, d: Dist, out: Path, guard: Any) -> dict[str, Any]:
    digests = _ranks_digest(t.model, d)
    summary = {
        "output": str(out),
        "epochs": t.num_epochs,
        "best_top1": t.best,  # EMA top-1 when EMA is on (what best.pth was chosen by)
        "last": t.history[-1] if t.history else None,
        "rank_weight_digests": digests,
        "ranks_in_sync": all(dg == digests[0] for dg in digests),
        "nonfinite_losses": guard.events,
    }
    if d.main:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        if not summary["ranks_in_sync"]:
            print("warning: the ranks' weights differ after training; see summary.json", file=sys.stderr)
    return summary


def _skip_note(row: dict[str, Any], prefix: str, split: str) -> str:
    """E.g. "train: 1 unreadable, 2 failed their transform", or "" when nothing was skipped."""
    why = {"unreadable": "unreadable", "transform": "failed their transform"}
    parts = [f"{row[f'{prefix}skipped_{r}']} {text}" for r, text in why.items() if row.get(f"{prefix}skipped_{r}")]
    return f"{split}: {', '.join(parts)}" if split and parts else ", ".join(parts)


def _append_logs(out: Path, row: dict[str, Any], writer: Any) -> None:
    with open(out / "log.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    csv_path = out / "summary.csv"
    new = not csv_path.exists()
    with open(csv_path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)
    if writer is not None:
        for k, v in row.items():
            if k != "epoch" and isinstance(v, (int, float)):
                writer.add_scalar(k, v, row["epoch"])


def main(
    argv: Sequence[str] | None = None,
    *,
    config_class: type[TrainConfig] = TrainConfig,
    run_fn: Any = None,
) -> int:
    """The command line of the trainer (and, with its ``config_class`` and ``run_fn``, of distillation): a
    user's mistake ends in one sentence and exit status 2; the process group is always torn down."""
    prog = config_class.PROG
    try:
        config, show = parse_command(config_class, argv)
        if show:
            print(recipe_text(config), end="")
            return 0
        (run_fn or run)(config)
    except T2TError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # also under torchrun, where t2t's own dispatch is not in the way
        print(f"{prog}: interrupted; {getattr(e, 't2t_note', '')}".rstrip("; "), file=sys.stderr, flush=True)
        return 130
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
