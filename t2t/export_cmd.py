"""``t2t export``: every deployment format from one command, each artifact verified.

Only argparse and t2t.flags are imported at module level; torch, ONNX and the format modules load when the
command runs, so ``t2t --help`` stays instant.
"""

from __future__ import annotations

import argparse
from typing import Any

from t2t import flags

__all__ = ["add_parser", "export_config"]


def _batch(text: str) -> tuple[int, int, int]:
    try:
        parts = [int(p) for p in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--batch takes MIN,OPT,MAX integers (e.g. 1,8,32), not {text!r}") from None
    if len(parts) == 1:
        parts = [parts[0]] * 3
    if len(parts) != 3 or not (1 <= parts[0] <= parts[1] <= parts[2]):
        raise argparse.ArgumentTypeError(f"--batch takes MIN,OPT,MAX with 1 <= MIN <= OPT <= MAX, not {text!r}")
    return parts[0], parts[1], parts[2]


class _HelpWithFormats(argparse.Action):
    """``-h/--help`` that appends the format table: read when help is printed, not when the parser is
    built, as reading it imports the toolkit (and torch), which plain ``t2t --help`` must not."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        from deploy.base import FORMAT_GROUPS, FORMATS

        rows = [
            f"  {f.name:<18} {f.precision:<5} {'cpu' if f.cpu else '   '} {'gpu' if f.gpu else '   '}  {f.description}"
            for f in FORMATS.values()
        ]
        groups = "; ".join(f"{g}: {', '.join(v)}" for g, v in FORMAT_GROUPS.items())
        parser.print_help()
        print("\nformats:\n" + "\n".join(rows) + f"\n\ngroups: {groups}")
        parser.exit()


SUMMARY = "export a model to every deployment format and verify each artifact"
DESCRIPTION = (
    "Write every requested artifact and a manifest.json into --out, then load each artifact back\n"
    "through its own runtime and compare its logits with the fp32 PyTorch model on real images\n"
    "(parity: max |Δlogit| for fp32, top-1 agreement >= 0.95 for int8; without --checkpoint the\n"
    "weights are random (seed 0) and int8 is held to max |Δlogit| <= 0.1 x max(1, max |logit|)\n"
    "instead, as the near-tied logits of an untrained model make agreement meaningless). A format\n"
    "that cannot be built on this machine is listed as skipped with what to install; an artifact\n"
    "that fails to build or fails parity is listed as failed, and the command exits with status 1."
)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = flags.command(sub, "export", SUMMARY, DESCRIPTION, add_help=False)
    p.add_argument("-h", "--help", action=_HelpWithFormats, help="show this help and the format table, then exit")
    p.add_argument("--checkpoint", default=None, help="weights to export (our checkpoints, official .pth.tar, ...)")
    p.add_argument(
        "--model",
        default=None,
        help="variant name (default: the one the checkpoint records, else t2tvit.DEFAULT_MODEL, the variants table's)",
    )
    flags.add(p, "--num-classes", "--new-head")
    flags.add(p, "--img-size", help="input height and width, a multiple of 16 (default: the checkpoint's, else 224)")
    p.add_argument("--formats", default="cpu", help="comma-separated format names, or all, cpu, gpu (default: cpu)")
    p.add_argument(
        "--batch",
        type=_batch,
        default=(1, 1, 32),
        metavar="MIN,OPT,MAX",
        help="batch sizes the artifacts accept: ONNX's dynamic batch range and TensorRT's optimization "
        "profile (min, the size to tune for, max); one number fixes the batch (default: 1,1,32)",
    )
    p.add_argument(
        "--qengine",
        default=None,
        help="PyTorch quantized engine of the torch/torchscript/ptl int8 artifacts: qnnpack (ARM phones, "
        "the default), x86 or fbgemm (x86 servers); refused when no chosen format is one of those",
    )
    p.add_argument(
        "--opset",
        type=int,
        default=None,
        help="ONNX opset to request for the onnx and tensorrt rows (default: 18; the one written is recorded)",
    )
    p.add_argument(
        "--jit",
        choices=("trace", "script"),
        default=None,
        help="TorchScript capture of the torchscript and ptl rows (default: trace)",
    )
    p.add_argument(
        "--inference-precision",
        choices=("auto", "f32", "bf16", "f16"),
        default=None,
        help="what the OpenVINO artifacts compute in when loaded (recorded in the file and the manifest): auto "
        "(default: the loading CPU's fastest native one, bf16 with AVX512_BF16 or AMX, else f32; f32 if bf16 misses "
        "parity), f32, bf16, f16 (AVX512_FP16 / AMX-FP16); an explicit one the CPU lacks is refused",
    )
    p.add_argument(
        "--max-drop",
        type=float,
        default=None,
        metavar="PTS",
        help="accuracy budget of every int8 row: "
        "at most this many points of top-1 lost against fp32 on --val-data; the most sensitive layers are kept in "
        "float until it holds (named in the manifest and the table, with the latency it costs)",
    )
    p.add_argument(
        "--sensitivity",
        action="store_true",
        default=None,
        help="also rank every quantizable layer of those rows (but openvino-int8) by its int8 error on --val-data "
        "and write <artifact>.sensitivity.csv and .png beside it",
    )
    p.add_argument(
        "--val-data",
        default=None,
        metavar="DIR|digits",
        help="labelled images (DIR/<class>/<image>, a dataset root or digits) --max-drop and --sensitivity measure on, "
        "apart from --calib-data (a fixed sample of at most 500)",
    )
    p.add_argument(
        "--calib-data",
        default=None,
        metavar="DIR",
        help="folder of real images (any depth) for static int8 calibration and parity checks "
        "(default: the bundled digits dataset's val/ split); calibration and parity images are disjoint",
    )
    p.add_argument("--calib-size", type=int, default=64, help="calibration images (default: 64)")
    p.add_argument("--parity-images", type=int, default=128, help="images for the parity checks (default: 128)")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder (default: artifacts/<model>)")
    flags.add(p, "--json", help="print the manifest instead of the table")
    p.set_defaults(func=_cmd_export, outputs=("out",))
    return p


def _cmd_export(args: argparse.Namespace) -> int:
    import json

    from deploy.export import export_checkpoint

    config = export_config(args)
    config.check()  # unknown formats, options no chosen format takes: before anything heavy loads
    if args.checkpoint is None:
        from rich.console import Console

        import t2tvit

        if (args.model or t2tvit.DEFAULT_MODEL) in t2tvit.list_variants():  # else create_model says what is wrong
            Console(stderr=True).print(
                "[yellow]no --checkpoint: exporting random weights (seed 0); int8 parity is checked by max "
                "|Δlogit|, as top-1 agreement is not meaningful for an untrained model[/]"
            )
    result = export_checkpoint(args.checkpoint, config, progress=not args.json)
    if args.json:
        print(json.dumps(result.manifest.to_json(), indent=2))
    else:
        _print_table(result.manifest, result.folder, result.formats)
    return 1 if result.failed else 0


def export_config(args: argparse.Namespace) -> Any:
    """The :class:`deploy.settings.ExportConfig` of parsed ``t2t export`` flags."""
    from deploy.settings import ExportConfig

    return flags.from_flags(ExportConfig, args)


def _print_table(manifest: Any, out: Any, formats: list[str] | None = None) -> None:
    """The export's table: one row per artifact of ``manifest`` (a :class:`deploy.manifest.Manifest`)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from deploy import manifest as mf

    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    arts = manifest.artifacts
    fp32 = next((a.bytes for a in arts if a.format == "torch" and a.bytes), None)
    h, w = manifest.model["img_size"]
    table = Table(title=f"{manifest.model_name} ({manifest.num_classes} classes, {h}x{w}) -> {out}")
    for col in ("format", "precision", "status", "size", "x torch", "max |Δlogit|", "top-1 agree", "reason / notes"):
        table.add_column(col, justify="right" if col in ("size", "x torch", "max |Δlogit|", "top-1 agree") else "left")
    colour = {"ok": "green", "skipped": "yellow", "failed": "red"}
    for a in arts:
        par = a.parity or {}
        size = f"{a.bytes / 1e6:.2f} MB" if a.bytes else "-"
        ratio = f"{a.bytes / fp32:.2f}" if a.bytes and fp32 else "-"
        note = a.reason or ""
        if formats is not None and a.format not in formats:  # merged into: an entry of an earlier export
            note = f"kept from the export of {a.exported or 'an earlier run'}" + (f"; {note}" if note else "")
        mobile = a.details.get("optimize_for_mobile")
        if not note and mobile and mobile != "applied":
            note = "optimize_for_mobile unavailable (no XNNPACK in this PyTorch build)"
        if not note and a.details.get("accuracy_budget"):
            from deploy.budget import summary

            note = summary(a.details["accuracy_budget"])
        table.add_row(
            a.format,
            a.precision,
            f"[{colour[a.status]}]{a.status}[/]",
            size,
            ratio,
            f"{par['max_abs_diff']:.2e}" if "max_abs_diff" in par else "-",
            f"{par['top1_agreement']:.3f}" if "top1_agreement" in par else "-",
            escape(note),
        )
    console.print(table)
    mine = [a for a in arts if formats is None or a.format in formats]
    n = {s: sum(a.status == s for a in mine) for s in ("ok", "skipped", "failed")}
    console.print(
        f"{n['ok']} ok, {n['skipped']} skipped, {n['failed']} failed; "
        f"parity on {manifest.parity['images']} images; manifest: {escape(str(mf.path(out)))}"
    )
