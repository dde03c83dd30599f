"""``t2t distill``: DeiT distillation (:mod:`compress.distill`), reached from ``t2t``.

Like ``t2t train``, the command keeps its flags in one parser so that ``python -m compress.distill``
(what torchrun launches) and ``t2t distill`` accept exactly the same arguments; this module forwards.
"""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "distill",
        help="distil a *_distilled T2T-ViT from a CNN teacher (DeiT hard distillation); see t2t distill --help",
        add_help=False,
        prefix_chars="\0",  # every token goes to ARGS untouched, --help included
    )
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_distill)


def _cmd_distill(args: argparse.Namespace) -> int:
    from compress.distill import main

    return main(args.args)
