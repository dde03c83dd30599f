"""The trainer's settings, :class:`TrainConfig`: every ``t2t train`` flag is a field declared here once.

Defaults are the paper's recipe (AdamW 5e-4, cosine, 10 warmup epochs, label smoothing 0.1, mixup 0.8,
cutmix 1.0, RandAugment, random erasing 0.25, drop path 0.1, EMA 0.99996); ``--config`` recipes (YAML,
bundled ones by name) set fields by name. Distillation extends it (:class:`compress.distill.DistillConfig`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .config import Config, option

__all__ = ["TrainConfig"]

MODEL, OPTIM, AUG, DEVICES, RUN = (
    "model",
    "optimisation",
    "augmentation and regularisation",
    "precision and devices",
    "run",
)


@dataclass
class TrainConfig(Config):
    """What :func:`t2tvit.train.run` trains, and how (``t2t train --help`` lists the same, with defaults)."""

    PROG: ClassVar[str] = "t2t train"
    DESCRIPTION: ClassVar[str] = (
        "Train, fine-tune or evaluate a T2T-ViT (or any timm model) on an ImageNet-style folder "
        "(DATA/train/<class>/*, DATA/val/<class>/*). DATA 'digits' is the bundled handwritten-digits "
        "dataset. Run under torchrun for several processes or nodes. Defaults are the paper's recipe "
        "(AdamW 5e-4, cosine, 10 warmup epochs, label smoothing 0.1, mixup 0.8, cutmix 1.0, "
        "RandAugment, random erasing 0.25, drop path 0.1, EMA 0.99996)."
    )
    GROUPS: ClassVar[tuple[str, ...]] = (MODEL, OPTIM, AUG, DEVICES, RUN)

    data: str | None = option(None, "dataset folder, or 'digits' (bundled)", positional=True, metavar="DATA")
    config: str | None = option(
        None, "YAML file of flag defaults (flags override)", flags=("-c", "--config"), metavar="FILE"
    )
    # model
    model: str = option("t2t_vit_14", "t2t_vit_* variant or any timm model name", group=MODEL)
    num_classes: int | None = option(None, "classes (default: the dataset's class folders)", type=int, group=MODEL)
    img_size: int = option(224, "input size; a multiple of 16 for T2T-ViT", group=MODEL)
    drop_path: float = option(0.1, "stochastic depth rate", group=MODEL)
    drop: float = option(0.0, "dropout rate", group=MODEL)
    initial_checkpoint: str | None = option(None, "start from these weights", metavar="PATH", group=MODEL)
    finetune: str | None = option(
        None,
        "start from a checkpoint of another class count / image size: head replaced, position table "
        "regenerated, backbone trained at --backbone-lr-scale x lr",
        metavar="PATH",
        group=MODEL,
    )
    backbone_lr_scale: float = option(0.1, "backbone lr multiplier with --finetune", group=MODEL)
    # optimisation
    batch_size: int = option(64, "batch size per process", flags=("-b", "--batch-size"), group=OPTIM)
    opt: str = option("adamw", "timm optimizer name", group=OPTIM)
    lr: float = option(5e-4, "peak learning rate", group=OPTIM)
    weight_decay: float = option(0.05, "weight decay (not on 1-D params or tokens)", group=OPTIM)
    momentum: float = option(0.9, "SGD momentum", group=OPTIM)
    clip_grad: float | None = option(None, "clip the gradient norm to this value", type=float, group=OPTIM)
    sched: str = option("cosine", "timm scheduler name", group=OPTIM)
    epochs: int = option(310, "epochs before cool-down", group=OPTIM)
    warmup_epochs: int = option(10, group=OPTIM)
    cooldown_epochs: int = option(10, "epochs at --min-lr after the schedule", group=OPTIM)
    sched_on_updates: bool = option(False, "update the learning rate every step, not every epoch", group=OPTIM)
    warmup_lr: float = option(1e-6, group=OPTIM)
    min_lr: float = option(1e-5, group=OPTIM)
    # augmentation and regularisation
    aa: str = option("rand-m9-mstd0.5-inc1", "RandAugment policy, or 'none'", group=AUG)
    reprob: float = option(0.25, "random erasing probability", group=AUG)
    mixup: float = option(0.8, "mixup alpha (0: off)", group=AUG)
    cutmix: float = option(1.0, "cutmix alpha (0: off)", group=AUG)
    mixup_prob: float = option(1.0, group=AUG)
    mixup_switch_prob: float = option(0.5, group=AUG)
    smoothing: float = option(0.1, "label smoothing", group=AUG)
    scale: list[float] = option([0.08, 1.0], "random-resized-crop area range", type=float, nargs=2, group=AUG)
    hflip: float = option(0.5, "horizontal flip probability", group=AUG)
    color_jitter: float = option(0.4, group=AUG)
    interpolation: str | None = option(None, "resize interpolation (default: the model's)", type=str, group=AUG)
    crop_pct: float | None = option(None, "eval centre-crop fraction (default: the model's)", type=float, group=AUG)
    model_ema: bool = option(
        True, "track an EMA of weights", negative="--no-model-ema", negative_help="do not track an EMA", group=AUG
    )
    model_ema_decay: float = option(0.99996, group=AUG)
    # precision and devices
    device: str | None = option(None, "default: cuda when available", choices=("cpu", "cuda"), group=DEVICES)
    amp: bool = option(False, "mixed precision autocast", group=DEVICES)
    amp_dtype: str = option("bf16", "autocast dtype with --amp", choices=("bf16", "fp16"), group=DEVICES)
    compile: bool = option(False, "torch.compile the model", group=DEVICES)
    tf32: bool | None = option(
        None,
        "TF32 matmuls and convolutions for fp32 work on CUDA (default: on with CUDA; args.json records it)",
        negative="--no-tf32",
        negative_help="full fp32 matmuls and convolutions on CUDA",
        group=DEVICES,
    )
    deterministic: bool = option(
        False,
        "deterministic kernels (torch.use_deterministic_algorithms, CUBLAS_WORKSPACE_CONFIG, no cudnn "
        "autotuning): a resumed run repeats the uninterrupted one bit for bit on GPU too (CPU always does); slower",
        group=DEVICES,
    )
    sync_bn: bool = option(False, "synchronise BatchNorm statistics across DDP processes (CNN models)", group=DEVICES)
    min_loss_scale: float = option(
        1.0,
        "with fp16, an overflow at a GradScaler scale below this counts as a non-finite step (--max-nonfinite)",
        group=DEVICES,
    )
    dist_backend: str | None = option(
        None,
        "torch.distributed backend under torchrun (default: nccl on CUDA, gloo on CPU); gloo lets "
        "several processes share one GPU",
        choices=("nccl", "gloo"),
        group=DEVICES,
    )
    workers: int = option(4, "data-loading processes per rank", flags=("-j", "--workers"), group=DEVICES)
    # run
    output: str | None = option(None, "run folder (default: runs/train/MODEL-TIME)", metavar="DIR", group=RUN)
    resume: str | None = option(None, "continue a run from its checkpoint exactly", metavar="PATH", group=RUN)
    eval_checkpoint: str | None = option(
        None, "evaluate and exit", flags=("--eval-checkpoint", "--eval_checkpoint"), metavar="PATH", group=RUN
    )
    seed: int = option(42, group=RUN)
    log_interval: int = option(50, "steps between log lines without a terminal", group=RUN)
    keep: int = option(3, "epoch checkpoints kept besides last and best", group=RUN)
    max_nonfinite: int = option(10, "consecutive NaN/inf losses before stopping", group=RUN)
    max_skipped_fraction: float = option(
        0.1,
        "stop when more than this fraction of an epoch's samples (or of a validation pass) were skipped "
        "as unreadable or failing their transform; checked every step once 1,000 were tried; 1 never stops",
        group=RUN,
    )
    tensorboard: bool = option(False, "also write TensorBoard logs", group=RUN)
    steps_per_epoch: int | None = option(None, "cap steps per epoch (smoke runs)", type=int, group=RUN)
    # decided when the run starts (backend_settings), recorded in args.json: not a flag
    cudnn_benchmark: bool | None = option(None, cli=False)
