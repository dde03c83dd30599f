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

from . import flags
from .bench_cmd import add_check_flags, checks_from, parse_batch_sizes

__all__ = ["STAGES", "add_parser"]

STAGES = ("teacher", "student", "export", "verify", "report")  # deploy.pipeline.STAGES, for --help


SUMMARY = "the whole pipeline: train a teacher, distil, export, verify, benchmark, report (resumable)"
DESCRIPTION = (
    __doc__.split("\n\nThe pipeline is")[0]
    + "\n\nExample (the bundled digits, about 5 minutes on 2 CPU cores):\n  t2t compress --demo\n"
    "With your data and teacher:\n  t2t compress DATA --teacher-model resnet50 --teacher-path resnet50.pth "
    "--img-size 224 --epochs 100"
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = flags.command(sub, "compress", SUMMARY, DESCRIPTION)
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
    g.add_argument("--model", default=None, help="student (default: t2t_vit_7_distilled)")
    g.add_argument(
        "--config",
        default=None,
        help="trainer recipe of both training stages: bundled name or YAML file (default: digits)",
    )
    g.add_argument("--img-size", type=int, default=None, help="input size (default: the recipe's)")
    g.add_argument("--epochs", type=int, default=None, help="student epochs (default: the recipe's)")
    g.add_argument("--student-args", default="", help="more `t2t distill` flags, quoted: '--lr 5e-4 -b 64'")
    g.add_argument("--distillation-type", choices=("none", "soft", "hard"), default=None, help="default: hard")
    g.add_argument("--distillation-alpha", type=float, default=None, help="default: 0.5")
    g.add_argument("--distillation-tau", type=float, default=None, help="default: 1.0")
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
    g.add_argument(
        "--formats", default=None, help="format names or groups: all, cpu, gpu, builtin (default: cpu; --demo: its own)"
    )
    g.add_argument("--export-args", default="", help="more `t2t export` flags, quoted: '--qengine x86'")
    g = p.add_argument_group("report (t2t bench)")
    g.add_argument("--batch-sizes", default=None, help="batch sizes to time (default: 1,8)")
    flags.add(g, "--threads", help="threads of every runtime (default: the profiler's)")
    g.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds of timed runs per artifact and batch size (default: 2; --demo: 1)",
    )
    g.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocess per artifact")
    add_check_flags(g)
    p.set_defaults(func=_cmd_compress, outputs=("out",))


# The pass-through flags: parsed by the underlying command's own parser, explicit values only.
_PASS_THROUGH = {
    "student_args": ("compress.distill", "t2t distill"),
    "teacher_args": ("t2tvit.train", "t2t train"),
    "export_args": ("t2t.export_cmd", "t2t export"),
}
_TRAINING = ("student_args", "teacher_args")
# training flags the pipeline decides itself: each stage's data and folder (and what the command does)
_TRAINING_OWNS = {"data": "DATA", "output": "--output", "resume": "--resume", "print_config": "--print-config"}
# `t2t export` flags the pipeline sets itself (--formats is t2t compress's own flag; --json is how export prints)
_PIPELINE_OWNS = {"checkpoint": "--checkpoint", "out": "--out", "formats": "--formats", "json": "--json"}


def _parser(key: str) -> argparse.ArgumentParser:
    import importlib

    module = importlib.import_module(_PASS_THROUGH[key][0])
    if key == "export_args":
        return module.add_parser(argparse.ArgumentParser(prog="t2t").add_subparsers())
    return module.build_parser()


def _explicit_flags(key: str, text: str) -> dict[str, Any]:
    """The options ``text`` gives, by destination name, as the command it is meant for parses them: only
    those given (what the pipeline sets itself must stay its own), a bad or unknown one in one sentence."""
    from t2tvit.errors import ConfigError

    flag, command = f"--{key.replace('_', '-')}", _PASS_THROUGH[key][1]
    parser = _parser(key)
    parser.exit_on_error = False  # argparse's own errors as exceptions, told in one sentence below
    unset = object()  # argparse fills in a default only where the namespace has no value yet
    namespace = argparse.Namespace(**dict.fromkeys(vars(parser.parse_args([])), unset))
    try:
        values, rest = parser.parse_known_args(shlex.split(text), namespace)
    except argparse.ArgumentError as e:
        raise ConfigError(f"{flag} {text!r} is not valid for `{command}`: {e}") from None
    if rest:
        raise ConfigError(f"{flag}: `{command}` has no option {' '.join(rest)}")
    given = {k: v for k, v in vars(values).items() if v is not unset}
    if given.get("data", unset) is None:  # DATA, an optional positional, is always matched (by nothing)
        del given["data"]
    return given


def _export_config(text: str, formats: str) -> Any:
    """The export stage's :class:`deploy.settings.ExportConfig`: ``--export-args`` on ``formats``."""
    from deploy.settings import ExportConfig
    from t2tvit.errors import ConfigError

    given = _explicit_flags("export_args", text) if text else {}
    owned = [flag for dest, flag in _PIPELINE_OWNS.items() if dest in given]
    if owned:
        raise ConfigError(f"--export-args: t2t compress sets {', '.join(owned)} itself; give --formats to it directly")
    return ExportConfig.of(formats=formats, **given)


def _settings(args: argparse.Namespace) -> Any:
    """The pipeline's :class:`~deploy.pipeline.PipelineConfig`: the demo's (``--demo``) or the default one,
    with what the flags give explicitly."""
    from dataclasses import replace

    from deploy.pipeline import DEMO, PipelineConfig
    from t2tvit.errors import ConfigError

    base = PipelineConfig(**DEMO) if args.demo else PipelineConfig()
    extra = {key: _explicit_flags(key, getattr(args, key)) if getattr(args, key) else {} for key in _TRAINING}
    for key, given in extra.items():
        owned = [flag for dest, flag in _TRAINING_OWNS.items() if dest in given]
        if owned:
            raise ConfigError(f"--{key.replace('_', '-')}: t2t compress sets {', '.join(owned)} itself")
    common = _given(args, img_size="img_size")
    student = (
        common
        | _given(args, model="model", epochs="epochs")
        | _given(args, **{k: k for k in ("distillation_type", "distillation_alpha", "distillation_tau")})
    )
    teacher = common | _given(args, model="teacher_model", epochs="teacher_epochs")
    if args.teacher_path:  # a teacher of the user's: no teacher stage; --teacher-model names its architecture
        student |= {"teacher_path": args.teacher_path, "teacher_model": teacher.pop("model", None)}

    def stage(config: Any, values: dict[str, Any]) -> Any:  # a recipe starts afresh; else the base's settings
        return type(config).load(args.config, **values) if args.config else replace(config, **values)

    profile = {"batch_sizes": parse_batch_sizes(args.batch_sizes)} if args.batch_sizes else {}
    profile |= _given(args, threads="threads", duration="duration") | ({"memory": False} if args.no_memory else {})
    return PipelineConfig(
        data=args.data or base.data,
        student=stage(base.student, {"model": base.student.model, **student, **extra["student_args"]}),
        teacher=stage(base.teacher, {"model": base.teacher.model, **teacher, **extra["teacher_args"]}),
        export=_export_config(args.export_args, args.formats or base.export.formats),
        profile=replace(base.profile, checks=checks_from(args), **profile),
    )


def _given(args: argparse.Namespace, **fields: str) -> dict[str, Any]:
    """``{field: args.<flag dest>}`` for the flags given (not None)."""
    return {name: getattr(args, dest) for name, dest in fields.items() if getattr(args, dest) is not None}


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
