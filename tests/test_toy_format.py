"""The format row is the whole extension point: a toy format (one module + one row, both made here)
goes through export, verify, ``t2t bench`` and ``t2t predict`` with no other change to the toolkit.

The toy runtime stores the traced model behind a 4-byte magic of its own, under its own suffix, and
its module declares a ``describe`` hook so a lone ``.toy`` file is recognised by its contents. The
memory probe of ``t2t bench`` runs in a process that never saw this test's table (forked from a
server started fresh): it gets the row itself and the import path.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest
from conftest import NAMES, val_images

from deploy.base import FORMATS, Format
from deploy.export import verify_artifacts
from t2t.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

TOY_MODULE = '''
"""A toy runtime: the model traced to TorchScript, stored behind the magic bytes TOY1."""

import io
from pathlib import Path

import numpy as np
import torch

from deploy.base import Predictor

MAGIC = b"TOY1"


class Rolled(torch.nn.Module):
    """A recipe that breaks the model: every logit moved to the next class."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).roll(1, dims=1)


def export(model, path, fmt, ctx):
    model = Rolled(model) if fmt.options.get("rolled") else model
    module = torch.jit.trace(model.eval(), ctx.example(2), check_trace=False)
    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    Path(path).write_bytes(MAGIC + buffer.getvalue())
    return {"toy": "traced"}


def describe(path):
    with open(path, "rb") as f:
        return {"format": "toy"} if f.read(4) == MAGIC else None


class ToyPredictor(Predictor):
    def __init__(self, module, fmt, path, device):
        self.module, self.format, self.precision = module, fmt.name, fmt.precision
        self.path, self.device = Path(path), device

    def predict(self, images):
        with torch.no_grad():
            return self.module(torch.from_numpy(images)).numpy()


def load(path, fmt, device="cpu"):
    data = Path(path).read_bytes()
    if data[:4] != MAGIC:
        raise ValueError(f"{path} is not a toy file")
    return ToyPredictor(torch.jit.load(io.BytesIO(data[4:])), fmt, path, device)
'''


@pytest.fixture
def toy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Format:
    folder = tmp_path / "toy_runtime"
    folder.mkdir()
    (folder / "toyfmt.py").write_text(textwrap.dedent(TOY_MODULE))
    monkeypatch.syspath_prepend(str(folder))
    row = Format("toy", "toyfmt", "fp32", ".toy", True, False, "a toy runtime made by the test")
    monkeypatch.setitem(FORMATS, "toy", row)
    return row


def test_a_toy_format_needs_one_module_and_one_row(toy, digits_checkpoint, tmp_path, capsys) -> None:
    trained = digits_checkpoint(32)
    out = tmp_path / "export"
    argv = ["export", "--checkpoint", str(trained["checkpoint"]), "--formats", "torch,toy", "--out", str(out)]
    assert main([*argv, "--parity-images", "32", "--calib-size", "8", "--json"]) == 0
    entries = {a["format"]: a for a in json.loads(capsys.readouterr().out)["artifacts"]}
    assert entries["toy"]["status"] == "ok" and entries["toy"]["file"] == "model-toy.toy"
    assert entries["toy"]["parity"]["passed"] and entries["toy"]["details"] == {"toy": "traced"}

    assert [(r["format"], r["ok"]) for r in verify_artifacts(out)] == [("torch", True), ("toy", True)]

    bench = tmp_path / "bench"
    argv = ["bench", str(out), "--threads", "1", "--duration", "0", "--min-runs", "2", "--warmup", "0"]
    assert main([*argv, "--rounds", "1", "--data", "digits", "--max-images", "20", "--out", str(bench), "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["rows"]}
    toy_row = rows["toy"]
    assert toy_row["status"] == "ok" and toy_row["latency"]["1"]["p50_ms"] > 0, toy_row
    assert toy_row["agreement"] == 1.0 and toy_row["top1"] == rows["torch"]["top1"]
    assert toy_row["peak_rss_mb"] is not None, toy_row["reason"]  # measured in a process that never saw the table too

    images = [str(p) for p in val_images(1)]
    assert main(["predict", str(out), *images, "--format", "toy", "--json"]) == 0
    by_folder = json.loads(capsys.readouterr().out)
    lone = tmp_path / "mine.toy"  # no manifest beside it: recognised by its contents
    shutil.copy(out / "model-toy.toy", lone)
    assert main(["predict", str(lone), *images, "--img-size", "32", "--json"]) == 0
    by_file = json.loads(capsys.readouterr().out)
    assert by_folder["format"] == by_file["format"] == "toy" and by_folder["classes_from"] == "the manifest"
    top1 = [p["top"][0]["index"] for p in by_folder["predictions"]]
    assert top1 == [p["top"][0]["index"] for p in by_file["predictions"]]
    assert sum(i == digit for i, digit in enumerate(top1)) >= 6  # one image per digit; chance: 1 of 10
    assert by_folder["predictions"][0]["top"][0]["class"] in NAMES  # the manifest's class names


def test_a_row_whose_first_recipe_misses_parity_is_exported_with_its_second(toy, digits_checkpoint, tmp_path) -> None:
    import dataclasses

    import deploy

    trained = digits_checkpoint(32)
    FORMATS["toy"] = dataclasses.replace(toy, options={"rolled": True}, fallback_options={"rolled": False})
    done = deploy.export_checkpoint(
        trained["checkpoint"], formats="toy", out=tmp_path / "a", parity_images=32, calib_size=8, progress=False
    )
    (entry,) = done.manifest.artifacts
    assert entry.ok and entry.parity["top1_agreement"] == 1.0
    assert "missed parity (max |Δlogit|" in entry.details["recipe_fallback"]
    assert "exported again with {'rolled': False}" in entry.details["recipe_fallback"]
    FORMATS["toy"] = dataclasses.replace(toy, options={"rolled": True})  # no second recipe: a failed artifact
    done = deploy.export_checkpoint(
        trained["checkpoint"], formats="toy", out=tmp_path / "b", parity_images=32, calib_size=8, progress=False
    )
    (entry,) = done.manifest.artifacts
    assert entry.status == "failed" and entry.parity_failed and entry.reason.startswith("parity check failed")
    assert "recipe_fallback" not in entry.details
