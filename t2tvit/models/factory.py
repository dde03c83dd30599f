"""One factory for every model the toolkit builds: :func:`make_model`.

A T2T-ViT variant, any timm model or any torchvision model, by name (``timm:NAME`` /
``torchvision:NAME`` pick the library; a bare name is a T2T-ViT variant, else timm's, else
torchvision's), with a class count, an image size, weights from a local file and a head policy. It
returns the model and a :class:`~t2tvit.models.weights.LoadReport` saying what was built and loaded.
The trainer, the teacher, the exporter and the converters build through it.
"""

from __future__ import annotations

import contextlib
import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import read_checkpoint, read_state_dict, state_dict_fit
from ..errors import CheckpointError, ConfigError
from .variants import list_variants
from .weights import LoadReport, _apply_state_dict

__all__ = [
    "HEAD_POLICIES",
    "LIBRARIES",
    "build_model",
    "classifier_prefix",
    "create_model",
    "make_model",
    "resolve_name",
]

LIBRARIES = ("t2tvit", "timm", "torchvision")
# What happens to the checkpoint's classifier: "keep" (the default) requires its class count to be the
# model's and refuses another one in one sentence (a silently untrained head answers with confident
# nonsense); "auto" keeps it when it fits and gives a fresh head otherwise (fine-tuning, --new-head);
# "new" always starts a fresh head.
HEAD_POLICIES = ("auto", "keep", "new")


def resolve_name(name: str) -> tuple[str, str]:
    """``(library, bare name)`` for a model name, or one :class:`ConfigError` naming close matches."""
    import timm

    library, _, bare = name.rpartition(":")
    if library not in ("", *LIBRARIES):
        raise ConfigError(f"model {name!r}: the prefix must be timm: or torchvision:")
    if library in ("", "t2tvit") and bare in list_variants():
        return "t2tvit", bare
    if library in ("", "timm") and timm.is_model(bare):
        return "timm", bare
    if library in ("", "torchvision") and bare in _torchvision_names():
        return "torchvision", bare
    close = difflib.get_close_matches(bare, list_variants(), n=3) or timm.list_models(f"*{bare.split('_')[0]}*")[:4]
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    raise ConfigError(
        f"unknown model {name!r}{hint}; `t2t info --list` shows every T2T-ViT variant, and any timm or "
        "torchvision model name works"
    )


def _torchvision_names() -> set[str]:
    import torchvision

    return set(torchvision.models.list_models(module=torchvision.models))


def classifier_prefix(model: nn.Module) -> str | None:
    """The module name of the classifier: timm's ``get_classifier()``, else the last ``nn.Linear``."""
    get = getattr(model, "get_classifier", None)
    target = get() if callable(get) else None
    last = None
    for name, module in model.named_modules():
        if target is not None and module is target:
            return name
        if isinstance(module, nn.Linear):
            last = name
    return last


def make_model(
    name: str,
    *,
    checkpoint: str | Path | None = None,
    num_classes: int | None = None,
    img_size: int | tuple[int, int] | None = None,
    head: str = "keep",
    use_ema: bool = True,
    strict: bool = True,
    **kwargs: Any,
) -> tuple[nn.Module, LoadReport]:
    """Build ``name`` and load ``checkpoint`` into it; returns ``(model, report)``.

    ``num_classes`` defaults to the checkpoint's class count (else the library's default);
    ``img_size`` is the input the model is built for (a T2T-ViT's position table is regenerated
    exactly; a CNN takes any size and gets an ``img_size`` attribute, so exporters know what it was
    built for); ``head`` is one of :data:`HEAD_POLICIES`; ``kwargs`` go to the library's constructor
    (``drop_path_rate``, ``dynamic_img_size``...). With a checkpoint the report is also ``model.load_report``.
    """
    if head not in HEAD_POLICIES:
        raise ConfigError(f"head must be one of {', '.join(HEAD_POLICIES)}, not {head!r}")
    library, bare = resolve_name(name)
    r = _Request(bare, checkpoint, num_classes, img_size, head, strict, kwargs)
    if checkpoint is not None:
        r.sd, r.source, r.ck_model = read_state_dict(read_checkpoint(checkpoint), use_ema)
    model, report = _t2t_vit(r) if library == "t2tvit" else _library_model(library, r)
    report.library, report.model_name = library, bare
    if checkpoint is not None:
        model.load_report = report
    return model, report


@dataclass
class _Request:
    """What :func:`make_model` was asked for, and the checkpoint's state dict (``sd``: None without one), the
    key it came from (``source``) and the model name it records (``ck_model``)."""

    name: str
    checkpoint: Any
    num_classes: int | None
    img_size: Any
    head: str
    strict: bool
    kwargs: dict[str, Any]
    sd: dict[str, torch.Tensor] | None = None
    source: str | None = None
    ck_model: str | None = None

    def report(self, notes: list[str]) -> LoadReport:
        if self.sd is None:
            return LoadReport(None, None, None, [])
        return LoadReport(str(self.checkpoint), self.source, self.ck_model, notes)


def _refuse_head_swap(checkpoint: Any, ck_classes: int | None, num_classes: int | None, head: str) -> None:
    """``head="keep"`` with a class count other than the checkpoint's trained head: one sentence, never a
    silently untrained head (``num_classes=0``, no head at all, is not a swap)."""
    if head == "keep" and num_classes and ck_classes is not None and num_classes != ck_classes:
        raise ConfigError(
            f"{checkpoint} has a trained {ck_classes}-class head but {num_classes} classes were asked for; pass "
            "--new-head (new_head=True) to replace it with an untrained head, or drop --num-classes"
        )


def _checkpoint_classes(sd: dict[str, torch.Tensor] | None, prefix: str | None) -> int | None:
    w = sd.get(f"{prefix}.weight") if sd is not None and prefix else None
    return int(w.shape[0]) if w is not None and w.ndim == 2 else None


def _t2t_vit(r: _Request) -> tuple[nn.Module, LoadReport]:
    import timm

    kwargs, num_classes, strict = r.kwargs, r.num_classes, r.strict
    if r.img_size is not None:
        kwargs["img_size"] = r.img_size
    ck_classes = _checkpoint_classes(r.sd, "head")
    _refuse_head_swap(r.checkpoint, ck_classes, num_classes, r.head)
    if num_classes is None and ck_classes is not None:
        num_classes = ck_classes
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if r.sd is None:
        return timm.create_model(r.name, **kwargs), r.report([])
    # A strict load replaces every tensor, so build on the meta device and let the checkpoint's
    # tensors become the parameters: no random init of weights that are thrown away (t2t_vit_24:
    # 0.54 s -> 0.20 s in benchmarks/bench_parts.py). A non-strict load keeps some initialised
    # tensors: build normally.
    with torch.device("meta") if strict else contextlib.nullcontext():
        model = timm.create_model(r.name, **kwargs)
    # a head of another class count is dropped (the model gets a fresh one); num_classes=0 keeps none
    reset = r.head != "keep" or num_classes == 0
    report = _apply_state_dict(model, r.sd, str(r.checkpoint), r.source, r.ck_model, strict, reset, assign=strict)
    if r.head == "new" and ck_classes == model.num_classes:
        model.reset_classifier(model.num_classes)  # same class count, yet a fresh head was asked for
        report.notes.append(f"new {model.num_classes}-class head")
    return model, report


def _library_model(library: str, r: _Request) -> tuple[nn.Module, LoadReport]:
    name, checkpoint, sd, head = r.name, r.checkpoint, r.sd, r.head
    size = (r.img_size, r.img_size) if isinstance(r.img_size, int) else tuple(r.img_size) if r.img_size else None
    model = _build(library, name, r.num_classes, size, r.kwargs)
    prefix = classifier_prefix(model)
    ck_classes = _checkpoint_classes(sd, prefix)
    _refuse_head_swap(checkpoint, ck_classes, r.num_classes, head)
    if r.num_classes is None and ck_classes is not None and ck_classes != model.num_classes and head != "new":
        model = _build(library, name, ck_classes, size, r.kwargs)  # the checkpoint's class count
    own = getattr(model, "img_size", None)
    own = (own, own) if isinstance(own, int) else own
    default = getattr(model, "pretrained_cfg", {}).get("input_size", (3, 224, 224))[1:]
    model.img_size = tuple(int(s) for s in (own or size or default))
    if sd is None:
        return model, r.report([])
    notes: list[str] = []
    fresh: set[str] = set()
    if prefix is not None and (head == "new" or (head == "auto" and ck_classes != _num_classes(model, prefix))):
        fresh = {k for k in model.state_dict() if k.split(".")[0] == prefix.split(".")[0] and k.startswith(prefix)}
        sd = {k: v for k, v in sd.items() if k not in fresh}
        notes.append(
            f"new {_num_classes(model, prefix)}-class head" + (f" (checkpoint had {ck_classes})" if ck_classes else "")
        )
    own_sd = model.state_dict()
    fit = state_dict_fit(own_sd, sd, fresh or None)
    if r.strict and not fit.ok:
        raise CheckpointError(f"{checkpoint} does not fit {name}: " + "; ".join(fit.problems(sd, own_sd)))
    model.load_state_dict({k: v.to(own_sd[k].dtype) for k, v in sd.items() if k in own_sd}, strict=False)
    return model, r.report(notes)


def _num_classes(model: nn.Module, prefix: str) -> int:
    layer = model.get_submodule(prefix)
    return int(layer.out_features) if isinstance(layer, nn.Linear) else int(getattr(model, "num_classes", 0))


def _build(
    library: str, name: str, num_classes: int | None, size: tuple[int, ...] | None, kwargs: dict[str, Any]
) -> nn.Module:
    extra = dict(kwargs, **({"num_classes": num_classes} if num_classes is not None else {}))
    if library == "torchvision":
        import torchvision

        model = torchvision.models.get_model(name, weights=None, **extra)
        model.num_classes = getattr(model, "num_classes", None) or _num_classes(model, classifier_prefix(model) or "")
        return model
    import timm

    try:
        return timm.create_model(name, **extra, **({"img_size": size} if size else {}))
    except TypeError:  # a CNN's constructor has no img_size
        return timm.create_model(name, **extra)


def create_model(
    name: str,
    checkpoint: str | Path | None = None,
    num_classes: int | None = None,
    img_size: int | tuple[int, int] | None = None,
    use_ema: bool = True,
    strict: bool = True,
    *,
    new_head: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered T2T-ViT and optionally load a checkpoint into it (``model.load_report`` says how).

    ``num_classes`` defaults to the checkpoint's class count (or 1000). Another count replaces the
    trained head with an untrained one only with ``new_head=True`` (fine-tuning on another dataset);
    without it that is refused, as a silently random head would answer with confident nonsense
    (``num_classes=0``, a feature extractor without a head, needs no flag). ``img_size`` may differ
    from the size the checkpoint was trained at: the position table is regenerated exactly.
    :func:`~t2tvit.models.factory.make_model` builds it (and any timm or torchvision model).
    """
    if name not in list_variants():
        close = difflib.get_close_matches(name, list_variants(), n=3)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise ConfigError(f"unknown model {name!r}{hint}; `t2t info --list` shows every T2T-ViT variant")
    model, _ = make_model(
        name,
        checkpoint=checkpoint,
        num_classes=num_classes,
        img_size=img_size,
        use_ema=use_ema,
        strict=strict,
        head="auto" if new_head else "keep",
        **kwargs,
    )
    return model


def build_model(
    name: str,
    checkpoint: str | Path | None = None,
    num_classes: int | None = None,
    img_size: int | tuple[int, int] | None = None,
    *,
    new_head: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """A registered T2T-ViT (:func:`create_model`, ``new_head`` as there), or any other timm or
    torchvision model: the CNN and DeiT baselines the lite T2T-ViTs are compared with. A model whose
    constructor takes no ``img_size`` (a CNN: any input size works) gets an ``img_size`` attribute, so
    the exporter records the input size it was built for. :func:`~t2tvit.models.factory.make_model`
    builds it."""
    head = "auto" if new_head else "keep"
    return make_model(name, checkpoint=checkpoint, num_classes=num_classes, img_size=img_size, head=head, **kwargs)[0]
