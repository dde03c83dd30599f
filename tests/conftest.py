"""Fixtures shared by the test files: one thread, a T2T-ViT-7 trained on the digits, its export folder.

Training is the slow part of the deploy, predict, toy-format and README tests, so one model per
image size is trained once per session (a few seconds at 32 px: val accuracy ~0.9, where a
random-weight model's top-1 would mean nothing) and saved as a trainer-style checkpoint with
class names; :func:`digits_export` is its export to torch, onnx and ptl-int8 by ``t2t export``, and
:func:`export_digits` exports it to any formats from Python (the runtime test files' fixtures).
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Correctness, not speed, is tested: one intra-op thread keeps PyTorch's OpenMP workers from
    spin-waiting when other processes share the CPU (measured 10-20x slower otherwise)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def digits() -> Path:
    """The bundled digits dataset (train/ and val/), written on first use."""
    from t2tvit.data import bundled_dataset_path

    return bundled_dataset_path()


@pytest.fixture(scope="session")
def digits_subset(digits: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[int, int], Path]:
    """``make(train_per_class, val_per_class)``: a folder with the first images of each digit class.

    Small real datasets run the trainer's loop in seconds; each size is written once per session
    and must be copied before a test changes it.
    """
    import shutil

    made: dict[tuple[int, int], Path] = {}

    def make(train_per_class: int, val_per_class: int) -> Path:
        key = (train_per_class, val_per_class)
        if key not in made:
            root = tmp_path_factory.mktemp(f"digits_{train_per_class}_{val_per_class}")
            for split, per_class in (("train", train_per_class), ("val", val_per_class)):
                for cls in range(10):
                    dst = root / split / str(cls)
                    dst.mkdir(parents=True)
                    for f in sorted((digits / split / str(cls)).iterdir())[:per_class]:
                        shutil.copy(f, dst / f.name)
            made[key] = root
        return made[key]

    return make


@pytest.fixture(scope="session")
def small_digits(digits_subset: Callable[[int, int], Path]) -> Path:
    """80 training and 40 validation digits: enough to run the loop, quick to iterate."""
    return digits_subset(8, 4)


@pytest.fixture(scope="session")
def digits_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], dict[str, Any]]:
    """``digits_checkpoint(img_size)``: ``{"model", "acc", "checkpoint"}`` of a T2T-ViT-7 trained on the
    digits at that size, trained once per size per session."""
    from benchmarks.export_sizes import train_digits

    cache: dict[int, dict[str, Any]] = {}

    def get(img_size: int) -> dict[str, Any]:
        if img_size not in cache:
            before = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                model, acc = train_digits(steps=60, img_size=img_size)
            finally:
                torch.set_num_threads(before)
            assert acc >= 0.6, f"the test model did not learn the digits (val accuracy {acc:.2f}, chance 0.10)"
            ck = tmp_path_factory.mktemp("digits-checkpoint") / "digits.pth"
            args = {
                "model": "t2t_vit_7",
                "num_classes": 10,
                "img_size": img_size,
                "crop_pct": None,
                "interpolation": "",
            }
            state = {"model": model.state_dict(), "model_ema": None, "args": args, "classes": NAMES, "epoch": 0}
            torch.save(state, ck)
            cache[img_size] = {"model": model, "acc": acc, "checkpoint": ck}
        return cache[img_size]

    return get


@pytest.fixture(scope="session")
def export_digits(
    digits_checkpoint: Callable[[int], dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., dict[str, Any]]:
    """``export_digits(formats, img_size=32, **settings)``: the digits checkpoint of that size exported to
    ``formats`` by :func:`deploy.export.export_checkpoint` into a fresh folder (96 parity images, no progress
    bar, ``settings`` passed on); returns ``{"model", "acc", "checkpoint", "out", "entries"}``, ``entries``
    the manifest's artifact entries by format, as manifest.json records them."""
    from deploy.export import export_checkpoint

    def export(formats: str, img_size: int = 32, **settings: Any) -> dict[str, Any]:
        trained = digits_checkpoint(img_size)
        out = tmp_path_factory.mktemp("export") / "export"
        exp = export_checkpoint(
            trained["checkpoint"], formats=formats, out=out, **{"parity_images": 96, "progress": False, **settings}
        )
        return {**trained, "out": out, "entries": {a.format: a.to_json() for a in exp.manifest.artifacts}}

    return export


# The converted formats the session's shared export holds: those of them that can be built here.
CONVERTED = ("torch", "onnx", "ptl", "openvino", "ncnn")


@pytest.fixture(scope="session")
def converted_export(export_digits: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """The 32 px digits checkpoint exported once per session to :data:`CONVERTED` (those that can be built
    here), with 16 calibration and 32 parity images, for the tests that read an export or damage a copy of it
    (they copy ``out`` first: it is shared)."""
    from deploy.base import FORMATS

    here = [n for n in CONVERTED if FORMATS[n].missing() is None]
    return {**export_digits(",".join(here), 32, parity_images=32, calib_size=16), "formats": here}


@pytest.fixture(scope="session")
def rows_export(
    export_digits: Callable[..., dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., dict[str, Any]]:
    """``rows_export(rows, **settings)``: a 32 px digits model's export holding ``torch`` and ``rows``, for the
    runtime files that check what an export of their rows wrote. When the quick start's demo run is here and
    current (:func:`finished_demo`; CI ran it minutes before) and built every one of them, its export cut down
    to those rows (their files and manifest entries) is copied, and the conversions are not paid again (20-40 s
    a file); otherwise the session's digits model is exported with ``settings`` (:func:`export_digits`).
    Beside ``export_digits``'s keys, ``batch``: the (min, opt, max) batch range the export was made for."""
    import dataclasses
    import shutil

    import t2tvit
    from deploy import manifest as mf
    from deploy.base import FORMATS, resolve_formats

    def cut(rows: list[str]) -> dict[str, Any] | None:
        if not finished_demo(QUICK_START_DEMO):
            return None
        src = QUICK_START_DEMO / "export"
        manifest = mf.read(src)
        kept = [a for a in manifest.artifacts if a.format in rows]
        checkpoint = mf.recorded_path(src, manifest.source_checkpoint, manifest.source_checkpoint_from_folder)
        if manifest.img_size != (32, 32) or len(kept) != len(rows) or any(a.file is None for a in kept):
            return None
        if checkpoint is None:  # the student the demo exported: the parity checks' reference
            return None
        checkpoint = checkpoint.resolve()  # the copy's manifest names it absolutely: found from any folder
        out = tmp_path_factory.mktemp("demo-rows") / "export"
        out.mkdir()
        for a in kept:
            for f in FORMATS[a.format].files(src / a.file):
                if f.is_dir():
                    shutil.copytree(f, out / f.name)
                elif f.exists():
                    shutil.copy2(f, out / f.name)
        mf.write(out, dataclasses.replace(manifest, artifacts=kept, source_checkpoint=str(checkpoint),
                                          source_checkpoint_from_folder=None))  # fmt: skip
        model = t2tvit.create_model(manifest.model_name, checkpoint=out / FORMATS["torch"].filename, img_size=32)
        return {"out": out, "entries": {a.format: a.to_json() for a in kept}, "model": model.eval(),
                "checkpoint": checkpoint, "batch": tuple(manifest.input["batch"].values())}  # fmt: skip

    def export(rows: str, **settings: Any) -> dict[str, Any]:
        names = [f.name for f in resolve_formats(["torch", *rows.split(",")])]
        demo = cut(names)
        if demo is not None:
            return demo
        from deploy.settings import ExportConfig

        batch = settings.get("batch", ExportConfig.batch)
        return {**export_digits(",".join(names), 32, **settings), "batch": tuple(batch)}

    return export


@pytest.fixture(scope="session")
def digits_export(digits_checkpoint: Callable[[int], dict[str, Any]], tmp_path_factory) -> dict[str, Any]:
    """The 32 px digits checkpoint exported by ``t2t export`` to torch, onnx and ptl-int8."""
    from t2t.cli import main

    trained = digits_checkpoint(32)
    out = tmp_path_factory.mktemp("digits-export") / "export"
    argv = ["export", "--checkpoint", str(trained["checkpoint"]), "--formats", "torch,onnx,ptl-int8"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main([*argv, "--parity-images", "32", "--calib-size", "8", "--out", str(out), "--json"]) == 0
    return {**trained, "out": out, "img_size": 32}


def assert_a_lone_file_describes_itself(folder: Path, name: str, tmp: Path) -> Any:
    """Artifact ``name`` of export folder ``folder``, copied alone (its companions, no manifest) into ``tmp``,
    says by itself what the manifest says about using it: format, model, input size, class names and
    preprocessing (``deploy.manifest.about``). Returns its :class:`deploy.artifacts.Artifact`."""
    import shutil

    from deploy import manifest as mf
    from deploy.artifacts import resolve
    from deploy.base import FORMATS

    fmt, manifest = FORMATS[name], mf.read(folder)
    tmp.mkdir(parents=True, exist_ok=True)
    if fmt.bundle:
        shutil.copytree(folder / fmt.filename, tmp / fmt.filename)
    else:
        for f in fmt.files(folder / fmt.filename):
            if f.is_file():
                shutil.copy(f, tmp / f.name)
    art = resolve(tmp / fmt.filename)
    assert art.source == "file" and art.fmt is not None and art.fmt.name == name
    assert (art.model, art.img_size) == (manifest.model_name, manifest.img_size), name
    assert art.classes == manifest.classes and art.classes, name
    assert art.preprocessing == manifest.transform_keywords() and art.preprocessing, name
    return art


def t2t_here(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``t2t ARGS`` run in this process through :func:`t2t.cli.main`, the function the ``t2t`` script calls:
    its exit status and what it printed, as ``subprocess.run(..., capture_output=True, text=True)`` gives them
    (stdout and stderr as Python wrote them, 200 columns wide, as a child run with ``COLUMNS=200`` would).

    For probes whose subject is a command's outcome (its exit status, its one sentence, the files it left),
    not its process: no interpreter start or ``import torch`` (~4 s a call). A probe that needs a process of
    its own -- a signal, a kill, a second process, another user -- runs ``python -m t2t`` as a child, and
    ``tests/test_cli.py`` runs the installed script itself. The intra-op thread count a command sets is put
    back afterwards, as a child's would vanish with it."""
    import os
    import sys

    from t2t.cli import main

    out, err, threads, columns = io.StringIO(), io.StringIO(), torch.get_num_threads(), os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "200"
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), contextlib.chdir(cwd or Path.cwd()):
            try:
                code = main(list(args))
            except SystemExit as e:  # argparse: --help, a usage error
                code = e.code if isinstance(e.code, int) else 0 if e.code is None else 2
                if not isinstance(e.code, int | None):
                    print(e.code, file=sys.stderr)
    finally:
        torch.set_num_threads(threads)
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns
    return subprocess.CompletedProcess(["t2t", *args], code, out.getvalue(), err.getvalue())


# Where the README's quick start (and so CI) runs `t2t compress --demo` just before the tests.
QUICK_START_DEMO = Path(__file__).resolve().parents[1] / "runs" / "compress" / "t2t_vit_7_distilled"
PACKAGES = ("t2tvit", "compress", "deploy", "t2t")


def demo_settings() -> dict[str, Any]:
    """The pipeline settings ``t2t compress --demo`` runs with, as ``pipeline.json`` records them."""
    import argparse

    from t2t import compress_cmd

    parser = argparse.ArgumentParser()
    compress_cmd.add_parser(parser.add_subparsers())
    return compress_cmd._settings(parser.parse_args(["compress", "--demo"])).record()


def finished_demo(folder: Path) -> bool:
    """``folder`` holds a whole ``t2t compress --demo`` run made by the code as it is now: every stage
    done, its verify stage passed, and its records newer than every source file of the packages."""
    from deploy.pipeline import STAGES

    try:
        records = [folder / "pipeline.json", *(folder / s / "stage.json" for s in STAGES)]
        if any(json.loads(r.read_text()).get("status", "done") != "done" for r in records):
            return False
        if json.loads((folder / "pipeline.json").read_text())["settings"] != demo_settings():
            return False
        verify = json.loads((folder / "verify" / "verify.json").read_text())
        oldest = min(r.stat().st_mtime for r in records)
    except (OSError, ValueError, KeyError):
        return False
    root = Path(__file__).resolve().parents[1]
    newest = max(p.stat().st_mtime for pkg in PACKAGES for p in (root / pkg).rglob("*.py"))
    return bool(verify) and all(r["ok"] for r in verify) and oldest > newest


@pytest.fixture(scope="session")
def compress_demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``t2t compress --demo`` as the README's quick start runs it, once per session.

    The quick start runs it into ``runs/compress/t2t_vit_7_distilled`` right before the tests; when
    that run is there, whole and made by the current code (:func:`finished_demo`), the tests check a
    copy of it (pipeline folders are relocatable) instead of running the five-minute demo a second
    time. Otherwise the demo is run here.

    ``records``: its ``pipeline.json`` and each stage's ``stage.json`` as they were right after the
    run (later tests re-run stages with other settings; a resumed pipeline reads only these files).
    """
    import shutil
    import time

    from t2t.cli import main

    out = tmp_path_factory.mktemp("compress") / "demo"
    if finished_demo(QUICK_START_DEMO):
        shutil.copytree(QUICK_START_DEMO, out, symlinks=True)
        print(f"checking a copy of the quick start's demo run ({QUICK_START_DEMO})")
    else:
        t0 = time.perf_counter()
        assert main(["compress", "--demo", "--out", str(out)]) == 0
        print(f"t2t compress --demo took {time.perf_counter() - t0:.0f} s")
    records = {p.relative_to(out): p.read_text() for p in [out / "pipeline.json", *out.glob("*/stage.json")]}
    return {"out": out, "records": records}


def val_images(per_class: int) -> list[Path]:
    """The first ``per_class`` validation digits of each class, in class order."""
    from t2tvit.data import bundled_dataset_path

    val = bundled_dataset_path() / "val"
    return [p for c in range(10) for p in sorted((val / str(c)).glob("*.png"))[:per_class]]


def example_blocks(path: Path) -> dict[str, str]:
    """The ``python`` blocks of a Markdown file that start with ``# example: NAME``, by name, in order."""
    import re

    blocks = re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)
    return {b.splitlines()[0].removeprefix("# example:").strip(): b for b in blocks if b.startswith("# example:")}
