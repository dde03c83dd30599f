"""The T2T-ViT model family; importing this registers every variant with timm."""

from .factory import build_model, create_model, make_model
from .layers import (
    Attention,
    Block,
    DenseBlock,
    GhostAttention,
    GhostMlp,
    SELayer,
    SoftSplit,
    TokenPerformer,
    TokenTransformer,
    Transition,
    sinusoid_table,
)
from .t2t_vit import DistilledT2TViT, T2TModule, T2TViT, fixed_tables, official_param_count, to_2tuple_size
from .variants import DEFAULT_MODEL, DISTILLED_SUFFIX, VARIANTS, Variant, list_variants
from .weights import (
    LoadReport,
    checkpoint_filter_fn,
    filter_state_dict,
    guess_variant,
    is_t2t_vit,
    load_checkpoint,
)

__all__ = [
    "DEFAULT_MODEL",
    "DISTILLED_SUFFIX",
    "VARIANTS",
    "Attention",
    "Block",
    "DenseBlock",
    "DistilledT2TViT",
    "GhostAttention",
    "GhostMlp",
    "LoadReport",
    "SELayer",
    "SoftSplit",
    "T2TModule",
    "T2TViT",
    "TokenPerformer",
    "TokenTransformer",
    "Transition",
    "Variant",
    "build_model",
    "checkpoint_filter_fn",
    "create_model",
    "filter_state_dict",
    "fixed_tables",
    "guess_variant",
    "is_t2t_vit",
    "list_variants",
    "load_checkpoint",
    "make_model",
    "official_param_count",
    "sinusoid_table",
    "to_2tuple_size",
]
