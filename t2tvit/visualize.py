"""Where a model looks: attention maps, attention rollout, T2T token maps, and Grad-CAM for a CNN.

Model-level extraction only (tensors in, tensors out); :mod:`deploy.visualize` opens checkpoints and
artifacts and draws the PNGs.

* The attention comes from the model's own forward: :func:`recording_attention` switches the
  attention modules to their opt-in explicit path (``softmax(q k^T * scale) v``, the matrix kept),
  and :func:`inspect_t2t` runs ``forward_intermediates`` once with it, so the maps, the T2T token
  maps and the logits all come from one pass. The default forward keeps the fused
  ``scaled_dot_product_attention``; the explicit path gives the same logits to float32 rounding.
* The T2T module's token Performer (``t2t_vit_*`` without ``_t_``) has no attention matrix (its
  kernel trick never forms one), so only its output tokens are shown, as feature maps; the token
  transformer (``t2t_vit_t_*``) has one, recorded like the backbone's.
* :func:`attention_rollout` is Abnar & Zuidema's rollout (2020): each block's head-averaged attention
  plus the residual identity, rows renormalised, multiplied through the blocks.
* :func:`grad_cam` is Grad-CAM (Selvaraju et al., 2017) on a CNN's last spatial feature map, found as
  the last module output with a spatial grid (a ResNet's ``layer4``), so any timm/torchvision CNN works.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError

__all__ = [
    "Inspection",
    "attention_rollout",
    "grad_cam",
    "has_attention",
    "inspect_t2t",
    "recording_attention",
    "token_attention",
]


def _recorders(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if hasattr(m, "record_attention")]


def has_attention(model: object) -> bool:
    """Whether ``model`` is an eager T2T-ViT whose attention can be recorded (not TorchScript, not a runtime)."""
    return (
        isinstance(model, nn.Module)
        and not isinstance(model, torch.jit.ScriptModule)
        and hasattr(model, "forward_intermediates")
        and hasattr(model, "tokens_to_token")
        and bool(_recorders(model))
    )


@contextlib.contextmanager
def recording_attention(model: nn.Module) -> Iterator[list[tuple[str, nn.Module]]]:
    """Within the block, every attention module of ``model`` takes the explicit path and keeps its
    softmax matrix in ``attention_map``; yields the ``(name, module)`` pairs in forward order.
    Afterwards the fused path is back and the maps are dropped."""
    mods = _recorders(model)
    for _, m in mods:
        m.record_attention = True
    try:
        yield mods
    finally:
        for _, m in mods:
            m.record_attention = False
            m.attention_map = None


@dataclass
class Inspection:
    """What one forward of a T2T-ViT shows (batch first everywhere)."""

    logits: torch.Tensor  # (B, classes): what model(images) returns in eval mode
    blocks: list[torch.Tensor]  # per backbone attention block: (B, heads, N, N), rows sum to 1
    block_names: list[str]
    tokens: list[torch.Tensor]  # T2T token maps (B, C, h, w): stride 4, 8 (T2T blocks), 16 (projected)
    token_attention: list[torch.Tensor] = field(default_factory=list)  # token transformer: (B, 1, n, n)
    grid: tuple[int, int] = (0, 0)  # the backbone's patch grid (H / 16, W / 16)
    prefix: tuple[str, ...] = ("class",)  # the prefix tokens, in order (a distilled model adds "distillation")


def inspect_t2t(model: nn.Module, images: torch.Tensor) -> Inspection:
    """Logits, every block's attention, the T2T token maps of ``images`` from one eval-mode forward.

    ``forward_intermediates`` gives the stride-4 and stride-8 token maps (after the first two soft
    splits and their T2T blocks); a forward hook on ``tokens_to_token.project`` gives the stride-16
    tokens after the third soft split; the recorded attention modules give the matrices.
    """
    if not has_attention(model):
        raise ConfigError(f"{type(model).__name__} is not an eager T2T-ViT: its attention cannot be recorded")
    model.eval()
    B, H, W = images.shape[0], images.shape[2], images.shape[3]
    projected: list[torch.Tensor] = []
    hook = model.tokens_to_token.project.register_forward_hook(lambda m, i, o: projected.append(o))
    try:
        with torch.no_grad(), recording_attention(model) as mods:
            final, maps = model.forward_intermediates(images, indices=[0, 1])
            logits = model.forward_head(final)
            recorded = [(name, m.attention_map) for name, m in mods if m.attention_map is not None]
    finally:
        hook.remove()
    grid = (H // 16, W // 16)
    stride16 = projected[0].reshape(B, *grid, -1).permute(0, 3, 1, 2)
    prefix = ("class", "distillation") if model.num_prefix_tokens == 2 else ("class",)
    return Inspection(
        logits=logits.float(),
        blocks=[a for name, a in recorded if name.startswith("blocks.")],
        block_names=[name.removesuffix(".attn") for name, _ in recorded if name.startswith("blocks.")],
        tokens=[maps[0], maps[1], stride16],
        token_attention=[a for name, a in recorded if name.startswith("tokens_to_token.")],
        grid=grid,
        prefix=prefix,
    )


def token_attention(attention: torch.Tensor, grid: tuple[int, int], token: int = 0, prefix: int = 1) -> torch.Tensor:
    """Prefix token ``token``'s attention to the patches, ``(B, heads, N, N) -> (B, heads, h, w)``.

    The prefix tokens' own columns are left out, so a map sums to one minus what the token gives the
    prefix tokens (the colour scale says so; the rows of ``attention`` sum to one).
    """
    return attention[:, :, token, prefix:].reshape(attention.shape[0], attention.shape[1], *grid)


def attention_rollout(attentions: list[torch.Tensor], residual: float = 0.5) -> torch.Tensor:
    """Attention rollout through the blocks: ``(B, N, N)``, row ``i``: how much token ``i`` at the output
    draws on each input token.

    Per block ``A = residual * I + (1 - residual) * mean_heads(attention)``, rows renormalised (a
    no-op for rows that already sum to one), then ``R = A_L ... A_2 A_1`` (Abnar & Zuidema, 2020).
    """
    if not attentions:
        raise ConfigError("attention rollout needs at least one attention block")
    out = None
    for a in attentions:
        a = a.double().mean(dim=1)
        eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        a = residual * eye + (1 - residual) * a
        a = a / a.sum(dim=-1, keepdim=True)
        out = a if out is None else a @ out
    return out.float()


def _last_spatial_output(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, last feature map)``: the last module output shaped (B, C, h, w) with h * w > 1."""
    found: list[torch.Tensor] = []

    def keep(_m: nn.Module, _i: object, out: object) -> None:
        if isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[-1] * out.shape[-2] > 1:
            found.append(out)

    hooks = [m.register_forward_hook(keep) for m in model.modules() if m is not model]
    try:
        logits = model(images)
    finally:
        for h in hooks:
            h.remove()
    if not found:
        raise ConfigError(f"{type(model).__name__} has no convolutional feature map for Grad-CAM")
    return logits, found[-1]


def grad_cam(model: nn.Module, images: torch.Tensor, target: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """Grad-CAM of a CNN: ``(cams (B, H, W) in [0, 1] at the input size, logits (B, classes))``.

    The class is ``target`` or the predicted one; the map is ``relu(sum_c w_c A_c)`` with ``A`` the last
    spatial feature map and ``w_c`` its gradient's spatial mean, upsampled bilinearly and scaled to a
    maximum of one per image. The model's parameters are not touched (frozen teachers work).
    """
    model.eval()
    x = images.detach().clone().requires_grad_(True)  # so the feature map needs a gradient
    with torch.enable_grad():
        logits, feats = _last_spatial_output(model, x)
        cls = logits.argmax(dim=1) if target is None else target
        score = logits.gather(1, cls.view(-1, 1)).sum()
        (grad,) = torch.autograd.grad(score, feats)
    cam = F.relu((grad.mean(dim=(2, 3), keepdim=True) * feats).sum(dim=1, keepdim=True)).detach()
    cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1)
    return cam / peak, logits.detach().float()
