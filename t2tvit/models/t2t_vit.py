"""T2T-ViT: Tokens-to-Token Vision Transformer (Yuan et al., ICCV 2021).

Every official variant, and a DeiT-style distilled twin of each (``*_distilled``),
is registered with timm, so ``timm.create_model("t2t_vit_7")`` works once
``t2tvit`` is imported. State-dict keys and shapes are the official ones.

The models keep timm's model contract: ``pretrained_cfg``, ``features_only=True``
(multi-scale: the T2T module's stride-4 and stride-8 token maps, then every block at
stride 16), ``forward_intermediates``, ``feature_info``, ``reset_classifier``,
``set_grad_checkpointing``, ``group_matcher``, ``torch.fx`` tracing and
``torch.jit.script``. ``dynamic_img_size=True`` accepts any multiple-of-16 input at run
time *exactly*: the position table is a fixed sinusoid of the flattened token index, so the
table for another grid is computed, not interpolated.

Differences from the official code, all deliberate:

* ``forward_features`` returns the normalised token sequence and
  ``forward_head`` pools the class token (timm's convention), instead of the
  official ``forward_features`` returning the pooled class token;
* the backbone attention scale is always ``head_dim ** -0.5`` (the official
  ``pretrained=True`` factories switch to ``embed_dim ** -0.5``, a known bug);
* faster and fp16-safe attention kernels that compute the official function
  (see :mod:`t2tvit.models.layers`).
"""

# No ``from __future__ import annotations`` here: torch.fx copies ``forward``'s annotations into the
# code of a traced graph, and string annotations there stop ``torch.jit.script`` of that graph.
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import trunc_normal_
from timm.models import register_model
from timm.models._features import feature_take_indices
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import ConfigError
from .layers import Block, DenseBlock, SoftSplit, TokenPerformer, TokenTransformer, Transition, sinusoid_table
from .variants import DISTILLED_SUFFIX, VARIANTS, list_variants

__all__ = [
    "DistilledT2TViT",
    "T2TModule",
    "T2TViT",
    "fixed_tables",
    "official_param_count",
    "to_2tuple_size",
]

_POOLS = ("token", "avg", "")


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


@torch.jit.ignore  # a traced graph that is then scripted calls it as Python (its message is no TorchScript)
def _check_images(x: torch.Tensor, in_chans: int, img_size: tuple[int, int], dynamic: bool) -> None:
    """One clear error for a batch the model cannot take (a ``torch.fx`` leaf: see the end of the file)."""
    if x.dim() == 4 and x.shape[1] == in_chans:
        h, w = int(x.shape[2]), int(x.shape[3])
        if (h, w) == img_size or (dynamic and h > 0 and w > 0 and h % 16 == 0 and w % 16 == 0):
            return
    if dynamic:
        raise ConfigError(
            f"expected a batch of images shaped (B, {in_chans}, H, W) with H and W positive multiples of 16, "
            f"got {tuple(x.shape)}"
        )
    raise ConfigError(
        f"expected a batch of images shaped (B, {in_chans}, {img_size[0]}, {img_size[1]}), got {tuple(x.shape)}; "
        "build the model with img_size=... for another input size, or dynamic_img_size=True for any multiple of 16"
    )


@lru_cache(maxsize=16)
def _cached_table(n_position: int, dim: int) -> torch.Tensor:
    return sinusoid_table(n_position, dim)


def _position_table(x: torch.Tensor, pos_embed: torch.Tensor) -> torch.Tensor:
    """The position table for ``x``'s token count: the model's own when it matches, else the exact
    table the official code would build for that count (computed once per count, then cached)."""
    n = x.shape[1]
    if n == pos_embed.shape[1]:
        return pos_embed
    return _cached_table(n, pos_embed.shape[-1]).to(device=pos_embed.device, dtype=pos_embed.dtype)


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
        self.token_dim = token_dim
        self.grad_checkpointing = False
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

    # Tokens stay token-major throughout: (B, L, C) viewed as a (B, h, w, C) map.
    def stage1(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> (B, HW/16, token_dim) tokens on the stride-4 grid."""
        x = self.soft_split0(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint(self.attention1, x, use_reentrant=False)
        return self.attention1(x)

    def stage2(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Stride-4 tokens -> (B, HW/64, token_dim) tokens on the stride-8 grid."""
        x = self.soft_split1(x.reshape(x.shape[0], height // 4, width // 4, -1))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint(self.attention2, x, use_reentrant=False)
        return self.attention2(x)

    def embed(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Stride-8 tokens -> (B, HW/256, embed_dim) patch tokens on the stride-16 grid."""
        return self.project(self.soft_split2(x.reshape(x.shape[0], height // 8, width // 8, -1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[2], x.shape[3]
        return self.embed(self.stage2(self.stage1(x), H, W), H, W)


def _dense_backbone(
    embed_dim: int, growth_rate: int, block_config: tuple[int, ...], drop_path_rate: float, **block_kwargs: Any
) -> tuple[list[nn.Module], list[int]]:
    """T2T-ViT-Dense's blocks and transitions, and the width each one outputs.

    Drop path follows the official code exactly, quirk included: its stage ``i`` blocks all get
    ``linspace(0, rate, 12)[i]`` (the constructor's unused default depth of 12, indexed by stage).
    """
    modules: list[nn.Module] = []
    widths: list[int] = []
    dim = embed_dim
    for i, n in enumerate(block_config):
        rate = drop_path_rate * i / 11
        for j in range(n):
            modules.append(DenseBlock(growth_rate, dim + j * growth_rate, drop_path=rate, **block_kwargs))
            widths.append(dim + (j + 1) * growth_rate)
        dim += n * growth_rate
        if i != len(block_config) - 1:
            modules.append(Transition(dim, dim // 2))
            dim //= 2
            widths.append(dim)
    return modules, widths


class T2TViT(nn.Module):
    """T2T module, class token, fixed sinusoid positions, deep-narrow transformer, linear head.

    ``block_type`` selects the backbone of the official variants (``"vit"``, ``"se"``,
    ``"ghost"``, or ``"dense"`` with ``growth_rate`` and ``block_config``, whose output is
    wider than ``embed_dim``: ``num_features`` is the width the norm and head see).
    """

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
        block_type: str = "vit",
        growth_rate: int = 32,
        block_config: tuple[int, ...] | None = None,
        global_pool: str = "token",
        dynamic_img_size: bool = False,
    ) -> None:
        super().__init__()
        if num_classes < 0:
            raise ConfigError(f"num_classes must be >= 0 (0 means no head), not {num_classes}")
        if global_pool not in _POOLS:
            raise ConfigError(f"global_pool must be one of {_POOLS}, not {global_pool!r}")
        self.img_size = to_2tuple_size(img_size)
        self.num_prefix_tokens = type(self).num_prefix_tokens  # an instance attribute TorchScript can read
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.dynamic_img_size = dynamic_img_size
        self.grad_checkpointing = False
        self.embed_dim = embed_dim
        self.tokens_to_token = T2TModule(self.img_size, tokens_type, in_chans, embed_dim, token_dim)
        num_patches = self.tokens_to_token.num_patches

        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self._init_prefix_tokens()
        # A fixed table, not a weight: a persistent buffer keeps the official state-dict key ``pos_embed``
        # while optimizers, gradient checks and timm's tooling see only what is trained.
        table = sinusoid_table(num_patches + self.num_prefix_tokens, embed_dim)
        self.register_buffer("pos_embed", table.to(self.cls_token.device), persistent=True)
        self.pos_drop = nn.Dropout(p=drop_rate)
        kw = dict(
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            qk_scale=qk_scale,
            drop=drop_rate,
            attn_drop=attn_drop_rate,
            norm_layer=norm_layer,
        )
        if block_type == "dense":
            config = tuple(block_config or ())
            if not config or sum(config) != depth:
                raise ConfigError(f"a dense backbone needs block_config summing to depth={depth}, got {block_config}")
            blocks, widths = _dense_backbone(embed_dim, growth_rate, config, drop_path_rate, **kw)
        else:
            # Stochastic depth grows linearly over depth (plain floats: also builds under torch.device("meta")).
            dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
            blocks = [Block(embed_dim, drop_path=dpr[i], block_type=block_type, **kw) for i in range(depth)]
            widths = [embed_dim] * depth
        self.blocks = nn.ModuleList(blocks)
        self.num_features = self.head_hidden_size = widths[-1]
        self.feature_info = [
            dict(module="tokens_to_token.attention1", num_chs=token_dim, reduction=4),
            dict(module="tokens_to_token.attention2", num_chs=token_dim, reduction=8),
        ] + [dict(module=f"blocks.{i}", num_chs=w, reduction=16) for i, w in enumerate(widths)]
        self.norm = norm_layer(self.num_features)
        self.head = self._new_head(num_classes)
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

    def _new_head(self, num_classes: int) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        head = nn.Linear(self.num_features, num_classes)
        _init_weights(head)
        return head

    # -- timm model API --------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "dist_token"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for layer-wise LR decay: the T2T module and tokens form the stem."""
        return dict(
            stem=r"^cls_token|^dist_token|^pos_embed|^tokens_to_token",
            blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block (and the T2T module's two token blocks) in the backward pass."""
        self.grad_checkpointing = enable
        self.tokens_to_token.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A fresh head for ``num_classes`` (0: none); ``global_pool`` is ``"token"`` (the class
        token, as trained officially), ``"avg"`` (mean of the patch tokens) or ``""`` (no pooling)."""
        if global_pool is not None:
            if global_pool not in _POOLS:
                raise ConfigError(f"global_pool must be one of {_POOLS}, not {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = self._new_head(num_classes)

    # -- forward -----------------------------------------------------------------------------
    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat((self._prefix_tokens(x.shape[0]), x), dim=1)
        pos = self.pos_embed
        if not torch.jit.is_scripting():
            if self.dynamic_img_size:
                pos = _position_table(x, pos)
        return self.pos_drop(x + pos)

    def _check(self, x: torch.Tensor) -> None:
        if not torch.jit.is_scripting():
            if not torch.jit.is_tracing():
                _check_images(x, self.in_chans, self.img_size, self.dynamic_img_size)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> normalised tokens (B, prefix + HW/256, num_features)."""
        self._check(x)
        x = self._pos_embed(self.tokens_to_token(x))
        for blk in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return self.norm(x)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.global_pool == "token":
            return x[:, 0]
        if self.global_pool == "avg":
            return x[:, self.num_prefix_tokens :].mean(dim=1)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self._pool(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # -- intermediate features (timm's forward_intermediates contract) ------------------------
    @torch.jit.ignore
    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | tuple[int, ...] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Any] | tuple[torch.Tensor, list[Any]]:
        """Intermediate token maps, indexed like ``feature_info``: 0 and 1 are the T2T module's
        stride-4 and stride-8 tokens (``token_dim`` channels), 2.. are the blocks (stride 16).

        ``indices``: the last n when an int, all when None; ``output_fmt`` ``"NCHW"`` maps or
        ``"NLC"`` token sequences; ``norm`` applies the final norm to block outputs (only where
        their width is ``num_features``); prefix tokens (class, distillation) are split off and,
        with ``return_prefix_tokens``, returned beside each map.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ConfigError(f"output_fmt must be 'NCHW' or 'NLC', not {output_fmt!r}")
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        if norm and any(self.feature_info[i]["num_chs"] != self.num_features for i in take):
            raise ConfigError(
                f"norm=True applies the final norm, which only fits outputs {self.num_features} wide; "
                f"indices {take} include the T2T module's {self.tokens_to_token.token_dim}-wide tokens or narrower "
                "dense blocks"
            )
        self._check(x)
        B, H, W = x.shape[0], x.shape[2], x.shape[3]
        grids = [(H // 4, W // 4), (H // 8, W // 8)] + [(H // 16, W // 16)] * len(self.blocks)
        outputs: list[Any] = []

        def keep(index: int, y: torch.Tensor, prefix: int) -> None:
            if index not in take:
                return
            if norm:
                y = self.norm(y)
            spatial, tokens = y[:, prefix:], y[:, :prefix]
            if output_fmt == "NCHW":
                spatial = spatial.reshape(B, grids[index][0], grids[index][1], -1).permute(0, 3, 1, 2).contiguous()
            outputs.append((spatial, tokens) if return_prefix_tokens else spatial)

        t2t = self.tokens_to_token
        y = t2t.stage1(x)
        keep(0, y, 0)
        if not (stop_early and max_index < 1):
            y = t2t.stage2(y, H, W)
            keep(1, y, 0)
        if stop_early and max_index < 2:
            return outputs if intermediates_only else (y, outputs)
        y = self._pos_embed(t2t.embed(y, H, W))
        blocks = self.blocks[: max_index - 1] if stop_early else self.blocks
        for i, blk in enumerate(blocks):
            y = checkpoint(blk, y, use_reentrant=False) if self.grad_checkpointing else blk(y)
            keep(i + 2, y, self.num_prefix_tokens)
        if intermediates_only:
            return outputs
        return self.norm(y), outputs

    @torch.jit.ignore
    def prune_intermediate_layers(
        self, indices: int | list[int] | tuple[int, ...] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the blocks after the last index wanted (and the norm and head), for a feature extractor."""
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        self.blocks = self.blocks[: max(max_index - 1, 0)]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take


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
        self.head_dist = self._new_head(self.num_classes)

    def _prefix_tokens(self, batch: int) -> torch.Tensor:
        return torch.cat((self.cls_token, self.dist_token), dim=1).expand(batch, -1, -1)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return nn.ModuleList([self.head, self.head_dist])

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool not in (None, "token", ""):
            raise ConfigError(f"a distilled model pools its class and distillation tokens, not {global_pool!r}")
        super().reset_classifier(num_classes, global_pool)
        self.head_dist = self._new_head(num_classes)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "":
            return x if pre_logits else self.head(x)
        if pre_logits:
            return (x[:, 0] + x[:, 1]) / 2
        return (self.head(x[:, 0]) + self.head_dist(x[:, 1])) / 2

    def forward(self, x: torch.Tensor) -> Any:
        x = self.forward_features(x)
        if not torch.jit.is_scripting():
            if self.training and not torch.jit.is_tracing() and self.global_pool == "token":
                return self.head(x[:, 0]), self.head_dist(x[:, 1])
        return self.forward_head(x)


def fixed_tables(model: nn.Module) -> dict[str, torch.Tensor]:
    """The fixed tables of a T2T-ViT (the sinusoid ``pos_embed``, every token Performer's random features
    ``w``), by state-dict key. The official code keeps them as frozen parameters; here they are persistent
    buffers (same keys), so ``parameters()`` holds only what is trained."""
    tables: dict[str, torch.Tensor] = {}
    for prefix, m in model.named_modules():
        key = "pos_embed" if isinstance(m, T2TViT) else "w" if isinstance(m, TokenPerformer) else None
        if key is not None and isinstance(getattr(m, key, None), torch.Tensor):
            tables[f"{prefix}.{key}" if prefix else key] = getattr(m, key)
    return tables


def official_param_count(model: nn.Module) -> int:
    """Parameters as the paper and the official code count them: ``parameters()`` plus :func:`fixed_tables`."""
    return sum(p.numel() for p in model.parameters()) + sum(t.numel() for t in fixed_tables(model).values())


def _init_weights(m: nn.Module) -> None:
    if any(p.is_meta for p in m.parameters(recurse=False)):
        return  # shapes only (``t2t info`` builds on the meta device): no values to set, no random numbers drawn
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


# -- registration with timm -----------------------------------------------------------------


def _cfg(name: str) -> dict[str, Any]:
    v = VARIANTS[name.removesuffix(DISTILLED_SUFFIX)]
    released = f"official release {v.official_file} ({v.paper_top1}% top-1)" if v.official_file else "no release"
    return {
        "url": "",  # nothing is downloaded: pass a local file (see _create_t2t_vit)
        "hf_hub_id": None,
        "architecture": name,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "min_input_size": (3, 16, 16),
        "fixed_input_size": True,  # unless built with dynamic_img_size=True
        "pool_size": None,  # features are a token sequence, not a map (timm's non-standard ViT-like models)
        "crop_pct": 0.9,
        "crop_mode": "center",
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        # No convolution: the first weights that see pixels are the Linear over the 7x7 soft split.
        "first_conv": "tokens_to_token.attention1." + ("kqv" if v.tokens_type == "performer" else "attn.qkv"),
        "classifier": ("head", "head_dist") if name.endswith(DISTILLED_SUFFIX) else "head",
        "license": "bsd-3-clause-clear",  # the official code's Clear BSD License
        "origin_url": "https://github.com/yitu-opensource/T2T-ViT",
        "paper_name": "Tokens-to-Token ViT: Training Vision Transformers from Scratch on ImageNet",
        "paper_ids": "arXiv:2101.11986",
        "notes": (f"ImageNet-1k weights: {released}; load a local file: t2tvit.create_model(name, checkpoint=...)",),
    }


default_cfgs = {name: _cfg(name) for name in list_variants()}

# features_only: one map per stride (4, 8, 16), read through forward_intermediates.
_FEATURE_CFG = {"out_indices": (0, 1, -1), "feature_cls": "getter"}


def _pretrained_overlay(name: str, variant: Any, pretrained_cfg: Any, overlay: dict[str, Any]) -> dict[str, Any]:
    """The overlay that makes timm's loader take a local file: the file is read here, safely (no unpickled
    code; official ``.pth.tar``, ours, safetensors), and handed over as ``state_dict`` with its class count."""
    from timm.models import resolve_pretrained_cfg

    from ..checkpoint import read_checkpoint, read_state_dict

    cfg = resolve_pretrained_cfg(name, pretrained_cfg, overlay).to_dict()
    sd = cfg.get("state_dict")
    if sd is None:
        if not cfg.get("file"):
            hint = f" (the official release is {variant.official_file})" if variant.official_file else ""
            raise ConfigError(
                f"{name} has no downloadable weights{hint}: pass a local file with "
                f"t2tvit.create_model({name!r}, checkpoint=PATH) or "
                "timm.create_model(..., pretrained=True, pretrained_cfg_overlay=dict(file=PATH))"
            )
        sd, _, _ = read_state_dict(read_checkpoint(cfg["file"]), use_ema=True)
    overlay = dict(overlay, state_dict=sd)
    if "head.weight" in sd:  # the source's class count: timm keeps the head when the model's matches
        overlay.setdefault("num_classes", int(sd["head.weight"].shape[0]))
    return overlay


def _create_t2t_vit(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Build a registered variant with timm's ``build_model_with_cfg``: the variants table gives the
    architecture, :func:`~t2tvit.models.weights.checkpoint_filter_fn` maps weights, ``features_only`` wraps
    the model in timm's ``FeatureGetterNet``. The model's ``pretrained_cfg`` then states the input size,
    class count and fixed-size flag it was built with."""
    from timm.models import build_model_with_cfg
    from timm.models._features import FeatureGetterNet

    from .weights import checkpoint_filter_fn

    distilled = name.endswith(DISTILLED_SUFFIX)
    variant = VARIANTS[name.removesuffix(DISTILLED_SUFFIX)]
    arch = dict(
        tokens_type=variant.tokens_type,
        embed_dim=variant.embed_dim,
        depth=variant.depth,
        num_heads=variant.num_heads,
        mlp_ratio=variant.mlp_ratio,
        block_type=variant.block_type,
    )
    if variant.block_type == "dense":
        arch.update(growth_rate=variant.growth_rate, block_config=variant.block_config)
    clash = sorted(set(arch) & set(kwargs))
    if clash:
        raise TypeError(f"{name} fixes {', '.join(clash)}; build T2TViT(...) directly for a custom architecture")
    device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
    feature_cfg = dict(_FEATURE_CFG, **(kwargs.pop("feature_cfg", None) or {}))
    for key in ("feature_cls", "output_fmt"):
        if key in kwargs:
            feature_cfg[key] = kwargs.pop(key)
    if not kwargs.get("features_only", False):
        kwargs.pop("out_indices", None)
    feature_cls = feature_cfg["feature_cls"]
    if not (feature_cls == "getter" or (isinstance(feature_cls, type) and issubclass(feature_cls, FeatureGetterNet))):
        raise ConfigError(
            f"{name} extracts features through forward_intermediates: feature_cls 'getter', not {feature_cls!r}"
        )
    pretrained_cfg = kwargs.pop("pretrained_cfg", None)
    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    if pretrained:
        overlay = _pretrained_overlay(name, variant, pretrained_cfg, overlay)
    model = build_model_with_cfg(
        DistilledT2TViT if distilled else T2TViT,
        name,
        pretrained,
        pretrained_cfg=pretrained_cfg,
        pretrained_cfg_overlay=overlay,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=feature_cfg,
        **arch,
        **kwargs,
    )
    net = model.model if isinstance(model, FeatureGetterNet) else model
    for m in {id(model): model, id(net): net}.values():
        cfg = dict(m.pretrained_cfg)
        cfg.pop("state_dict", None)  # the loaded tensors are the model's now; do not keep a second copy
        cfg.update(input_size=(net.in_chans, *net.img_size), fixed_input_size=not net.dynamic_img_size)
        if "num_classes" in cfg:
            cfg["num_classes"] = net.num_classes
        m.pretrained_cfg = m.default_cfg = cfg
    if device is not None or dtype is not None:
        model = model.to(device=device, dtype=dtype)
    return model


def _make_entrypoint(name: str) -> Callable[..., nn.Module]:
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        return _create_t2t_vit(name, pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    v = VARIANTS[name.removesuffix(DISTILLED_SUFFIX)]
    backbone = {"vit": "", "se": " SE", "ghost": " ghost", "dense": f" dense {v.block_config} growth {v.growth_rate}"}
    entrypoint.__doc__ = (
        f"{name}: {v.tokens_type} T2T module, embed {v.embed_dim}, depth {v.depth}, "
        f"{v.num_heads} heads, MLP ratio {v.mlp_ratio:g}{backbone[v.block_type]}"
        + (" + DeiT distillation token." if name.endswith(DISTILLED_SUFFIX) else ".")
    )
    return entrypoint


for _name in list_variants():
    globals()[_name] = register_model(_make_entrypoint(_name))
    __all__.append(_name)
del _name

# torch.fx leaves (as in layers.py): a traced model calls these as a whole at run time.
torch.fx.wrap("_check_images")
torch.fx.wrap("_position_table")
