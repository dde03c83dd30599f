"""An accuracy budget for int8 (``t2t export --max-drop PTS --val-data DIR``, :mod:`compress.budget`,
:mod:`deploy.budget`) and the sensitivity report (``--sensitivity``).

The digits model is made sensitive on purpose, the way trained ViTs are (LayerNorm scales with outlier
channels): one channel of the final LayerNorm is scaled x1000 and the head's weights for it divided back,
so the fp32 function is unchanged but the head's input carries an outlier channel, and a per-tensor
activation scale crushes every other channel (digits top-1 falls by 50-80 points in ONNX Runtime and
PyTorch int8). With the budget the export keeps the layer that causes it in float, names it, and meets the
budget -- measured again by ``t2t validate`` on the same images. NNCF's default recipe (SmoothQuant) moves
that outlier into the weights and rescues the model by itself. The tests of every other row, OpenVINO's
included, use the reverse, an outlier column in the head's weights, which neither SmoothQuant (13 points lost)
nor LiteRT's dynamic range int8 can carry.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import re
from pathlib import Path

import pytest
import torch

from deploy.base import FORMATS
from deploy.export import export_checkpoint
from deploy.profiler.variants import collect
from deploy.settings import ExportConfig
from deploy.validation import validate
from t2tvit.data import dataset_split
from t2tvit.errors import ConfigError
from tests.conftest import t2t_here

IMG = 32
CHANNEL, OUTLIER = 7, 1000.0
HAVE_LITERT = FORMATS["tflite-int8"].missing() is None


def _outlier(trained: dict, out: Path, scale: float) -> Path:
    """The digits checkpoint with one channel of the final LayerNorm scaled by ``scale`` and the head's weights
    for it divided back (the same fp32 function), saved to ``out``."""
    model = copy.deepcopy(trained["model"]).eval()
    with torch.no_grad():
        x = torch.randn(4, 3, IMG, IMG)
        before = model(x)
        model.norm.weight[CHANNEL] *= scale
        model.norm.bias[CHANNEL] *= scale
        model.head.weight[:, CHANNEL] /= scale
        assert torch.allclose(model(x), before, atol=1e-4 * before.abs().max().item())
    state = torch.load(trained["checkpoint"], weights_only=False)
    state["model"] = model.state_dict()
    state["classes"] = [str(i) for i in range(10)]  # the digits folders' names, so validation labels by name
    torch.save(state, out)
    return out


@pytest.fixture(scope="module")
def sensitive(digits_checkpoint, tmp_path_factory) -> Path:
    """A checkpoint of the digits model with one activation outlier channel (same fp32 function)."""
    return _outlier(digits_checkpoint(IMG), tmp_path_factory.mktemp("sensitive") / "sensitive.pth", OUTLIER)


@pytest.fixture(scope="module")
def weight_sensitive(digits_checkpoint, tmp_path_factory) -> Path:
    """The reverse: the LayerNorm channel /1000 and the head's weights for it x1000, an outlier column in the
    weights. Every int8 row here loses > 20 points on it, LiteRT's dynamic range too (it quantizes
    activations per row at run time, which rides out the activation outlier: 0.8 points lost)."""
    return _outlier(digits_checkpoint(IMG), tmp_path_factory.mktemp("weights") / "weights.pth", 1 / OUTLIER)


@pytest.fixture(scope="module")
def val(tmp_path_factory) -> str:
    """12 validation digits per class (120): each budget search quantizes and runs the model once per layer."""
    import shutil

    root = tmp_path_factory.mktemp("val")
    for folder in sorted(Path(dataset_split("digits", "val")).iterdir()):
        (root / folder.name).mkdir()
        for image in sorted(folder.iterdir())[:12]:
            shutil.copy(image, root / folder.name / image.name)
    return str(root)


def _export(checkpoint: Path, out: Path, formats: str = "onnx-int8-dynamic", **budget):
    return export_checkpoint(
        checkpoint, formats=formats, out=out, calib_data=dataset_split("digits", "train"),
        parity_images=64, calib_size=8, progress=False, **budget,
    )  # fmt: skip


def test_the_budget_keeps_the_sensitive_layers_in_float_and_holds(sensitive, val, tmp_path, one_thread) -> None:
    plain = _export(sensitive, tmp_path / "plain")
    assert plain.manifest.entry("onnx-int8-dynamic").parity_failed  # the default int8 misses its parity check
    before = validate(plain.folder, val, formats="onnx-int8-dynamic", progress=False).results[0]
    assert before.drop > 20, f"default int8 of the sensitive model lost only {before.drop:.1f} points"

    fitted = _export(sensitive, tmp_path / "fitted", max_drop=2.0, val_data=val)
    entry = fitted.manifest.entry("onnx-int8-dynamic")
    assert entry.status == "ok", entry.reason
    budget = entry.details["accuracy_budget"]
    assert budget["met"] and budget["drop"] <= 2.0 and budget["int8_drop"] == pytest.approx(before.drop)
    kept = budget["kept_float"]
    assert "head" in kept and len(kept) <= 3, kept  # the layer with the outlier input, not the model
    assert budget["ranking"][0]["layer"] in kept and budget["ranking"][0]["error"] > budget["ranking"][-1]["error"]
    assert entry.details["quantization"]["float_nodes"] == budget["kept_nodes"]
    report = validate(fitted.folder, val, progress=False)  # measured again, independently
    after = report.results[0]
    assert after.drop <= 2.0 and after.drop == pytest.approx(budget["drop"])
    assert budget["images"] == report.images == fitted.manifest.data["validation"]["images"]


def test_a_budget_needs_labelled_images_apart_from_calibration(sensitive, tmp_path) -> None:
    with pytest.raises(ConfigError, match="--max-drop takes points of top-1"):
        _export(sensitive, tmp_path / "a", max_drop=1.0)
    with pytest.raises(ConfigError, match="--val-data is where --max-drop measures"):
        _export(sensitive, tmp_path / "b", val_data="digits")
    with pytest.raises(ConfigError, match="is the folder the calibration images come from"):
        export_checkpoint(sensitive, formats="onnx-int8-dynamic", out=tmp_path / "c", max_drop=1.0,
                          val_data="digits", progress=False)  # fmt: skip
    # every int8 row keeps a budget: none is quantized past --max-drop without a search
    assert all("max_drop" in f.settings for f in FORMATS.values() if f.precision == "int8")
    assert ExportConfig(formats="torch-int8", max_drop=0.0, val_data="digits").format_options() == {"max_drop": 0.0}
    with pytest.raises(ConfigError, match="--sensitivity ranks layers by int8 error on --val-data"):
        ExportConfig(formats="torch-int8", sensitivity=True).check()
    with pytest.raises(ConfigError, match="--sensitivity is an option of .*torch-int8"):  # NNCF gives no ranking
        ExportConfig(formats="openvino-int8", sensitivity=True, val_data="digits").check()
    res = t2t_here("export", "--checkpoint", str(sensitive), "--formats", "onnx,tflite", "--max-drop", "1",
                   "--val-data", "digits", "--out", str(tmp_path / "d"))  # fmt: skip
    assert res.returncode == 2 and "--max-drop is an option of torch-int8" in res.stderr
    assert not (tmp_path / "d").exists()


def test_every_file_and_module_int8_row_keeps_the_budget_and_ranks_its_layers(
    weight_sensitive, val, tmp_path, one_thread
):
    # onnx-int8-static's search is the one below for TensorRT's QDQ model (the same quantizer and skip list)
    rows = ("torch-int8", "ptl-int8") + (("tflite-int8",) if HAVE_LITERT else ())
    fitted = _export(weight_sensitive, tmp_path / "out", ",".join(rows), max_drop=2.0, val_data=val, sensitivity=True)
    report = validate(fitted.folder, val, progress=False)  # every artifact measured again, loaded back
    for row, after in zip(rows, report.results, strict=True):
        entry = fitted.manifest.entry(row)
        assert entry.status == "ok", (row, entry.reason)
        budget = entry.details["accuracy_budget"]
        assert budget["int8_drop"] > 20 and budget["met"] and budget["kept_float"] == ["head"], (row, budget)
        assert after.drop <= 2.0 and after.drop == pytest.approx(budget["drop"], abs=0.3), row
        assert set(budget["latency_ms"]) == {"fp32", "int8", "budget"}  # what the fallback costs, measured
        table = fitted.folder / budget["sensitivity"]["table"]
        lines = list(csv.DictReader(table.open()))
        assert len(lines) == budget["quantizable"] > 30 and lines[0]["layer"] == "head", row  # every layer, ranked
        assert lines[0]["kept_float"] == "True" and float(lines[0]["top1_drop_alone"]) > 20
        assert {"blocks.0.attn.qkv", "blocks.6.mlp.fc2"} <= {r["layer"] for r in lines}, row  # by module path
        assert (fitted.folder / budget["sensitivity"]["plot"]).stat().st_size > 5000
    for v in collect(fitted.folder, fitted.manifest, [], "cpu", verify=False):  # the report's rows say it too
        assert any(re.match(r"accuracy budget: top-1 drop -?\d+\.\d\d pts \(budget 2\); kept float: head;", n)
                   for n in v.notes), v.notes  # fmt: skip
    torch_fit = fitted.manifest.entry("torch-int8").details["accuracy_budget"]
    assert fitted.manifest.entry("ptl-int8").details["accuracy_budget"]["ranking"] == torch_fit["ranking"]  # one fit
    # a re-export without the report drops its files with the entry they belonged to
    _export(weight_sensitive, tmp_path / "out", "torch-int8")
    assert not (tmp_path / "out" / torch_fit["sensitivity"]["table"]).exists()


def test_openvino_int8_keeps_the_budget_with_nncf_accuracy_control(weight_sensitive, val, tmp_path, monkeypatch):
    # NNCF's recipe as the row has it (SmoothQuant on, which does not rescue an outlier column in the weights), and
    # the blocks kept float from the start: NNCF compiles the model once per quantized group it ranks (0.7 s each
    # here), so ranking every block took 45 of the test's 60 s
    row = FORMATS["openvino-int8"]
    monkeypatch.setitem(
        FORMATS, row.name, dataclasses.replace(row, options={**row.options, "keep_float": ("blocks.",)})
    )
    fitted = _export(weight_sensitive, tmp_path / "out", row.name, max_drop=2.0, val_data=val)
    entry = fitted.manifest.entry(row.name)
    assert entry.status == "ok", entry.reason
    budget = entry.details["accuracy_budget"]
    assert budget["int8_drop"] > 10 and budget["met"] and "head" in budget["kept_float"], budget
    assert entry.details["float_layers"] == budget["kept_float"]  # read back from the IR's FakeQuantize nodes
    assert entry.details["quantizer"].startswith("nncf.quantize_with_accuracy_control")
    # NNCF reverts a layer's weights to what they were before SmoothQuant: the smoothed input it leaves behind fed
    # the float head rescaled inputs (mean |dlogit| 0.81 against fp32, 0.08 without it; agreement 98.4% both), so
    # the search runs without SmoothQuant (deploy.openvino._within_budget)
    assert "nncf_smooth_quant" not in (fitted.folder / FORMATS[row.name].filename).read_text()
    assert entry.parity["mean_abs_diff"] < 0.3, entry.parity
    after = validate(fitted.folder, val, progress=False).results[0]
    assert after.drop <= 2.0


@pytest.mark.skipif(FORMATS["coreml-int8"].missing() is not None, reason="coremltools is not installed")
def test_coreml_int8_fits_the_packages_own_int8_weights(weight_sensitive, val, tmp_path, one_thread) -> None:
    # Core ML runs only on macOS: the search runs the converted module in PyTorch with the package's dequantized
    # int8 weights; what is checked here is the fit and the package it writes (its parity is a Mac's)
    fitted = _export(weight_sensitive, tmp_path / "out", "coreml-int8", max_drop=2.0, val_data=val)
    entry = fitted.manifest.entry("coreml-int8")
    budget = entry.details["accuracy_budget"]
    assert budget["int8_drop"] > 2.0 and budget["met"] and budget["kept_float"], budget
    assert "macOS" in budget["measured_in"] and "latency_ms" not in budget
    kept = {f"p_{layer.replace('.', '_')}_weight_to_fp16" for layer in budget["kept_float"]}
    assert set(entry.details["structure"]["float_weights"]) == kept  # read back from the saved package (without
    # --max-drop there are none: tests/test_mobile.py)


def test_tensorrt_int8_fits_the_qdq_onnx_its_engine_is_parsed_from(weight_sensitive, val, tmp_path, one_thread):
    # no GPU here, so no engine: what runs is the part before TensorRT, the fit of the QDQ ONNX that
    # deploy.tensorrt.export parses (measured in ONNX Runtime on the CPU, as the record says)
    import onnx

    import deploy.tensorrt as trt
    import t2tvit
    from compress.quantize import int32_dequantize_inputs, load_images
    from deploy.base import ExportContext
    from deploy.validation import labelled_files, read_labelled
    from t2tvit.data import eval_transform_for

    model = t2tvit.create_model("t2t_vit_7", num_classes=10, img_size=IMG)
    model.load_state_dict(torch.load(weight_sensitive, weights_only=False)["model"])
    transform = eval_transform_for(model.eval(), (IMG, IMG))
    images, labels = read_labelled(labelled_files(val, [str(i) for i in range(10)], 500)[1], transform, [])
    calib = load_images(dataset_split("digits", "train"), transform, 8)[0]
    ctx = ExportContext(img_size=(IMG, IMG), calib=calib, max_drop=2.0, val=(images, labels), sensitivity=True,
                        scratch=tmp_path / "scratch")  # fmt: skip
    engine = tmp_path / "out" / FORMATS["tensorrt-int8"].filename
    engine.parent.mkdir()
    src, made = trt._source_onnx(model, trt.build_plan(10, "int8"), ctx, engine=engine)
    budget = made["accuracy_budget"]
    assert budget["int8_drop"] > 20 and budget["met"] and budget["kept_float"] == ["head"], budget
    assert "latency_ms" not in budget and budget["measured_in"].startswith("ONNX Runtime (CPU)")
    assert (engine.parent / budget["sensitivity"]["table"]).is_file()  # beside the engine, not in the scratch
    graph = onnx.load(str(src)).graph
    quantized = {i for n in graph.node if n.op_type == "DequantizeLinear" for i in n.output}
    head = next(n for n in graph.node if n.name == budget["kept_nodes"][0])
    assert not set(head.input) & quantized and int32_dequantize_inputs(src) == []  # float, and parseable


@pytest.mark.slow
@pytest.mark.skipif(FORMATS["executorch-int8"].missing() is not None, reason="executorch is not installed")
def test_executorch_int8_keeps_the_budget_with_unannotated_modules(weight_sensitive, val, tmp_path, one_thread):
    fitted = _export(weight_sensitive, tmp_path / "out", "executorch-int8", max_drop=2.0, val_data=val)
    entry = fitted.manifest.entry("executorch-int8")
    assert entry.status == "ok", entry.reason
    budget = entry.details["accuracy_budget"]
    assert budget["int8_drop"] > 20 and budget["met"] and budget["kept_float"] == ["head"], budget
    assert entry.details["float_layers"] == ["head"] and budget["measured_in"].startswith("the PT2E reference")
    assert "latency_ms" not in budget  # PyTorch's times of the reference model say nothing about XNNPACK's
    after = validate(fitted.folder, val, progress=False).results[0]  # the lowered .pte (XNNPACK) measured again
    assert after.drop <= 2.0, after
