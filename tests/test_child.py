"""Conversions in child processes (:mod:`deploy.child`): inside ``converters()`` one child per converter module
serves every conversion; a ``ConfigError`` keeps it, any other failure or a crash replaces it.

The converter is a module written here and run by the real machinery (``python -m``, the job file, the
answers on stdout), so what is tested is the process handling, not a converter.
"""

from __future__ import annotations

import json
import sys

import pytest

import t2tvit
from deploy.base import ExportContext, get_format
from deploy.child import converters, export_in_child
from t2tvit.errors import ConfigError

CONVERTER = """
import os, sys
from pathlib import Path
from t2tvit.errors import ConfigError

def _write(model, path, fmt, ctx):
    what = Path(path).name
    if what == "refuse":
        raise ConfigError("this converter refuses that, in one sentence")
    if what == "fail":
        raise RuntimeError("the converter broke")
    if what == "crash":
        os._exit(9)
    Path(path).write_text(type(model).__name__)
    return {"pid": os.getpid(), "classes": model.num_classes}

if __name__ == "__main__":
    from deploy.child import run_child
    sys.exit(run_child(_write))
"""


@pytest.fixture
def convert(tmp_path, monkeypatch):
    (tmp_path / "toy_converter.py").write_text(CONVERTER)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:{':'.join(p for p in sys.path if p)}")
    model = t2tvit.create_model("t2t_vit_7", num_classes=3, img_size=32).eval()
    ctx = ExportContext(img_size=(32, 32), scratch=tmp_path / "scratch")

    def run(name: str) -> dict:
        return export_in_child("toy_converter", model, tmp_path / name, get_format("torch"), ctx)

    return run


def test_one_serving_child_converts_in_turn_and_is_replaced_after_a_failure(convert, tmp_path) -> None:
    with converters():
        first = convert("a")
        assert first["classes"] == 3 and (tmp_path / "a").read_text() == "T2TViT"
        with pytest.raises(ConfigError, match="^this converter refuses that, in one sentence$"):
            convert("refuse")
        assert convert("b")["pid"] == first["pid"]  # the same process, after a refusal too
        with pytest.raises(RuntimeError, match="RuntimeError: the converter broke"):
            convert("fail")
        second = convert("c")
        assert second["pid"] != first["pid"]  # a child that failed is not reused
        with pytest.raises(RuntimeError, match="status 9"):
            convert("crash")
        assert convert("d")["pid"] not in (first["pid"], second["pid"])
    assert json.dumps(convert("e"))  # outside the block: a one-shot child, as before
