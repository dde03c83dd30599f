"""The deploy graph: the model as every converter sees it, proven equal to the model.

:func:`deploy_graph` returns an eval-mode copy of a T2T-ViT that computes the same function with the
operators each runtime converts and runs well; the model itself (the official function, used for
training and eager inference) is never changed. :func:`checked_graph` builds it and proves it equal to
the model on real images (:func:`graph_check`), so every exporter converts one proven graph and records
the proof in its manifest entry (``deploy_graph``). A graph beyond :data:`GRAPH_TOLERANCE` fails the
artifact with the measured difference; it is never shipped.

The T2T module takes one of three forms (:data:`T2T_FORMS`), chosen per runtime in :data:`T2T_FORM`:

* ``gather``: the model's own soft splits (strided window gathers), token-major.
* ``one_hot``: each soft split a depthwise convolution with one-hot kernels (weights, not ``torch.eye``:
  LiteRT has no kernel for the ``IOTA`` that would become), copying pixel ``(i, j)`` of channel ``c`` to
  output ``c*k*k + i*k + j``, ``nn.Unfold``'s order: the tokens bit for bit. Converters that turn the
  gather into 5-D/6-D transposes (ONNX Runtime, OpenVINO's reference kernels) or reject ``unfold``
  (pnnx, coremltools, litert-torch) take this instead.
* ``channel_major`` (:class:`ChannelMajorT2T`): the whole T2T module on images and feature maps.
  Soft split + LayerNorm + ``kqv`` Linear is a convolution of the map: Linear∘Unfold is a conv whose
  kernel is the Linear weight reshaped to ``(out, C, k, k)``, and the window LayerNorm folds in as
  per-window mean ``μ`` and second moment (convolutions with a constant kernel):
  ``kqv(LN(p)) = [conv(x, Wγ) − μ·(Wγ·1)] / σ + (Wβ + b)``. k, q and v are three convolutions (a
  channel split of one fused conv ran as an OpenVINO reference kernel). The token Performer (or the
  token transformer of ``t2t_vit_t_*``) then runs on ``(B, C, h, w)`` maps with 1×1 convolutions and
  spatial reductions, its quirks kept (the Performer's ``+ 1e-8`` as the null feature of a softmax, the
  token transformer's ``dim ** -0.5``, LayerNorm's eps); the last soft split + ``project`` is one 3×3
  stride-2 convolution.

The phone converters (:data:`PHONE`) also get what they cannot take otherwise: backbone attention as
4-D ``(B, heads, N, d)`` chunks (ncnn's tensors are 4-D at most), the token Performer's random-feature
matrix as two weight copies (pnnx leaves a weight used twice unconverted), and reshapes from the fixed
image size (coremltools fails on traced integer arithmetic of the input's shape).
"""

from __future__ import annotations

import copy
import math
import types
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from t2tvit.errors import ConfigError
from t2tvit.models.layers import windows_kernels

__all__ = [
    "GRAPH_TOLERANCE",
    "PHONE",
    "RUNTIMES",
    "T2T_FORM",
    "T2T_FORMS",
    "ChannelMajorT2T",
    "DeployGraphMismatch",
    "FALLBACK_FORM",
    "OneHotSoftSplit",
    "checked_graph",
    "deploy_graph",
    "graph_check",
]

# Largest |Δlogit| allowed between the model and its deploy graph, relative to the largest |logit| (at
# least 1). Measured on perturbed weights: ~1e-7..1e-6 of the largest logit (float32 operator order).
# 1e-5 was too tight for the channel-major form on trained weights: the digits student of
# benchmarks/bench_cpu_formats.py (T2T-ViT-7, 32 px, real digits) gave 5.11e-5 at a largest logit of 4.95 (1.03e-5
# relative) and its OpenVINO export failed; 1e-4 keeps a 10x margin over that and is still float32 rounding.
GRAPH_TOLERANCE = 1e-4

T2T_FORMS = ("gather", "one_hot", "channel_major")
RUNTIMES = ("onnx", "openvino", "tensorrt", "litert", "ncnn", "coreml", "executorch")
PHONE = frozenset({"litert", "ncnn", "coreml"})

# The T2T module's form per runtime, from measurement where there is one:
# benchmarks/results/deploy_graph/2core-avx2-avx512-vnni-bf16{,-run2}.md (bench_deploy_graph.py; T2T-ViT-7,
# 224 px, batch 1, 2 threads, forms interleaved in each run on a shared 2-core AMD EPYC Zen 4). Against the
# form each runtime converted before, channel_major was 0.92x / 0.88x (two runs) in OpenVINO f32 and
# 0.95x / 0.83x in bf16, and its profile shows no soft-split Transpose/Gather on a reference kernel any
# more: OpenVINO takes it. ONNX Runtime fp32 was 1.07x / 0.93x (no consistent gain) and LiteRT (XNNPACK)
# 1.08x / 1.27x: both keep one_hot. Unmeasured runtimes keep the form they converted before: TensorRT
# parses the one-hot ONNX, whose LayerNorm and TokenPerformer modules its fp16 engines keep in fp32
# (deploy.tensorrt.fp32_island); ExecuTorch lowers the gather to XNNPACK (whose grouped convolutions were
# slower than the gather, benchmarks/results/bench_onnx_soft_split.md); ncnn and Core ML take one_hot.
# OpenVINO's float rows nevertheless take one_hot: their `auto` precision is bf16 on a CPU that has it (the
# loading CPU, not the exporting one), and the channel-major form's folded LayerNorm variance E[p²] − μ²
# cancels catastrophically in bf16 on flat windows (the trained digits student at 224 px gave NaN logits in
# bf16, all finite in f32); one_hot keeps the model's own LayerNorm arithmetic. The openvino-int8 row takes
# channel_major (its row option "t2t_form"), measured there at 99.7% agreement in bf16 on the same student
# (benchmarks/results/openvino_int8/).
T2T_FORM: dict[str, str] = {
    "onnx": "one_hot",
    "openvino": "one_hot",
    "tensorrt": "one_hot",
    "litert": "one_hot",
    "ncnn": "one_hot",
    "coreml": "one_hot",
    "executorch": "gather",
}


# The form proven and converted instead when a runtime's default form misses the tolerance on the export's
# images (see checked_graph): one_hot computes the model's tokens bit for bit.
FALLBACK_FORM: dict[str, str] = {"channel_major": "one_hot"}


class DeployGraphMismatch(RuntimeError):
    """The deploy graph does not compute the model's function (a bug in a rewrite, never an artifact)."""


# --------------------------------------------------------------------------- one-hot soft split


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


def _fixed_t2t_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # The token-major T2T forward with its maps' sizes from the graph's fixed image size.
    h, w = self.graph_img_size
    c = self.token_dim
    x = self.attention1(self.soft_split0(x))
    x = self.attention2(self.soft_split1(x.reshape(-1, h // 4, w // 4, c)))
    return self.project(self.soft_split2(x.reshape(-1, h // 8, w // 8, c)))


# --------------------------------------------------------------------------- channel-major T2T module


def _frozen_conv(weight: torch.Tensor, bias: torch.Tensor | None, stride: int = 1, padding: int = 0) -> nn.Conv2d:
    out_ch, in_ch, k = weight.shape[0], weight.shape[1], weight.shape[2]
    conv = nn.Conv2d(in_ch, out_ch, k, stride, padding, bias=bias is not None, dtype=weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
    conv.requires_grad_(False)
    return conv


class WindowNormConv(nn.Module):
    """``Linear(LayerNorm(unfold(x)))`` of a ``(B, C, H, W)`` map as convolutions, split into ``parts`` equal
    outputs, each its own convolution: ``[conv(x, Wγ) − μ·(Wγ·1)] / σ + (Wβ + b)`` with the window's mean
    ``μ`` and ``σ = sqrt(E[p²] − μ² + eps)`` from two single-output convolutions with constant kernels."""

    def __init__(self, norm: nn.LayerNorm, linear: nn.Linear, channels: int, k: int, s: int, p: int, parts: int):
        super().__init__()
        dtype = linear.weight.dtype  # the folded weights are computed in float64, kept in the model's dtype
        w = linear.weight.detach().double()  # (parts * e, C*k*k), features in (channel, row, column) order
        gamma, beta = norm.weight.detach().double(), norm.bias.detach().double()
        bias = linear.bias.detach().double() if linear.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype)
        wg = w * gamma
        shift = w @ beta + bias  # Wβ + b
        rowsum = wg.sum(dim=1)  # Wγ·1
        e = w.shape[0] // parts
        self.eps = float(norm.eps)
        self.convs = nn.ModuleList(
            _frozen_conv(wg[i * e : (i + 1) * e].reshape(e, channels, k, k).to(dtype), None, s, p) for i in range(parts)
        )
        for i in range(parts):
            self.register_buffer(f"rowsum{i}", rowsum[i * e : (i + 1) * e].to(dtype).view(1, e, 1, 1))
            self.register_buffer(f"shift{i}", shift[i * e : (i + 1) * e].to(dtype).view(1, e, 1, 1))
        ones = torch.full((1, channels, k, k), 1.0 / (channels * k * k), dtype=dtype)
        self.mean = _frozen_conv(ones, None, s, p)
        self.second = _frozen_conv(ones.clone(), None, s, p)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        mu = self.mean(x)
        # E[p²] − μ² is ≥ 0 exactly; rounding on a flat window can make it negative (bf16: NaN from rsqrt)
        var = torch.relu(self.second(x * x) - mu * mu)
        inv = torch.rsqrt(var + self.eps)
        return [
            (conv(x) - mu * getattr(self, f"rowsum{i}")) * inv + getattr(self, f"shift{i}")
            for i, conv in enumerate(self.convs)
        ]


def _channel_layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    # LayerNorm over the channels of a (B, C, h, w) map, the token-major LayerNorm's arithmetic.
    mu = x.mean(dim=1, keepdim=True)
    d = x - mu
    var = (d * d).mean(dim=1, keepdim=True)
    return d * torch.rsqrt(var + eps) * weight + bias


def _pointwise(linear: nn.Linear) -> nn.Conv2d:
    return _frozen_conv(linear.weight.detach()[:, :, None, None], linear.bias)


class _ChannelNorm(nn.Module):
    def __init__(self, norm: nn.LayerNorm) -> None:
        super().__init__()
        self.eps = float(norm.eps)
        self.register_buffer("weight", norm.weight.detach().clone().view(1, -1, 1, 1))
        self.register_buffer("bias", norm.bias.detach().clone().view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _channel_layer_norm(x, self.weight, self.bias, self.eps)


class _PointwiseMlp(nn.Module):
    def __init__(self, fc1: nn.Linear, fc2: nn.Linear) -> None:
        super().__init__()
        self.fc1, self.fc2 = _pointwise(fc1), _pointwise(fc2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class ChannelMajorPerformer(nn.Module):
    """Soft split + :class:`~t2tvit.models.layers.TokenPerformer` on a ``(B, C, H, W)`` map -> ``(B, e, h, w)``.

    The Performer's arithmetic of ``_performer_core_fp32`` on ``(B, channels, tokens)``: ``b = w k − |k|²/2``
    (a 1×1 conv and a channel reduction), ``kv = exp(b − logsumexp_t b) vᵀ``, and per query a softmax over
    the ``m`` features ``w q + logsumexp_t b`` plus the epsilon's null feature ``|q|²/2 + log m + log 1e-8``
    whose value row is zero."""

    def __init__(self, block: nn.Module, channels: int, k: int, s: int, p: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.grid, self.emb = grid, block.emb
        self.kqv = WindowNormConv(block.norm1, block.kqv, channels, k, s, p, parts=3)  # k, q, v (the split order)
        w = block.w.detach()[:, :, None, None]
        self.w_k, self.w_q = _frozen_conv(w, None), _frozen_conv(w.clone(), None)  # two copies: see PHONE
        self.null = math.log(block.w.shape[0]) + math.log(1e-8)  # log m + log eps (the official self.epsilon)
        self.proj = _pointwise(block.proj)
        self.norm2 = _ChannelNorm(block.norm2)
        self.mlp = _PointwiseMlp(block.mlp[0], block.mlp[2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, q, v = self.kqv(x)
        h, w = self.grid
        wk = (self.w_k(k) - 0.5 * (k * k).sum(dim=1, keepdim=True)).flatten(2)  # (B, m, T)
        log_k = torch.logsumexp(wk, dim=2, keepdim=True)  # (B, m, 1)
        kv = torch.exp(wk - log_k) @ v.flatten(2).transpose(1, 2)  # (B, m, e)
        z = self.w_q(q).flatten(2) + log_k  # (B, m, T)
        c = 0.5 * (q * q).sum(dim=1, keepdim=True).flatten(2) + self.null  # (B, 1, T)
        a = torch.softmax(torch.cat([z, c], dim=1), dim=1)  # (B, m + 1, T)
        kv = torch.cat([kv, torch.zeros_like(kv[:, :1])], dim=1)  # (B, m + 1, e): the null feature's zero row
        y = (kv.transpose(1, 2) @ a).reshape(-1, self.emb, h, w)  # (B, e, h, w)
        x = v + self.proj(y)
        return x + self.mlp(self.norm2(x))


class ChannelMajorTokenTransformer(nn.Module):
    """Soft split + :class:`~t2tvit.models.layers.TokenTransformer` on a ``(B, C, H, W)`` map -> ``(B, e, h, w)``:
    one-head attention ``softmax(qᵀk · dim^-0.5)`` (``dim`` the block's input width, the official quirk), ``v``
    as the residual, then the ratio-1 MLP."""

    def __init__(self, block: nn.Module, channels: int, k: int, s: int, p: int, grid: tuple[int, int]) -> None:
        super().__init__()
        attn = block.attn
        self.grid, self.emb, self.scale = grid, attn.in_dim, float(attn.scale)
        self.qkv = WindowNormConv(block.norm1, attn.qkv, channels, k, s, p, parts=3)  # q, k, v
        self.proj = _pointwise(attn.proj)
        self.norm2 = _ChannelNorm(block.norm2)
        self.mlp = _PointwiseMlp(block.mlp.fc1, block.mlp.fc2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x)
        h, w = self.grid
        attn = torch.softmax((q.flatten(2).transpose(1, 2) * self.scale) @ k.flatten(2), dim=-1)  # (B, T, T)
        y = (v.flatten(2) @ attn.transpose(1, 2)).reshape(-1, self.emb, h, w)
        x = v + self.proj(y)
        return x + self.mlp(self.norm2(x))


class ChannelMajorT2T(nn.Module):
    """The T2T module on images and ``(B, C, h, w)`` maps (see the module docstring): images ->
    ``(B, HW/256, embed_dim)`` tokens, the T2T module's output, for the unchanged backbone."""

    def __init__(self, t2t: nn.Module, in_chans: int, img_size: tuple[int, int]) -> None:
        from t2tvit.models.layers import TokenPerformer, TokenTransformer

        super().__init__()
        H, W = img_size
        td = t2t.token_dim
        blocks = []
        for block, split, channels, grid in (
            (t2t.attention1, t2t.soft_split0, in_chans, (H // 4, W // 4)),
            (t2t.attention2, t2t.soft_split1, td, (H // 8, W // 8)),
        ):
            args = (channels, split.kernel_size, split.stride, split.padding, grid)
            if isinstance(block, TokenPerformer):
                blocks.append(ChannelMajorPerformer(block, *args))
            elif isinstance(block, TokenTransformer):
                blocks.append(ChannelMajorTokenTransformer(block, *args))
            else:
                raise ConfigError(f"the channel-major T2T module has no form of {type(block).__name__}")
        self.attention1, self.attention2 = blocks
        s2, lin = t2t.soft_split2, t2t.project
        weight = lin.weight.detach().reshape(lin.out_features, td, s2.kernel_size, s2.kernel_size)
        self.project = _frozen_conv(weight, lin.bias, s2.stride, s2.padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.attention2(self.attention1(x))).flatten(2).transpose(1, 2)


# --------------------------------------------------------------------------- phone rewrites


def _attention_4d(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    heads, dim = self.num_heads, self.proj.in_features
    q, k, v = (t.reshape(x.shape[0], -1, heads, dim // heads).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=-1))
    y = torch.softmax((q * self.scale) @ k.transpose(-2, -1), dim=-1) @ v
    return self.proj_drop(self.se_layer(self.proj(y.transpose(1, 2).reshape(x.shape[0], -1, dim))))


def _performer_attn_two_copies(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
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


# --------------------------------------------------------------------------- the graph


def deploy_graph(
    model: nn.Module, runtime: str, img_size: tuple[int, int] | int | None = None, t2t: str | None = None
) -> nn.Module:
    """An eval-mode copy of ``model`` as ``runtime`` (one of :data:`RUNTIMES`) should convert it, for
    ``img_size`` images (default: the model's). ``t2t`` overrides the T2T module's form of :data:`T2T_FORM`
    (benchmarks compare forms). A model without a T2T module (a timm CNN) is returned as an eval copy."""
    from t2tvit.models.layers import Attention, SoftSplit, TokenPerformer
    from t2tvit.models.t2t_vit import T2TModule

    if runtime not in RUNTIMES:
        raise ConfigError(f"unknown deploy runtime {runtime!r}; choose from: {', '.join(RUNTIMES)}")
    form = t2t or T2T_FORM[runtime]
    if form not in T2T_FORMS:
        raise ConfigError(f"unknown T2T module form {form!r}; choose from: {', '.join(T2T_FORMS)}")
    phone = runtime in PHONE
    if phone and form == "gather":
        raise ConfigError(f"{runtime} cannot convert the soft split's gather (unfold); use the one_hot form")
    g = copy.deepcopy(model).eval()
    in_chans = int(getattr(g, "in_chans", 3))
    for name, mod in list(g.named_modules()):
        if not isinstance(mod, T2TModule):
            continue
        size = tuple(mod.img_size) if img_size is None else _size(img_size)
        if form == "channel_major":
            parent, _, attr = name.rpartition(".")
            setattr(g.get_submodule(parent) if parent else g, attr, ChannelMajorT2T(mod, in_chans, size))
        elif form == "one_hot":
            for split_name, channels in (("soft_split0", in_chans), ("soft_split1", mod.token_dim)):
                s = getattr(mod, split_name)
                if not isinstance(s, SoftSplit):
                    raise ConfigError(f"cannot rewrite {type(s).__name__} {split_name} as a one-hot convolution")
                setattr(mod, split_name, OneHotSoftSplit(s.kernel_size, s.stride, s.padding, channels, s.channels_last))
            s = mod.soft_split2
            mod.soft_split2 = OneHotSoftSplit(s.kernel_size, s.stride, s.padding, mod.token_dim, s.channels_last)
            mod.graph_img_size = size
            mod.forward = types.MethodType(_fixed_t2t_forward, mod)
    if phone:
        for mod in g.modules():
            if isinstance(mod, Attention):
                mod.forward = types.MethodType(_attention_4d, mod)
            elif isinstance(mod, TokenPerformer):
                mod.w_k, mod.w_q = _linear_copy(mod.w), _linear_copy(mod.w)
                mod.attn = types.MethodType(_performer_attn_two_copies, mod)
    g.deploy_graph_form = {"runtime": runtime, "t2t": form, "phone_rewrites": phone}
    return g


def _size(img_size: tuple[int, int] | int) -> tuple[int, int]:
    if isinstance(img_size, int):
        return (img_size, img_size)
    return (int(img_size[0]), int(img_size[1]))


def graph_check(
    model: nn.Module, graph: nn.Module, images: np.ndarray | torch.Tensor, tolerance: float = GRAPH_TOLERANCE
) -> dict[str, Any]:
    """The manifest's ``deploy_graph`` record: largest |Δlogit| of ``graph`` against ``model`` on ``images``
    and the limit it is held to; raises :class:`DeployGraphMismatch` with the measured difference past it."""
    x = torch.as_tensor(np.ascontiguousarray(images, dtype=np.float32))
    with torch.no_grad():
        ref, out = model.eval()(x).float(), graph.eval()(x).float()
    diff = float((out - ref).abs().max())
    limit = tolerance * max(1.0, float(ref.abs().max()))
    form = dict(getattr(graph, "deploy_graph_form", {}))
    if not diff <= limit:
        raise DeployGraphMismatch(
            f"the deploy graph for {form.get('runtime', '?')} ({form.get('t2t', '?')} T2T module) differs from "
            f"the model by {diff:.3g} > {limit:.3g} (max |Δlogit| on {len(x)} images); not exported"
        )
    return {**form, "max_abs_diff": diff, "limit": limit, "images": len(x)}


def checked_graph(
    model: nn.Module, runtime: str, ctx: Any, t2t: str | None = None, fallback: bool | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """:func:`deploy_graph` for ``ctx.img_size``, proven on up to 16 of ``ctx.calib`` (real images; a fixed
    random batch when the export has none): ``(graph, record)``, the record for the manifest.

    The channel-major form folds each window's LayerNorm into convolutions, whose variance
    ``E[p²] − μ²`` loses float32 precision on near-uniform windows (a flat image background): on the
    demo's trained digits student it was 3e-4 from the model where the model's own float32 error is
    4e-6. When the runtime's default form (or a row's preferred one) misses :data:`GRAPH_TOLERANCE` that
    way, the exact one-hot form (:data:`FALLBACK_FORM`) is proven and converted instead, and the record
    says why; a form the caller chose explicitly (``t2t``) falls back only with ``fallback=True`` (a format
    row's preferred form)."""
    calib = getattr(ctx, "calib", None)
    images = calib[:16] if calib is not None and len(calib) else ctx.example(2).numpy()
    graph = deploy_graph(model, runtime, ctx.img_size, t2t=t2t)
    form = t2t or T2T_FORM[runtime]
    try:
        return graph, graph_check(model, graph, images, GRAPH_TOLERANCE)
    except DeployGraphMismatch as e:
        if (t2t is not None and not fallback) or FALLBACK_FORM.get(form) is None:
            raise
        graph = deploy_graph(model, runtime, ctx.img_size, t2t=FALLBACK_FORM[form])
        record = graph_check(model, graph, images, GRAPH_TOLERANCE)
        why = str(e).removesuffix("; not exported")
        return graph, {**record, "fallback": f"the {form} form was not converted: {why}"}
