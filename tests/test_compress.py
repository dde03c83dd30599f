"""``t2t compress --demo``: the whole pipeline on the bundled digits, exactly as the README runs it."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import pytest

from deploy import manifest as mf
from deploy.pipeline import DEMO, STAGES, check_same_pipeline, run_pipeline
from deploy.report import read_csv, read_report
from t2t.cli import main
from t2t.compress_cmd import _settings, add_parser
from t2tvit.errors import ConfigError


@pytest.fixture(scope="module")
def demo(compress_demo) -> Path:
    return compress_demo["out"]


@pytest.mark.slow
def test_demo_runs_every_stage_into_its_own_folder(demo: Path) -> None:
    for stage in STAGES:
        record = json.loads((demo / stage / "stage.json").read_text())
        assert record["status"] == "done" and record["stage"] == stage
    teacher = json.loads((demo / "teacher" / "stage.json").read_text())["summary"]
    student = json.loads((demo / "student" / "stage.json").read_text())["summary"]
    assert teacher["val_top1"] >= 80.0 and student["val_top1"] >= 80.0, (teacher, student)  # chance: 10%
    ck = json.loads((demo / "student" / "args.json").read_text())
    # the trainer's record of where the teacher was (the demo may have run in another folder: see conftest)
    assert ck["distillation_type"] == "hard" and Path(ck["teacher_path"]).parts[-2:] == ("teacher", "best.pth")

    manifest = mf.read(demo / "export")
    status = {a.format: a.status for a in manifest.artifacts}
    assert all(status[f] == "ok" for f in ("torch", "onnx", "onnx-int8-static", "ptl-int8")), status
    assert status["tensorrt"] == "skipped"  # never installed here: a row with its reason, not a crash
    verify = json.loads((demo / "verify" / "verify.json").read_text())
    assert verify and all(r["ok"] for r in verify), verify

    report = read_report(demo / "report")
    rows = {r.name: r for r in report.rows}
    assert set(status) == set(rows)  # every manifest entry is a row, and nothing else
    assert rows["tensorrt"].status == "skipped" and rows["tensorrt"].reason
    ok = [r for r in report.rows if r.status == "ok"]
    assert all(r.latency["1"]["p50_ms"] > 0 and r.top1 is not None for r in ok)
    assert rows["torch"].agreement == 1.0 and rows["onnx"].agreement >= 0.99
    assert report.checks is None and report.machine["threads"] >= 1  # no checks asked for: none judged
    assert len(read_csv(demo / "report" / "report.csv")) >= len(report.rows)
    for png in ("latency_vs_accuracy.png", "latency_bars.png"):
        assert (demo / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_a_second_run_skips_finished_stages_and_other_settings_are_refused(demo: Path, capsys) -> None:
    before = (demo / "report" / "report.json").stat().st_mtime_ns
    t0 = time.perf_counter()
    assert main(["compress", "--demo", "--out", str(demo)]) == 0
    assert time.perf_counter() - t0 < 30
    out = capsys.readouterr().out
    assert all(f"stage {s}: done earlier" in out for s in STAGES), out
    assert (demo / "report" / "report.json").stat().st_mtime_ns == before

    assert main(["compress", "--demo", "--epochs", "3", "--out", str(demo)]) == 2
    err = capsys.readouterr().err.strip()
    assert "other settings (student.epochs); pass --redo student" in err and err.count("\n") == 0, err

    # --redo report with report-only settings changed: only the report is measured again; and the user's
    # checks on it: a ceiling no artifact can meet fails the run (exit 1), its rows marked
    student = (demo / "student" / "stage.json").read_text()
    argv = ["compress", "--demo", "--redo", "report", "--duration", "0.05", "--batch-sizes", "1", "--no-memory"]
    argv += ["--out", str(demo)]
    assert main([*argv, "--max-latency-ms", "0.001", "--min-agreement", "0.9"]) == 1
    assert (demo / "student" / "stage.json").read_text() == student
    report = read_report(demo / "report")
    assert report.settings["duration_s"] == 0.05 and report.settings["batch_sizes"] == [1]
    assert report.checks["passed"] is False and report.checks["max_latency_ms"] == 0.001
    assert all(any("p50" in c for c in r.checks) for r in report.rows if r.status == "ok")
    assert "## Checks" in (demo / "report" / "report.md").read_text()


def test_compress_without_data_is_one_sentence(capsys) -> None:
    assert main(["compress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "give a dataset folder" in err and err.count("\n") == 0
    assert main(["compress", "--demo", "--export-args", "--qengine nope --frobnicate 1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "`t2t export` has no option --frobnicate 1" in err and err.count("\n") == 0, err


def test_pass_through_flags_are_parsed_by_their_own_command() -> None:
    from t2t.compress_cmd import _explicit_flags

    assert _explicit_flags("student_args", "--lr 5e-4 -b 64") == {"lr": 5e-4, "batch_size": 64}
    assert _explicit_flags("teacher_args", "--no-model-ema") == {"model_ema": False}
    assert _explicit_flags("export_args", "--qengine x86 --batch 1,2,4") == {"qengine": "x86", "batch": (1, 2, 4)}
    with pytest.raises(ConfigError, match="invalid float value: 'abc'"):
        _explicit_flags("student_args", "--lr abc")
    assert _explicit_flags("student_args", "--model t2t_vit_12_distilled") == {"model": "t2t_vit_12_distilled"}


def test_the_export_stage_takes_a_typed_config_and_the_pipeline_keeps_its_own_flags(tmp_path: Path) -> None:
    from deploy.settings import ExportConfig

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())

    def settings(*argv: str) -> Any:
        return _settings(parser.parse_args(["compress", "--demo", *argv]))

    export = settings("--formats", "onnx,ptl-int8", "--export-args", "--qengine x86 --opset 17").export
    assert export == ExportConfig(formats="onnx,ptl-int8", qengine="x86", opset=17)
    assert settings().export.formats == DEMO["export"].formats
    # the training stages: typed configs from the recipe, the pipeline's flags, then the pass-through flags
    demo = settings("--epochs", "3", "--student-args", "--lr 0.002", "--teacher-args", "-b 16")
    assert (demo.student.model, demo.student.epochs, demo.student.lr, demo.student.img_size) == (
        "t2t_vit_7_distilled", 3, 0.002, 32
    )  # fmt: skip
    assert (demo.teacher.model, demo.teacher.epochs, demo.teacher.batch_size) == ("resnet18", 4, 16)
    own = settings("--teacher-path", "t.pth", "--teacher-model", "resnet50")
    assert (own.student.teacher_path, own.student.teacher_model, own.teacher.model) == ("t.pth", "resnet50", "resnet18")
    for argv, said in [
        (("--export-args", "--formats onnx"), "t2t compress sets --formats itself"),
        (("--export-args", "--out x"), "t2t compress sets --out itself"),
        (("--student-args", "elsewhere"), "t2t compress sets DATA itself"),
        (("--teacher-args", "--output x"), "t2t compress sets --output itself"),
    ]:
        with pytest.raises(ConfigError, match=said):
            settings(*argv)
    with pytest.raises(ConfigError, match="--jit is an option of torchscript"):  # before any stage runs
        run_pipeline(settings("--formats", "onnx", "--export-args", "--jit script"), tmp_path / "p")
    assert not (tmp_path / "p").exists()


def test_changed_settings_name_the_first_stage_they_affect(tmp_path: Path) -> None:
    def at(distillation: str, duration: float) -> dict:
        return {"student": {"distillation_type": distillation, "lr": 0.001}, "profile": {"duration": duration}}

    check_same_pipeline(tmp_path, at("hard", 1.0), None)
    with pytest.raises(ConfigError, match="--redo student"):  # hard -> soft: the teacher stays
        check_same_pipeline(tmp_path, at("soft", 1.0), None)
    with pytest.raises(ConfigError, match="--redo teacher"):  # none has no teacher stage at all
        check_same_pipeline(tmp_path, at("none", 1.0), "student")
    with pytest.raises(ConfigError, match=r"\(profile.duration, student.distillation_type\); pass --redo student"):
        check_same_pipeline(tmp_path, at("soft", 2.0), None)
    with pytest.raises(ConfigError, match=r"\(student.distillation_type\); pass --redo student"):
        check_same_pipeline(tmp_path, at("soft", 2.0), "report")
    check_same_pipeline(tmp_path, at("soft", 2.0), "student")
    assert json.loads((tmp_path / "pipeline.json").read_text())["settings"]["student"]["distillation_type"] == "soft"
