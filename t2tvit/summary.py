"""Static facts about a T2T-ViT: parameters, MACs and the token count at every stage.

MACs are counted by ``torch.utils.flop_counter`` on the meta device (no memory,
no compute, any model size) with the attention kernels expanded into their
matmuls, so they cover every matrix product: linear layers, attention scores,
the Performer's random-feature products. Elementwise work (norms, GELU, exp) is
not counted, as in the paper's figures.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from .models import DenseBlock, T2TViT, official_param_count

__all__ = ["ModelSummary", "Stage", "count_macs", "summarize"]


@dataclass
class Stage:
    name: str
    tokens: int
    dim: int
    grid: tuple[int, int] | None


@dataclass
class ModelSummary:
    name: str
    input_size: tuple[int, int, int]
    num_classes: int
    params: int
    trainable_params: int
    frozen_params: int
    macs: int
    stages: list[Stage] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def count_macs(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    """Multiply-accumulates of one forward pass at batch 1 (counted on the meta device)."""
    meta = _to_meta(model).eval()
    x = torch.empty(1, *input_size, device="meta")
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
        meta(x)
    return counter.get_total_flops() // 2


def _to_meta(model: nn.Module) -> nn.Module:
    import copy

    clone = copy.deepcopy(model) if not any(p.is_meta for p in model.parameters()) else model
    return clone.to("meta")


def _backbone_desc(model: T2TViT) -> str:
    n = len(model.blocks)
    dense = sum(isinstance(b, DenseBlock) for b in model.blocks)
    return f"{dense} dense blocks + {n - dense} transitions" if dense else f"{n} blocks"


def summarize(model: T2TViT, name: str | None = None) -> ModelSummary:
    """Parameters as the paper counts them (``parameters()`` plus the fixed tables, which are frozen),
    MACs at the model's input size, and the token sequence after each T2T stage."""
    h, w = model.img_size
    t2t = model.tokens_to_token
    c = model.in_chans
    stages = [
        Stage("input", 0, c, (h, w)),
        Stage("soft split 0 (7x7 / 4)", (h // 4) * (w // 4), c * 49, (h // 4, w // 4)),
        Stage(f"T2T {t2t.tokens_type} 1", (h // 4) * (w // 4), 64, (h // 4, w // 4)),
        Stage("soft split 1 (3x3 / 2)", (h // 8) * (w // 8), 64 * 9, (h // 8, w // 8)),
        Stage(f"T2T {t2t.tokens_type} 2", (h // 8) * (w // 8), 64, (h // 8, w // 8)),
        Stage("soft split 2 (3x3 / 2)", t2t.num_patches, 64 * 9, t2t.grid_size),
        Stage("project", t2t.num_patches, model.embed_dim, t2t.grid_size),
        Stage(
            f"backbone ({_backbone_desc(model)}, +{model.num_prefix_tokens} prefix)",
            t2t.num_patches + model.num_prefix_tokens,
            model.num_features,
            None,
        ),
    ]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    params = official_param_count(model)
    input_size = (c, h, w)
    return ModelSummary(
        name=name or model.pretrained_cfg.get("architecture", type(model).__name__),
        input_size=input_size,
        num_classes=model.num_classes,
        params=params,
        trainable_params=trainable,
        frozen_params=params - trainable,
        macs=count_macs(model, input_size),
        stages=stages,
    )
