"""T2T-ViT for the edge: the Tokens-to-Token ViT family, faithful to the official weights.

``import t2tvit`` registers every variant with timm (``timm.create_model("t2t_vit_7")``).
The public API used by the rest of the toolkit::

    model = t2tvit.create_model("t2t_vit_7", checkpoint="71.7_T2T_ViT_7.pth.tar")
    model, report = t2tvit.make_model("resnet18", checkpoint="teacher.pth")  # any timm/torchvision name
    t2tvit.load_checkpoint(model, "run/best.pth", use_ema=True, strict=True)
"""

__toolkit__ = "t2tvit-edge"  # read (not imported) by t2t.cli.name_clashes: is this package ours?

from importlib.metadata import PackageNotFoundError as _NotFound
from importlib.metadata import version as _version

from .errors import CheckpointError, ConfigError, T2TError
from .models import (
    DEFAULT_MODEL,
    VARIANTS,
    DistilledT2TViT,
    LoadReport,
    T2TViT,
    build_model,
    create_model,
    list_variants,
    load_checkpoint,
    make_model,
)

try:
    __version__ = _version("t2tvit-edge")
except _NotFound:  # a source tree that is not installed
    __version__ = "0.0.0+local"

__all__ = [
    "DEFAULT_MODEL",
    "VARIANTS",
    "CheckpointError",
    "ConfigError",
    "DistilledT2TViT",
    "LoadReport",
    "T2TError",
    "T2TViT",
    "__version__",
    "build_model",
    "create_model",
    "list_variants",
    "load_checkpoint",
    "make_model",
]
