"""Building blocks of T2T-ViT.

Parameter and buffer names match the official implementation
(github.com/yitu-opensource/T2T-ViT) one for one, so its checkpoints load with
``strict=True``. The forward passes are rewritten for speed and numerical safety:

* backbone and token-transformer attention use ``F.scaled_dot_product_attention``
  (fused kernels, no materialised ``N x N`` matrix on GPU, fewer ops on CPU);
* for visualisation only, ``record_attention = True`` on an attention module (set by
  :func:`t2tvit.visualize.recording_attention`) makes it compute the same attention explicitly,
  ``softmax(q k^T * scale) v``, and keep the matrix in ``attention_map``; off by default;
* the token Performer runs its kernel-attention core in float32 with max
  subtraction, so it never overflows in fp16/bf16 autocast (the official version
  returns NaN there) and never underflows to an all-zero attention in fp32, while
  being mathematically identical to the official formula;
* no ``.repeat()`` copies: everything broadcasts;
* the soft splits gather windows straight into the token-major layout the next
  block reads (``nn.Unfold`` gives channel-major columns that must then be
  transposed and copied), with a strided-add backward instead of ``col2im``.
  The feature order is ``nn.Unfold``'s (channel, row, column), so weights are
  unchanged. Converters take :func:`deploy.graph.deploy_graph` instead, the same
  function in the operators each runtime runs well.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from torch import nn

__all__ = [
    "Attention",
    "Block",
    "DenseBlock",
    "GhostAttention",
    "GhostMlp",
    "SELayer",
    "SoftSplit",
    "TokenPerformer",
    "TokenTransformer",
    "Transition",
    "sinusoid_table",
    "windows_conv",
    "windows_kernels",
]


def sinusoid_table(n_position: int, d_hid: int) -> torch.Tensor:
    """The fixed sinusoid position table of the official code, shape ``(1, n, d)``.

    Computed in float64 and rounded to float32 exactly as the official
    ``get_sinusoid_encoding`` does, so a table regenerated for another image size
    is bit-identical to the one the official code would build for that size.
    """
    pos = np.arange(n_position, dtype=np.float64)[:, None]
    j = np.arange(d_hid)
    angle = pos / np.power(10000.0, 2 * (j // 2) / d_hid)[None, :]
    angle[:, 0::2] = np.sin(angle[:, 0::2])
    angle[:, 1::2] = np.cos(angle[:, 1::2])
    return torch.from_numpy(angle.astype(np.float32)).unsqueeze(0)


class SoftSplit(nn.Module):
    """``nn.Unfold(kernel, stride, padding)`` for T2T: overlapping windows as tokens.

    Takes images ``(B, C, H, W)`` (``channels_last=False``) or token maps
    ``(B, H, W, C)`` (``channels_last=True``, the layout a T2T block outputs) and
    returns ``(B, H_out * W_out, C * k * k)`` tokens, features ordered
    (channel, row, column) exactly like ``nn.Unfold(...)(x).transpose(1, 2)``.
    """

    def __init__(self, kernel_size: int, stride: int, padding: int, channels_last: bool) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.channels_last = channels_last

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"channels_last={self.channels_last}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return soft_split(x, self.kernel_size, self.stride, self.padding, self.channels_last)


def soft_split(x: torch.Tensor, k: int, s: int, p: int, channels_last: bool) -> torch.Tensor:
    """The windows of :class:`SoftSplit`, by the fastest exact route for the caller.

    A leaf for ``torch.fx`` (see the ``torch.fx.wrap`` calls below): a symbolically traced model
    calls this function as a whole, so its run-time branch (autograd) still applies.
    """
    if not channels_last:
        return _windows_nchw(x, k, s, p)
    if not torch.jit.is_scripting():
        if x.requires_grad and not torch.jit.is_tracing() and not torch.compiler.is_compiling():
            return _SoftSplitNHWC.apply(x, k, s, p)
    return _windows_nhwc(x, k, s, p)


def _windows_nchw(x: torch.Tensor, k: int, s: int, p: int) -> torch.Tensor:
    # (B, C, Ho, Wo, k, k) view; the copy reads rows of k contiguous pixels.
    B, C = x.shape[0], x.shape[1]
    w = F.pad(x, (p, p, p, p)).unfold(2, k, s).unfold(3, k, s)
    return w.permute(0, 2, 3, 1, 4, 5).reshape(B, -1, C * k * k)


def windows_conv(
    x: torch.Tensor, k: int, s: int, p: int, channels_last: bool, one_hot: torch.Tensor | None = None
) -> torch.Tensor:
    # The same tokens, bit for bit, as a grouped convolution with one-hot kernels: output
    # channel c*k*k + i*k + j of group c copies pixel (i, j) of channel c's window, which is
    # nn.Unfold's (channel, row, column) order. The deploy graph's one_hot form (deploy.graph):
    # ONNX Runtime runs the gather above as 5-D and 6-D Transposes that took 26-33% of a
    # T2T-ViT-7's time at 224 px, while PyTorch's and XNNPACK's grouped convolutions are slower
    # than the gather (benchmarks/results/bench_onnx_soft_split.md).
    if channels_last:
        x = x.permute(0, 3, 1, 2)
    # ``one_hot``: the (C*k*k, 1, k, k) kernels of windows_kernels, when the caller holds them as a
    # constant (an exporter whose runtime has no op to build them from torch.eye).
    C = x.shape[1]
    weight = windows_kernels(C, k, x.dtype, x.device) if one_hot is None else one_hot
    y = F.conv2d(x, weight, stride=s, padding=p, groups=C)
    return y.flatten(2).transpose(1, 2)


def windows_kernels(channels: int, k: int, dtype: torch.dtype = torch.float32, device: Any = None) -> torch.Tensor:
    """The one-hot kernels that make a grouped convolution gather :class:`SoftSplit`'s windows."""
    one_hot = torch.eye(k * k, dtype=dtype, device=device).reshape(k * k, 1, k, k)
    return one_hot.repeat(channels, 1, 1, 1)


def _windows_nhwc(x: torch.Tensor, k: int, s: int, p: int) -> torch.Tensor:
    # Gather (row, column, channel) windows with contiguous channel runs, then put
    # the channel first inside each token: a small in-cache transpose per token.
    B, C = x.shape[0], x.shape[3]
    w = F.pad(x, (0, 0, p, p, p, p)).unfold(1, k, s).unfold(2, k, s)  # (B, Ho, Wo, C, k, k)
    w = w.permute(0, 1, 2, 4, 5, 3).reshape(B, -1, k * k, C)
    return w.transpose(-1, -2).reshape(B, -1, C * k * k)


class _SoftSplitNHWC(torch.autograd.Function):
    """Autograd for :func:`_windows_nhwc`: the backward adds each window offset's
    gradient into a strided slice (k*k cheap adds) instead of the generic
    ``unfold_backward``/``col2im`` paths, which are several times slower on CPU."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, k: int, s: int, p: int) -> torch.Tensor:  # type: ignore[override]
        ctx.meta = (x.shape, k, s, p)
        return _windows_nhwc(x, k, s, p)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (B, H, W, C), k, s, p = ctx.meta
        Ho, Wo = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
        g = grad.reshape(B, Ho, Wo, C, k, k)
        gp = grad.new_zeros(B, H + 2 * p, W + 2 * p, C)
        for i in range(k):
            for j in range(k):
                gp[:, i : i + s * (Ho - 1) + 1 : s, j : j + s * (Wo - 1) + 1 : s, :] += g[..., i, j]
        return gp[:, p : p + H, p : p + W, :], None, None, None


class _HeadsAttention(nn.Module):
    """What both backbone attentions share: the head count and scale, and attention over (B, heads, N, d)
    queries, keys and values, its softmax matrix kept in ``attention_map`` while ``record_attention`` is
    set (visualisation only; see the module docstring). Subclasses make the projections."""

    def __init__(self, dim: int, num_heads: int, qk_scale: float | None, attn_drop: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        # head_dim ** -0.5. The official factories pass qk_scale=embed_dim**-0.5 when
        # pretrained=True; that is a known bug and is deliberately not reproduced.
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.attn_drop = attn_drop
        self.record_attention = False
        self.attention_map: torch.Tensor | None = None

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """(B, heads, N, d) queries, keys, values -> (B, N, heads * d) attention output."""
        if not torch.jit.is_scripting():
            if self.record_attention:
                y, self.attention_map = _explicit_attention(q, k, v, self.scale)
                return y.transpose(1, 2).flatten(2)
        return _heads_attention(q, k, v, self.attn_drop if self.training else 0.0, self.scale)


class Attention(_HeadsAttention):
    """Multi-head self-attention of the backbone (keys ``qkv``, ``proj``; ``se_layer`` with ``se``:
    T2T-ViT-SE's squeeze-and-excitation after the projection)."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        se: bool = False,
    ) -> None:
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by num_heads {num_heads}")
        super().__init__(dim, num_heads, qk_scale, attn_drop)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.se_layer = SELayer(dim) if se else nn.Identity()
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        return self.proj_drop(self.se_layer(self.proj(self._attend(q, k, v))))


def _heads_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float, scale: float) -> torch.Tensor:
    """(B, heads, N, d) queries, keys, values -> (B, N, heads * d) attention output."""
    x = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)
    return x.transpose(1, 2).flatten(2)


def _explicit_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """What SDPA computes (without dropout), with its (B, heads, N, N) softmax matrix materialised:
    ``(attn @ v, attn)``. The visualisation path; its logits equal the fused path's to float32 rounding."""
    attn = torch.softmax((q * scale) @ k.transpose(-2, -1), dim=-1)
    return attn @ v, attn.detach()


class SELayer(nn.Module):
    """Squeeze-and-excitation over tokens (T2T-ViT-SE): channel gates from the token mean.

    Keys ``fc.0`` / ``fc.2`` as in the official ``SELayer`` (reduction 16, no biases).
    """

    def __init__(self, channel: int, reduction: int = 16) -> None:
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(channel, channel // reduction, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(channel // reduction, channel, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, C)
        return x * self.fc(x.mean(dim=1, keepdim=True))


def _ghost(x: torch.Tensor, cheap_weight: torch.Tensor) -> torch.Tensor:
    # The official ghost features apply a depthwise Conv1d of kernel 1 to (B, C, N): that is a
    # per-channel scale, computed here on (B, N, C) directly instead of through two transposes.
    return x * cheap_weight.view(-1)


class GhostAttention(_HeadsAttention):
    """T2T-ViT-Ghost attention: q, k, v are half-width projections, each doubled with a cheap
    per-channel copy (``cheap_operation_*``, official depthwise 1x1 ``Conv1d`` weights)."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        if dim % num_heads or dim % 2:
            raise ValueError(f"embed dim {dim} must be even and divisible by num_heads {num_heads}")
        super().__init__(dim, num_heads, qk_scale, attn_drop)
        half = dim // 2
        self.q = nn.Linear(dim, half, bias=qkv_bias)
        self.k = nn.Linear(dim, half, bias=qkv_bias)
        self.v = nn.Linear(dim, half, bias=qkv_bias)
        self.cheap_operation_q = nn.Conv1d(half, half, kernel_size=1, groups=half, bias=False)
        self.cheap_operation_k = nn.Conv1d(half, half, kernel_size=1, groups=half, bias=False)
        self.cheap_operation_v = nn.Conv1d(half, half, kernel_size=1, groups=half, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _heads(self, x: torch.Tensor, cheap_weight: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        return torch.cat((x, _ghost(x, cheap_weight)), dim=2).reshape(B, N, self.num_heads, -1).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self._heads(self.q(x), self.cheap_operation_q.weight)
        k = self._heads(self.k(x), self.cheap_operation_k.weight)
        v = self._heads(self.v(x), self.cheap_operation_v.weight)
        return self.proj_drop(self.proj(self._attend(q, k, v)))


class GhostMlp(nn.Module):
    """T2T-ViT-Ghost MLP: a square ``fc1`` whose output is tripled by two cheap per-channel copies
    (``cheap_operation2/3``), then ``fc2`` from the 3x-wide concatenation, as in the official
    ``Mlp_ghost`` (which needs ``hidden_features == 3 * in_features``)."""

    def __init__(self, in_features: int, hidden_features: int, act_layer: type[nn.Module] = nn.GELU, drop: float = 0.0):
        super().__init__()
        if hidden_features != 3 * in_features:
            raise ValueError(f"the ghost MLP needs hidden_features = 3 x in_features, got {hidden_features}")
        self.fc1 = nn.Linear(in_features, in_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop)
        self.cheap_operation2 = nn.Conv1d(in_features, in_features, kernel_size=1, groups=in_features, bias=False)
        self.cheap_operation3 = nn.Conv1d(in_features, in_features, kernel_size=1, groups=in_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.act(self.fc1(x))
        x2 = self.act(_ghost(x1, self.cheap_operation2.weight))
        x3 = self.act(_ghost(x1, self.cheap_operation3.weight))
        x = self.drop(torch.cat((x1, x2, x3), dim=2))
        return self.drop(self.fc2(x))


BLOCK_TYPES = ("vit", "se", "ghost", "dense")


class Block(nn.Module):
    """Pre-norm transformer block of the deep-narrow backbone.

    ``block_type`` picks the official backbone variant: ``"vit"`` (T2T-ViT), ``"se"``
    (squeeze-and-excitation after the attention projection, T2T-ViT-SE) or ``"ghost"`` (ghost
    attention and MLP, T2T-ViT-Ghost). Dense blocks are :class:`DenseBlock`.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        block_type: str = "vit",
    ) -> None:
        super().__init__()
        if block_type not in ("vit", "se", "ghost"):
            raise ValueError(f"block_type must be 'vit', 'se' or 'ghost', not {block_type!r}")
        hidden = int(dim * mlp_ratio)
        self.norm1 = norm_layer(dim)
        if block_type == "ghost":
            self.attn: nn.Module = GhostAttention(dim, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        else:
            self.attn = Attention(dim, num_heads, qkv_bias, qk_scale, attn_drop, drop, se=block_type == "se")
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        if block_type == "ghost":
            self.mlp: nn.Module = GhostMlp(dim, hidden, act_layer=nn.GELU, drop=drop)
        else:
            self.mlp = Mlp(dim, hidden, act_layer=nn.GELU, drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._residual_block(x)

    def _residual_block(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class DenseBlock(Block):
    """T2T-ViT-Dense block: a transformer block whose output, projected to ``growth_rate``
    channels (``dense_linear``), is concatenated to its input (DenseNet's connectivity)."""

    def __init__(self, growth_rate: int, dim: int, num_heads: int, **kwargs) -> None:
        super().__init__(dim, num_heads, **kwargs)
        self.dense_linear = nn.Linear(dim, growth_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((x, self.dense_linear(self._residual_block(x))), dim=2)


class Transition(nn.Module):
    """T2T-ViT-Dense transition between dense stages: linear (halving the width), then GELU."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.act = nn.GELU()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.linear(x))


class TokenTransformer(nn.Module):
    """Token transformer of the T2T module (variants ``t2t_vit_t_*``).

    Maps ``dim``-wide unfolded patches to ``in_dim``-wide tokens with one
    attention head and uses ``v`` as the residual, as the official code does.
    Its attention scale is ``dim ** -0.5`` with ``dim`` the *input* width
    (147 or 576): that is what the official weights were trained with, so it is
    kept for checkpoint compatibility.
    """

    def __init__(
        self,
        dim: int,
        in_dim: int,
        num_heads: int = 1,
        mlp_ratio: float = 1.0,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_layer: type[nn.Module] = nn.LayerNorm,
    ) -> None:
        super().__init__()
        if num_heads != 1:
            raise ValueError("the T2T token transformer uses exactly one head (its residual is v)")
        self.norm1 = norm_layer(dim)
        self.attn = _TokenAttention(dim, in_dim, qkv_bias, qk_scale, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(in_dim)
        self.mlp = Mlp(in_dim, int(in_dim * mlp_ratio), out_features=in_dim, act_layer=nn.GELU, drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn(self.norm1(x))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class _TokenAttention(nn.Module):
    def __init__(
        self,
        dim: int,
        in_dim: int,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.scale = qk_scale or dim**-0.5
        self.qkv = nn.Linear(dim, in_dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(in_dim, in_dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.record_attention = False  # see the module docstring: visualisation only
        self.attention_map: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, N, 3*in_dim) -> three (B, 1, N, in_dim) views; SDPA wants a head axis.
        q, k, v = self.qkv(x).unsqueeze(1).split(self.in_dim, dim=-1)
        if not torch.jit.is_scripting():
            if self.record_attention:
                y, self.attention_map = _explicit_attention(q, k, v, self.scale)
                return v.squeeze(1) + self.proj_drop(self.proj(y.squeeze(1)))
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale
        )
        return v.squeeze(1) + self.proj_drop(self.proj(y.squeeze(1)))


class TokenPerformer(nn.Module):
    """Token Performer of the T2T module: linear attention with positive random features.

    The official forward computes, with ``phi(x) = exp(w x - |x|^2 / 2) / sqrt(m)``::

        y = phi(q) (phi(k)^T v) / (D + 1e-8),    D = phi(q) . sum_t phi(k_t)

    We compute the same function as two softmaxes (see :func:`_performer_core_fp32`): one over
    the tokens for each random feature, and one over the ``m`` features of each query plus one
    null feature that stands for the epsilon (its logit is ``log 1e-8`` plus the constants the
    ratio drops, its value row is zero). The epsilon is part of the function the official
    weights were trained with: when ``D`` falls near or below 1e-8 (it does in trained models,
    e.g. ~1.7e-9 in ``attention2`` of a perturbed T2T-ViT-7) it shrinks the row, and dropping it
    moved logits by up to 6e-4 of the largest logit and flipped 1.1% of a trained student's
    predictions. The direct ratio is what is unstable: ``exp`` overflows in fp16 (the official
    code returns NaN under fp16 autocast) and underflows in fp32 once ``|k|`` or ``|q|`` exceeds
    about 13, and its gradient through a denominator near 0 is infinite. Ours stays finite in
    value and gradient for any input, runs in float32 even under autocast, and equals a float64
    evaluation of the official formula to float32 rounding.

    There is no token-by-token attention matrix to show: the kernel trick never forms one (the
    tokens meet only through the ``m`` random features), so visualisation shows this block's output
    tokens as feature maps instead.
    """

    def __init__(
        self,
        dim: int,
        in_dim: int,
        head_cnt: int = 1,
        kernel_ratio: float = 0.5,
        dp1: float = 0.1,
        dp2: float = 0.1,
    ) -> None:
        super().__init__()
        self.emb = in_dim * head_cnt
        self.kqv = nn.Linear(dim, 3 * self.emb)
        self.dp = nn.Dropout(dp1)
        self.proj = nn.Linear(self.emb, self.emb)
        self.head_cnt = head_cnt
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(self.emb)
        self.mlp = nn.Sequential(
            nn.Linear(self.emb, self.emb),
            nn.GELU(),
            nn.Linear(self.emb, self.emb),
            nn.Dropout(dp2),
        )
        self.m = int(self.emb * kernel_ratio)
        # Fixed random features (the official code's frozen parameter ``w``): a persistent buffer, same key.
        w = nn.init.orthogonal_(torch.empty(self.m, self.emb)) * math.sqrt(self.m)
        self.register_buffer("w", w, persistent=True)

    def attn(self, x: torch.Tensor) -> torch.Tensor:
        k, q, v = self.kqv(x).split(self.emb, dim=-1)
        y = _performer_core(q, k, v, self.w)
        return v + self.dp(self.proj(y.to(v.dtype)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def _performer_core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Stabilised positive-random-feature attention in float32: (B, T, e) -> (B, T, e)."""
    if not torch.jit.is_scripting():
        dev = q.device.type
        if torch.amp.is_autocast_available(dev) and torch.is_autocast_enabled(dev):
            with torch.autocast(device_type=dev, enabled=False):
                return _performer_core_fp32(q, k, v, w)
    return _performer_core_fp32(q, k, v, w)


def _performer_core_fp32(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    # With b = w k - |k|^2/2 (the log of phi(k) times sqrt(m)), kv = softmax_t(b)^T v and
    # z = w q + logsumexp_t(b), the official sums are, per query,
    #   N = sum_m exp(z_m) kv_m / (m exp(|q|^2/2)),   D = sum_m exp(z_m) / (m exp(|q|^2/2)),
    # so  N / (D + eps) = sum_m exp(z_m) kv_m / (sum_m exp(z_m) + exp(c)),  c = |q|^2/2 + log m + log eps:
    # a softmax over the m features and one null feature with logit c and a zero value row.
    q, k, v, w = q.float(), k.float(), v.float(), w.float()
    wk = k @ w.t() - 0.5 * (k * k).sum(dim=-1, keepdim=True)  # (B, T, m)
    log_k = torch.logsumexp(wk, dim=1, keepdim=True)  # (B, 1, m)
    # exp(wk - log_k), not softmax(dim=1): the same value, and several times closer to float64 here.
    kv = torch.exp(wk - log_k).transpose(1, 2) @ v  # (B, m, e)
    # log m as a logsumexp of m zeros: a tensor op, so torch.jit.trace records it without a warning
    # about turning the traced shape w.shape[0] into a Python float.
    log_m = torch.logsumexp(torch.zeros_like(w[:, 0]), dim=0)
    c = 0.5 * (q * q).sum(dim=-1, keepdim=True) + log_m + math.log(1e-8)  # official eps: self.epsilon
    z = torch.cat([q @ w.t() + log_k, c], dim=-1)  # (B, T, m + 1)
    kv = torch.cat([kv, torch.zeros_like(kv[:, :1])], dim=1)  # (B, m + 1, e)
    return torch.softmax(z, dim=-1) @ kv


# torch.fx leaves: symbolic tracing (timm's FX feature extraction, torch.fx.symbolic_trace) records
# a call to each of these instead of tracing into its data-dependent branches (autocast state,
# requires_grad), which the traced graph then still takes at run time.
torch.fx.wrap("soft_split")
torch.fx.wrap("_performer_core")
