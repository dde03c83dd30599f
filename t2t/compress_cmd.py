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

This module is the only place that sees every package (trainer, distillation, export,
profiler); each stage calls the same code as its own command (``t2t train``, ``t2t distill``,
``t2t export``, ``t2t bench``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import time
from pathlib import Path
from typing import Any

__all__ = ["STAGES", "add_parser"]

STAGES = ("teacher", "student", "export", "verify", "report")
DEFAULT_TEACHER = "resnet18"

# --demo: the bundled digits, end to end in a few minutes on 2 CPU cores.
DEMO = {
    "data": "digits",
    "teacher_epochs": 4,
    "epochs": 8,
    "formats": "builtin,tensorrt",
    "batch_sizes": "1,8",
    "duration": 1.0,
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compress",
        help="the whole pipeline: train a teacher, distil, export, verify, benchmark, report (resumable)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\nThis module")[0]
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
    p.set_defaults(func=_cmd_compress)


# --------------------------------------------------------------------------- settings and stage records


def _settings(args: argparse.Namespace, explicit: set[str]) -> dict[str, Any]:
    """The pipeline's settings; with --demo, the demo values fill what was not given explicitly."""
    s = {k: v for k, v in vars(args).items() if k not in ("func", "command", "demo", "out", "redo", "stop_after")}
    if args.demo:
        for k, v in DEMO.items():
            if k not in explicit:
                s[k] = v
    return s


def _explicit(argv_flags: argparse.Namespace, parser_defaults: dict[str, Any]) -> set[str]:
    return {k for k, v in vars(argv_flags).items() if k in parser_defaults and v != parser_defaults[k]}


def _record(folder: Path, stage: str, seconds: float, summary: dict[str, Any]) -> None:
    (folder / "stage.json").write_text(
        json.dumps({"stage": stage, "status": "done", "seconds": round(seconds, 1), "summary": summary}, indent=2)
    )


def _done(folder: Path) -> dict[str, Any] | None:
    path = folder / "stage.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


# The first stage each setting changes; any other setting is used from the first stage on.
_FIRST_USE = {
    "model": "student",
    "epochs": "student",
    "student_args": "student",
    "distillation_alpha": "student",
    "distillation_tau": "student",
    "formats": "export",
    "export_args": "export",
    "batch_sizes": "report",
    "threads": "report",
    "duration": "report",
    "no_memory": "report",
}


def _first_use(key: str, before: Any, after: Any) -> int:
    """The index of the first stage a change of ``key`` from ``before`` to ``after`` affects."""
    if key == "distillation_type" and "none" not in (before, after):
        return STAGES.index("student")  # hard <-> soft keeps the teacher; none has no teacher stage
    return STAGES.index(_FIRST_USE.get(key, STAGES[0]))


def _check_same_pipeline(out: Path, settings: dict[str, Any], redo: str | None) -> None:
    """Refuse settings that differ from the run already in ``out``, unless ``--redo`` reruns every
    stage they affect (e.g. ``--redo report --duration 5``)."""
    from t2tvit.errors import ConfigError

    path = out / "pipeline.json"
    if path.is_file():
        before = json.loads(path.read_text()).get("settings", {})
        changed = {
            k: _first_use(k, before.get(k), settings.get(k))
            for k in set(before) | set(settings)
            if before.get(k) != settings.get(k)
        }
        redo_from = STAGES.index(redo) if redo else len(STAGES)
        stale = sorted(k for k, first in changed.items() if first < redo_from)
        if stale:
            first = min(changed[k] for k in stale)
            raise ConfigError(
                f"{out} holds a pipeline run with other settings ({', '.join(stale)}); pass --redo "
                f"{STAGES[first]} to run again from where they matter, or choose another --out"
            )
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"settings": settings}, indent=2))


def _call(what: str, argv: list[str]) -> int:
    import sys

    from t2t.cli import main

    print(f"$ t2t {what} {shlex.join(argv)}", file=sys.stderr, flush=True)

    return main([what, *argv])


def _train_argv(data: str, s: dict[str, Any], model: str, epochs: int | None, extra: str) -> list[str]:
    argv = [data, "--config", s["config"], "--model", model]
    if s["img_size"]:
        argv += ["--img-size", str(s["img_size"])]
    if epochs:
        argv += ["--epochs", str(epochs)]
    return argv + shlex.split(extra)


def _top1(folder: Path) -> float | None:
    """The val top-1 of the run's best.pth (what the next stage uses; EMA's when EMA is on)."""
    path = folder / "summary.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    if summary.get("best_top1") is not None:
        return summary["best_top1"]
    last = summary.get("last") or {}
    return last.get("ema_top1", last.get("top1"))


def _resume(folder: Path) -> list[str]:
    """Continue an interrupted training stage from its last epoch."""
    last = folder / "last.pth"
    return ["--resume", str(last)] if last.is_file() else []


# --------------------------------------------------------------------------- the stages


def _stage_teacher(s: dict[str, Any], folder: Path) -> dict[str, Any]:
    from t2tvit.errors import T2TError

    argv = _train_argv(s["data"], s, s["teacher_model"] or DEFAULT_TEACHER, s["teacher_epochs"], s["teacher_args"])
    if _call("train", [*argv, "--output", str(folder), *_resume(folder)]) != 0:
        raise T2TError("the teacher stage failed (see above); fix it and run the same command again")
    return {
        "checkpoint": str(folder / "best.pth"),
        "val_top1": _top1(folder),
        "model": s["teacher_model"] or DEFAULT_TEACHER,
    }


def _stage_student(s: dict[str, Any], folder: Path, teacher: dict[str, Any]) -> dict[str, Any]:
    from t2tvit.errors import T2TError

    argv = _train_argv(s["data"], s, s["model"], s["epochs"], s["student_args"])
    argv += ["--distillation-type", s["distillation_type"], "--distillation-alpha", str(s["distillation_alpha"])]
    argv += ["--distillation-tau", str(s["distillation_tau"])]
    if teacher.get("checkpoint"):
        argv += ["--teacher-path", teacher["checkpoint"]]
        if teacher.get("model"):
            argv += ["--teacher-model", teacher["model"]]
    if _call("distill", [*argv, "--output", str(folder), *_resume(folder)]) != 0:
        raise T2TError("the student stage failed (see above); fix it and run the same command again")
    return {"checkpoint": str(folder / "best.pth"), "val_top1": _top1(folder), "model": s["model"]}


def _val_folder(data: str) -> Path:
    from t2tvit.data import bundled_dataset_path, find_split

    if data == "digits" and not Path(data).is_dir():
        return bundled_dataset_path() / "val"
    return find_split(data, "val")


def _stage_export(s: dict[str, Any], folder: Path, checkpoint: str) -> dict[str, Any]:
    from deploy.export import read_manifest
    from t2tvit.errors import T2TError

    argv = ["--checkpoint", checkpoint, "--formats", s["formats"], "--calib-data", str(_val_folder(s["data"]))]
    code = _call("export", [*argv, *shlex.split(s["export_args"]), "--out", str(folder)])
    if code not in (0, 1):  # 1: some artifact failed, which the manifest and the report show
        raise T2TError("the export stage failed (see above); fix it and run the same command again")
    counts: dict[str, int] = {}
    for a in read_manifest(folder)["artifacts"]:
        counts[a["status"]] = counts.get(a["status"], 0) + 1
    return {"folder": str(folder), "artifacts": counts}


def _stage_verify(s: dict[str, Any], folder: Path, export: Path, checkpoint: str) -> dict[str, Any]:
    import t2tvit
    from compress.quantize import load_images
    from deploy.export import manifest_preprocessing, read_manifest, verify_artifacts
    from t2tvit.data import eval_transform_for

    manifest = read_manifest(export)
    h, w = manifest["input"]["shape"][2:]
    model = t2tvit.create_model(s["model"], checkpoint=checkpoint, img_size=(h, w)).eval()
    transform = eval_transform_for(model, (h, w), **manifest_preprocessing(manifest))
    images, _ = load_images(_val_folder(s["data"]), transform, 128, seed=1, what="verification")
    results = verify_artifacts(export, model, images)
    (folder / "verify.json").write_text(json.dumps(results, indent=2))
    bad = [r for r in results if not r["ok"]]
    for r in bad:
        print(f"verify: {r['format']}: {'; '.join(r['problems'])}")
    print(f"verify: {len(results) - len(bad)} of {len(results)} artifacts load, match their sha256 and pass parity")
    return {"checked": len(results), "ok": len(results) - len(bad), "failed": [r["format"] for r in bad]}


def _stage_report(s: dict[str, Any], folder: Path, export: Path, command: str) -> dict[str, Any]:
    from benchmarks.profiler import ProfileConfig, profile_folder
    from benchmarks.report import print_table, write_report

    batch_sizes = tuple(int(b) for b in str(s["batch_sizes"]).split(","))
    config = ProfileConfig(
        batch_sizes=batch_sizes,
        threads=s["threads"],
        duration=s["duration"],
        data=str(_val_folder(s["data"])),
        memory=not s["no_memory"],
        reference=True,  # the straightforward formulation, for the eager-speed target
    )
    report = profile_folder(export, config, command=command)
    write_report(report, folder)
    print_table(report)
    ok = [r for r in report["rows"] if r["status"] == "ok"]
    return {"folder": str(folder), "rows": len(report["rows"]), "ok": len(ok)}


# --------------------------------------------------------------------------- the command


def _cmd_compress(args: argparse.Namespace) -> int:
    import sys

    from t2tvit.errors import ConfigError

    if not args.demo and args.data is None:
        raise ConfigError("give a dataset folder (DATA/train, DATA/val), 'digits', or --demo")
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    add_parser(sub)
    defaults = vars(parser.parse_args(["compress"]))
    s = _settings(args, _explicit(args, defaults))
    s["data"] = s["data"] or "digits"
    out = Path(args.out) if args.out else Path("runs") / "compress" / s["model"]
    _check_same_pipeline(out, s, args.redo)
    command = shlex.join(["t2t", *sys.argv[1:]]) if sys.argv and "t2t" in Path(sys.argv[0]).name else "t2t compress"
    folders = {stage: out / stage for stage in STAGES}
    redo_from = STAGES.index(args.redo) if args.redo else len(STAGES)
    results: dict[str, Any] = {}
    t_all = time.perf_counter()
    for i, stage in enumerate(STAGES):
        folder = folders[stage]
        earlier = _done(folder)
        if earlier is not None and i < redo_from:
            print(f"stage {stage}: done earlier ({folder}), skipped")
            results[stage] = earlier["summary"]
        else:
            if i >= redo_from and folder.exists():  # --redo: afresh, not resumed from an old last.pth
                shutil.rmtree(folder)
            folder.mkdir(parents=True, exist_ok=True)
            print(f"stage {i + 1}/{len(STAGES)}: {stage} -> {folder}", flush=True)
            t0 = time.perf_counter()
            results[stage] = _run_stage(stage, s, folders, results, command)
            _record(folder, stage, time.perf_counter() - t0, results[stage])
        if stage == args.stop_after:
            break
    _print_summary(out, results, time.perf_counter() - t_all)
    failed = results.get("export", {}).get("artifacts", {}).get("failed", 0)
    unverified = results.get("verify", {}).get("failed", [])
    if failed or unverified:
        print(
            f"t2t compress: {failed} artifact(s) failed to export and {len(unverified)} failed verification; "
            "the report lists them with their reasons",
            file=sys.stderr,
        )
        return 1
    return 0


def _run_stage(
    stage: str, s: dict[str, Any], folders: dict[str, Path], results: dict[str, Any], command: str
) -> dict[str, Any]:
    if stage == "teacher":
        if s["distillation_type"] == "none":
            return {"skipped": "--distillation-type none needs no teacher"}
        if s["teacher_path"]:
            return {"checkpoint": s["teacher_path"], "provided": True, "model": s["teacher_model"]}
        return _stage_teacher(s, folders["teacher"])
    if stage == "student":
        return _stage_student(s, folders["student"], results["teacher"])
    checkpoint = results["student"]["checkpoint"]
    if stage == "export":
        return _stage_export(s, folders["export"], checkpoint)
    if stage == "verify":
        return _stage_verify(s, folders["verify"], folders["export"], checkpoint)
    return _stage_report(s, folders["report"], folders["export"], command)


def _print_summary(out: Path, results: dict[str, Any], seconds: float) -> None:
    lines = [f"pipeline {out} ({seconds:.0f} s this run)"]
    t = results.get("teacher", {})
    if t.get("val_top1") is not None:
        lines.append(f"  teacher {t['model']}: val top-1 {t['val_top1']:.2f}%")
    st = results.get("student", {})
    if st.get("val_top1") is not None:
        lines.append(f"  student {st['model']}: val top-1 {st['val_top1']:.2f}%  ({st['checkpoint']})")
    if "export" in results:
        counts = ", ".join(f"{n} {k}" for k, n in results["export"]["artifacts"].items())
        lines.append(f"  export: {counts}  ({results['export']['folder']})")
    if "verify" in results:
        v = results["verify"]
        lines.append(f"  verify: {v['ok']} of {v['checked']} artifacts re-checked ok")
    if "report" in results:
        lines.append(f"  report: {Path(results['report']['folder']) / 'report.md'}")
    print("\n".join(lines))
