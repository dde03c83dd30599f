"""T2T-ViT: Tokens-to-Token Vision Transformer (Yuan et al., ICCV 2021).

Every official variant, and a DeiT-style distilled twin of each (``*_distilled``),
is registered with timm, so ``timm.create_model("t2t_vit_7")`` works once
``t2tvit`` is imported. State-dict keys and shapes are the official ones.

Differences from the official code, all deliberate:

* ``forward_features`` returns the normalised token sequence and
  ``forward_head`` pools the class token (timm's convention), instead of the
  official ``forward_features`` returning the pooled class token;
* the backbone attention scale is always ``head_dim ** -0.5`` (the official
  ``pretrained=True`` factories switch to ``embed_dim ** -0.5``, a known bug);
* faster and fp16-safe attention kernels (see :mod:`t2tvit.models.layers`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import trunc_normal_
from timm.models import register_model
from torch import nn

from ..errors import ConfigError
from .layers import Block, SoftSplit, TokenPerformer, TokenTransformer, sinusoid_table

__all__ = [
    "VARIANTS",
    "DistilledT2TViT",
    "T2TModule",
    "T2TViT",
    "Variant",
    "list_variants",
    "to_2tuple_size",
]


@dataclass(frozen=True)
class Variant:
    """Architecture of one official variant (what the factories and checkpoint checks read)."""

    tokens_type: str  # "performer" or "transformer" in the T2T module
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float
    paper_top1: float | None  # ImageNet top-1 of the official released weights, for reference
    official_file: str  # file name of the official release ("" where none was released)


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
}

DISTILLED_SUFFIX = "_distilled"


def list_variants(distilled: bool | None = None) -> list[str]:
    """Names of all registered T2T-ViT models (``distilled``: only / none / both)."""
    base = list(VARIANTS)
    dist = [n + DISTILLED_SUFFIX for n in base]
    if distilled is None:
        return base + dist
    return dist if distilled else base


def to_2tuple_size(img_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """Validate an image size: an int or (H, W), each a positive multiple of 16."""
    if isinstance(img_size, int):
        size = (img_size, img_size)
    else:
        size = tuple(int(s) for s in img_size)
    if len(size) != 2 or any(s <= 0 or s % 16 for s in size):
        raise ConfigError(
            f"img_size {img_size} is not a positive multiple of 16: T2T-ViT's three soft splits "
            "downsample by 4, 2 and 2; use e.g. 224 or 384"
        )
    return size  # type: ignore[return-value]


class T2TModule(nn.Module):
    """Tokens-to-Token module: soft split (7/4/2), T2T block, soft split (3/2/1), T2T block,
    soft split (3/2/1), linear projection to ``embed_dim``."""

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        tokens_type: str = "performer",
        in_chans: int = 3,
        embed_dim: int = 768,
        token_dim: int = 64,
    ) -> None:
        super().__init__()
        self.img_size = to_2tuple_size(img_size)
        self.tokens_type = tokens_type
        self.soft_split0 = SoftSplit(kernel_size=7, stride=4, padding=2, channels_last=False)
        self.soft_split1 = SoftSplit(kernel_size=3, stride=2, padding=1, channels_last=True)
        self.soft_split2 = SoftSplit(kernel_size=3, stride=2, padding=1, channels_last=True)
        if tokens_type == "performer":
            self.attention1 = TokenPerformer(dim=in_chans * 7 * 7, in_dim=token_dim, kernel_ratio=0.5)
            self.attention2 = TokenPerformer(dim=token_dim * 3 * 3, in_dim=token_dim, kernel_ratio=0.5)
        elif tokens_type == "transformer":
            self.attention1 = TokenTransformer(dim=in_chans * 7 * 7, in_dim=token_dim, num_heads=1, mlp_ratio=1.0)
            self.attention2 = TokenTransformer(dim=token_dim * 3 * 3, in_dim=token_dim, num_heads=1, mlp_ratio=1.0)
        else:
            raise ConfigError(f"tokens_type must be 'performer' or 'transformer', not {tokens_type!r}")
        self.project = nn.Linear(token_dim * 3 * 3, embed_dim)
        self.grid_size = (self.img_size[0] // 16, self.img_size[1] // 16)
        self.num_patches = self.grid_size[0] * self.grid_size[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        # Tokens stay token-major throughout: (B, L, C) viewed as a (B, h, w, C) map.
        x = self.attention1(self.soft_split0(x))  # (B, HW/16, 64)
        x = self.attention2(self.soft_split1(x.reshape(B, H // 4, W // 4, -1)))  # (B, HW/64, 64)
        return self.project(self.soft_split2(x.reshape(B, H // 8, W // 8, -1)))  # (B, HW/256, embed_dim)


class T2TViT(nn.Module):
    """T2T module, class token, fixed sinusoid positions, deep-narrow transformer, linear head."""

    num_prefix_tokens = 1

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        tokens_type: str = "performer",
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        token_dim: int = 64,
    ) -> None:
        super().__init__()
        if num_classes < 0:
            raise ConfigError(f"num_classes must be >= 0 (0 means no head), not {num_classes}")
        self.img_size = to_2tuple_size(img_size)
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.num_features = self.embed_dim = embed_dim
        self.tokens_to_token = T2TModule(self.img_size, tokens_type, in_chans, embed_dim, token_dim)
        num_patches = self.tokens_to_token.num_patches

        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self._init_prefix_tokens()
        table = sinusoid_table(num_patches + self.num_prefix_tokens, embed_dim)
        self.pos_embed = nn.Parameter(table.to(self.cls_token.device), requires_grad=False)
        self.pos_drop = nn.Dropout(p=drop_rate)
        # Stochastic depth grows linearly over depth (plain floats: also builds under torch.device("meta")).
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, qk_scale, drop_rate, attn_drop_rate, dpr[i], norm_layer)
            for i in range(depth)
        )
        self.norm = norm_layer(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_heads()

        trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_weights)

    # -- hooks the distilled model overrides ---------------------------------------------
    def _init_prefix_tokens(self) -> None:
        pass

    def _init_heads(self) -> None:
        pass

    def _prefix_tokens(self, batch: int) -> torch.Tensor:
        return self.cls_token.expand(batch, -1, -1)

    # -- timm model API --------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "dist_token", "pos_embed"}

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if isinstance(self.head, nn.Linear):
            _init_weights(self.head)

    def _check_input(self, x: torch.Tensor) -> None:
        expected = (self.in_chans, *self.img_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ConfigError(
                f"expected a batch of images shaped (B, {expected[0]}, {expected[1]}, {expected[2]}), "
                f"got {tuple(x.shape)}; build the model with img_size=... for another input size"
            )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> normalised tokens (B, prefix + HW/256, embed_dim)."""
        if not torch.jit.is_scripting() and not torch.jit.is_tracing():
            self._check_input(x)
        x = self.tokens_to_token(x)
        x = torch.cat((self._prefix_tokens(x.shape[0]), x), dim=1)
        x = self.pos_drop(x + self.pos_embed)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x[:, 0]
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class DistilledT2TViT(T2TViT):
    """T2T-ViT with a DeiT distillation token and head.

    Training mode returns ``(cls_logits, dist_logits)`` so a distillation loss can
    supervise each head; eval mode, TorchScript and tracing return their average,
    which is what evaluation and every exported artifact use.
    """

    num_prefix_tokens = 2

    def _init_prefix_tokens(self) -> None:
        self.dist_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim))
        trunc_normal_(self.dist_token, std=0.02)

    def _init_heads(self) -> None:
        self.head_dist = nn.Linear(self.embed_dim, self.num_classes) if self.num_classes > 0 else nn.Identity()

    def _prefix_tokens(self, batch: int) -> torch.Tensor:
        return torch.cat((self.cls_token, self.dist_token), dim=1).expand(batch, -1, -1)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return nn.ModuleList([self.head, self.head_dist])

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        super().reset_classifier(num_classes, global_pool)
        self.head_dist = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if isinstance(self.head_dist, nn.Linear):
            _init_weights(self.head_dist)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if pre_logits:
            return (x[:, 0] + x[:, 1]) / 2
        return (self.head(x[:, 0]) + self.head_dist(x[:, 1])) / 2

    def forward(self, x: torch.Tensor) -> Any:
        x = self.forward_features(x)
        if not torch.jit.is_scripting():
            if self.training and not torch.jit.is_tracing():
                return self.head(x[:, 0]), self.head_dist(x[:, 1])
        return self.forward_head(x)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


# -- registration with timm -----------------------------------------------------------------


def _cfg(name: str, **kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": None,
        "crop_pct": 0.9,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": None,
        "classifier": ("head", "head_dist") if name.endswith(DISTILLED_SUFFIX) else "head",
        "paper_ids": "arXiv:2101.11986",
        "license": "other",
        **kwargs,
    }


default_cfgs = {name: _cfg(name) for name in list_variants()}


def _create_t2t_vit(name: str, pretrained: bool = False, **kwargs: Any) -> T2TViT:
    distilled = name.endswith(DISTILLED_SUFFIX)
    variant = VARIANTS[name.removesuffix(DISTILLED_SUFFIX)]
    overlay = kwargs.pop("pretrained_cfg_overlay", None) or {}
    kwargs.pop("pretrained_cfg", None)
    kwargs.pop("cache_dir", None)
    device = kwargs.pop("device", None)
    dtype = kwargs.pop("dtype", None)
    arch = dict(
        tokens_type=variant.tokens_type,
        embed_dim=variant.embed_dim,
        depth=variant.depth,
        num_heads=variant.num_heads,
        mlp_ratio=variant.mlp_ratio,
    )
    clash = sorted(set(arch) & set(kwargs))
    if clash:
        raise TypeError(f"{name} fixes {', '.join(clash)}; build T2TViT(...) directly for a custom architecture")
    model = (DistilledT2TViT if distilled else T2TViT)(**arch, **kwargs)
    cfg = dict(default_cfgs[name], **overlay)
    cfg.update(architecture=name, num_classes=model.num_classes, input_size=(model.in_chans, *model.img_size))
    model.pretrained_cfg = model.default_cfg = cfg
    if pretrained:
        # No hub here: weights come from a local file, timm-style via pretrained_cfg_overlay.
        if not cfg.get("file"):
            hint = f" (the official release is {variant.official_file})" if variant.official_file else ""
            raise ConfigError(
                f"{name} has no downloadable weights{hint}: pass a local file with "
                f"t2tvit.create_model({name!r}, checkpoint=PATH) or "
                "timm.create_model(..., pretrained=True, pretrained_cfg_overlay=dict(file=PATH))"
            )
        from ..checkpoint import load_checkpoint

        load_checkpoint(model, cfg["file"], reset_head=model.num_classes != 1000)
    if device is not None or dtype is not None:
        model = model.to(device=device, dtype=dtype)
    return model


def _make_entrypoint(name: str) -> Callable[..., T2TViT]:
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> T2TViT:
        return _create_t2t_vit(name, pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    v = VARIANTS[name.removesuffix(DISTILLED_SUFFIX)]
    entrypoint.__doc__ = (
        f"{name}: {v.tokens_type} T2T module, embed {v.embed_dim}, depth {v.depth}, "
        f"{v.num_heads} heads, MLP ratio {v.mlp_ratio:g}"
        + (" + DeiT distillation token." if name.endswith(DISTILLED_SUFFIX) else ".")
    )
    return entrypoint


for _name in list_variants():
    globals()[_name] = register_model(_make_entrypoint(_name))
    __all__.append(_name)
del _name
