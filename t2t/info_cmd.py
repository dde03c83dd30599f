"""``t2t info``: parameters, MACs and tokens per stage of a variant, or the list of every variant.

Only argparse and t2t.flags are imported at module level; torch and timm load when the command runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from typing import Any

from t2t import flags

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="describe a T2T-ViT variant: parameters, MACs, tokens per stage",
        description=(
            "Describe a T2T-ViT variant: parameter count (frozen random features and position "
            "table included, as the paper counts), multiply-accumulates of one image, input size "
            "and the number and width of tokens after every Tokens-to-Token stage. "
            "With --list, one line per registered variant."
        ),
    )
    p.add_argument("--model", default=None, help="variant name (default: t2tvit.DEFAULT_MODEL, the variants table's)")
    p.add_argument("--img-size", type=int, default=224, help="input height and width, a multiple of 16 (default: 224)")
    p.add_argument("--checkpoint", default=None, help="also load this checkpoint and report how it was mapped")
    flags.add(p, "--num-classes", "--new-head")
    p.add_argument("--list", action="store_true", help="list every registered variant instead")
    flags.add(p, "--json", help="print JSON instead of tables")
    p.set_defaults(func=_cmd_info)


def _cmd_info(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    import t2tvit
    from t2tvit.summary import summarize

    console = Console()
    if not console.is_terminal:  # piped output: do not squeeze tables into 80 columns
        console = Console(width=160)
    if args.list:
        return _info_list(args, console)
    args.model = args.model or t2tvit.DEFAULT_MODEL
    # Without a checkpoint only shapes matter: build on the meta device (instant even for t2t_vit_24).
    with torch.device("meta") if args.checkpoint is None else contextlib.nullcontext():
        model = t2tvit.create_model(
            args.model,
            checkpoint=args.checkpoint,
            num_classes=args.num_classes,
            img_size=args.img_size,
            new_head=args.new_head,
        )
    s = summarize(model, args.model)
    report = getattr(model, "load_report", None)
    if args.json:
        out = s.as_dict()
        if report is not None:
            out["checkpoint"] = {"path": report.path, "source_key": report.source_key, "notes": report.notes}
        print(json.dumps(out, indent=2))
        return 0
    head = Table(title=f"{s.name}", show_header=False)
    head.add_row("input", f"{s.input_size[0]} x {s.input_size[1]} x {s.input_size[2]} (C x H x W)")
    head.add_row("classes", str(s.num_classes))
    head.add_row("parameters", f"{s.params:,} ({s.trainable_params:,} trainable, {s.frozen_params:,} frozen)")
    head.add_row("MACs", f"{s.macs / 1e9:.3f} G per image")
    if report is not None:
        head.add_row("checkpoint", escape(str(report)))
    console.print(head)
    stages = Table(title="tokens per stage")
    for col in ("stage", "tokens", "dim", "grid"):
        stages.add_column(col, justify="left" if col == "stage" else "right")
    for st in s.stages:
        grid = f"{st.grid[0]}x{st.grid[1]}" if st.grid else "-"
        stages.add_row(st.name, str(st.tokens) if st.tokens else "-", str(st.dim), grid)
    console.print(stages)
    return 0


def _info_list(args: argparse.Namespace, console: Any) -> int:
    """``t2t info --list``: one line per registered variant."""
    import timm
    import torch
    from rich.table import Table

    import t2tvit
    from t2tvit.summary import summarize

    rows = []
    for name in t2tvit.list_variants():
        with torch.device("meta"):  # shapes are all that is counted: no memory, no init
            model = timm.create_model(name, img_size=args.img_size)
        s = summarize(model)
        v = t2tvit.VARIANTS[name.removesuffix("_distilled")]
        rows.append(
            {
                "model": name,
                "params": s.params,
                "macs": s.macs,
                "tokens": v.tokens_type,
                "backbone": v.block_type,
                "embed_dim": v.embed_dim,
                "depth": v.depth,
                "heads": v.num_heads,
                "official_top1": None if name.endswith("_distilled") else v.paper_top1,
                "official_file": None if name.endswith("_distilled") else v.official_file or None,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table(title=f"T2T-ViT variants at {args.img_size}x{args.img_size}")
    for col in ("model", "params", "MACs", "T2T", "backbone", "dim", "depth", "heads", "top-1", "official file"):
        left = col in ("model", "T2T", "backbone", "official file")
        table.add_column(col, justify="left" if left else "right", no_wrap=True)
    for r in rows:
        table.add_row(
            r["model"],
            f"{r['params'] / 1e6:.2f}M",
            f"{r['macs'] / 1e9:.2f}G",
            r["tokens"],
            r["backbone"],
            str(r["embed_dim"]),
            str(r["depth"]),
            str(r["heads"]),
            f"{r['official_top1']}" if r["official_top1"] else "-",
            r["official_file"] or "-",
        )
    console.print(table)
    return 0
