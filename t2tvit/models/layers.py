"""Building blocks of T2T-ViT.

Parameter and buffer names match the official implementation
(github.com/yitu-opensource/T2T-ViT) one for one, so its checkpoints load with
``strict=True``. The forward passes are rewritten for speed and numerical safety:

* backbone and token-transformer attention use ``F.scaled_dot_product_attention``
  (fused kernels, no materialised ``N x N`` matrix on GPU, fewer ops on CPU);
* the token Performer runs its kernel-attention core in float32 with max
  subtraction, so it never overflows in fp16/bf16 autocast (the official version
  returns NaN there) and never underflows to an all-zero attention in fp32, while
  being mathematically identical to the official formula;
* no ``.repeat()`` copies: everything broadcasts;
* the soft splits gather windows straight into the token-major layout the next
  block reads (``nn.Unfold`` gives channel-major columns that must then be
  transposed and copied), with a strided-add backward instead of ``col2im``.
  The feature order is ``nn.Unfold``'s (channel, row, column), so weights are
  unchanged. Exported to ONNX they become a one-hot grouped convolution instead
  (:func:`_windows_conv`): ONNX Runtime runs the gather's 5-D/6-D transposes slowly.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from torch import nn

__all__ = [
    "Attention",
    "Block",
    "SoftSplit",
    "TokenPerformer",
    "TokenTransformer",
    "sinusoid_table",
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
        k, s, p = self.kernel_size, self.stride, self.padding
        if not torch.jit.is_scripting():  # TorchScript skips this block
            if torch.onnx.is_in_onnx_export():
                return _windows_conv(x, k, s, p, self.channels_last)
        if not self.channels_last:
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


def _windows_conv(x: torch.Tensor, k: int, s: int, p: int, channels_last: bool) -> torch.Tensor:
    # The same tokens, bit for bit, as a grouped convolution with one-hot kernels: output
    # channel c*k*k + i*k + j of group c copies pixel (i, j) of channel c's window, which is
    # nn.Unfold's (channel, row, column) order. Used for ONNX export only: ONNX Runtime runs
    # the gather above as 5-D and 6-D Transposes that took 26-33% of a T2T-ViT-7's time at 224 px
    # (the 3-D transposes here are cheap), while PyTorch's and XNNPACK's grouped convolutions
    # are slower than the gather (benchmarks/results/bench_onnx_soft_split.md).
    if channels_last:
        x = x.permute(0, 3, 1, 2)
    C = x.shape[1]
    one_hot = torch.eye(k * k, dtype=x.dtype, device=x.device).reshape(k * k, 1, k, k)
    y = F.conv2d(x, one_hot.repeat(C, 1, 1, 1), stride=s, padding=p, groups=C)
    return y.flatten(2).transpose(1, 2)


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


class Attention(nn.Module):
    """Multi-head self-attention of the backbone (keys ``qkv``, ``proj``)."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        head_dim = dim // num_heads
        # head_dim ** -0.5. The official factories pass qk_scale=embed_dim**-0.5 when
        # pretrained=True; that is a known bug and is deliberately not reproduced.
        self.scale = qk_scale or head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale
        )
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


class Block(nn.Module):
    """Pre-norm transformer block of the deep-narrow backbone."""

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
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, N, 3*in_dim) -> three (B, 1, N, in_dim) views; SDPA wants a head axis.
        q, k, v = self.qkv(x).unsqueeze(1).split(self.in_dim, dim=-1)
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale
        )
        return v.squeeze(1) + self.proj_drop(self.proj(y.squeeze(1)))


class TokenPerformer(nn.Module):
    """Token Performer of the T2T module: linear attention with positive random features.

    The official forward computes, with ``phi(x) = exp(w x - |x|^2 / 2) / sqrt(m)``::

        y = phi(q) (phi(k)^T v) / (phi(q) . sum_t phi(k_t) + 1e-8)

    With ``K_m = sum_t phi(k_t)_m`` this is exactly a two-step softmax attention::

        y_t = sum_m softmax_m(w q_t + log K)_m * (sum_t' softmax_t'(w k - |k|^2/2)_{t'm} v_t')

    (constants along a query row, or over all keys of an image, cancel in the ratio), which
    is what we compute: both softmaxes and ``log K`` (a logsumexp) are stable in value *and
    gradient* for any input. The direct ratio is not: when the features a query favours
    are ones every key has underflowed in, the denominator underflows to 0, the official
    ``+ 1e-8`` turns the row into noise, and a ratio clamped away from 0 has an infinite
    gradient (a T2T-ViT-7 trained on the digits hit this in fp32 after one epoch). The
    core runs in float32 even under autocast. The result equals the official formula to
    float32 rounding wherever that formula is well conditioned.
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
        w = nn.init.orthogonal_(torch.empty(self.m, self.emb)) * math.sqrt(self.m)
        self.w = nn.Parameter(w, requires_grad=False)

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
    q, k, v, w = q.float(), k.float(), v.float(), w.float()
    wk = k @ w.t() - 0.5 * (k * k).sum(dim=-1, keepdim=True)  # (B, T, m): log phi(k), up to a constant
    log_k = torch.logsumexp(wk, dim=1, keepdim=True)  # (B, 1, m): log K_m
    attn_k = torch.exp(wk - log_k)  # softmax over tokens, one distribution per feature
    attn_q = torch.softmax(q @ w.t() + log_k, dim=-1)  # (B, T, m): softmax over features
    return attn_q @ (attn_k.transpose(1, 2) @ v)  # (B, T, m) @ (B, m, e)
