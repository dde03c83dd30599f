"""The straightforward T2T-ViT formulation: the yardstick for speed and numerics.

This is the model written the way the paper's equations read (and the way the
official repository computes it): an explicit ``einsum`` token Performer with
``.repeat()`` copies and a 1e-8 epsilon, explicit ``softmax(q k^T) v`` attention
in the backbone and the token transformer. Module and parameter names follow the
official layout, so ``load_state_dict(strict=True)`` between this model and
:mod:`t2tvit` checks key-for-key checkpoint compatibility in both directions.

It is used by ``benchmarks/bench_model.py`` (ours vs this, interleaved) and by
the parity tests; it is not part of the product and is never exported.
"""

from __future__ import annotations

import math

import torch
from timm.layers import Mlp
from torch import nn

from t2tvit.models import VARIANTS, sinusoid_table
from t2tvit.models.t2t_vit import DISTILLED_SUFFIX

__all__ = ["ReferenceT2TViT", "reference_model"]


class RefAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


class RefBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = RefAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


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
        wtx = torch.einsum("bti,mi->btm", x.float(), self.w)
        return torch.exp(wtx - xd) / math.sqrt(self.m)

    def single_attn(self, x: torch.Tensor) -> torch.Tensor:
        k, q, v = torch.split(self.kqv(x), self.emb, dim=-1)
        kp, qp = self.prm_exp(k), self.prm_exp(q)
        D = torch.einsum("bti,bi->bt", qp, kp.sum(dim=1)).unsqueeze(dim=2)
        kptv = torch.einsum("bin,bim->bnm", v.float(), kp)
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
        self.blocks = nn.ModuleList(RefBlock(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)
        if distilled:
            self.head_dist = nn.Linear(embed_dim, num_classes)

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
    )
