"""Put checkpoint weights into T2T-ViT models: check, map, load, and build-and-load.

One place converts foreign checkpoints (timm's ``checkpoint_filter_fn`` idea):
:func:`t2tvit.checkpoint.read_state_dict` finds the weights inside whatever container a file
holds, :func:`filter_state_dict` maps them onto a given model, and :func:`load_checkpoint` is the public
entry point (``t2tvit.load_checkpoint``); building a model and loading it is
:mod:`t2tvit.models.factory`'s (``t2tvit.create_model``).

A T2T-ViT is recognised by what it has (``tokens_to_token``, ``pos_embed``; ``dist_token`` for a
distilled one), not by its class, so this module does not import the model classes and the
model file can import it for ``pretrained=True`` without an import cycle.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import read_checkpoint, read_state_dict, state_dict_fit
from ..errors import CheckpointError
from .layers import sinusoid_table
from .variants import DISTILLED_SUFFIX, VARIANTS

__all__ = [
    "LoadReport",
    "checkpoint_filter_fn",
    "filter_state_dict",
    "fit_state_dict",
    "guess_variant",
    "is_t2t_vit",
    "load_checkpoint",
]

_HEAD_KEYS = {"head.weight", "head.bias", "head_dist.weight", "head_dist.bias"}
# A key only that backbone's blocks have, for telling the "CNN to T2T-ViT" variants apart.
_BLOCK_MARKERS = {
    "dense": "blocks.0.dense_linear.weight",
    "se": "blocks.0.attn.se_layer.fc.0.weight",
    "ghost": "blocks.0.attn.cheap_operation_q.weight",
}


def is_t2t_vit(model: nn.Module) -> bool:
    """Whether ``model`` is a T2T-ViT of this package (plain or distilled)."""
    return hasattr(model, "tokens_to_token") and isinstance(getattr(model, "pos_embed", None), torch.Tensor)


@dataclass
class LoadReport:
    """What :func:`load_checkpoint` / :func:`~t2tvit.models.factory.make_model` did, for logs and the CLI."""

    path: str | None  # the weights file (None: nothing loaded, the initialisation is random)
    source_key: str | None  # container key the weights came from (None: the file is the state dict)
    checkpoint_model: str | None  # model name recorded in the checkpoint's args, if any
    notes: list[str] = field(default_factory=list)
    library: str = ""  # who built the model: "t2tvit", "timm" or "torchvision" (make_model sets it)
    model_name: str = ""

    def __str__(self) -> str:
        if self.path is None:
            return "random initialisation" + "".join(f"; {n}" for n in self.notes)
        src = f"[{self.source_key}]" if self.source_key else ""
        return f"loaded {self.path}{src}" + "".join(f"; {n}" for n in self.notes)


def guess_variant(sd: dict[str, torch.Tensor]) -> str | None:
    """Name the registered variant whose architecture fits a state dict (head counts cannot be
    seen in weights, so ``t2t_vit_14`` and ``t2t_vit_14_resnext`` are indistinguishable)."""
    if "cls_token" not in sd:
        return None
    embed = sd["cls_token"].shape[-1]
    modules = len({int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})
    tokens = "performer" if "tokens_to_token.attention1.w" in sd else "transformer"
    block = next((b for b, key in _BLOCK_MARKERS.items() if key in sd), "vit")
    fc1 = sd.get("blocks.0.mlp.fc1.weight")
    ratio = fc1.shape[0] / fc1.shape[1] if fc1 is not None and block in ("vit", "se", "dense") else None
    suffix = DISTILLED_SUFFIX if "dist_token" in sd else ""
    for name, v in VARIANTS.items():
        fits = (v.embed_dim, v.block_modules, v.tokens_type, v.block_type) == (embed, modules, tokens, block)
        if fits and (ratio is None or ratio == v.mlp_ratio):
            return name + suffix
    return None


def filter_state_dict(
    sd: dict[str, torch.Tensor], model: nn.Module, reset_head: bool = False
) -> tuple[dict[str, torch.Tensor], list[str], bool]:
    """Map a T2T-ViT state dict onto ``model``; returns ``(state_dict, notes, head_reset)``.

    * ``pos_embed`` for another token count is regenerated (the table is a fixed
      function of position, so this is exact, unlike interpolation);
    * with ``reset_head``, the head(s) of another class count are dropped from the
      state dict (``head_reset`` is then True: the caller gives the model fresh heads);
    * a distilled model loading a plain checkpoint starts its distillation token and
      head from the class token and head (what DeiT fine-tuning does).
    """
    sd = dict(sd)
    notes: list[str] = []
    own = model.state_dict()
    pe, own_pe = sd.get("pos_embed"), own["pos_embed"]
    if pe is not None and pe.shape != own_pe.shape and pe.shape[-1] == own_pe.shape[-1]:
        sd["pos_embed"] = sinusoid_table(own_pe.shape[1], own_pe.shape[-1])
        notes.append(f"position table regenerated for {own_pe.shape[1]} tokens (was {pe.shape[1]})")
    if hasattr(model, "dist_token") and "dist_token" not in sd and "cls_token" in sd:
        sd["dist_token"] = sd["cls_token"].clone()
        for p in ("weight", "bias"):
            if f"head.{p}" in sd:
                sd[f"head_dist.{p}"] = sd[f"head.{p}"].clone()
        notes.append("distillation token and head initialised from the class token and head")
    ck_classes = sd["head.weight"].shape[0] if "head.weight" in sd else None
    head_reset = reset_head and ck_classes is not None and ck_classes != model.num_classes
    if head_reset:
        for key in _HEAD_KEYS:
            sd.pop(key, None)
        what = f"new {model.num_classes}-class head" if model.num_classes else "head removed"
        notes.append(f"{what} (checkpoint had {ck_classes} classes)")
    return sd, notes, head_reset


def load_checkpoint(
    model: nn.Module,
    path: str | Path,
    use_ema: bool = True,
    strict: bool = True,
    reset_head: bool = False,
) -> LoadReport:
    """Load weights from ``path`` into ``model`` (a T2T-ViT, or any module with ``strict=False``).

    Raises :class:`~t2tvit.errors.CheckpointError` with one sentence naming the
    likely variant of the checkpoint and the mismatching keys when it does not fit.
    """
    sd, source, ck_model = read_state_dict(read_checkpoint(path), use_ema)
    return _apply_state_dict(model, sd, str(path), source, ck_model, strict, reset_head)


def fit_state_dict(
    sd: dict[str, torch.Tensor],
    model: nn.Module,
    *,
    path: str = "the checkpoint",
    ck_model: str | None = None,
    strict: bool = True,
    reset_head: bool = False,
) -> tuple[dict[str, torch.Tensor], list[str], bool]:
    """Map ``sd`` onto ``model`` (:func:`filter_state_dict`), check that it fits and cast it to the model's
    dtypes; returns ``(state_dict, notes, head_reset)``, ready for ``load_state_dict(strict=False)``.

    Raises :class:`~t2tvit.errors.CheckpointError` with one sentence naming the likely variant of the
    weights and the mismatching keys when they do not fit (``strict``).
    """
    notes: list[str] = []
    head_reset = False
    if is_t2t_vit(model):
        sd, notes, head_reset = filter_state_dict(sd, model, reset_head)
        own_name = getattr(model, "pretrained_cfg", {}).get("architecture")
        if ck_model and own_name and ck_model.lower() != own_name.removesuffix(DISTILLED_SUFFIX):
            notes.append(f"checkpoint was trained as {ck_model}, loading into {own_name}")
    own = model.state_dict()
    fit = state_dict_fit(own, sd, _HEAD_KEYS if head_reset else None)
    missing, unexpected, wrong = fit.missing, fit.unexpected, fit.wrong
    if strict and "head.weight" in wrong and not set(wrong) - _HEAD_KEYS:
        raise CheckpointError(
            f"{path} has a {sd['head.weight'].shape[0]}-class head but the model has {own['head.weight'].shape[0]} "
            "classes; pass num_classes to get a new head (create_model(..., num_classes=N) or reset_head=True)"
        )
    if strict and not fit.ok:
        target = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
        parts = [f"{path} does not fit {target}"]
        if is_t2t_vit(model):
            guess = ck_model or guess_variant(sd)
            parts.append(f"it looks like {guess}" if guess else "its architecture is not a known T2T-ViT variant")
        raise CheckpointError("; ".join(parts + fit.problems(sd, own)))
    if not strict and (missing or unexpected or wrong):
        notes.append(f"non-strict: {len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} mismatched keys")
    # Cast to the model's dtypes (a half-precision file still loads into an fp32 model).
    sd = {k: v.to(own[k].dtype) for k, v in sd.items() if k in own and v.shape == own[k].shape}
    return sd, notes, head_reset


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """timm's ``pretrained_filter_fn`` for T2T-ViT (``timm.create_model(name, pretrained=True, ...)``): the
    weights mapped and checked by :func:`fit_state_dict`; a head of another class count is left out, so the
    model keeps its fresh one. What was mapped is recorded in ``model.load_report``."""
    sd, notes, _ = fit_state_dict(state_dict, model, reset_head=True)
    model.load_report = LoadReport("pretrained_cfg weights", None, None, notes)
    return sd


def _apply_state_dict(
    model: nn.Module,
    sd: dict[str, torch.Tensor],
    path: str,
    source: str | None,
    ck_model: str | None,
    strict: bool,
    reset_head: bool,
    assign: bool = False,
) -> LoadReport:
    """Check ``sd`` against ``model`` and load it. With ``assign`` (a model built on the meta
    device) the checkpoint's tensors become the parameters instead of being copied in."""
    sd, notes, head_reset = fit_state_dict(
        sd, model, path=path, ck_model=ck_model, strict=strict, reset_head=reset_head
    )
    model.load_state_dict(sd, strict=False, assign=assign)
    if head_reset:
        model.reset_classifier(model.num_classes)  # fresh, initialised heads (on the CPU)
    return LoadReport(path, source, ck_model, notes)
