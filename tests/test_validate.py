"""``t2t validate`` / :func:`deploy.validate.validate`: accuracy of a checkpoint, an artifact file or an export
folder on a labelled folder, through the real runtimes (PyTorch, ONNX Runtime, the lite interpreter)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from deploy.validation import validate
from tests.conftest import NAMES, t2t_here, val_images


@pytest.fixture(scope="module")
def named(tmp_path_factory) -> Path:
    """The digits' validation images (6 per class) in folders named as the test checkpoint names its classes."""
    root = tmp_path_factory.mktemp("named")
    for name in NAMES:
        (root / name).mkdir()
    for path in val_images(6):
        shutil.copy(path, root / NAMES[int(path.parent.name)] / path.name)
    return root


def test_a_checkpoint_its_export_folder_and_a_lone_artifact_agree(digits_export, named, one_thread) -> None:
    folder = digits_export["out"]
    report = validate(folder, named, progress=False)
    assert [r.format for r in report.results] == ["torch", "ptl-int8", "onnx"]  # the manifest's ok rows, in order
    assert report.images == 60 and report.labels == "by name" and not report.skipped
    assert report.reference is not None and Path(report.reference).name == Path(digits_export["checkpoint"]).name
    rows = {r.format: r for r in report.results}
    assert rows["torch"].agreement == rows["onnx"].agreement == 100.0 and rows["torch"].drop == 0.0
    assert rows["onnx"].max_abs_logit_diff < 1e-3 < rows["ptl-int8"].max_abs_logit_diff  # int8 moves the logits
    assert report.reference_top1 == rows["torch"].top1 > 70  # a trained model, not chance (10%)
    for r in report.results:  # the per-class figures add up to the overall one
        assert sum(c.images for c in r.per_class) == report.images
        assert abs(sum(c.top1 * c.images for c in r.per_class) / report.images - r.top1) < 1e-9
        assert [c.name for c in r.per_class] == NAMES and [c.index for c in r.per_class] == list(range(10))

    checkpoint = validate(digits_export["checkpoint"], named, progress=False)
    (only,) = checkpoint.results
    assert only.format == "checkpoint" and checkpoint.reference is None and only.agreement is None
    assert only.top1 == rows["torch"].top1 and only.per_class == rows["torch"].per_class

    lone = validate(folder / "model-onnx.onnx", named, progress=False)  # its manifest is beside it
    assert lone.reference == report.reference and lone.results[0] == rows["onnx"]


def test_top1_is_the_profilers_on_the_same_images(compress_demo, one_thread) -> None:
    from deploy.profiler import ProfileConfig, profile_folder

    export = compress_demo["out"] / "export"
    formats = "onnx,onnx-int8-dynamic"
    report = validate(export, "digits", formats=formats, max_images=100, progress=False)
    config = ProfileConfig(
        formats=formats, data="digits", max_images=100, batch_sizes=(1,), duration=0, min_runs=1, rounds=1,
        warmup=0, memory=False,
    )  # fmt: skip
    profiled = {r.name: r for r in profile_folder(export, config, progress=False).rows}
    assert report.images == 100 and report.labels == "by name"
    for r in report.results:
        assert r.top1 == pytest.approx(profiled[r.format].top1), r.format
        assert r.top5 == pytest.approx(profiled[r.format].top5), r.format


def test_a_class_that_is_often_wrong_is_named_among_the_worst(digits_export, named, tmp_path, one_thread) -> None:
    data = tmp_path / "data"
    shutil.copytree(named, data)
    for path in (data / "three").iterdir():  # "three" now holds images of sevens
        path.unlink()
    for path in (named / "seven").iterdir():
        shutil.copy(path, data / "three" / path.name)
    report = validate(digits_export["checkpoint"], data, progress=False)
    worst = report.results[0].worst(1)[0]
    assert worst.name == "three" and worst.top1 < 50


def test_the_command_writes_its_files_and_sets_the_exit_status(digits_export, named, tmp_path) -> None:
    folder = str(digits_export["out"])
    out = tmp_path / "report"
    res = t2t_here("validate", folder, str(named), "--formats", "onnx", "--out", str(out), "--min-top1", "10")
    assert res.returncode == 0, res.stderr
    assert "| onnx |" in res.stdout and "Checks (min_top1 10): passed." in res.stdout
    assert sorted(p.name for p in out.iterdir()) == ["validate.csv", "validate.json", "validate.md"]
    doc = json.loads((out / "validate.json").read_text())
    assert doc["passed"] and doc["results"][0]["format"] == "onnx" and len(doc["results"][0]["per_class"]) == 10
    lines = (out / "validate.csv").read_text().splitlines()
    assert lines[0] == "format,class,index,images,top1" and len(lines) == 1 + 11  # (all) + 10 classes

    res = t2t_here("validate", folder, str(named), "--formats", "ptl-int8", "--max-drop", "-1", "--json")
    assert res.returncode == 1
    doc = json.loads(res.stdout)
    assert not doc["passed"] and "over --max-drop -1" in doc["results"][0]["failures"][0]
    res = t2t_here("validate", folder, str(named), "--min-top1", "101", "--formats", "torch")
    assert res.returncode == 1 and "top-1" in res.stdout and "under --min-top1 101%" in res.stdout


def _one_sentence(res) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    return lines[0]


def test_bad_folders_and_options_are_one_sentence_and_write_nothing(digits_export, named, tmp_path) -> None:
    from PIL import Image

    folder, ck = str(digits_export["out"]), str(digits_export["checkpoint"])
    out = tmp_path / "out"
    empty = tmp_path / "empty"
    (empty / "zero").mkdir(parents=True)
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(val_images(1)[0], flat / "a.png")
    broken = tmp_path / "broken"
    (broken / "one").mkdir(parents=True)
    (broken / "one" / "a.png").write_bytes(b"not a png")
    cases = {
        "does not exist": [folder, str(tmp_path / "nowhere")],
        "has no class sub-folders": [folder, str(flat)],
        "holds no images in its class sub-folders": [folder, str(empty)],
        "class folders of": [folder, "digits"],  # 0..9, but the model's classes are zero..nine
        "holds no readable images": [folder, str(broken)],
        "--max-drop compares an artifact with the checkpoint": [ck, str(named), "--max-drop", "1"],
        "has no built artifact tensorrt": [folder, str(named), "--formats", "tensorrt"],
        "--formats picks artifacts of an export folder": [ck, str(named), "--formats", "onnx"],
    }
    for says, argv in cases.items():
        line = _one_sentence(t2t_here("validate", *argv, "--out", str(out)))
        assert says in line, (says, line)
        assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    # an unreadable image among readable ones is skipped, counted and named; the others are validated
    mixed = tmp_path / "mixed"
    shutil.copytree(named, mixed)
    (mixed / "two" / "bad.png").write_bytes(b"\x89PNG truncated")
    Image.new("RGB", (8, 8)).save(mixed / "two" / "small.png")
    report = validate(ck, mixed, progress=False)
    assert report.images == 61 and [Path(s["image"]).name for s in report.skipped] == ["bad.png"]
