"""LiteRT (.tflite) artifacts: the converter copy of the token-transformer variant, the skipped row
without litert-torch, and (with ``requirements-litert.txt`` installed) the round trip through the LiteRT interpreter
on the trained digits model.

The README's install and CI do not install litert-torch (about 850 MB: it brings JAX, the LiteRT
converter and transformers, and pip cannot resolve it beside torch 2.15: see requirements-litert.txt), so
there the round-trip tests are skipped with that reason and the capture and skipped-row tests run; after
``pip install --no-deps -r requirements-litert.txt`` every test here runs.
"""

from __future__ import annotations

import importlib.util
import shutil

import numpy as np
import pytest
import torch

import deploy
import t2tvit
from deploy import manifest as mf
from deploy.base import FORMATS
from deploy.export import export_checkpoint, reference_logits, verify_artifacts
from deploy.graph import GRAPH_TOLERANCE, deploy_graph, graph_check
from t2tvit.errors import CheckpointError, ConfigError
from t2tvit.models.layers import SoftSplit
from tests.conftest import assert_a_lone_file_describes_itself

pytestmark = pytest.mark.usefixtures("one_thread")

IMG = 32
HAVE_LITERT = FORMATS["tflite"].missing() is None
needs_litert = pytest.mark.skipif(
    not HAVE_LITERT, reason="litert-torch is not installed (pip install --no-deps -r requirements-litert.txt; ~850 MB)"
)


def test_the_converter_copy_of_the_transformer_token_variant_is_the_same_function() -> None:
    # LiteRT converts deploy.graph.deploy_graph like ncnn and Core ML (test_mobile checks T2T-ViT-7 and
    # the one-hot soft split bit for bit); the token-transformer variant at another size goes through it too
    torch.manual_seed(0)
    t = t2tvit.create_model("t2t_vit_t_14", num_classes=5, img_size=64).eval()
    captured = deploy_graph(t, "litert")
    assert not any(isinstance(m, SoftSplit) for m in captured.modules())
    assert graph_check(t, captured, torch.randn(2, 3, 64, 64))["max_abs_diff"] <= GRAPH_TOLERANCE


def test_without_litert_torch_the_rows_are_skipped_with_the_install_line(
    digits_checkpoint, tmp_path, monkeypatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "litert_torch" else real(n, *a))
    exp = export_checkpoint(
        digits_checkpoint(IMG)["checkpoint"], formats="torch,tflite,tflite-int8", out=tmp_path / "x", progress=False
    )
    e = {a.format: a.to_json() for a in exp.manifest.artifacts}
    assert e["torch"]["status"] == "ok"
    for name in ("tflite", "tflite-int8"):
        assert e[name]["status"] == "skipped"
        assert (
            "pip install --no-deps -r requirements-litert.txt" in e[name]["reason"]
            and "litert_torch" in e[name]["reason"]
        )
    assert not list((tmp_path / "x").glob("*.tflite"))


TFLITE_ROWS = ("tflite", "tflite-fp16", "tflite-int8")


@pytest.fixture(scope="module")
def tfl_export(rows_export) -> dict:
    """The LiteRT rows of a trained 32 px model (the litert-torch conversion alone is ~20 s): the demo's when
    that run is here (see ``rows_export``)."""
    return rows_export(",".join(TFLITE_ROWS), calib_size=32)


@needs_litert
def test_tflite_rows_build_reload_and_pass_parity(tfl_export) -> None:
    e = tfl_export["entries"]
    for name in ("tflite", "tflite-fp16", "tflite-int8"):
        assert e[name]["status"] == "ok", (name, e[name]["reason"])
        assert e[name]["details"]["batch"] == 1  # the program is fixed at one image: a clear record
        assert "litert-torch-nightly" in e[name]["tool_versions"]
    for name in ("tflite", "tflite-fp16", "tflite-int8"):
        assert e[name]["deploy_graph"]["max_abs_diff"] <= e[name]["deploy_graph"]["limit"]
    assert e["tflite"]["parity"]["max_abs_diff"] <= 1e-3  # the same arithmetic in another runtime (measured 3e-6)
    assert e["tflite-fp16"]["details"]["weights"] == "fp16" and e["tflite-int8"]["details"]["weights"] == "int8"
    # fp16 weights: half the file; int8 weights: about a quarter (0.27 measured)
    assert e["tflite-fp16"]["bytes"] <= 0.55 * e["tflite"]["bytes"]
    assert e["tflite-int8"]["bytes"] <= 0.30 * e["tflite"]["bytes"]
    assert e["tflite-fp16"]["parity"]["top1_agreement"] >= 0.99
    assert e["tflite-int8"]["parity"]["top1_agreement"] >= 0.95


@needs_litert
def test_tflite_runs_at_batch_one_and_five_and_opens_renamed_through_deploy_open(tfl_export, tmp_path) -> None:
    x = np.random.default_rng(0).standard_normal((5, 3, IMG, IMG), dtype=np.float32)
    ref = reference_logits(tfl_export["model"], x)
    for name in ("tflite", "tflite-int8"):
        dst = tmp_path / f"mine-{name}.tflite"
        shutil.copy(tfl_export["out"] / FORMATS[name].filename, dst)
        pred = deploy.open(dst, threads=1)  # the row comes from the file's own weight types
        assert pred.format == name and pred.input_hw == (IMG, IMG)
        assert "fixed at batch 1" in pred.runtime_notes[0]
        five, one = pred(x), np.concatenate([pred(x[i : i + 1]) for i in range(5)])
        np.testing.assert_array_equal(five, one)  # a batch is the same images one by one
        if name == "tflite":
            np.testing.assert_allclose(five, ref, atol=1e-3 * max(1.0, np.abs(ref).max()))
        else:
            assert (five.argmax(1) == ref.argmax(1)).mean() >= 0.8
    with pytest.raises(ConfigError, match="takes"):
        pred(np.zeros((1, 3, IMG + 8, IMG + 8), np.float32))


@needs_litert
@pytest.mark.parametrize("name", ["tflite", "tflite-int8"])
def test_a_lone_tflite_says_how_to_use_it(tfl_export, name, tmp_path) -> None:
    # the flatbuffer's metadata table holds the manifest's part; the interpreter still runs the file
    art = assert_a_lone_file_describes_itself(tfl_export["out"], name, tmp_path)
    x = np.zeros((1, 3, IMG, IMG), np.float32)
    ref = deploy.open(tfl_export["out"] / FORMATS[name].filename, threads=1)(x)
    np.testing.assert_array_equal(deploy.open(art.path, threads=1)(x), ref)


@needs_litert
def test_a_damaged_tflite_is_caught_by_verify_and_by_its_loader(tfl_export, tmp_path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(tfl_export["out"], out)
    path = out / FORMATS["tflite-int8"].filename
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)  # zero 64 bytes of the weights
    path.write_bytes(bytes(data))
    rec = {r["format"]: r for r in verify_artifacts(out)}
    assert not rec["tflite-int8"]["ok"] and "sha256 differs" in rec["tflite-int8"]["problems"][0]
    assert rec["tflite"]["ok"] and (out / mf.FILE).is_file()
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(path.read_bytes()[:4096])
    with pytest.raises(CheckpointError, match="not a loadable LiteRT model"):
        FORMATS["tflite"].load(cut)
