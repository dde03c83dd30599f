"""Read checkpoint files safely: official releases, our own checkpoints and safetensors.

:func:`read_checkpoint` opens a file and :func:`read_state_dict` finds the weights inside
whatever container it holds. Mapping those weights onto a model (timm's
``checkpoint_filter_fn`` idea) is :mod:`t2tvit.models.weights`, beside the models; this module
knows nothing about them, so the two never import each other.

Files are read with ``torch.load(weights_only=True)`` and an explicit allow-list
(``argparse.Namespace`` as the official trainer stores its arguments, numpy
scalars as older timm savers store metrics): no pickled code is ever executed.
"""

from __future__ import annotations

import argparse
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CheckpointError

__all__ = [
    "StateDictFit",
    "load_refusal",
    "read_checkpoint",
    "read_state_dict",
    "recorded_args",
    "recorded_preprocessing",
    "state_dict_fit",
]

_EMA_KEYS = ("state_dict_ema", "model_ema")
_MODEL_KEYS = ("state_dict", "model", "module", "net")
_PREFIXES = ("module.", "_orig_mod.", "model.")


def _safe_globals() -> list[Any]:
    allowed: list[Any] = [argparse.Namespace, np.dtype]
    core = getattr(np, "_core", None) or np.core
    allowed.append(core.multiarray.scalar)
    allowed += [type(np.dtype(t)) for t in ("float16", "float32", "float64", "int32", "int64", "bool")]
    return allowed


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
        raise CheckpointError(load_refusal(path, e)) from None


def load_refusal(path: Path, e: BaseException, expected: str | None = None) -> str:
    """The one sentence for a file that ``torch.load(weights_only=True)`` refused with ``e``.

    torch's own messages advise retrying with ``weights_only=False``, i.e. running the file's pickled
    code: never pass that on (every loader that unpickles uses this). Say what the file is and what
    was ``expected`` instead.
    """
    unsafe = _unsafe_globals(path, str(e)) if isinstance(e, pickle.UnpicklingError) else []
    if unsafe:
        what = f"pickles objects that are not on the allow-list ({', '.join(unsafe[:5])})"
    elif isinstance(e, pickle.UnpicklingError) and _first_bytes(path).startswith(b"\x80"):
        what = (
            f"is a pickle of {path.stat().st_size:,} bytes that the safe loader refuses (objects other than "
            "tensors and plain data, or written by pickle.dump rather than torch.save)"
        )
    else:
        return f"{path} {_what_file_is(path)}; expected {expected or _EXPECTED}"
    return (
        f"{path} {what}; it was not loaded because unpickling it could run arbitrary code - "
        "re-save just the state dict with torch.save"
    )


def _first_bytes(path: Path, n: int = 16) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _unsafe_globals(path: Path, message: str) -> list[str]:
    try:
        found = list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # noqa: BLE001 - only zip checkpoints can be scanned
        found = []
    return sorted(set(found or re.findall(r"Unsupported global: GLOBAL ([\w.]+)", message)))


_EXPECTED = "a PyTorch checkpoint written by torch.save (.pth, .pth.tar, .pt) or a .safetensors file"


def _what_file_is(path: Path) -> str:
    """A few words on a file that torch.load could not read, from its size and first bytes."""
    size, head = path.stat().st_size, _first_bytes(path)
    if size == 0:
        return "is empty (0 bytes)"
    if head.startswith(b"PK\x03\x04"):
        return f"is a zip archive of {size:,} bytes but not a complete PyTorch checkpoint (truncated or damaged?)"
    if head[:1] == b"\x80":
        return f"is a pickle of {size:,} bytes that could not be read (truncated or damaged?)"
    if head.lstrip().lower().startswith((b"<!doctype", b"<html", b"<?xml")):
        return f"is an HTML/XML page of {size:,} bytes (a failed download?), not a checkpoint"
    if head.startswith(b"\x89HDF"):
        return f"is an HDF5 (Keras) file of {size:,} bytes"
    return f"({size:,} bytes) is neither a zip archive (torch.save) nor a pickle"


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
