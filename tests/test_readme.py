"""The README's text is what is tested: its quick start is what ``.ci/run`` runs, and its Python
example, with the ones in ``docs/`` that walk through the same files, runs as written.

The walk-through is the ``python`` blocks that start with ``# example:`` in :data:`WALKTHROUGH`'s
files, run in its order in one namespace from a scratch folder holding what the pages say they
follow: ``runs/digits/best.pth`` (the session's digits checkpoint), an image ``some_digit.png`` and a
labelled folder ``my_val/``.
Each example reads what the ones before it wrote (``artifacts/digits``). The pipeline example (the
README's) resumes the session's ``t2t compress --demo`` run (every stage done), so it checks the
function the command calls and its resume path without training again; ``tests/test_compress.py``
runs that pipeline from scratch. ``tests/test_docs.py`` runs the other examples of ``docs/``.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from conftest import NAMES, example_blocks, val_images

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()

# example name -> the page it is on, in the order they run (each reads what the ones before it wrote)
WALKTHROUGH = {
    "export": "docs/export.md",
    "export config": "docs/export.md",
    "predict": "docs/predict.md",
    "bench": "docs/bench.md",
    "validate": "docs/predict.md",
    "pipeline": "README.md",
}


def _section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def _blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def test_ci_runs_exactly_the_quick_start() -> None:
    install, tests = (block.strip() for block in _blocks(_section("Quick start"), "bash"))
    assert install.endswith("&& t2t compress --demo")  # the first command runs the main job
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert install in ci and tests in ci
    assert ci.index(install) < ci.index(tests)


def test_the_readme_has_one_python_example() -> None:
    assert [b.splitlines()[0] for b in _blocks(_section("From Python"), "python")] == ["# example: pipeline"]


@pytest.mark.slow
def test_python_examples_run_as_written(digits_checkpoint, compress_demo, tmp_path, monkeypatch, capsys) -> None:
    examples = [(name, page, example_blocks(ROOT / page)[name]) for name, page in WALKTHROUGH.items()]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "digits").mkdir(parents=True)
    shutil.copy(digits_checkpoint(32)["checkpoint"], tmp_path / "runs" / "digits" / "best.pth")
    shutil.copy(val_images(1)[3], tmp_path / "some_digit.png")  # a three
    for path in val_images(6):  # my_val: a labelled folder, its classes named as the checkpoint names them
        (tmp_path / "my_val" / NAMES[int(path.parent.name)]).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, tmp_path / "my_val" / NAMES[int(path.parent.name)] / path.name)
    demo = tmp_path / "runs" / "compress" / "t2t_vit_7_distilled"  # run_pipeline's default folder
    for rel, text in compress_demo["records"].items():
        (demo / rel).parent.mkdir(parents=True, exist_ok=True)
        (demo / rel).write_text(text)

    scope: dict = {}
    for name, page, block in examples:
        exec(compile(block, f"{page} [# example: {name}]", "exec"), scope)

    assert scope["result"].ok and scope["result"].stages["student"]["val_top1"] >= 80  # the pipeline's
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "[]"  # export: nothing failed
    assert out[1] == "['ptl-int8'] []"  # the same with a typed config: one artifact, nothing failed
    image, name, probability = out[2].split()  # predict: the class name the checkpoint recorded
    assert image == "some_digit.png" and name in NAMES and 0 < float(probability) <= 1
    assert (tmp_path / "artifacts" / "digits" / "bench" / "report.md").is_file()
    assert out[3].startswith("[('torch', ") and out[3].endswith("True")  # bench: the checks passed
    assert [line.split()[0] for line in out[4:6]] == ["onnx", "onnx-int8-dynamic"] and out[6] == "True"  # validate
    assert all(f"stage {s}: done earlier" in "\n".join(out) for s in ("teacher", "student", "report"))
