"""``t2t compress``: the whole pipeline in one command, one subfolder per stage, resumable.

    teacher/   train the CNN teacher (skipped with --teacher-path, or --distillation-type none)
    student/   distil the *_distilled T2T-ViT student from it (the trainer, resumable by epoch)
    export/    every deployment format + manifest.json, each artifact checked against the student
    verify/    every artifact loaded again, its sha256 and parity re-checked (verify.json)
    report/    the latency profiler: report.md/.json/.csv and the PNG plots

A finished stage leaves ``stage.json``; running the same command again skips finished stages and
continues an interrupted training stage from its ``last.pth``. ``--redo STAGE`` runs that stage
and every later one again. The settings are kept in ``pipeline.json``; running into the same
``--out`` with other settings is refused, so a folder never mixes two pipelines.

The pipeline is :func:`deploy.pipeline.run_pipeline`; this module parses (the pass-through flags
with the underlying command's own parser), calls it and prints.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from .bench_cmd import add_check_flags

__all__ = ["STAGES", "add_parser"]

STAGES = ("teacher", "student", "export", "verify", "report")  # deploy.pipeline.STAGES, for --help


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compress",
        help="the whole pipeline: train a teacher, distil, export, verify, benchmark, report (resumable)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\nThe pipeline is")[0]
        + "\n\nExample (the bundled digits, about 5 minutes on 2 CPU cores):\n  t2t compress --demo\n"
        "With your data and teacher:\n  t2t compress DATA --teacher-model resnet50 --teacher-path resnet50.pth "
        "--img-size 224 --epochs 100",
    )
    p.add_argument("data", metavar="DATA", nargs="?", default=None, help="dataset folder (train/, val/) or 'digits'")
    p.add_argument("--demo", action="store_true", help="run on the bundled digits with small, quick settings")
    p.add_argument("--out", default=None, metavar="DIR", help="pipeline folder (default: runs/compress/<model>)")
    p.add_argument(
        "--redo",
        choices=STAGES,
        default=None,
        help="run this stage and all later ones again, from scratch (settings they use may change)",
    )
    p.add_argument("--stop-after", choices=STAGES, default=None, help="stop after this stage")
    g = p.add_argument_group("student (t2t distill)")
    g.add_argument("--model", default="t2t_vit_7_distilled", help="student (default: t2t_vit_7_distilled)")
    g.add_argument("--config", default="digits", help="trainer recipe: bundled name or YAML file (default: digits)")
    g.add_argument("--img-size", type=int, default=None, help="input size (default: the recipe's)")
    g.add_argument("--epochs", type=int, default=None, help="student epochs (default: the recipe's)")
    g.add_argument("--student-args", default="", help="more `t2t distill` flags, quoted: '--lr 5e-4 -b 64'")
    g.add_argument("--distillation-type", choices=("none", "soft", "hard"), default="hard")
    g.add_argument("--distillation-alpha", type=float, default=0.5)
    g.add_argument("--distillation-tau", type=float, default=1.0)
    g = p.add_argument_group("teacher (t2t train)")
    g.add_argument(
        "--teacher-model",
        default=None,
        help="timm/torchvision CNN (default: resnet18 when the teacher is trained here, else the model "
        "the --teacher-path checkpoint records)",
    )
    g.add_argument("--teacher-path", default=None, help="an already trained teacher: skips the teacher stage")
    g.add_argument("--teacher-epochs", type=int, default=None, help="teacher epochs (default: the recipe's)")
    g.add_argument("--teacher-args", default="", help="more `t2t train` flags for the teacher, quoted")
    g = p.add_argument_group("export (t2t export)")
    g.add_argument("--formats", default="cpu", help="format names or groups: all, cpu, gpu, builtin (default: cpu)")
    g.add_argument("--export-args", default="", help="more `t2t export` flags, quoted: '--qengine x86'")
    g = p.add_argument_group("report (t2t bench)")
    g.add_argument("--batch-sizes", default="1,8", help="batch sizes to time (default: 1,8)")
    g.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the profiler's)")
    g.add_argument("--duration", type=float, default=2.0, help="seconds of timed runs per artifact and batch size")
    g.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocess per artifact")
    add_check_flags(g)
    p.set_defaults(func=_cmd_compress, outputs=("out",))


# The pass-through flags: parsed by the underlying command's own parser, explicit values only.
_PASS_THROUGH = {
    "student_args": ("compress.distill", "t2t distill"),
    "teacher_args": ("t2tvit.train", "t2t train"),
    "export_args": ("t2t.export_cmd", "t2t export"),
}


def _explicit_flags(key: str, text: str) -> dict[str, Any]:
    """The options ``text`` gives, by destination name, as the command it is meant for parses them."""
    import importlib

    from t2tvit.errors import ConfigError

    module, command = _PASS_THROUGH[key]
    if key == "export_args":
        sub = argparse.ArgumentParser(prog="t2t").add_subparsers()
        importlib.import_module(module).add_parser(sub)
        parser = sub.choices["export"]
    else:
        parser = importlib.import_module(module).build_parser()
    for action in parser._actions:  # explicit values only: what the pipeline sets itself must stay its own
        action.default = argparse.SUPPRESS
    parser._defaults.clear()  # set_defaults() values (the distiller's --model, the subcommand's func)

    def refuse(message: str) -> None:
        raise ConfigError(f"--{key.replace('_', '-')} {text!r} is not valid for `{command}`: {message}")

    parser.error = refuse  # one sentence instead of argparse's usage and exit
    values, rest = parser.parse_known_args(shlex.split(text))
    if rest:
        raise ConfigError(f"--{key.replace('_', '-')}: `{command}` has no option {' '.join(rest)}")
    return {k: v for k, v in vars(values).items() if k != "json"}  # how the command prints: not a setting


def _settings(args: argparse.Namespace) -> Any:
    """The pipeline's settings; with --demo, the demo values fill what was not given explicitly."""
    from dataclasses import fields

    from deploy.pipeline import DEMO, PipelineSettings

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    defaults = vars(parser.parse_args(["compress"]))
    values = {f.name: getattr(args, f.name) for f in fields(PipelineSettings)}
    if args.demo:
        values |= {k: v for k, v in DEMO.items() if values[k] == defaults[k]}
    values["data"] = values["data"] or "digits"
    for key in _PASS_THROUGH:
        values[key] = _explicit_flags(key, values[key]) if values[key] else {}
    return PipelineSettings(**values)


def _cmd_compress(args: argparse.Namespace) -> int:
    import sys

    from deploy.pipeline import run_pipeline
    from t2tvit.errors import ConfigError

    if not args.demo and args.data is None:
        raise ConfigError("give a dataset folder (DATA/train, DATA/val), 'digits', or --demo")
    command = shlex.join(["t2t", *sys.argv[1:]]) if sys.argv and "t2t" in Path(sys.argv[0]).name else "t2t compress"
    result = run_pipeline(_settings(args), args.out, redo=args.redo, stop_after=args.stop_after, command=command)
    print("\n".join(result.summary()), flush=True)
    if result.failed_exports or result.unverified:
        print(
            f"t2t compress: {result.failed_exports} artifact(s) failed to export and {len(result.unverified)} failed "
            "verification; the report lists them with their reasons",
            file=sys.stderr,
        )
    if not result.checks_passed:
        print("t2t compress: the report misses the checks asked for (see its Checks)", file=sys.stderr)
    return 0 if result.ok else 1
