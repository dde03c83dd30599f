"""The T2T-ViT model family; importing this registers every variant with timm."""

from .layers import Attention, Block, SoftSplit, TokenPerformer, TokenTransformer, sinusoid_table
from .t2t_vit import (
    DISTILLED_SUFFIX,
    VARIANTS,
    DistilledT2TViT,
    T2TModule,
    T2TViT,
    Variant,
    list_variants,
    to_2tuple_size,
)

__all__ = [
    "DISTILLED_SUFFIX",
    "VARIANTS",
    "Attention",
    "Block",
    "DistilledT2TViT",
    "T2TModule",
    "SoftSplit",
    "T2TViT",
    "TokenPerformer",
    "TokenTransformer",
    "Variant",
    "list_variants",
    "sinusoid_table",
    "to_2tuple_size",
]
