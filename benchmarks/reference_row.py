"""The straightforward T2T-ViT formulation as a profiler row: the project's baseline, not a deployment format.

:data:`REFERENCE` is a format row outside ``deploy.base.FORMATS`` whose module is this one: given the
fp32 ``torch`` artifact of an export, :func:`load` builds :mod:`benchmarks.reference`'s model with the
same weights behind the same Predictor as that artifact, so the two rows differ in the formulation
only. ``benchmarks.targets`` profiles it beside the artifacts (``files=[(REFERENCE, model-torch.pt)]``);
the profiler needs nothing else to measure it, its memory included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deploy.base import Format, Predictor
from t2tvit.errors import CheckpointError, ConfigError

__all__ = ["REFERENCE", "export", "load"]

REFERENCE = Format(
    "reference",
    "benchmarks.reference_row",
    "fp32",
    ".pt",
    True,
    True,
    "the straightforward T2T-ViT formulation with the fp32 eager artifact's weights",
)


def export(model: Any, path: Path, fmt: Format, ctx: Any) -> dict[str, Any]:
    raise ConfigError("the reference row is not exported: it runs the weights of an export's model-torch.pt")


def load(path: str | Path, fmt: Format = REFERENCE, device: str = "cpu") -> Predictor:
    """The straightforward formulation holding the weights of the fp32 ``torch`` artifact ``path``."""
    import torch

    from benchmarks.reference import reference_model
    from deploy.torch_eager import TorchPredictor

    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or "model" not in obj or "args" not in obj:
        raise CheckpointError(f"{path} is not an fp32 eager artifact written by `t2t export`")
    args = obj["args"]
    h, w = args["img_size"]
    if h != w:
        raise ConfigError("the reference formulation takes square images only")
    model = reference_model(args["model"], img_size=int(h), num_classes=int(args["num_classes"]))
    model.load_state_dict(obj["model"])
    return TorchPredictor(model.eval().to(device), fmt, Path(path), device)
