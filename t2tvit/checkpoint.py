"""Load T2T-ViT weights from official releases, our own checkpoints and safetensors.

One place converts foreign checkpoints (timm's ``checkpoint_filter_fn`` idea):
:func:`read_state_dict` finds the weights inside whatever container a file holds,
:func:`filter_state_dict` maps them onto a given model, and
:func:`load_checkpoint` / :func:`create_model` are the public entry points.

Files are read with ``torch.load(weights_only=True)`` and an explicit allow-list
(``argparse.Namespace`` as the official trainer stores its arguments, numpy
scalars as older timm savers store metrics): no pickled code is ever executed.
"""

from __future__ import annotations

import argparse
import contextlib
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import CheckpointError, ConfigError
from .models import VARIANTS, DistilledT2TViT, T2TViT, list_variants, sinusoid_table
from .models.t2t_vit import DISTILLED_SUFFIX

__all__ = [
    "LoadReport",
    "create_model",
    "filter_state_dict",
    "guess_variant",
    "load_checkpoint",
    "read_checkpoint",
    "read_state_dict",
    "recorded_args",
    "recorded_preprocessing",
    "state_dict_fit",
]

_EMA_KEYS = ("state_dict_ema", "model_ema")
_MODEL_KEYS = ("state_dict", "model", "module", "net")
_PREFIXES = ("module.", "_orig_mod.", "model.")
_HEAD_KEYS = {"head.weight", "head.bias", "head_dist.weight", "head_dist.bias"}


def _safe_globals() -> list[Any]:
    allowed: list[Any] = [argparse.Namespace, np.dtype]
    core = getattr(np, "_core", None) or np.core
    allowed.append(core.multiarray.scalar)
    allowed += [type(np.dtype(t)) for t in ("float16", "float32", "float64", "int32", "int64", "bool")]
    return allowed


@dataclass
class LoadReport:
    """What :func:`load_checkpoint` did, for logs and the CLI."""

    path: str
    source_key: str | None  # container key the weights came from (None: the file is the state dict)
    checkpoint_model: str | None  # model name recorded in the checkpoint's args, if any
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        src = f"[{self.source_key}]" if self.source_key else ""
        return f"loaded {self.path}{src}" + "".join(f"; {n}" for n in self.notes)


def read_checkpoint(path: str | Path) -> Any:
    """Read a ``.pth``/``.pth.tar``/``.pt``/``.safetensors`` file safely (no code execution)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except SafetensorError as e:
            raise CheckpointError(f"{path} is not a valid safetensors file ({e})") from None
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - every failure here is a bad or unsafe file
        if isinstance(e, pickle.UnpicklingError):
            try:
                unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
            except Exception:  # noqa: BLE001
                unsafe = []
            if unsafe:
                raise CheckpointError(
                    f"{path} pickles objects that are not on the allow-list ({', '.join(unsafe[:5])}); "
                    "it was not loaded because that could run arbitrary code - re-save just the state dict"
                ) from None
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from None


def recorded_args(obj: Any) -> dict[str, Any]:
    """The training arguments a loaded checkpoint recorded, as a dict (``{}`` when it has none).

    Our trainer stores a dict, the official trainer an ``argparse.Namespace``; every reader of a
    checkpoint's model name, image size, class count or preprocessing goes through here.
    """
    args = obj.get("args") if isinstance(obj, dict) else None
    if isinstance(args, argparse.Namespace):
        args = vars(args)
    return dict(args) if isinstance(args, dict) else {}


def recorded_preprocessing(args: Mapping[str, Any]) -> dict[str, Any]:
    """The trainer's ``--crop-pct`` / ``--interpolation`` among recorded ``args`` (unset ones left out,
    as the trainer then used the model's own), as :func:`t2tvit.data.eval_transform_for` keywords."""
    return {k: args[k] for k in ("crop_pct", "interpolation") if args.get(k)}


@dataclass
class StateDictFit:
    """How a state dict fits a model's own: keys it lacks, keys it has extra, shapes that differ."""

    missing: list[str]
    unexpected: list[str]
    wrong: list[str]

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.wrong)

    def problems(self, sd: Mapping[str, Any], own: Mapping[str, Any]) -> list[str]:
        """One clause per kind of misfit, with a few example keys (for a one-sentence error)."""
        parts = []
        if self.missing:
            parts.append(f"missing {len(self.missing)} keys (e.g. {', '.join(self.missing[:3])})")
        if self.unexpected:
            parts.append(f"unexpected {len(self.unexpected)} keys (e.g. {', '.join(self.unexpected[:3])})")
        if self.wrong:
            k = self.wrong[0]
            parts.append(
                f"{len(self.wrong)} shape mismatches (e.g. {k}: {tuple(sd[k].shape)} vs {tuple(own[k].shape)})"
            )
        return parts


def state_dict_fit(own: Mapping[str, Any], sd: Mapping[str, Any], ignore: set[str] | None = None) -> StateDictFit:
    """Compare a checkpoint's ``sd`` with a model's ``own`` state dict; ``ignore``: own keys not expected."""
    expected = [k for k in own if k not in (ignore or set())]
    return StateDictFit(
        missing=[k for k in expected if k not in sd],
        unexpected=[k for k in sd if k not in own],
        wrong=[k for k in sd if k in own and tuple(sd[k].shape) != tuple(own[k].shape)],
    )


def read_state_dict(obj: Any, use_ema: bool = True) -> tuple[dict[str, torch.Tensor], str | None, str | None]:
    """Find the weights in a loaded checkpoint.

    Returns ``(state_dict, source_key, model_name)``: EMA weights first when
    ``use_ema`` (official ``state_dict_ema``, our ``model_ema``), then
    ``state_dict`` / ``model`` / ``module``, else the object itself;
    ``module.`` / ``_orig_mod.`` prefixes stripped; ``model_name`` read from the
    ``args`` the trainer stored (argparse ``Namespace`` or dict), if any.
    """
    if not isinstance(obj, dict):
        raise CheckpointError(f"expected a dict of weights, found a {type(obj).__name__}")
    model_name = recorded_args(obj).get("model")
    keys = (_EMA_KEYS if use_ema else ()) + _MODEL_KEYS
    source = next((k for k in keys if isinstance(obj.get(k), dict) and obj[k]), None)
    sd = obj[source] if source else obj
    tensors = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"found no weights (tensors) in the checkpoint; top-level keys: {sorted(obj)[:8]}")
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix) :]: v for k, v in tensors.items()}
    return tensors, source, model_name if isinstance(model_name, str) else None


def guess_variant(sd: dict[str, torch.Tensor]) -> str | None:
    """Name the registered variant whose architecture fits a state dict (head counts cannot be
    seen in weights, so ``t2t_vit_14`` and ``t2t_vit_14_resnext`` are indistinguishable)."""
    if "cls_token" not in sd:
        return None
    embed = sd["cls_token"].shape[-1]
    depth = len({int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})
    tokens = "performer" if "tokens_to_token.attention1.w" in sd else "transformer"
    fc1 = sd.get("blocks.0.mlp.fc1.weight")
    ratio = fc1.shape[0] / embed if fc1 is not None else None
    suffix = DISTILLED_SUFFIX if "dist_token" in sd else ""
    for name, v in VARIANTS.items():
        if (v.embed_dim, v.depth, v.tokens_type) == (embed, depth, tokens) and (ratio is None or ratio == v.mlp_ratio):
            return name + suffix
    return None


def filter_state_dict(
    sd: dict[str, torch.Tensor], model: T2TViT, reset_head: bool = False
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
    if isinstance(model, DistilledT2TViT) and "dist_token" not in sd and "cls_token" in sd:
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
    notes: list[str] = []
    head_reset = False
    if isinstance(model, T2TViT):
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
        if isinstance(model, T2TViT):
            guess = ck_model or guess_variant(sd)
            parts.append(f"it looks like {guess}" if guess else "its architecture is not a known T2T-ViT variant")
        raise CheckpointError("; ".join(parts + fit.problems(sd, own)))
    # Cast to the model's dtypes (a half-precision file still loads into an fp32 model).
    load_sd = {k: v.to(own[k].dtype) for k, v in sd.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(load_sd, strict=False, assign=assign)
    if head_reset:
        model.reset_classifier(model.num_classes)  # fresh, initialised heads (on the CPU)
    if not strict and (missing or unexpected or wrong):
        notes.append(f"non-strict: {len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} mismatched keys")
    return LoadReport(path, source, ck_model, notes)


def create_model(
    name: str,
    checkpoint: str | Path | None = None,
    num_classes: int | None = None,
    img_size: int | tuple[int, int] | None = None,
    use_ema: bool = True,
    strict: bool = True,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered T2T-ViT and optionally load a checkpoint into it.

    ``num_classes`` defaults to the checkpoint's class count (or 1000); a
    different count gets a new head. ``img_size`` may differ from the size the
    checkpoint was trained at: the position table is regenerated exactly.
    """
    import difflib

    import timm

    if name not in list_variants():
        close = difflib.get_close_matches(name, list_variants(), n=3)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise ConfigError(f"unknown model {name!r}{hint}; `t2t info --list` shows every T2T-ViT variant")
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if img_size is not None:
        kwargs["img_size"] = img_size
    if checkpoint is None:
        return timm.create_model(name, **kwargs)
    sd, source, ck_model = read_state_dict(read_checkpoint(checkpoint), use_ema)
    if num_classes is None and "head.weight" in sd:
        kwargs["num_classes"] = sd["head.weight"].shape[0]
    # A strict load replaces every tensor, so build on the meta device and let the checkpoint's
    # tensors become the parameters: no random init of weights that are thrown away (t2t_vit_24:
    # 0.54 s -> 0.20 s in benchmarks/bench_parts.py). A non-strict load keeps some initialised
    # tensors: build normally.
    with torch.device("meta") if strict else contextlib.nullcontext():
        model = timm.create_model(name, **kwargs)
    reset = num_classes is not None
    model.load_report = _apply_state_dict(model, sd, str(checkpoint), source, ck_model, strict, reset, assign=strict)
    return model
