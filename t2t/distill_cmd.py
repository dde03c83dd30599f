"""``t2t distill``: DeiT distillation (:mod:`compress.distill`), reached from ``t2t`` (see :mod:`t2t.train_cmd`)."""

from __future__ import annotations

import argparse

from .train_cmd import add_forwarding_parser

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    add_forwarding_parser(
        sub,
        "distill",
        "compress.distill",
        "distil a *_distilled T2T-ViT from a CNN teacher (DeiT hard distillation); see t2t distill --help",
    )
