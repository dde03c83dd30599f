"""DeiT hard (or soft) distillation from a CNN teacher into a ``*_distilled`` T2T-ViT student.

Two concerns, as in DeiT's ``losses.py``: :func:`build_teacher` makes a frozen, eval-mode
teacher from any timm or torchvision model name and a local weights file, with a
:class:`Teacher` wrapper that adapts the student's batch to what the teacher expects
(resize, renormalise); :class:`DistillationLoss` wraps the label loss and owns the teacher
call. ``t2t distill`` (:func:`main`, also ``python -m compress.distill`` under torchrun) is the
trainer of :mod:`t2tvit.train` with this loss plugged in through ``run(criterion_factory=...)``:
one loop, so DDP, AMP, EMA, checkpoints, resume and progress are the trainer's own.

The loss, with ``(cls_logits, dist_logits)`` from the student in training::

    loss = (1 - alpha) * base(cls_logits, targets) + alpha * distill(dist_logits, teacher(images))

* ``hard``: cross-entropy of the distillation head against the teacher's argmax (DeiT's best);
* ``soft``: KL(teacher || student) at temperature ``tau``, scaled by ``tau**2``, with DeiT's
  reduction: the KL summed over the batch and classes, divided by ``batch * classes``
  (``reduction="sum"`` / ``numel``, *not* ``batchmean``: the value is ``1 / classes`` of the
  per-sample KL);
* ``none``: no teacher; both heads learn from the labels (the mean of the two label losses).
  DeiT's ``none`` trains the class head only, leaving the distillation head that evaluation
  averages in untrained, so we differ on purpose.

``images`` are the batch the student saw (after mixup), so with mixup the teacher labels the
mixed images, as in DeiT; ``base`` is the trainer's label loss, which takes mixup's soft targets.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from t2tvit.config import config_parser, option, with_default
from t2tvit.errors import CheckpointError, ConfigError
from t2tvit.train_config import TrainConfig

__all__ = [
    "DISTILLATION_TYPES",
    "DistillConfig",
    "DistillationLoss",
    "Teacher",
    "TeacherInput",
    "build_parser",
    "build_teacher",
    "distillation_criterion",
    "main",
    "run",
]

DISTILLATION_TYPES = ("none", "soft", "hard")
DISTILLATION = "distillation"  # the help section of its flags
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------- the teacher


@dataclass(frozen=True)
class TeacherInput:
    """What a teacher was trained on: its input side (None: any size) and normalisation."""

    img_size: int | None
    mean: tuple[float, float, float] = _IMAGENET_MEAN
    std: tuple[float, float, float] = _IMAGENET_STD
    interpolation: str = "bilinear"


class Teacher(nn.Module):
    """A frozen model in eval mode, run without gradients, fed the student's batch adapted to it.

    The student's batch is normalised with the student's mean/std at the student's size. When
    the teacher expects another normalisation the batch is un-normalised and renormalised; when
    it expects another size the batch is resized (antialiased when shrinking). ``train()`` never
    switches the teacher out of eval mode, so its BatchNorm statistics and dropout stay fixed
    whatever the training loop does to the modules around it.
    """

    def __init__(
        self,
        model: nn.Module,
        expects: TeacherInput,
        student_mean: Sequence[float] = _IMAGENET_MEAN,
        student_std: Sequence[float] = _IMAGENET_STD,
        name: str = "teacher",
        channels_last: bool = False,
    ):
        super().__init__()
        self.channels_last = channels_last
        if channels_last:  # cuDNN's fast convolutions (and tensor cores under autocast) want NHWC
            model = model.to(memory_format=torch.channels_last)
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.expects, self.name = expects, name
        s_mean, s_std = torch.tensor(student_mean), torch.tensor(student_std)
        t_mean, t_std = torch.tensor(expects.mean), torch.tensor(expects.std)
        self.renormalise = not (torch.allclose(s_mean, t_mean) and torch.allclose(s_std, t_std))
        # x_teacher = (x * s_std + s_mean - t_mean) / t_std = x * scale + shift, per channel
        self.register_buffer("scale", (s_std / t_std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", ((s_mean - t_mean) / t_std).view(1, 3, 1, 1), persistent=False)
        self.train(False)

    def train(self, mode: bool = True) -> Teacher:  # noqa: ARG002 - always eval, whatever is asked
        super().train(False)
        return self

    def adapt(self, images: torch.Tensor) -> torch.Tensor:
        """The student's batch as this teacher expects it (size and normalisation)."""
        if self.renormalise:
            images = images * self.scale.to(images.dtype) + self.shift.to(images.dtype)
        side = self.expects.img_size
        if side is not None and tuple(images.shape[-2:]) != (side, side):
            mode = self.expects.interpolation if self.expects.interpolation in ("bilinear", "bicubic") else "bilinear"
            images = F.interpolate(
                images, size=(side, side), mode=mode, align_corners=False, antialias=side < images.shape[-1]
            )
        return images

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = self.adapt(images)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.model(images).float()


def _output_layer(model: nn.Module) -> tuple[str, nn.Linear] | None:
    """The model's last ``nn.Linear`` (the classifier of timm and torchvision CNNs)."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = (name, module)
    return last


def _teacher_input(model: nn.Module, source: str, saved_args: dict[str, Any]) -> TeacherInput:
    """What the teacher expects: the size our trainer recorded, else the model's own data config."""
    if source == "torchvision":
        from torchvision.models import get_model_weights

        try:  # the weights enum's transform metadata; nothing is downloaded
            tf = get_model_weights(saved_args["model_name"]).DEFAULT.transforms()
            size = tf.crop_size[0] if isinstance(tf.crop_size, (list, tuple)) else tf.crop_size
            cfg = {"img_size": int(size), "mean": tuple(tf.mean), "std": tuple(tf.std), "interp": "bilinear"}
        except (ValueError, AttributeError, KeyError):
            cfg = {"img_size": 224, "mean": _IMAGENET_MEAN, "std": _IMAGENET_STD, "interp": "bilinear"}
    else:
        from timm.data import resolve_data_config

        dc = resolve_data_config({}, model=model)
        cfg = {
            "img_size": int(dc["input_size"][-1]),
            "mean": dc["mean"],
            "std": dc["std"],
            "interp": dc["interpolation"],
        }
    if saved_args.get("img_size"):  # trained by our trainer: it knows the size it trained at
        cfg["img_size"] = int(saved_args["img_size"])
    return TeacherInput(cfg["img_size"], tuple(cfg["mean"]), tuple(cfg["std"]), cfg["interp"])


def _create(name: str, num_classes: int, img_size: int | None) -> tuple[nn.Module, str, str]:
    """Build ``name`` untrained: ``timm:NAME`` / ``torchvision:NAME`` pick the library, a bare
    name is timm's when timm knows it (timm's ResNets load torchvision weights), else torchvision's."""
    from t2tvit.models.factory import make_model, resolve_name
    from t2tvit.models.variants import list_variants

    source, _, bare = name.rpartition(":")
    if source not in ("", "timm", "torchvision"):
        raise ConfigError(f"--teacher-model {name!r}: the prefix must be timm: or torchvision:")
    try:
        library, bare = resolve_name(name)
    except ConfigError:
        import timm

        close = timm.list_models(f"*{bare.split('_')[0]}*")[:6]
        raise ConfigError(
            f"unknown teacher model {name!r}: neither timm nor torchvision has it"
            + (f" (similar timm names: {', '.join(close)})" if close else "")
        ) from None
    size = img_size if bare in list_variants() else None  # a T2T-ViT teacher is built for its own size
    model, _ = make_model(name, num_classes=num_classes, img_size=size)
    return model, "torchvision" if library == "torchvision" else "timm", bare


def build_teacher(
    name: str | None,
    path: str | Path,
    num_classes: int,
    *,
    student_mean: Sequence[float] = _IMAGENET_MEAN,
    student_std: Sequence[float] = _IMAGENET_STD,
    img_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    device: torch.device | str = "cpu",
) -> Teacher:
    """A frozen :class:`Teacher` from a timm or torchvision model name and a local weights file.

    ``path`` may be one of our trainer's checkpoints (its EMA weights first, and the image size it
    trained at), a timm or torchvision state dict, or a DeiT-style ``{"model": ...}``; ``name``
    defaults to the model our checkpoint records. ``img_size`` / ``mean`` / ``std`` override what
    the teacher is taken to expect. On a CUDA ``device`` a convolutional teacher runs in
    channels_last (timm's ``--channels-last``): a RegNetY-16GF teacher costs ~14x the student's MACs.
    Raises :class:`ConfigError` when the teacher's class count is not ``num_classes`` and
    :class:`CheckpointError` when the file does not fit the architecture.
    """
    from t2tvit.checkpoint import read_checkpoint, read_state_dict, recorded_args, state_dict_fit

    obj = read_checkpoint(path)
    sd, _, recorded = read_state_dict(obj)
    saved = recorded_args(obj)
    name = name or recorded
    if not name:
        raise ConfigError(f"{path} does not record its architecture; pass --teacher-model (e.g. resnet50)")
    model, source, bare = _create(name, num_classes, img_size or saved.get("img_size"))
    saved["model_name"] = bare

    out = _output_layer(model)
    own = model.state_dict()
    if out is not None and f"{out[0]}.weight" in sd:
        ck_classes = sd[f"{out[0]}.weight"].shape[0]
        if ck_classes != num_classes:
            raise ConfigError(
                f"the teacher {Path(path).name} predicts {ck_classes} classes but the student has {num_classes}; "
                "distil from a teacher trained (or fine-tuned) on the same classes"
            )
    fit = state_dict_fit(own, sd)
    if not fit.ok:
        raise CheckpointError(f"{path} does not fit the teacher {name}: " + "; ".join(fit.problems(sd, own)))
    model.load_state_dict(sd)
    expects = _teacher_input(model, source, saved)
    if img_size or mean or std:
        expects = TeacherInput(
            img_size or expects.img_size,
            tuple(mean or expects.mean),
            tuple(std or expects.std),
            expects.interpolation,
        )
    convolutional = any(isinstance(m, nn.Conv2d) for m in model.modules())
    channels_last = torch.device(device).type == "cuda" and convolutional
    return Teacher(model, expects, student_mean, student_std, name=name, channels_last=channels_last).to(device)


# --------------------------------------------------------------------------- the loss


class DistillationLoss(nn.Module):
    """DeiT's loss: ``(1 - alpha) * base + alpha * distill``, called as ``(images, outputs, targets)``.

    ``base`` is a ``loss(logits, targets)`` on labels (mixup's soft targets included). With a
    ``*_distilled`` student ``outputs`` is ``(cls_logits, dist_logits)``: the class head learns
    from ``base``, the distillation head from the teacher. See the module docstring for the
    ``soft`` reduction and what ``none`` does.
    """

    def __init__(
        self,
        base: nn.Module,
        teacher: Teacher | None,
        distillation_type: str = "hard",
        alpha: float = 0.5,
        tau: float = 1.0,
    ):
        super().__init__()
        if distillation_type not in DISTILLATION_TYPES:
            raise ConfigError(f"--distillation-type must be one of {', '.join(DISTILLATION_TYPES)}")
        if distillation_type != "none" and teacher is None:
            raise ConfigError(f"--distillation-type {distillation_type} needs a teacher (--teacher-path)")
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"--distillation-alpha must be in [0, 1], not {alpha}")
        if tau <= 0:
            raise ConfigError(f"--distillation-tau must be positive, not {tau}")
        self.base, self.teacher = base, teacher
        self.distillation_type, self.alpha, self.tau = distillation_type, alpha, tau

    def forward(self, images: torch.Tensor, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        two_heads = isinstance(outputs, (tuple, list))
        if self.distillation_type == "none":
            if two_heads:
                return sum(self.base(o, targets) for o in outputs) / len(outputs)
            return self.base(outputs, targets)
        if not two_heads:
            raise ConfigError(
                "distillation needs a student with a distillation head (a *_distilled model) in training mode"
            )
        cls_logits, dist_logits = outputs
        base_loss = self.base(cls_logits, targets)
        teacher_logits = self.teacher(images)
        return base_loss * (1 - self.alpha) + self.distill(dist_logits, teacher_logits) * self.alpha

    def distill(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """The distillation term alone, on the distillation head's logits and the teacher's."""
        student = student.float()
        if self.distillation_type == "hard":
            return F.cross_entropy(student, teacher.argmax(dim=1))
        t = self.tau
        kl = F.kl_div(
            F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1), reduction="sum", log_target=True
        )
        return kl * (t * t) / student.numel()


def distillation_criterion(args: DistillConfig, model: nn.Module, mixup_active: bool) -> DistillationLoss:
    """The trainer's ``criterion_factory``: the label loss wrapped with the teacher ``args`` names."""
    from t2tvit.models import list_variants
    from t2tvit.train import data_config, label_loss

    base = label_loss(args, mixup_active)
    if hasattr(model, "set_distilled_training"):
        # timm's deit_*_distilled return the average of their two heads unless told they are
        # distilling; ours always return both in training. Either way both heads must learn.
        model.set_distilled_training(True)
    if args.distillation_type == "none":
        return DistillationLoss(base, None, "none")
    if not hasattr(model, "head_dist"):
        suggestion = f"{args.model}_distilled"
        hint = (
            f"use --model {suggestion}"
            if suggestion in list_variants()
            else f"use a *_distilled student ({', '.join(list_variants(distilled=True)[:3])}, ...)"
        )
        raise ConfigError(
            f"--distillation-type {args.distillation_type} needs a student with a distillation token; "
            f"{args.model} has none: {hint}, or pass --distillation-type none"
        )
    if not args.teacher_path:
        raise ConfigError(
            f"--distillation-type {args.distillation_type} needs the teacher's weights: --teacher-path FILE "
            "(train one with: t2t train DATA --model resnet18 ...)"
        )
    cfg = data_config(args, model)
    teacher = build_teacher(
        args.teacher_model,
        args.teacher_path,
        model.num_classes,
        student_mean=cfg["mean"],
        student_std=cfg["std"],
        img_size=args.teacher_img_size,
        mean=args.teacher_mean,
        std=args.teacher_std,
        device=next(model.parameters()).device,
    )
    e = teacher.expects
    if os.environ.get("RANK", "0") == "0":
        print(
            f"teacher {teacher.name} from {args.teacher_path}: input {e.img_size or 'any'} px"
            f"{', renormalised' if teacher.renormalise else ''}; {args.distillation_type} distillation, "
            f"alpha {args.distillation_alpha}, tau {args.distillation_tau}",
            flush=True,
        )
    return DistillationLoss(base, teacher, args.distillation_type, args.distillation_alpha, args.distillation_tau)


# --------------------------------------------------------------------------- command line


@dataclass
class DistillConfig(TrainConfig):
    """The trainer's settings plus DeiT's distillation (``t2t distill --help``); the student defaults to a
    ``*_distilled`` T2T-ViT."""

    PROG: ClassVar[str] = "t2t distill"
    DESCRIPTION: ClassVar[str] = (
        "Distil a *_distilled T2T-ViT student from a CNN teacher (DeiT hard distillation through a "
        "distillation token), with the trainer of `t2t train`: the same flags, DDP under torchrun, AMP, EMA, "
        "checkpoints and resume. The class head learns from the labels, the distillation head from the "
        "teacher; evaluation and export use the average of the two heads. Example: t2t distill digits "
        "--config digits --teacher-model resnet18 --teacher-path runs/teacher/best.pth"
    )
    GROUPS: ClassVar[tuple[str, ...]] = (*TrainConfig.GROUPS, DISTILLATION)

    model: str = with_default(TrainConfig, "model", "t2t_vit_7_distilled")
    teacher_model: str | None = option(
        None,
        "timm or torchvision model name (resnet50, regnety_160, torchvision:resnet18, ...); "
        "default: the model the teacher checkpoint records",
        type=str,
        group=DISTILLATION,
    )
    teacher_path: str | None = option(
        None,
        "teacher weights: our checkpoint, a timm/torchvision state dict, or DeiT-style {'model': ...}",
        type=str,
        metavar="FILE",
        group=DISTILLATION,
    )
    distillation_type: str = option(
        "hard",
        "hard: CE against the teacher's argmax; soft: KL at temperature tau x tau^2 (DeiT's sum/numel "
        "reduction); none: labels only, both heads",
        choices=DISTILLATION_TYPES,
        group=DISTILLATION,
    )
    distillation_alpha: float = option(0.5, "weight of the distillation term", group=DISTILLATION)
    distillation_tau: float = option(1.0, "soft distillation temperature", group=DISTILLATION)
    teacher_img_size: int | None = option(
        None,
        "input size the teacher expects (default: what its checkpoint recorded, else its model config); "
        "the student's batch is resized to it",
        type=int,
        group=DISTILLATION,
    )
    teacher_mean: list[float] | None = option(
        None, "teacher normalisation mean", type=float, nargs=3, group=DISTILLATION
    )
    teacher_std: list[float] | None = option(None, "teacher normalisation std", type=float, nargs=3, group=DISTILLATION)


def build_parser() -> argparse.ArgumentParser:
    """``t2t distill``'s command line: the trainer's flags plus DeiT's, generated from :class:`DistillConfig`."""
    return config_parser(DistillConfig)


def run(args: DistillConfig) -> dict[str, Any]:
    """Distil as ``args`` says and return the trainer's summary."""
    from t2tvit.train import run as train

    return train(args, criterion_factory=distillation_criterion)


def main(argv: Sequence[str] | None = None) -> int:
    """``t2t distill`` / ``python -m compress.distill``: the trainer's command line with this parser and loss."""
    from t2tvit.train import main as train_main

    return train_main(argv, config_class=DistillConfig, run_fn=run)


if __name__ == "__main__":
    sys.exit(main())
