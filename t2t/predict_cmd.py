"""``t2t predict``: the top classes of images, from any artifact or checkpoint, through its Predictor.

The command parses, calls :func:`deploy.open` and :func:`deploy.predict_images` (which resolve the
artifact and give images the model's own eval preprocessing), and prints. Only argparse and t2t.flags are
imported at module level.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from t2t import flags

__all__ = ["add_parser"]

DEFAULT_FORMATS = "torch, onnx, torchscript, ptl, executorch, tensorrt"  # deploy.artifacts.DEFAULT_FORMATS

SUMMARY = "top-5 classes of images from any exported artifact or checkpoint"
DESCRIPTION = (
    "Predict the top classes of images with any artifact `t2t export` wrote (.pt, TorchScript,\n"
    ".ptl, .onnx, the int8 variants, .pte, .engine), a whole export folder, or a training\n"
    "checkpoint (.pth). The images get exactly the model's eval preprocessing (resize, centre crop\n"
    "with its crop_pct, normalise with its mean/std) at the artifact's input size, as in training,\n"
    "and run in batches through the artifact's own runtime. Probabilities are the softmax of the\n"
    "logits."
)

_EXAMPLES = """\
examples:
  t2t predict artifacts/t2t_vit_7 cat.jpg dog.png          # the export folder's torch (else onnx) artifact
  t2t predict artifacts/t2t_vit_7 --format ptl-int8 photos/  # every image under photos/
  t2t predict artifacts/t2t_vit_7/model-onnx.onnx a.jpg --json
  t2t predict runs/train/t2t_vit_7-20250101-120000/best.pth a.jpg --classes data/imagenet
  t2t predict best.pth a.jpg --img-size 384                 # a checkpoint at another input size
  t2t predict model-tensorrt-fp16.engine a.jpg --classes labels.txt   # runs on the GPU

Class names come from --classes, else from the manifest (`t2t export --checkpoint` records the
checkpoint's), else from the checkpoint, else from a lone artifact file itself (every format but
.tflite, .pte and TensorRT records them); without any, class indices are printed. An image that
cannot be read is reported on stderr, the others are still predicted, and the exit status is 1.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = flags.command(sub, "predict", SUMMARY, DESCRIPTION, _EXAMPLES)
    flags.add(p, "MODEL", "images")
    flags.add(
        p,
        "--format",
        help=f"which artifact of an export folder to run (default: the first built ok of {DEFAULT_FORMATS}); "
        "for a lone file, its format when the file name does not tell",
    )
    p.add_argument(
        "--classes",
        default=None,
        metavar="SOURCE",
        help="class names: a text file (one name per line, in class-index order), a dataset folder (its "
        "train/ sub-folder names, or its own, sorted as the trainer sorts them) or 'digits' (the bundled "
        "dataset); default: the names the manifest or checkpoint records, else indices",
    )
    p.add_argument("--topk", type=int, default=5, help="classes to show per image (default: 5)")
    flags.add(p, "--batch-size", "--device", "--model", "--img-size", "--no-verify")
    out = p.add_mutually_exclusive_group()
    flags.add(out, "--json", help="print JSON (predictions and unreadable images)")
    out.add_argument("--plain", action="store_true", help="one plain line per image instead of a table")
    p.set_defaults(func=_cmd_predict)


def _cmd_predict(args: argparse.Namespace) -> int:
    import sys

    from deploy.predict import open_predictor, predict_images, read_class_names
    from t2tvit.errors import ConfigError

    if args.topk < 1 or args.batch_size < 1:
        raise ConfigError("--topk and --batch-size must be at least 1")
    predictor = open_predictor(args.target, args.format, **flags.opening(args))
    art = predictor.artifact
    names = read_class_names(args.classes) if args.classes else art.classes
    if args.classes and art.num_classes and len(names) != art.num_classes:
        _wrong_class_count(args.classes, len(names), art.path.name, art.num_classes)
    if art.status not in (None, "ok"):
        print(f"t2t predict: warning: the manifest marks {art.path.name} {art.status}: {art.reason}", file=sys.stderr)

    def report(err: dict[str, str]) -> None:
        print(f"t2t predict: cannot read {err['image']}: {err['error']}", file=sys.stderr)

    found = predict_images(predictor, args.images, topk=args.topk, batch_size=args.batch_size, on_error=report)
    if found.results and args.classes and len(names) != found.results[0]["num_classes"]:
        _wrong_class_count(args.classes, len(names), art.path.name, found.results[0]["num_classes"])
    info = {
        "artifact": str(art.path),
        "format": predictor.format,
        "precision": predictor.precision,
        "device": predictor.device,
        "model": art.model,
        "input_size": list(art.img_size),
        "classes_from": args.classes if args.classes else (f"the {art.source}" if art.classes else None),
    }
    try:
        _print_results(args, info, found, names)
    except BrokenPipeError:  # `t2t predict ... --plain | head`: stop quietly, as other tools do
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 1 if found.errors else 0


def _wrong_class_count(source: str, named: int, artifact: str, outputs: int) -> None:
    """--classes must name exactly the head's outputs: fewer or more names would label by the wrong index."""
    from t2tvit.errors import ConfigError

    raise ConfigError(
        f"{source} names {named} classes but {artifact} predicts {outputs}; "
        "pass the class names of the dataset it was trained on, one per output"
    )


def _print_results(args: argparse.Namespace, info: dict[str, Any], found: Any, names: list[str] | None) -> None:
    import json

    preds = found.labelled(names)
    if args.json:
        print(json.dumps(info | {"predictions": preds, "errors": found.errors}, indent=2))
    elif args.plain:
        for p in preds:
            tops = "  ".join(f"{t['class'] or t['index']} {t['probability']:.4f}" for t in p["top"])
            print(f"{p['image']}  {tops}")
    else:
        _print_table(info, preds)


def _print_table(info: dict[str, Any], preds: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    if not preds:
        console.print("no image could be read")
        return
    h, w = info["input_size"]
    title = f"{Path(info['artifact']).name}: {info['format']} ({info['precision']}, {info['device']}), {h}x{w}"
    if info["model"]:
        title += f", {info['model']}"
    named = info["classes_from"] is not None
    table = Table(title=escape(title), caption=f"classes from {escape(info['classes_from'])}" if named else None)
    table.add_column("image")
    table.add_column("#", justify="right")
    table.add_column("class" if named else "class index")
    if named:
        table.add_column("index", justify="right")
    table.add_column("probability", justify="right")
    for r in preds:
        for rank, t in enumerate(r["top"], 1):
            cells = [escape(r["image"]) if rank == 1 else "", str(rank)]
            cells += [escape(t["class"] or "-"), str(t["index"])] if named else [str(t["index"])]
            table.add_row(*cells, f"{t['probability']:.4f}", end_section=rank == len(r["top"]))
    console.print(table)
