"""Quantize-and-export: every CPU format round-trips through its own runtime with parity.

The model under test is trained for a few seconds on the bundled digits (a random-weight model
makes top-1 agreement meaningless: its logits are nearly tied). Parity is measured on held-out
validation digits that calibration never saw.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import t2tvit
from compress.quantize import check_qengine, load_images
from deploy import manifest as mf
from deploy.base import FORMAT_GROUPS, FORMATS, ExportContext, get_format
from deploy.export import (
    ParityThreshold,
    check_parity,
    export_all,
    reference_logits,
    sha256_file,
    verify_artifacts,
)
from t2tvit.data import bundled_dataset_path, eval_transform_for
from t2tvit.errors import ConfigError
from tests.conftest import NAMES, assert_a_lone_file_describes_itself
from tests.conftest import t2t_here as t2t

# The formats this module implements (TensorRT and ExecuTorch have their own test files).
# The built-in rows but OpenVINO's, which tests/test_openvino.py exports, round-trips and profiles with its own
# fixture (exporting them here too took 33 of this fixture's ~90 s).
CPU_FORMATS = [n for n in FORMAT_GROUPS["builtin"] if FORMATS[n].runtime != "OpenVINO"]
INT8 = [n for n in CPU_FORMATS if FORMATS[n].precision == "int8"]
IMG = 32  # the size of the session's trained model (conftest.digits_checkpoint), trained once for all files
N_PARITY, N_CALIB = 200, 64


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(digits_checkpoint) -> dict:
    t = digits_checkpoint(IMG)
    images, _ = load_images(bundled_dataset_path() / "val", eval_transform_for(t["model"]), N_PARITY + N_CALIB)
    return {**t, "parity": images[:N_PARITY], "calib": images[N_PARITY:]}


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("export") / "t2t_vit_7"
    ctx = ExportContext(img_size=(IMG, IMG), calib=trained["calib"])
    meta = {"classes": NAMES, "preprocessing": {"crop_pct": 0.95, "interpolation": "bilinear"}}  # as a trainer's
    manifest = export_all(
        trained["model"], CPU_FORMATS, out, ctx, trained["parity"], source_checkpoint=trained["checkpoint"], meta=meta
    )
    return {"out": out, "manifest": manifest.to_json(), "entries": {a.format: a.to_json() for a in manifest.artifacts}}


def test_manifest_lists_every_requested_format_in_table_order(exported, trained) -> None:
    m = json.loads((exported["out"] / mf.FILE).read_text())
    assert m == json.loads(json.dumps(exported["manifest"]))  # what the file says is the returned Manifest
    assert mf.read(exported["out"]).to_json() == m
    assert [a["format"] for a in m["artifacts"]] == CPU_FORMATS
    assert m["model"] == {"model": "t2t_vit_7", "num_classes": 10, "img_size": [IMG, IMG]}
    for a in m["artifacts"]:
        assert a["status"] == "ok", (a["format"], a["reason"])
        path, fmt = exported["out"] / a["file"], FORMATS[a["format"]]
        assert a["bytes"] == sum(f.stat().st_size for f in fmt.files(path)) and a["sha256"] == fmt.digest(path)
        if not fmt.companions:
            assert a["sha256"] == sha256_file(path)
        assert a["input_shape"] == ["batch", 3, IMG, IMG] and a["source_checkpoint"] == str(trained["checkpoint"])
        assert torch.__version__.startswith(a["tool_versions"]["torch"].split("+")[0])
        assert a["parity"]["images"] == N_PARITY and a["parity"]["passed"]
    onnx_entry = exported["entries"]["onnx"]
    assert onnx_entry["details"]["opset"] >= 18 and "onnxruntime" in onnx_entry["tool_versions"]
    files = [f.name for n in CPU_FORMATS for f in FORMATS[n].files(FORMATS[n].filename)]
    assert sorted(p.name for p in exported["out"].iterdir()) == sorted([mf.FILE, *files])


@pytest.mark.parametrize("name", CPU_FORMATS)
def test_format_round_trips_through_its_own_runtime(exported, trained, name) -> None:
    fmt = get_format(name)
    predictor = fmt.impl().load(exported["out"] / fmt.filename, fmt)
    assert predictor.format == name and predictor.precision == fmt.precision and predictor.device == "cpu"
    ref = reference_logits(trained["model"], trained["parity"])
    # In the batches the export's parity check used (its max batch, recorded in the manifest): dynamic
    # int8 quantizes activations with each batch's own range, so another grouping may flip a near-tie.
    step = exported["entries"][name]["batch"][2]
    out = np.concatenate([predictor(trained["parity"][i : i + step]) for i in range(0, N_PARITY, step)])
    assert out.shape == ref.shape and out.dtype == np.float32
    agreement = (out.argmax(1) == ref.argmax(1)).mean()
    if predictor.precision == "fp32":
        assert np.abs(out - ref).max() <= 1e-3 * max(1.0, np.abs(ref).max())
    else:
        assert agreement >= 0.95, f"{name}: top-1 agreement {agreement:.3f} with fp32 on held-out digits"
    # the recorded parity is what we measured
    assert exported["entries"][name]["parity"]["top1_agreement"] == pytest.approx(agreement)
    # other batch sizes than the one traced or exported with
    assert predictor(trained["parity"][:1]).shape == (1, 10)
    assert predictor(torch.from_numpy(trained["parity"][:3])).shape == (3, 10)


@pytest.mark.parametrize("name", CPU_FORMATS)
def test_a_lone_artifact_file_says_how_to_use_it(exported, name, tmp_path) -> None:
    # class names and preprocessing travel inside the file (ONNX metadata_props, TorchScript extra files, ...)
    art = assert_a_lone_file_describes_itself(exported["out"], name, tmp_path)
    assert art.classes == NAMES and art.preprocessing == {"crop_pct": 0.95, "interpolation": "bilinear"}


def test_int8_artifacts_are_small_and_agree(exported) -> None:
    fp32 = exported["entries"]["torch"]["bytes"]
    for name in INT8:
        e = exported["entries"][name]
        assert e["bytes"] <= 0.35 * fp32, f"{name}: {e['bytes']} bytes is {e['bytes'] / fp32:.2f}x the fp32 file"
        assert e["parity"]["top1_agreement"] >= 0.95
    static = exported["entries"]["onnx-int8-static"]["details"]["quantization"]
    assert static["format"] == "QDQ" and static["calibration_images"] == N_CALIB


def test_ptl_files_load_with_the_lite_interpreter(exported, trained) -> None:
    from torch.jit.mobile import LiteScriptModule, _load_for_lite_interpreter

    for name in ("ptl", "ptl-int8"):
        e = exported["entries"][name]
        status = e["details"]["optimize_for_mobile"]
        assert status == "applied" or status.startswith("unavailable in this PyTorch build")
        with torch.no_grad():
            m = _load_for_lite_interpreter(str(exported["out"] / e["file"]))
            assert isinstance(m, LiteScriptModule)
            assert m(torch.from_numpy(trained["parity"][:4])).shape == (4, 10)
    assert exported["entries"]["ptl-int8"]["details"]["qengine"] == "qnnpack"


def test_eager_artifacts_load_without_unpickling_code(exported) -> None:
    # both files are plain data: torch.load(weights_only=True) reads them
    for name in ("torch", "torch-int8"):
        obj = torch.load(exported["out"] / FORMATS[name].filename, weights_only=True)
        assert obj["args"]["model"] == "t2t_vit_7"
    # the fp32 file is one of our checkpoints
    model = t2tvit.create_model("t2t_vit_7", checkpoint=exported["out"] / FORMATS["torch"].filename, img_size=IMG)
    assert model.num_classes == 10


def _flip_weight_bytes(path: Path, name: str) -> None:
    """Overwrite the raw bytes of one ONNX initializer in place (the protobuf stays valid)."""
    import onnx

    raw = next(i.raw_data for i in onnx.load(str(path)).graph.initializer if i.name == name)
    data = bytearray(path.read_bytes())
    at = data.find(raw)
    assert at >= 0 and len(raw) > 1000
    rng = np.random.default_rng(0)
    data[at : at + len(raw)] = rng.integers(0, 256, len(raw), dtype=np.uint8).tobytes()[: len(raw)]
    path.write_bytes(bytes(data))


def test_corrupted_artifacts_are_caught_by_the_parity_check(exported, trained, tmp_path) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(exported["out"], folder)
    # 1. bytes flipped inside the head's weights: the file still loads, the logits are wrong
    _flip_weight_bytes(folder / FORMATS["onnx"].filename, "head.weight")
    fmt = get_format("onnx")
    pred = fmt.impl().load(folder / fmt.filename, fmt)
    ref = reference_logits(trained["model"], trained["parity"])
    rec = check_parity(pred, trained["parity"], ref, ParityThreshold(max_abs=1e-3, relative=True))
    assert not rec["passed"] and "max |Δlogit|" in rec["problem"]
    # 2. a file swapped for the same format exported from other weights
    other = t2tvit.create_model("t2t_vit_7", num_classes=10, img_size=IMG).eval()
    ts = get_format("torchscript-int8")
    ts.impl().export(other, folder / ts.filename, ts, ExportContext(img_size=(IMG, IMG)))
    results = {r["format"]: r for r in verify_artifacts(folder, trained["model"], trained["parity"])}
    for name in ("onnx", "torchscript-int8"):
        assert not results[name]["ok"]
        assert any(p.startswith("parity check failed") for p in results[name]["problems"]), results[name]
        assert any("sha256 differs" in p for p in results[name]["problems"])
    assert all(r["ok"] for name, r in results.items() if name not in ("onnx", "torchscript-int8")), results


def test_artifact_failing_its_threshold_is_marked_failed(trained, tmp_path) -> None:
    # a threshold int8 cannot meet: the artifact is built and kept, but marked failed with the reason
    ctx = ExportContext(img_size=(IMG, IMG), calib=trained["calib"])
    strict = {"int8": ParityThreshold(max_abs=1e-6)}
    m = export_all(
        trained["model"], "torch,torch-int8", tmp_path / "out", ctx, trained["parity"][:32], thresholds=strict
    )
    assert m.entry("torch").ok and m.entry("torch-int8").parity_failed
    int8 = m.entry("torch-int8")
    assert int8.status == "failed" and int8.reason.startswith("parity check failed")
    assert (tmp_path / "out" / int8.file).is_file()


def test_an_export_into_an_earlier_one_merges_and_never_mixes_models(trained, tmp_path) -> None:
    out = tmp_path / "out"
    ctx = ExportContext(img_size=(IMG, IMG))
    export_all(trained["model"], ["torch", "torchscript"], out, ctx, trained["parity"][:8], progress=False)
    (out / "model-stale.onnx").write_bytes(b"old")  # a file of the user's: kept
    m = export_all(trained["model"], ["torch-int8"], out, ctx, trained["parity"][:8], progress=False)
    assert [a.format for a in m.artifacts] == ["torch", "torch-int8", "torchscript"]
    names = [FORMATS[n].filename for n in ("torch", "torch-int8", "torchscript")]
    assert sorted(p.name for p in out.iterdir()) == sorted([mf.FILE, "model-stale.onnx", *names])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folders left behind
    other = t2tvit.create_model("t2t_vit_7", num_classes=10, img_size=IMG).eval()
    with pytest.raises(ConfigError, match="another model or other weights"):
        export_all(other, ["torch"], out, ctx, trained["parity"][:8], progress=False)
    # a folder that is not an export is never deleted
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("keep me")
    with pytest.raises(ConfigError, match="not an export folder"):
        export_all(trained["model"], ["torch"], mine, ctx, trained["parity"][:8], progress=False)
    assert (mine / "thesis.tex").read_text() == "keep me"


def test_distilled_student_exports_the_averaged_head(tmp_path) -> None:
    torch.manual_seed(0)
    model = t2tvit.create_model("t2t_vit_7_distilled", num_classes=10, img_size=32)
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        averaged = model(x).numpy()
        tokens = model.forward_features(x)
        cls_logits, dist_logits = model.head(tokens[:, 0]), model.head_dist(tokens[:, 1])
    np.testing.assert_allclose(averaged, ((cls_logits + dist_logits) / 2).numpy(), atol=1e-5)
    assert np.abs(cls_logits.numpy() - dist_logits.numpy()).max() > 1e-2  # the two heads differ
    ctx = ExportContext(img_size=(32, 32))
    m = export_all(model, ["torch", "torchscript", "onnx"], tmp_path / "out", ctx, x.numpy(), progress=False)
    assert [a.status for a in m.artifacts] == ["ok"] * 3
    for name in ("torch", "torchscript", "onnx"):
        fmt = get_format(name)
        out = fmt.impl().load(tmp_path / "out" / fmt.filename, fmt)(x)
        np.testing.assert_allclose(out, averaged, atol=1e-4)
        assert np.abs(out - cls_logits.numpy()).max() > 1e-3


def test_formats_that_cannot_be_built_here_are_skipped_with_the_install_hint(trained, tmp_path) -> None:
    missing = [n for n, f in FORMATS.items() if f.missing()]
    if not missing:
        pytest.skip("every format can be built on this machine")
    ctx = ExportContext(img_size=(IMG, IMG))
    m = export_all(trained["model"], ["torch", *missing], tmp_path / "out", ctx, trained["parity"][:8], progress=False)
    for a in m.artifacts[1:]:
        assert a.status == "skipped" and a.reason == FORMATS[a.format].missing()
        assert a.file is None and a.bytes is None
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([mf.FILE, FORMATS["torch"].filename])


_TRT_MISSING = FORMATS["tensorrt"].missing()


@pytest.mark.gpu
@pytest.mark.skipif(_TRT_MISSING is not None, reason=f"TensorRT cannot run here: {_TRT_MISSING}")
@pytest.mark.parametrize("name", ["tensorrt", "tensorrt-fp16", "tensorrt-int8"])
def test_tensorrt_engines_round_trip_with_parity(trained, tmp_path, name) -> None:
    ctx = ExportContext(img_size=(IMG, IMG), calib=trained["calib"])
    m = export_all(trained["model"], [name], tmp_path / "out", ctx, trained["parity"], progress=False)
    (entry,) = m.artifacts
    assert entry.ok, entry.reason
    fmt = get_format(name)
    pred = fmt.impl().load(tmp_path / "out" / fmt.filename, fmt, device="cuda")
    ref = reference_logits(trained["model"], trained["parity"])
    assert check_parity(pred, trained["parity"], ref, ParityThreshold(min_agreement=0.95))["passed"]


def test_unsupported_quantized_engine_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="choose from"):
        check_qengine("tpu-int4")


# -- the command line ------------------------------------------------------------------------


# `t2t export` in this process (t2t_here: t2t.cli.main, which the script calls); tests/test_cli.py runs the script.


def test_cli_unknown_format_lists_the_valid_names(tmp_path) -> None:
    res = t2t("export", "--formats", "onnx,onnx-int4", "--out", str(tmp_path / "o"))
    assert res.returncode == 2
    assert "unknown format 'onnx-int4'" in res.stderr and "torchscript-int8, ptl" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "o").exists()


def test_cli_empty_calibration_folder_and_mismatched_checkpoint(trained, tmp_path) -> None:
    empty = tmp_path / "empty"
    (empty / "cat").mkdir(parents=True)
    out = str(tmp_path / "out")  # tmp_path itself is not an export folder: refused before anything else
    res = t2t("export", "--checkpoint", str(trained["checkpoint"]), "--calib-data", str(empty), "--out", out)
    assert res.returncode == 2 and "holds no images" in res.stderr and "Traceback" not in res.stderr
    res = t2t("export", "--checkpoint", str(trained["checkpoint"]), "--model", "t2t_vit_14", "--out", out)
    assert res.returncode == 2 and "does not fit t2t_vit_14" in res.stderr and "t2t_vit_7" in res.stderr


@pytest.mark.slow
def test_cli_export_end_to_end(trained, tmp_path) -> None:
    out = tmp_path / "artifacts"
    res = t2t(
        "export",
        "--checkpoint",
        str(trained["checkpoint"]),
        "--formats",
        "torch-int8,ptl-int8,onnx-int8-static,tensorrt",
        "--parity-images",
        "48",
        "--calib-size",
        "16",
        "--out",
        str(out),
    )
    assert res.returncode == 0, res.stderr
    m = json.loads((out / mf.FILE).read_text())
    assert m["model"]["model"] == "t2t_vit_7" and m["model"]["img_size"] == [IMG, IMG]  # read from the checkpoint
    assert m["data"]["parity_images"] == 48 and m["data"]["calibration_images"] == 16
    status = {a["format"]: a["status"] for a in m["artifacts"]}
    assert status["torch-int8"] == status["ptl-int8"] == status["onnx-int8-static"] == "ok"
    assert status["tensorrt"] == ("skipped" if _TRT_MISSING else "ok")
    for name in ("torch-int8", "ptl-int8", "onnx-int8-static", "tensorrt", "parity on 48 images"):
        assert name in res.stdout


def test_cli_export_of_random_weights_is_reproducible_and_checks_int8_by_logit_movement(tmp_path) -> None:
    # Without --checkpoint the weights are random: seeded, so two exports are the same files, and int8
    # is held to max |Δlogit| (top-1 agreement means nothing on an untrained model's near-tied logits).
    shas = []
    for run in ("a", "b"):
        out = tmp_path / run
        flags = ["--model", "t2t_vit_7", "--img-size", "32", "--num-classes", "10", "--formats", "torch,torch-int8"]
        res = t2t("export", *flags, "--parity-images", "16", "--calib-size", "4", "--out", str(out))
        assert res.returncode == 0, res.stderr
        assert "random weights (seed 0)" in res.stderr
        m = json.loads((out / mf.FILE).read_text())
        art = {a["format"]: a for a in m["artifacts"]}
        assert m["parity"]["thresholds"]["int8"] == {"max_abs": 0.1, "relative": True}
        parity = art["torch-int8"]["parity"]
        assert parity["passed"] and parity["max_abs_diff"] <= parity["max_abs_limit"]
        shas.append(art["torch"]["sha256"])
    assert shas[0] == shas[1]
