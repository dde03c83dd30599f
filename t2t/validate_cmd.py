"""``t2t validate``: top-1/top-5 and per-class accuracy of a checkpoint, an artifact file or an export folder on
any labelled image folder, and each artifact's agreement with and drop from the fp32 model it was exported
from. ``--min-top1`` / ``--max-drop`` set the exit status for CI. Only argparse and t2t.flags
are imported at module level.
"""

from __future__ import annotations

import argparse

from t2t import flags

__all__ = ["add_parser"]

SUMMARY = (
    "accuracy of a checkpoint, an artifact or an export folder on a labelled folder (top-1, per class, drop from fp32)"
)
DESCRIPTION = (
    "Run every image of a labelled folder through a checkpoint, one artifact file or the artifacts of an\n"
    "export folder (with the model's own eval preprocessing) and report top-1, top-5, per-class accuracy\n"
    "and the worst classes; for an exported artifact also its top-1 agreement with, largest logit error\n"
    "against and top-1 drop from the checkpoint the export recorded. Unreadable images are skipped and\n"
    "named."
)

_EXAMPLES = """\
examples:
  t2t validate runs/compress/t2t_vit_7_distilled/student/best.pth digits
  t2t validate runs/compress/t2t_vit_7_distilled/export digits --formats onnx,onnx-int8-dynamic
  t2t validate export/model-onnx-int8-dynamic.onnx /data/imagenet/val --max-drop 1 --out validate

DATA is a folder of <class>/<image> files, a dataset root holding val/, or a bundled set: digits, or
digits-hard (the same digits at 224 px over clutter, where int8 differences show). A class folder is the
model's class of that name when the model records class names (a folder it does not know is refused);
otherwise the sorted folders are classes 0, 1, ... Exit status: 0 checks passed (or none given), 1 a check
failed, 2 bad input.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = flags.command(sub, "validate", SUMMARY, DESCRIPTION, _EXAMPLES)
    flags.add(p, "MODEL")
    p.add_argument("data", metavar="DATA", help="labelled images: DIR/<class>/<image>, a dataset root, or digits")
    flags.add(p, "--formats", "--batch-size")
    p.add_argument(
        "--max-images", type=int, default=None, help="a fixed random sample of this many images (default: all)"
    )
    p.add_argument("--min-top1", type=float, default=None, metavar="PCT", help="fail (exit 1) under this top-1")
    p.add_argument(
        "--max-drop",
        type=float,
        default=None,
        metavar="PTS",
        help="fail (exit 1) when an artifact's top-1 is more than this many points under the fp32 checkpoint's",
    )
    p.add_argument(
        "--no-reference",
        action="store_true",
        help="do not run the checkpoint the export recorded (top-1 only: no agreement, logit error or drop)",
    )
    flags.add(p, "--no-verify", "--device", "--threads")
    p.add_argument("--worst", type=int, default=5, help="how many worst classes to show (default: 5)")
    p.add_argument("--out", default=None, metavar="DIR", help="also write validate.json, .csv and .md here")
    flags.add(p, "--json")
    p.set_defaults(func=_cmd_validate, outputs=("out",))


def _cmd_validate(args: argparse.Namespace) -> int:
    import json
    import sys

    from deploy.validation import validate

    report = validate(
        args.target,
        args.data,
        formats=args.formats,
        batch_size=args.batch_size,
        max_images=args.max_images,
        reference=not args.no_reference,
        min_top1=args.min_top1,
        max_drop=args.max_drop,
        progress=not args.json,
        **flags.opening(args),
    )
    if args.out:
        written = report.write(args.out)
        print(f"wrote {', '.join(str(p) for p in written)}", file=sys.stderr)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(report.markdown(worst=args.worst), end="")
    return 0 if report.passed else 1
