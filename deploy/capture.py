"""The model as the mobile converters (pnnx for ncnn, coremltools for Core ML, litert-torch for LiteRT) can take it.

None of the three converters accepts every operator the T2T-ViT forward uses; :func:`for_converters` returns a
copy of the model whose modules compute the same function with operators they do accept. The model
itself is not changed. What each rewrite replaces, and why (found by converting T2T-ViT-7):

* **soft splits** (``SoftSplit``: ``F.pad(...).unfold(...).unfold(...)``): neither pnnx nor coremltools
  converts ``aten::unfold``, and litert-torch lowers it to a 6-D pad that LiteRT rejects. Rewritten as
  a depthwise ``nn.Conv2d`` whose one-hot kernels copy pixel
  ``(i, j)`` of channel ``c``'s window to output channel ``c*k*k + i*k + j`` -- ``nn.Unfold``'s
  (channel, row, column) order, the same gather the ONNX export uses (``layers.windows_conv``), but with
  the kernels held as weights (built from ``torch.eye`` at run time they become an ``IOTA`` op that the
  LiteRT interpreter has no kernel for); with one-hot weights every output is one input times 1.0, so
  the tokens are equal bit for bit.
* **the T2T module's token-map reshapes** (``x.reshape(B, H // 4, W // 4, -1)`` with ``H, W`` read from
  the input's shape): coremltools fails on the traced integer arithmetic. The rewrite uses the module's
  fixed ``img_size`` (the artifact's input size is fixed anyway) and ``-1`` for the batch.
* **backbone attention** (``qkv.reshape(B, N, 3, heads, d).permute(2, 0, 3, 1, 4).unbind(0)``, then SDPA):
  the 5-D reshape and ``unbind`` exceed ncnn's 4-D tensors. Rewritten as three 4-D ``(B, heads, N, d)``
  chunks of the same ``qkv`` output and the explicit ``softmax(q * scale @ k^T) @ v`` SDPA computes.
* **the token Performer** (``_performer_core_fp32``): its random-feature matrix ``w`` is used twice
  (``k @ w.t()`` and ``q @ w.t()``), which pnnx leaves as an unconverted ``F.linear`` on a shared
  weight. Rewritten with two bias-free ``nn.Linear`` copies of ``w``; ``log m`` (a ``logsumexp`` of
  ``m`` zeros in the model, for TorchScript's sake) is the constant it equals. The ``logsumexp``, the
  ``exp`` and the softmax with the epsilon's null feature are kept as they are: all three converters take them.

Equality is checked, not assumed: :func:`capture_error` is the largest |Δlogit| between the model and
its rewrite on real images, recorded in every mobile artifact's manifest entry and held to
:data:`CAPTURE_TOLERANCE` (measured: ~2e-7 on logits of ~1, float32 operator order only).
"""

from __future__ import annotations

import copy
import math
import types
from typing import Any

import numpy as np
import torch
from torch import nn

from t2tvit.errors import ConfigError
from t2tvit.models.layers import windows_kernels

__all__ = ["CAPTURE_TOLERANCE", "capture_error", "for_converters"]

# Largest |Δlogit| allowed between the model and its rewrite, relative to the largest |logit| (at least 1).
CAPTURE_TOLERANCE = 1e-5


class OneHotSoftSplit(nn.Module):
    """A soft split as a depthwise convolution with one-hot kernels (see the module docstring)."""

    def __init__(self, kernel_size: int, stride: int, padding: int, channels: int, channels_last: bool) -> None:
        super().__init__()
        k = kernel_size
        self.channels_last = channels_last
        self.conv = nn.Conv2d(channels, channels * k * k, k, stride, padding, groups=channels, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(windows_kernels(channels, k))
        self.conv.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.permute(0, 3, 1, 2)
        return self.conv(x).flatten(2).transpose(1, 2)


def _t2t_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    h, w = self.img_size
    c = self.token_dim
    x = self.attention1(self.soft_split0(x))
    x = self.attention2(self.soft_split1(x.reshape(-1, h // 4, w // 4, c)))
    return self.project(self.soft_split2(x.reshape(-1, h // 8, w // 8, c)))


def _attention_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    heads, dim = self.num_heads, self.proj.in_features
    q, k, v = (t.reshape(x.shape[0], -1, heads, dim // heads).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=-1))
    y = torch.softmax((q * self.scale) @ k.transpose(-2, -1), dim=-1) @ v
    return self.proj_drop(self.se_layer(self.proj(y.transpose(1, 2).reshape(x.shape[0], -1, dim))))


def _performer_attn(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    k, q, v = self.kqv(x).split(self.emb, dim=-1)
    wk = self.w_k(k) - 0.5 * (k * k).sum(dim=-1, keepdim=True)  # (B, T, m)
    log_k = torch.logsumexp(wk, dim=1, keepdim=True)  # (B, 1, m)
    kv = torch.exp(wk - log_k).transpose(1, 2) @ v  # (B, m, e)
    c = 0.5 * (q * q).sum(dim=-1, keepdim=True) + (math.log(self.m) + math.log(1e-8))
    z = torch.cat([self.w_q(q) + log_k, c], dim=-1)  # (B, T, m + 1)
    kv = torch.cat([kv, torch.zeros_like(kv[:, :1])], dim=1)  # (B, m + 1, e)
    return v + self.dp(self.proj(torch.softmax(z, dim=-1) @ kv))


def _linear_copy(w: torch.Tensor) -> nn.Linear:
    lin = nn.Linear(w.shape[1], w.shape[0], bias=False)
    with torch.no_grad():
        lin.weight.copy_(w)
    lin.weight.requires_grad_(False)
    return lin


def for_converters(model: nn.Module) -> nn.Module:
    """An eval-mode copy of the T2T-ViT ``model`` with the rewrites of the module docstring applied."""
    from t2tvit.models.layers import Attention, SoftSplit, TokenPerformer
    from t2tvit.models.t2t_vit import T2TModule

    m = copy.deepcopy(model).eval()
    for mod in list(m.modules()):
        if isinstance(mod, T2TModule):
            for name, channels in (("soft_split0", 3), ("soft_split1", mod.token_dim), ("soft_split2", mod.token_dim)):
                s = getattr(mod, name)
                if not isinstance(s, SoftSplit):
                    raise ConfigError(f"cannot rewrite {type(s).__name__} {name} for the mobile converters")
                if name == "soft_split0":
                    channels = getattr(m, "in_chans", 3)
                setattr(mod, name, OneHotSoftSplit(s.kernel_size, s.stride, s.padding, channels, s.channels_last))
            mod.forward = types.MethodType(_t2t_forward, mod)
        elif isinstance(mod, Attention):
            mod.forward = types.MethodType(_attention_forward, mod)
        elif isinstance(mod, TokenPerformer):
            mod.w_k, mod.w_q = _linear_copy(mod.w), _linear_copy(mod.w)
            mod.attn = types.MethodType(_performer_attn, mod)
    return m


def capture_error(model: nn.Module, captured: nn.Module, images: np.ndarray | torch.Tensor) -> dict[str, Any]:
    """Largest |Δlogit| of ``captured`` against ``model`` on ``images`` and the limit it is held to;
    raises RuntimeError past the limit (a rewrite that changed the function is a bug, never an artifact)."""
    x = torch.as_tensor(np.ascontiguousarray(images, dtype=np.float32))
    with torch.no_grad():
        ref, out = model.eval()(x).float(), captured(x).float()
    diff = float((out - ref).abs().max())
    limit = CAPTURE_TOLERANCE * max(1.0, float(ref.abs().max()))
    if not diff <= limit:
        raise RuntimeError(f"the converter-ready rewrite moved logits by {diff:.3g} > {limit:.3g}")
    return {"capture_max_abs_diff": diff, "capture_limit": limit, "capture_images": len(x)}
