"""The architecture of every official T2T-ViT variant: plain data, read by the model factories,
the checkpoint checks (:func:`t2tvit.models.weights.guess_variant`) and ``t2t info``."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_MODEL", "DISTILLED_SUFFIX", "VARIANTS", "Variant", "list_variants"]

DISTILLED_SUFFIX = "_distilled"
# The variant built, exported and profiled when nothing (no flag, no checkpoint) names one.
DEFAULT_MODEL = "t2t_vit_7"


@dataclass(frozen=True)
class Variant:
    """Architecture of one official variant."""

    tokens_type: str  # "performer" or "transformer" in the T2T module
    embed_dim: int  # token width after the T2T module (the backbone's input width)
    depth: int  # transformer blocks in the backbone
    num_heads: int
    mlp_ratio: float
    paper_top1: float | None  # ImageNet top-1 of the official released weights, for reference
    official_file: str  # file name of the official release ("" where none was released)
    block_type: str = "vit"  # backbone block: "vit", "se", "ghost" or "dense"
    growth_rate: int = 0  # dense only: channels each dense block adds
    block_config: tuple[int, ...] = ()  # dense only: blocks per dense stage (transitions between)

    @property
    def block_modules(self) -> int:
        """Entries of the model's ``blocks`` list: the blocks, plus the dense transitions."""
        return self.depth + max(len(self.block_config) - 1, 0)


VARIANTS: dict[str, Variant] = {
    "t2t_vit_7": Variant("performer", 256, 7, 4, 2.0, 71.7, "71.7_T2T_ViT_7.pth.tar"),
    "t2t_vit_10": Variant("performer", 256, 10, 4, 2.0, 75.2, "75.2_T2T_ViT_10.pth.tar"),
    "t2t_vit_12": Variant("performer", 256, 12, 4, 2.0, 76.5, "76.5_T2T_ViT_12.pth.tar"),
    "t2t_vit_14": Variant("performer", 384, 14, 6, 3.0, 81.5, "81.5_T2T_ViT_14.pth.tar"),
    "t2t_vit_19": Variant("performer", 448, 19, 7, 3.0, 81.9, "81.9_T2T_ViT_19.pth.tar"),
    "t2t_vit_24": Variant("performer", 512, 24, 8, 3.0, 82.3, "82.3_T2T_ViT_24.pth.tar"),
    "t2t_vit_t_14": Variant("transformer", 384, 14, 6, 3.0, 81.7, "81.7_T2T_ViTt_14.pth.tar"),
    "t2t_vit_t_19": Variant("transformer", 448, 19, 7, 3.0, 82.4, "82.4_T2T_ViTt_19.pth.tar"),
    "t2t_vit_t_24": Variant("transformer", 512, 24, 8, 3.0, 82.6, "82.6_T2T_ViTt_24.pth.tar"),
    "t2t_vit_14_resnext": Variant("performer", 384, 14, 32, 3.0, None, ""),
    "t2t_vit_14_wide": Variant("performer", 768, 4, 12, 3.0, None, ""),
    # The paper's "CNN to T2T-ViT" designs (models/t2t_vit_{dense,se,ghost}.py upstream; no
    # weights were released). Dense: 128-wide tokens, 3/6/6/4 dense blocks growing by 64.
    "t2t_vit_dense": Variant("performer", 128, 19, 8, 2.0, None, "", "dense", 64, (3, 6, 6, 4)),
    "t2t_vit_14_se": Variant("performer", 384, 14, 6, 3.0, None, "", "se"),
    "t2t_vit_16_ghost": Variant("performer", 384, 16, 6, 3.0, None, "", "ghost"),
}


def list_variants(distilled: bool | None = None) -> list[str]:
    """Names of all registered T2T-ViT models (``distilled``: only / none / both)."""
    base = list(VARIANTS)
    dist = [n + DISTILLED_SUFFIX for n in base]
    if distilled is None:
        return base + dist
    return dist if distilled else base
