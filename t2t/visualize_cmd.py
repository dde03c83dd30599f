"""``t2t visualize``: attention, rollout, T2T token maps and the teacher's Grad-CAM as PNGs.

The command parses, calls :func:`deploy.visualize.visualize` and prints what it wrote. Only argparse and t2t.flags
are imported at module level.
"""

from __future__ import annotations

import argparse

from t2t import flags

__all__ = ["add_parser"]

SUMMARY = "PNGs of where a T2T-ViT looks: attention per block and head, rollout, T2T tokens, teacher Grad-CAM"
DESCRIPTION = (
    "Draw where a T2T-ViT looks for each image: every backbone block's class-token attention over\n"
    "the patch grid (averaged over heads and per head; a distilled student's distillation token too),\n"
    "attention rollout, and the T2T module's token maps after each soft split, over the image the\n"
    "model saw (its own eval preprocessing). The maps come from the model's own forward with its\n"
    "attention recorded. --teacher lays a CNN teacher's Grad-CAM beside the student; --compare puts\n"
    "another artifact of the same model (e.g. int8) against it."
)

_EXAMPLES = """\
examples:
  t2t visualize runs/compress/t2t_vit_7_distilled/student/best.pth digit.png --out vis/
  t2t visualize student/best.pth photos/ --teacher teacher/best.pth      # Grad-CAM beside the student
  t2t visualize export/ a.png --compare export/ --compare-format torch-int8   # fp32 against int8 maps
  t2t visualize export/ a.png --compare export/model-onnx.onnx            # per-image logit differences

Per image, a folder NNN-<name>/ gets attention-class.png (attention-distillation.png for a distilled
student), rollout.png, t2t-tokens.png, and with --teacher teacher.png, with --compare an artifact that
keeps its attention (the eager torch-int8 model) compare-attention.png. --compare always writes
compare-logits.png and compare-logits.md beside the folders; a runtime that does not expose attention
(ONNX, TorchScript, .ptl, ...) gets only those. The T2T module's token Performer forms no attention
matrix, so t2t-tokens.png shows its tokens.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = flags.command(sub, "visualize", SUMMARY, DESCRIPTION, _EXAMPLES)
    flags.add(p, "MODEL", help="a T2T-ViT checkpoint (.pth), an eager torch / torch-int8 artifact, or an export folder")
    flags.add(p, "images", "--format")
    p.add_argument("--out", default="visualize", metavar="DIR", help="where the PNGs go (default: ./visualize)")
    p.add_argument("--teacher", default=None, metavar="FILE", help="a CNN teacher checkpoint: its Grad-CAM")
    p.add_argument(
        "--compare",
        default=None,
        metavar="ARTIFACT",
        help="another artifact or export folder of the same model: its maps (where it keeps attention) or its "
        "per-image logit and probability differences",
    )
    p.add_argument("--compare-format", default=None, metavar="NAME", help="which artifact of the --compare folder")
    p.add_argument("--no-heads", action="store_true", help="only the head average, not every head")
    p.add_argument("--limit", type=int, default=16, help="draw at most this many images (default: 16)")
    flags.add(p, "--model", "--img-size")
    p.set_defaults(func=_cmd_visualize, outputs=("out",))


def _cmd_visualize(args: argparse.Namespace) -> int:
    import sys

    from deploy.visualize import visualize

    result = visualize(
        args.target,
        args.images,
        args.out,
        format=args.format,
        compare=args.compare,
        compare_format=args.compare_format,
        teacher=args.teacher,
        heads=not args.no_heads,
        limit=args.limit,
        **flags.opening(args),
    )
    for err in result.errors:
        print(f"t2t visualize: cannot read {err['image']}: {err['error']}", file=sys.stderr)
    for img in result.images:
        print(f"{img['image']}: predicted {img['top1']} ({img['probability']:.3f}) -> {img['folder']}")
    for row in result.compare:
        agree = "same top-1" if row["agree"] else f"top-1 {row['top1']} vs {row['compare_top1']}"
        print(
            f"  compare {row['image']}: max |logit diff| {row['max_abs_logit_diff']:.3g}, "
            f"max |prob diff| {row['max_abs_prob_diff']:.3g}, {agree}"
        )
    for note in result.notes:
        print(f"note: {note}")
    print(f"wrote {len(result.files)} files under {result.out}")
    return 1 if result.errors else 0
