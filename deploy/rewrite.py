"""Graph-equivalent rewrites of a model, applied only to the copy an exporter captures.

A converter sees the model through its own op set. T2T-ViT's soft split gathers overlapping
windows with ``Tensor.unfold`` (6-D views); litert-torch lowers that to a 6-D pad that LiteRT
cannot hold (``'tfl.pad' op ... is at most 5-D``), and when the windows are taken by the grouped
one-hot convolution of the ONNX export instead, its kernels (built from ``torch.eye`` at run time)
become a ``STABLEHLO_IOTA`` that the LiteRT interpreter has no kernel for.

:func:`soft_splits_as_convolutions` therefore returns a copy of the model whose every
:class:`~t2tvit.models.layers.SoftSplit` is a :class:`ConstantSoftSplit`: the same grouped convolution
(:func:`~t2tvit.models.layers.windows_conv`) with its one-hot kernels held as a constant buffer. The
tokens are the same, bit for bit (each output copies one input pixel; ``tests/test_litert.py`` checks
``torch.equal`` on the rewritten model's logits); the model itself is never changed.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from t2tvit.models.layers import SoftSplit, windows_conv, windows_kernels

__all__ = ["ConstantSoftSplit", "soft_splits_as_convolutions"]


class ConstantSoftSplit(nn.Module):
    """:class:`SoftSplit` as a grouped convolution whose one-hot kernels are a buffer (a graph constant)."""

    def __init__(self, split: SoftSplit, channels: int) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = split.kernel_size, split.stride, split.padding
        self.channels_last = split.channels_last
        self.register_buffer("one_hot", windows_kernels(channels, split.kernel_size), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return windows_conv(x, self.kernel_size, self.stride, self.padding, self.channels_last, self.one_hot)


def soft_splits_as_convolutions(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """A copy of ``model`` with each :class:`SoftSplit` replaced by a :class:`ConstantSoftSplit`; ``example``
    (one input batch) is run once to learn each split's channel count. A model without soft splits (a CNN)
    comes back as it is."""
    splits = {name: m for name, m in model.named_modules() if isinstance(m, SoftSplit)}
    if not splits:
        return model
    channels: dict[str, int] = {}

    def hook(name: str) -> Any:
        def record(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0]
            channels[name] = int(x.shape[-1] if module.channels_last else x.shape[1])

        return record

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in splits.items()]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    out = copy.deepcopy(model)
    for name in splits:
        parent_name, _, attr = name.rpartition(".")
        parent = out.get_submodule(parent_name) if parent_name else out
        setattr(parent, attr, ConstantSoftSplit(splits[name], channels[name]))
    return out.eval()
