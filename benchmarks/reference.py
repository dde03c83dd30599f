"""The straightforward T2T-ViT formulation: the yardstick for speed and numerics.

This is the model written the way the paper's equations read (and the way the
official repository computes it): an explicit ``einsum`` token Performer with
``.repeat()`` copies and the official ``+ 1e-8`` epsilon, explicit ``softmax(q k^T) v``
attention in the backbone and the token transformer, and the official SE, ghost (``Conv1d``
cheap operations) and dense backbones. Module and parameter names follow the official layout,
so ``load_state_dict(strict=True)`` between this model and :mod:`t2tvit` checks key-for-key
checkpoint compatibility in both directions. Converted with ``.double()`` it is the float64
evaluation of the official formula that the tests hold our fp32 model to.

It is used by ``benchmarks/bench_model.py`` (ours vs this, interleaved) and by
the parity tests; it is not part of the product and is never exported.
"""

from __future__ import annotations

import math

import torch
from timm.layers import Mlp
from torch import nn

from t2tvit.models import DISTILLED_SUFFIX, VARIANTS, sinusoid_table

__all__ = ["ReferenceT2TViT", "reference_model"]


def _softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    B, _, N, _ = q.shape
    attn = ((q @ k.transpose(-2, -1)) * scale).softmax(dim=-1)
    return (attn @ v).transpose(1, 2).reshape(B, N, -1)


class RefSELayer(nn.Module):
    def __init__(self, channel: int, reduction: int = 16) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Sequential(
            nn.Linear(channel, channel // reduction, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(channel // reduction, channel, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(1, 2)  # (B, C, N)
        b, c, _ = x.shape
        y = self.fc(self.avg_pool(x).view(b, c)).view(b, c, 1)
        return (x * y.expand_as(x)).transpose(1, 2)


class RefAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False, se: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.se_layer = RefSELayer(dim) if se else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        x = self.proj(_softmax_attention(qkv[0], qkv[1], qkv[2], self.scale))
        return self.se_layer(x) if self.se_layer is not None else x


class RefGhostAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        half = dim // 2
        for name in ("q", "k", "v"):
            setattr(self, name, nn.Linear(dim, half, bias=False))
            setattr(self, f"cheap_operation_{name}", nn.Conv1d(half, half, kernel_size=1, groups=half, bias=False))
        self.proj = nn.Linear(dim, dim)

    def _heads(self, name: str, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        y = getattr(self, name)(x)
        y1 = getattr(self, f"cheap_operation_{name}")(y.transpose(1, 2)).transpose(1, 2)
        return torch.cat((y, y1), dim=2).reshape(B, N, self.num_heads, C // self.num_heads).permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (self._heads(n, x) for n in ("q", "k", "v"))
        return self.proj(_softmax_attention(q, k, v, self.scale))


class RefGhostMlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.cheap_operation2 = nn.Conv1d(dim, dim, kernel_size=1, groups=dim, bias=False)
        self.cheap_operation3 = nn.Conv1d(dim, dim, kernel_size=1, groups=dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.act(self.fc1(x))
        x2 = self.act(self.cheap_operation2(x1.transpose(1, 2)).transpose(1, 2))
        x3 = self.act(self.cheap_operation3(x1.transpose(1, 2)).transpose(1, 2))
        return self.fc2(torch.cat((x1, x2, x3), dim=2))


class RefBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, block_type: str = "vit") -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        ghost = block_type == "ghost"
        self.attn = RefGhostAttention(dim, num_heads) if ghost else RefAttention(dim, num_heads, se=block_type == "se")
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = RefGhostMlp(dim, hidden) if ghost else Mlp(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class RefDenseBlock(RefBlock):
    def __init__(self, growth_rate: int, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__(dim, num_heads, mlp_ratio)
        self.dense_linear = nn.Linear(dim, growth_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.dense_linear(super().forward(x))], 2)


class RefTransition(nn.Module):
    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.act = nn.GELU()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.linear(x))


def _ref_dense_blocks(
    dim: int, growth: int, config: tuple[int, ...], num_heads: int, mlp_ratio: float
) -> tuple[list[nn.Module], int]:
    blocks: list[nn.Module] = []
    for i, n in enumerate(config):
        blocks += [RefDenseBlock(growth, dim + j * growth, num_heads, mlp_ratio) for j in range(n)]
        dim += n * growth
        if i != len(config) - 1:
            blocks.append(RefTransition(dim, dim // 2))
            dim //= 2
    return blocks, dim


def _wide(x: torch.Tensor) -> torch.Tensor:
    # The official code calls .float() here (for AMP); a float64 model stays float64, so the
    # reference can also serve as the exact (float64) evaluation of the official formula.
    return x if x.dtype == torch.float64 else x.float()


class RefTokenPerformer(nn.Module):
    def __init__(self, dim: int, in_dim: int, kernel_ratio: float = 0.5) -> None:
        super().__init__()
        self.emb = in_dim
        self.kqv = nn.Linear(dim, 3 * self.emb)
        self.dp = nn.Dropout(0.1)
        self.proj = nn.Linear(self.emb, self.emb)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(self.emb)
        self.epsilon = 1e-8
        self.mlp = nn.Sequential(
            nn.Linear(self.emb, self.emb), nn.GELU(), nn.Linear(self.emb, self.emb), nn.Dropout(0.1)
        )
        self.m = int(self.emb * kernel_ratio)
        self.w = nn.Parameter(
            nn.init.orthogonal_(torch.randn(self.m, self.emb)) * math.sqrt(self.m), requires_grad=False
        )

    def prm_exp(self, x: torch.Tensor) -> torch.Tensor:
        # phi(x) = exp(w x - |x|^2 / 2) / sqrt(m): positive random features of the softmax kernel
        xd = ((x * x).sum(dim=-1, keepdim=True)).repeat(1, 1, self.m) / 2
        wtx = torch.einsum("bti,mi->btm", _wide(x), self.w)
        return torch.exp(wtx - xd) / math.sqrt(self.m)

    def single_attn(self, x: torch.Tensor) -> torch.Tensor:
        k, q, v = torch.split(self.kqv(x), self.emb, dim=-1)
        kp, qp = self.prm_exp(k), self.prm_exp(q)
        D = torch.einsum("bti,bi->bt", qp, kp.sum(dim=1)).unsqueeze(dim=2)
        kptv = torch.einsum("bin,bim->bnm", _wide(v), kp)
        y = torch.einsum("bti,bni->btn", qp, kptv) / (D.repeat(1, 1, self.emb) + self.epsilon)
        return v + self.dp(self.proj(y))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.single_attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class RefTokenAttention(nn.Module):
    def __init__(self, dim: int, in_dim: int) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.scale = dim**-0.5  # the official token transformer scales by its input width
        self.qkv = nn.Linear(dim, in_dim * 3, bias=False)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(in_dim, in_dim)
        self.proj_drop = nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, 1, self.in_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(B, N, self.in_dim)
        x = self.proj_drop(self.proj(x))
        return v.squeeze(1) + x


class RefTokenTransformer(nn.Module):
    def __init__(self, dim: int, in_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = RefTokenAttention(dim, in_dim)
        self.norm2 = nn.LayerNorm(in_dim)
        self.mlp = Mlp(in_dim, in_dim, out_features=in_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class RefT2TModule(nn.Module):
    def __init__(self, img_size: int, tokens_type: str, embed_dim: int, token_dim: int = 64) -> None:
        super().__init__()
        self.soft_split0 = nn.Unfold(kernel_size=(7, 7), stride=(4, 4), padding=(2, 2))
        self.soft_split1 = nn.Unfold(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1))
        self.soft_split2 = nn.Unfold(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1))
        block = RefTokenPerformer if tokens_type == "performer" else RefTokenTransformer
        self.attention1 = block(3 * 7 * 7, token_dim)
        self.attention2 = block(token_dim * 3 * 3, token_dim)
        self.project = nn.Linear(token_dim * 3 * 3, embed_dim)
        self.num_patches = (img_size // 16) ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.soft_split0(x).transpose(1, 2)
        x = self.attention1(x)
        B, new_HW, C = x.shape
        x = x.transpose(1, 2).reshape(B, C, int(math.sqrt(new_HW)), int(math.sqrt(new_HW)))
        x = self.soft_split1(x).transpose(1, 2)
        x = self.attention2(x)
        B, new_HW, C = x.shape
        x = x.transpose(1, 2).reshape(B, C, int(math.sqrt(new_HW)), int(math.sqrt(new_HW)))
        x = self.soft_split2(x).transpose(1, 2)
        return self.project(x)


class ReferenceT2TViT(nn.Module):
    def __init__(
        self,
        img_size: int = 224,
        tokens_type: str = "performer",
        num_classes: int = 1000,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        distilled: bool = False,
        block_type: str = "vit",
        growth_rate: int = 0,
        block_config: tuple[int, ...] = (),
    ) -> None:
        super().__init__()
        self.distilled = distilled
        self.tokens_to_token = RefT2TModule(img_size, tokens_type, embed_dim)
        n = self.tokens_to_token.num_patches + (2 if distilled else 1)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        if distilled:
            self.dist_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(sinusoid_table(n, embed_dim), requires_grad=False)
        self.pos_drop = nn.Dropout(0.0)
        if block_type == "dense":
            blocks, width = _ref_dense_blocks(embed_dim, growth_rate, block_config, num_heads, mlp_ratio)
        else:
            blocks, width = [RefBlock(embed_dim, num_heads, mlp_ratio, block_type) for _ in range(depth)], embed_dim
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)
        if distilled:
            self.head_dist = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        x = self.tokens_to_token(x)
        prefix = [self.cls_token.expand(B, -1, -1)]
        if self.distilled:
            prefix.append(self.dist_token.expand(B, -1, -1))
        x = torch.cat((*prefix, x), dim=1)
        x = self.pos_drop(x + self.pos_embed)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        if self.distilled:
            return (self.head(x[:, 0]) + self.head_dist(x[:, 1])) / 2
        return self.head(x[:, 0])


def reference_model(name: str, img_size: int = 224, num_classes: int = 1000) -> ReferenceT2TViT:
    """The straightforward formulation of a registered variant (random weights: load ours into it)."""
    v = VARIANTS[name.removesuffix(DISTILLED_SUFFIX)]
    return ReferenceT2TViT(
        img_size=img_size,
        tokens_type=v.tokens_type,
        num_classes=num_classes,
        embed_dim=v.embed_dim,
        depth=v.depth,
        num_heads=v.num_heads,
        mlp_ratio=v.mlp_ratio,
        distilled=name.endswith(DISTILLED_SUFFIX),
        block_type=v.block_type,
        growth_rate=v.growth_rate,
        block_config=v.block_config,
    )
