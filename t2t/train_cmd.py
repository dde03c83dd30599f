"""``t2t train``: the trainer's own command line (:mod:`t2tvit.train`), reached from ``t2t``.

The trainer keeps its flags in one parser so that ``python -m t2tvit.train`` (what torchrun
launches) and ``t2t train`` accept exactly the same arguments; this module only forwards.
"""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train, fine-tune or evaluate a T2T-ViT (DDP, AMP, EMA, resumable); see t2t train --help",
        add_help=False,
        prefix_chars="\0",  # every token goes to ARGS untouched, --help included
    )
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from t2tvit.train import main

    return main(args.args)
