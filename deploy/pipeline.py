"""The whole pipeline, one subfolder per stage, resumable: what ``t2t compress`` runs.

    teacher/   train the CNN teacher (skipped with ``teacher_path``, or distillation type ``none``)
    student/   distil the ``*_distilled`` T2T-ViT student from it (the trainer, resumable by epoch)
    export/    every deployment format + manifest.json, each artifact checked against the student
    verify/    every artifact loaded again, its sha256 and parity re-checked (verify.json)
    report/    the latency profiler: report.md/.json/.csv and the PNG plots, and the user's checks

Each stage calls the library function of its own command with Python values and uses what it
returns: :func:`t2tvit.train.run`, :func:`compress.distill.run`, :func:`deploy.export.export_checkpoint`,
:func:`deploy.export.verify_export`, :func:`deploy.profiler.profile_folder`. A finished stage leaves
``stage.json``; running again skips finished stages and continues an interrupted training stage from
its ``last.pth``. ``redo=STAGE`` runs that stage and every later one again, from scratch; the previous
result of a stage is set aside while it runs again and put back if the new run fails. Paths in the
stage records are relative to the pipeline folder, so the folder can be moved or copied. The
settings are kept in ``pipeline.json``; running into the same folder with other settings is refused
unless ``redo`` reruns every stage they affect, so a folder never mixes two pipelines.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from compress.distill import DistillConfig
from t2tvit.errors import ConfigError, T2TError
from t2tvit.train_config import TrainConfig

from .profiler import ProfileConfig
from .settings import ExportConfig

__all__ = ["DEMO", "STAGES", "PipelineResult", "PipelineConfig", "check_same_pipeline", "run_pipeline"]

STAGES = ("teacher", "student", "export", "verify", "report")
DEFAULT_TEACHER = "resnet18"
DEFAULT_STUDENT = "t2t_vit_7_distilled"
RECIPE = "digits"  # the trainer recipe both training stages start from unless told otherwise


def _student() -> DistillConfig:
    return DistillConfig.load(RECIPE, model=DEFAULT_STUDENT)  # the recipe's own model is a plain T2T-ViT-7


def _teacher() -> TrainConfig:
    return TrainConfig.load(RECIPE, model=DEFAULT_TEACHER)


# The demo: the bundled digits, end to end in a few minutes on 2 CPU cores.
DEMO: dict[str, Any] = {
    "data": "digits",
    "student": DistillConfig.load(RECIPE, model=DEFAULT_STUDENT, epochs=8),
    "teacher": TrainConfig.load(RECIPE, model=DEFAULT_TEACHER, epochs=4),
    "export": ExportConfig(formats="builtin,mobile,litert,tensorrt"),
    "profile": ProfileConfig(batch_sizes=(1, 8), duration=1.0),
}


@dataclass
class PipelineConfig:
    """Everything that decides what the stages produce (recorded in ``pipeline.json``): one typed config per
    stage's capability.

    ``student``: the distillation run; a ``teacher_path`` there means an already trained teacher, and no
    teacher stage (nor with ``distillation_type="none"``). ``teacher``: the teacher's training run. Each
    training stage sets ``data``, ``output`` and ``resume`` itself (and the student's teacher, when the
    teacher was trained here). ``export``: the export stage's settings; the stage sets ``out`` (its folder)
    and, unless given, ``calib_data`` (the dataset's ``val/``). ``profile``: the report stage's; unless
    given, its ``data`` is the dataset's ``val/``.
    """

    data: str = "digits"  # dataset folder (train/, val/) or a bundled dataset's name
    student: DistillConfig = field(default_factory=_student)
    teacher: TrainConfig = field(default_factory=_teacher)
    export: ExportConfig = field(default_factory=ExportConfig)
    profile: ProfileConfig = field(default_factory=lambda: ProfileConfig(batch_sizes=(1, 8)))

    def record(self) -> dict[str, Any]:
        """The settings as ``pipeline.json`` keeps them (JSON values: tuples as lists, paths as text)."""
        return json.loads(json.dumps(asdict(self), default=str))

    def check(self) -> None:
        """Refuse, before any stage runs, settings a later stage would refuse (one sentence)."""
        for part in ("student", "teacher"):
            mine = [f"{part}.{k}" for k in ("data", "output", "resume") if getattr(getattr(self, part), k) is not None]
            if mine:
                raise ConfigError(
                    f"the pipeline sets {', '.join(mine)} itself (its data and stage folders); leave it unset"
                )
        if self.export.out is not None:
            raise ConfigError("the pipeline exports into its own export/ folder; give the folder as run_pipeline's out")
        self.export.check()  # unknown formats, format options none of them takes, bad values
        self.report_config().check()

    def report_config(self) -> ProfileConfig:
        """``profile`` as the report stage runs it: on the dataset's ``val/`` unless it names other data."""
        return replace(self.profile, data=self.profile.data or _val_folder(self.data))


# The first stage each part of the settings changes; any other setting is used from the first stage on.
_FIRST_USE = {"student": "student", "export": "export", "profile": "report"}


def _first_use(key: str, before: Any, after: Any) -> int:
    """The index of the first stage a change of ``key`` (``part.field``) from ``before`` to ``after`` affects."""
    if key == "student.distillation_type" and "none" in (before, after):
        return STAGES.index("teacher")  # none has no teacher stage (hard <-> soft keeps the teacher)
    if key in ("student.teacher_path", "student.teacher_model"):
        return STAGES.index("teacher")  # a teacher of one's own replaces the trained one, or the reverse
    return STAGES.index(_FIRST_USE.get(key.split(".")[0], STAGES[0]))


def _flat(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings with each part's fields as ``part.field`` (a refusal names ``profile.duration``, not ``profile``)."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict) and value:
            flat |= {f"{key}.{sub}": v for sub, v in value.items()}
        else:
            flat[key] = value
    return flat


def check_same_pipeline(out: Path, settings: dict[str, Any], redo: str | None) -> None:
    """Refuse settings that differ from the run already in ``out``, unless ``redo`` reruns every
    stage they affect (e.g. ``redo="report"`` with another ``profile.duration``); then record them."""
    path = out / "pipeline.json"
    if path.is_file():
        before, now = _flat(json.loads(path.read_text()).get("settings", {})), _flat(settings)
        changed = {
            k: _first_use(k, before.get(k), now.get(k)) for k in set(before) | set(now) if before.get(k) != now.get(k)
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


@dataclass
class PipelineResult:
    """Each stage's summary (this run's, or the one recorded when it was skipped), and the verdict."""

    out: Path
    stages: dict[str, dict[str, Any]]
    seconds: float

    @property
    def failed_exports(self) -> int:
        return int(self.stages.get("export", {}).get("artifacts", {}).get("failed", 0))

    @property
    def unverified(self) -> list[str]:
        return list(self.stages.get("verify", {}).get("failed", []))

    @property
    def checks_passed(self) -> bool:
        checks = self.stages.get("report", {}).get("checks")
        return checks is None or bool(checks.get("passed"))

    @property
    def ok(self) -> bool:
        """Every artifact exported and verified, and the report meets the user's checks."""
        return not self.failed_exports and not self.unverified and self.checks_passed

    def summary(self) -> list[str]:
        lines = [f"pipeline {self.out} ({self.seconds:.0f} s this run)"]
        t, st = self.stages.get("teacher", {}), self.stages.get("student", {})
        if t.get("val_top1") is not None:
            lines.append(f"  teacher {t['model']}: val top-1 {t['val_top1']:.2f}%")
        if st.get("val_top1") is not None:
            lines.append(
                f"  student {st['model']}: val top-1 {st['val_top1']:.2f}%  ({_at(st['checkpoint'], self.out)})"
            )
        if "export" in self.stages:
            counts = ", ".join(f"{n} {k}" for k, n in self.stages["export"]["artifacts"].items())
            lines.append(f"  export: {counts}  ({_at(self.stages['export']['folder'], self.out)})")
        if "verify" in self.stages:
            v = self.stages["verify"]
            lines.append(f"  verify: {v['ok']} of {v['checked']} artifacts re-checked ok")
        if "report" in self.stages:
            lines.append(f"  report: {_at(self.stages['report']['folder'], self.out) / 'report.md'}")
            lines += [f"  {t}" for t in self.stages["report"].get("verdict") or []]  # which file to ship
            lines += [f"  note: {n}" for n in self.stages["report"].get("notes") or []]  # e.g. int8 slower here
        return lines


def _done(folder: Path) -> dict[str, Any] | None:
    path = folder / "stage.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def run_pipeline(
    settings: PipelineConfig,
    out: str | Path | None = None,
    *,
    redo: str | None = None,
    stop_after: str | None = None,
    command: str = "t2t compress",
    echo: Callable[[str], None] = print,
) -> PipelineResult:
    """Run the stages into ``out`` (default ``runs/compress/<model>``), skipping the finished ones.

    ``redo``: run this stage and every later one again, from scratch; ``stop_after``: stop after this
    stage. ``echo`` gets the stage lines and the results (``print`` by default). Raises
    :class:`~t2tvit.errors.T2TError` (one sentence naming the fix) when a stage cannot run.
    """
    for name, stage in (("redo", redo), ("stop_after", stop_after)):
        if stage is not None and stage not in STAGES:
            raise ConfigError(f"{name} must be one of {', '.join(STAGES)}, not {stage!r}")
    settings.check()
    out = Path(out) if out is not None else Path("runs") / "compress" / settings.student.model
    from t2tvit.faults import output_dir

    # A pipeline that stops before any stage wrote a file leaves no folder behind (only pipeline.json).
    with output_dir(out, "--out", disposable=("pipeline.json",)):
        return _run_stages(settings, out, redo, stop_after, command, echo)


def _run_stages(
    settings: PipelineConfig,
    out: Path,
    redo: str | None,
    stop_after: str | None,
    command: str,
    echo: Callable[[str], None],
) -> PipelineResult:
    check_same_pipeline(out, settings.record(), redo)
    for stage in STAGES:  # a run killed while a stage ran again: its previous result comes back
        _restore(out / stage)
    folders = {stage: out / stage for stage in STAGES}
    redo_from = STAGES.index(redo) if redo else len(STAGES)
    results: dict[str, dict[str, Any]] = {}
    t_all = time.perf_counter()
    for i, stage in enumerate(STAGES):
        folder = folders[stage]
        earlier = _done(folder)
        if earlier is not None and i < redo_from:
            echo(f"stage {stage}: done earlier ({folder}), skipped")
            results[stage] = earlier["summary"]
        else:
            previous = _set_aside(folder) if i >= redo_from else None  # redo: afresh, not from an old last.pth
            folder.mkdir(parents=True, exist_ok=True)
            echo(f"stage {i + 1}/{len(STAGES)}: {stage} -> {folder}")
            t0 = time.perf_counter()
            try:
                results[stage] = _STAGE_RUNNERS[stage](settings, folders, results, command, echo)
            except BaseException:
                if previous is not None:  # a failed redo never empties the previous result
                    shutil.rmtree(folder, ignore_errors=True)
                    _restore(folder)
                raise
            record = {"stage": stage, "status": "done", "seconds": round(time.perf_counter() - t0, 1)}
            (folder / "stage.json").write_text(json.dumps(record | {"summary": results[stage]}, indent=2))
            if previous is not None:
                shutil.rmtree(previous, ignore_errors=True)
        if stage == stop_after:
            break
    return PipelineResult(out, results, time.perf_counter() - t_all)


def _previous(folder: Path) -> Path:
    return folder.parent / f".{folder.name}.previous"


def _set_aside(folder: Path) -> Path | None:
    """Move a stage's finished result aside while it runs again (a rename: instant, nothing copied)."""
    if not folder.exists():
        return None
    keep = _previous(folder)
    if keep.exists():
        shutil.rmtree(keep)
    if _done(folder) is None:  # an unfinished run of the stage: nothing worth keeping
        shutil.rmtree(folder)
        return None
    folder.rename(keep)
    return keep


def _restore(folder: Path) -> None:
    """Put a stage's set-aside result back when its new run did not finish."""
    keep = _previous(folder)
    if not keep.exists():
        return
    if _done(folder) is not None:  # the new run finished: the old one is stale
        shutil.rmtree(keep, ignore_errors=True)
        return
    shutil.rmtree(folder, ignore_errors=True)
    keep.rename(folder)


def _rel(path: Path, root: Path) -> str:
    """``path`` as recorded in a stage summary: relative to the pipeline folder when inside it."""
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def _at(recorded: str, root: Path) -> Path:
    """A path a stage summary recorded: relative to the pipeline folder (older records: to the working
    directory where it exists)."""
    p = Path(recorded)
    if p.is_absolute():
        return p
    return root / p if (root / p).exists() or not p.exists() else p


# --------------------------------------------------------------------------- the stages


def _val_folder(data: str) -> Path:
    from t2tvit.data import dataset_split

    return dataset_split(data, "val")


def _best_top1(summary: dict[str, Any]) -> float | None:
    """The val top-1 of the run's best.pth (what the next stage uses; EMA's when EMA is on)."""
    if summary.get("best_top1") is not None:
        return summary["best_top1"]
    last = summary.get("last") or {}
    return last.get("ema_top1", last.get("top1"))


def _train(stage: str, s: PipelineConfig, folder: Path, config: TrainConfig, run: Any) -> dict[str, Any]:
    """One training stage through its library ``run``, on the pipeline's data, into ``folder``; continues
    from ``last.pth`` when there is one."""
    last = folder / "last.pth"
    config = replace(config, data=s.data, output=str(folder), resume=str(last) if last.is_file() else None)
    try:
        return run(config)
    except T2TError as e:
        raise T2TError(f"the {stage} stage failed: {e}; fix it and run the same command again") from None


def _teacher_stage(s: PipelineConfig, folders: dict[str, Path], results: dict, command: str, echo: Any) -> dict:
    from t2tvit.train import run

    if s.student.distillation_type == "none":
        return {"skipped": "--distillation-type none needs no teacher"}
    if s.student.teacher_path:
        return {"checkpoint": s.student.teacher_path, "provided": True, "model": s.student.teacher_model}
    summary = _train("teacher", s, folders["teacher"], s.teacher, run)
    best = _rel(folders["teacher"] / "best.pth", _root(folders))
    return {"checkpoint": best, "val_top1": _best_top1(summary), "model": s.teacher.model}


def _student_stage(s: PipelineConfig, folders: dict[str, Path], results: dict, command: str, echo: Any) -> dict:
    from compress.distill import run

    teacher, config = results["teacher"], s.student
    if teacher.get("checkpoint") and not teacher.get("provided"):  # trained here: the student distils from it
        config = replace(
            config, teacher_path=str(_at(teacher["checkpoint"], _root(folders))), teacher_model=teacher["model"]
        )
    summary = _train("student", s, folders["student"], config, run)
    best = _rel(folders["student"] / "best.pth", _root(folders))
    return {"checkpoint": best, "val_top1": _best_top1(summary), "model": s.student.model}


def _export(s: PipelineConfig, folders: dict[str, Path], results: dict, command: str, echo: Any) -> dict:
    from .export import export_checkpoint

    checkpoint = _at(results["student"]["checkpoint"], _root(folders))
    calib = s.export.calib_data or str(_val_folder(s.data))
    try:
        manifest = export_checkpoint(checkpoint, s.export, out=folders["export"], calib_data=calib).manifest
    except T2TError as e:
        raise T2TError(f"the export stage failed: {e}; fix it and run the same command again") from None
    counts: dict[str, int] = {}
    for a in manifest.artifacts:
        counts[a.status] = counts.get(a.status, 0) + 1
    return {"folder": _rel(folders["export"], _root(folders)), "artifacts": counts}


def _verify(s: PipelineConfig, folders: dict[str, Path], results: dict, command: str, echo: Any) -> dict:
    from .export import verify_export

    checks = verify_export(
        folders["export"], _at(results["student"]["checkpoint"], _root(folders)), _val_folder(s.data)
    )
    (folders["verify"] / "verify.json").write_text(json.dumps(checks, indent=2))
    bad = [r for r in checks if not r["ok"]]
    for r in bad:
        echo(f"verify: {r['format']}: {'; '.join(r['problems'])}")
    echo(f"verify: {len(checks) - len(bad)} of {len(checks)} artifacts load, match their sha256 and pass parity")
    return {"checked": len(checks), "ok": len(checks) - len(bad), "failed": [r["format"] for r in bad]}


def _report(s: PipelineConfig, folders: dict[str, Path], results: dict, command: str, echo: Any) -> dict:
    from .profiler import profile_folder
    from .report import print_table, verdict_lines, write_report

    report = profile_folder(folders["export"], s.report_config(), command=command)
    write_report(report, folders["report"])
    if echo is print:
        print_table(report)
    ok = [r for r in report.rows if r.status == "ok"]
    folder = _rel(folders["report"], _root(folders))
    return {
        "folder": folder,
        "rows": len(report.rows),
        "ok": len(ok),
        "checks": report.checks,
        "notes": report.notes,
        "verdict": verdict_lines(report)[:1],
    }


def _root(folders: dict[str, Path]) -> Path:
    return folders["export"].parent


_STAGE_RUNNERS: dict[str, Callable[..., dict[str, Any]]] = {
    "teacher": _teacher_stage,
    "student": _student_stage,
    "export": _export,
    "verify": _verify,
    "report": _report,
}
