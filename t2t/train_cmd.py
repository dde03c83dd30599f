"""``t2t train`` and ``t2t distill``: the trainer's and the distiller's own command lines, reached from ``t2t``.

Each keeps its flags in one parser so that ``python -m t2tvit.train`` / ``python -m compress.distill``
(what torchrun launches) and ``t2t train`` / ``t2t distill`` accept exactly the same arguments; this
module only forwards every token to them.
"""

from __future__ import annotations

import argparse
import importlib

__all__ = ["add_forwarding_parser", "add_parser"]


def add_forwarding_parser(sub: argparse._SubParsersAction, name: str, module: str, help: str) -> None:
    """Subcommand ``name`` whose tokens all go to ``module.main`` untouched (``--help`` included)."""
    p = sub.add_parser(name, help=help, add_help=False, prefix_chars="\0")
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(func=lambda args: importlib.import_module(module).main(args.args))


def add_parser(sub: argparse._SubParsersAction) -> None:
    add_forwarding_parser(
        sub,
        "train",
        "t2tvit.train",
        "train, fine-tune or evaluate a T2T-ViT (DDP, AMP, EMA, resumable); see t2t train --help",
    )
