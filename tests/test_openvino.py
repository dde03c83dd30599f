"""OpenVINO IR artifacts: round trip, the load-time inference precision, NNCF int8, and bad input.

The model is the 32 px T2T-ViT-7 trained on the digits for the session (``digits_checkpoint``), so
top-1 agreement means something; the generic round trip of every builtin row is in test_deploy.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

import numpy as np
import pytest

import deploy
from deploy import manifest as mf
from deploy.base import FORMATS
from deploy.export import export_checkpoint, reference_logits, verify_artifacts
from deploy.openvino import INFERENCE_PRECISIONS, auto_inference_precision, cpu_inference_precisions
from t2t.cli import main
from t2tvit.errors import CheckpointError, ConfigError
from tests.conftest import assert_a_lone_file_describes_itself

pytestmark = pytest.mark.usefixtures("one_thread")

IMG = 32
NATIVE = cpu_inference_precisions()
LACKING = [p for p in INFERENCE_PRECISIONS if p not in NATIVE]
AUTO_HERE = auto_inference_precision()  # what `auto`, the default, runs as on this CPU (bf16 on AVX512_BF16 / AMX)


@pytest.fixture(scope="module")
def ov_export(rows_export) -> dict:
    return rows_export("openvino,openvino-fp16,openvino-int8", batch=(1, 1, 8), calib_size=64)


@pytest.mark.parametrize("name", ["openvino", "openvino-fp16", "openvino-int8"])
def test_a_lone_ir_says_how_to_use_it(ov_export, name, tmp_path) -> None:
    assert_a_lone_file_describes_itself(ov_export["out"], name, tmp_path)  # its rt_info holds the manifest's part


def test_openvino_rows_build_pass_parity_and_record_their_settings(ov_export) -> None:
    e = ov_export["entries"]
    for name in ("openvino", "openvino-fp16", "openvino-int8"):
        a = e[name]
        assert a["status"] == "ok", (name, a["reason"])
        assert a["details"]["inference_precision"] == "auto"
        assert a["details"]["dynamic_batch"] == [ov_export["batch"][0], ov_export["batch"][2]]
        assert a["details"]["inference_precision_used"] == AUTO_HERE
        assert {"openvino", "nncf"} <= set(a["tool_versions"])
        # the size and digest cover the weights file beside the .xml
        xml = ov_export["out"] / a["file"]
        assert a["bytes"] == xml.stat().st_size + xml.with_suffix(".bin").stat().st_size
    # the precision the compiled model read back, and its threshold: f32 is the same arithmetic in another runtime
    assert e["openvino"]["precision"] == INFERENCE_PRECISIONS[AUTO_HERE]
    if AUTO_HERE == "f32":
        assert e["openvino"]["parity"]["max_abs_diff"] <= 1e-3
    else:
        assert e["openvino"]["parity"]["top1_agreement"] >= 0.99
    assert e["openvino-int8"]["details"]["calibration_images"] == 64
    # int8 weights: under 0.30x the fp32 IR (measured 0.29 at 224 px; the int8 IR's graph is larger at 32 px)
    assert e["openvino-int8"]["bytes"] <= 0.35 * e["openvino"]["bytes"]
    assert e["openvino-fp16"]["bytes"] <= 0.55 * e["openvino"]["bytes"]
    assert e["openvino-int8"]["parity"]["top1_agreement"] >= 0.95


def test_any_openvino_file_opens_through_deploy_open_with_its_row_and_threads(ov_export, tmp_path) -> None:
    # renamed files: the row comes from what the IR recorded about itself, not from the name
    for name in ("openvino-int8", "openvino"):
        src = ov_export["out"] / FORMATS[name].filename
        dst = tmp_path / f"mine-{name}.xml"
        shutil.copy(src, dst)
        shutil.copy(src.with_suffix(".bin"), dst.with_suffix(".bin"))
        pred = deploy.open(dst, threads=1)
        assert pred.format == name and pred.input_hw == (IMG, IMG)
        assert pred.compiled.get_property("INFERENCE_NUM_THREADS") == 1
        assert f"OpenVINO inference precision {AUTO_HERE} (auto)" in pred.runtime_notes
    row = FORMATS["openvino"]
    pred = row.impl().load(ov_export["out"] / row.filename, row, inference_precision="f32")
    assert pred.inference_precision == "f32" and pred.precision == "fp32" and pred.requested == "f32"
    x = np.random.default_rng(0).standard_normal((3, 3, IMG, IMG), dtype=np.float32)
    ref = reference_logits(ov_export["model"], x)
    np.testing.assert_allclose(pred(x), ref, atol=1e-3 * max(1.0, np.abs(ref).max()))


def test_bad_input_is_one_sentence(ov_export, tmp_path) -> None:
    pred = deploy.open(ov_export["out"] / FORMATS["openvino"].filename)
    with pytest.raises(ConfigError, match=r"takes 32x32 images, not 64x64"):
        pred(np.zeros((1, 3, 64, 64), np.float32))
    most = ov_export["batch"][2]
    with pytest.raises(ConfigError, match=rf"takes batches of 1 to {most} images, not {most + 1}"):
        pred(np.zeros((most + 1, 3, IMG, IMG), np.float32))
    folder = tmp_path / "copy"
    shutil.copytree(ov_export["out"], folder)
    xml = folder / FORMATS["openvino"].filename
    # damaged weights: the digest covers the .bin, so verify names the change and parity catches it
    data = bytearray(xml.with_suffix(".bin").read_bytes())
    data[len(data) // 2 : len(data) // 2 + 4096] = bytes(4096)
    xml.with_suffix(".bin").write_bytes(bytes(data))
    results = {r["format"]: r for r in verify_artifacts(folder)}
    assert any("sha256 differs" in p for p in results["openvino"]["problems"])
    assert results["openvino-int8"]["ok"]
    xml.with_suffix(".bin").unlink()
    with pytest.raises(CheckpointError, match=r"needs its weights file model-openvino.bin beside it"):
        FORMATS["openvino"].load(xml)


@pytest.mark.skipif(not LACKING, reason="this CPU runs every OpenVINO inference precision, so none can be refused")
def test_a_precision_this_cpu_lacks_is_refused_before_anything_is_written(ov_export, tmp_path) -> None:
    out = tmp_path / "out"
    argv = ["export", "--checkpoint", str(ov_export["checkpoint"]), "--formats", "torch,openvino"]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main([*argv, "--inference-precision", LACKING[0], "--out", str(out), "--parity-images", "8"])
    assert code == 2
    message = err.getvalue().strip()
    assert f"cannot run OpenVINO in {LACKING[0]}" in message and "--inference-precision auto or f32" in message
    assert len(message.splitlines()) == 1 and "Traceback" not in message
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.skipif(not LACKING, reason="this CPU runs every OpenVINO inference precision natively")
def test_a_file_recorded_with_a_precision_this_cpu_lacks_falls_back_to_f32_and_says_so(ov_export, tmp_path) -> None:
    src = ov_export["out"] / FORMATS["openvino"].filename
    dst = tmp_path / src.name
    text = src.read_text()
    assert '<inference_precision value="auto"' in text
    dst.write_text(text.replace('<inference_precision value="auto"', f'<inference_precision value="{LACKING[0]}"'))
    shutil.copy(src.with_suffix(".bin"), dst.with_suffix(".bin"))
    pred = deploy.open(dst)
    assert pred.inference_precision == "f32" and pred.precision == "fp32"
    assert any(f"{LACKING[0]} was asked for but this CPU cannot run it; running f32" in n for n in pred.runtime_notes)


@pytest.mark.skipif("bf16" not in NATIVE, reason="this CPU has no bf16 (AVX512_BF16 or AMX): bf16 runs on AMX Xeons")
def test_bf16_inference_is_recorded_and_checked_as_bf16(ov_export, tmp_path) -> None:
    exp = export_checkpoint(
        ov_export["checkpoint"],
        formats="openvino",
        out=tmp_path / "bf16",
        inference_precision="bf16",
        parity_images=96,
        progress=False,
    )
    (a,) = exp.manifest.artifacts
    assert a.status == "ok" and a.precision == "bf16" and a.details["inference_precision"] == "bf16"
    assert a.parity["threshold"] == {"min_agreement": 0.99, "relative": False}
    pred = deploy.open(tmp_path / "bf16")
    assert pred.inference_precision == "bf16" and pred.precision == "bf16"


def test_profiler_reports_the_openvino_rows_with_their_inference_precision(ov_export) -> None:
    from deploy.profiler import ProfileConfig, profile_folder

    config = ProfileConfig(batch_sizes=(1,), threads=1, duration=0.05, min_runs=2, rounds=1, memory=False)
    report = profile_folder(ov_export["out"], config, progress=False)
    rows = {r.name: r for r in report.rows}
    for name in ("openvino", "openvino-fp16", "openvino-int8"):
        assert rows[name].status == "ok" and rows[name].latency["1"]["p50_ms"] > 0
        assert f"OpenVINO inference precision {AUTO_HERE} (auto)" in rows[name].reason
        assert rows[name].file_bytes == ov_export["entries"][name]["bytes"]
    assert rows["openvino-int8"].precision == "int8" and rows["openvino"].precision == INFERENCE_PRECISIONS[AUTO_HERE]
    assert (ov_export["out"] / mf.FILE).is_file()


def test_int8_keeps_the_patterns_it_is_told_to_in_float(ov_export, tmp_path) -> None:
    import dataclasses

    import openvino as ov

    from deploy.base import ExportContext
    from deploy.openvino import export

    row = dataclasses.replace(FORMATS["openvino-int8"], options={"int8": True, "keep_float": ("tokens_to_token",)})
    calib = np.random.default_rng(0).standard_normal((8, 3, IMG, IMG), dtype=np.float32)
    path = Path(tmp_path) / "keep.xml"
    info = export(ov_export["model"], path, row, ExportContext(img_size=(IMG, IMG), calib=calib))
    assert info["kept_float"] == ["tokens_to_token"]
    ops = ov.Core().read_model(str(path)).get_ordered_ops()
    fq = [op.get_friendly_name() for op in ops if op.get_type_name() == "FakeQuantize"]
    assert fq and not [n for n in fq if "tokens_to_token" in n]
    assert any("blocks" in n for n in fq)


def test_auto_is_what_openvino_picks_on_this_cpu_and_is_read_back_from_the_compiled_model() -> None:
    import openvino as ov

    core = ov.Core()
    default = core.get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()
    caps = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    assert AUTO_HERE == (default if default in NATIVE else "f32")
    assert AUTO_HERE == ("bf16" if "BF16" in caps else "f32") or AUTO_HERE == "f16"


def test_the_predictor_compiles_a_static_model_per_batch_size_and_answers_the_same(ov_export) -> None:
    row = FORMATS["openvino"]
    pred = row.impl().load(ov_export["out"] / row.filename, row, threads=1, inference_precision="f32")
    assert pred.dynamic and pred.model.inputs[0].get_partial_shape()[0].is_dynamic
    x = np.random.default_rng(1).standard_normal((5, 3, IMG, IMG), dtype=np.float32)
    together = pred(x)
    one_by_one = np.concatenate([pred(x[i : i + 1]) for i in range(5)])
    np.testing.assert_allclose(together, one_by_one, atol=1e-4 * max(1.0, np.abs(together).max()))
    assert set(pred._requests) == {1, 5}
    for n, request in pred._requests.items():  # each request runs a static model of its own batch size
        shape = request.get_compiled_model().inputs[0].get_partial_shape()
        assert shape.is_static and shape[0].get_length() == n
    np.testing.assert_allclose(
        together, reference_logits(ov_export["model"], x), atol=1e-3 * max(1.0, np.abs(together).max())
    )


@pytest.mark.skipif(
    AUTO_HERE == "f32", reason="auto is f32 on this CPU (no bf16/f16), so it has nothing to fall back from"
)
def test_auto_falls_back_to_f32_when_its_reduced_precision_misses_parity(ov_export, tmp_path) -> None:
    from deploy.export import ParityThreshold

    # an agreement bf16/f16 cannot reach: the export records f32, says why, and checks the file again as fp32
    impossible = {INFERENCE_PRECISIONS[AUTO_HERE]: ParityThreshold(min_agreement=1.01)}
    from deploy.base import ExportContext
    from deploy.export import export_all

    ctx = ExportContext(img_size=(IMG, IMG), batch=(1, 1, 8))
    x = np.random.default_rng(2).standard_normal((16, 3, IMG, IMG), dtype=np.float32)
    manifest = export_all(
        ov_export["model"], "openvino", tmp_path / "fb2", ctx, x, thresholds=impossible, progress=False
    )
    (a,) = manifest.artifacts
    assert a.status == "ok" and a.precision == "fp32", a
    assert a.details["inference_precision_used"] == "f32"
    assert f"auto chose {AUTO_HERE}, which missed parity; recorded f32" in a.details["fallback"]
    assert a.parity["passed"] and a.parity["max_abs_diff"] <= a.parity["max_abs_limit"]  # fp32's threshold
    pred = deploy.open(tmp_path / "fb2" / a.file)
    assert pred.inference_precision == "f32" and a.sha256 == FORMATS["openvino"].digest(tmp_path / "fb2" / a.file)


def test_an_int8_row_slower_than_its_float_sibling_says_so_in_the_report(ov_export, tmp_path, capsys) -> None:
    from deploy.profiler import ProfileConfig, profile_folder
    from deploy.report import print_table, render_markdown, write_report

    config = ProfileConfig(batch_sizes=(1,), threads=1, duration=0.05, min_runs=3, rounds=1, memory=False)
    report = profile_folder(ov_export["out"], config, progress=False)
    rows = {r.name: r for r in report.rows}
    int8 = rows["openvino-int8"]
    fastest = min((rows[n] for n in ("openvino", "openvino-fp16")), key=lambda r: r.latency["1"]["p50_ms"])
    slower = int8.latency["1"]["p50_ms"] > fastest.latency["1"]["p50_ms"]
    # what this run measured decides the note: there when int8 lost to its fastest float sibling, absent otherwise
    assert bool([n for n in report.notes if n.startswith("openvino-int8 (int8) is")]) == slower
    assert ("int8 does not pay on this CPU" in (int8.reason or "")) == slower
    # a CPU without an int8 advantage: the same real report with the int8 row 1.5x its sibling's time
    int8.latency["1"]["p50_ms"] = fastest.latency["1"]["p50_ms"] * 1.5
    int8.reason = "OpenVINO inference precision (auto)"
    report.notes = report.find_notes()
    assert report.notes == [
        f"openvino-int8 (int8) is 1.50x slower than {fastest.name} ({fastest.precision}) at batch 1 "
        f"({int8.latency['1']['p50_ms']:.3g} vs {fastest.latency['1']['p50_ms']:.3g} ms p50): int8 does not pay on "
        f"this CPU, so {fastest.name} is the faster choice unless file size matters"
    ]
    assert int8.reason.endswith(report.notes[0])  # on the row itself (JSON, CSV), after its runtime note
    assert [r.name for r in report.rows if "does not pay" in (r.reason or "")] == ["openvino-int8"]
    write_report(report, tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert md.index("## Notes") < md.index("## Results") and f"- {report.notes[0]}" in md
    assert render_markdown(report.to_dict()) == render_markdown(report)  # a saved report.json keeps the note
    print_table(report)
    screen = " ".join(capsys.readouterr().out.split())
    assert f"note: {report.notes[0]}" in screen
