"""The phone runtimes: ncnn (run and checked here) and Core ML (macOS/iOS only: built and checked structurally).

The model is the 32 px T2T-ViT-7 trained on the digits for the session (``digits_checkpoint``), so top-1
agreement means something. One export builds every mobile row; the tests read it.
"""

from __future__ import annotations

import importlib.util
import json
import platform
import shutil

import numpy as np
import pytest
import torch
from conftest import assert_a_lone_file_describes_itself, val_images

import deploy
from deploy.base import FORMATS, ExportContext
from deploy.export import export_all, reference_logits, verify_artifacts
from deploy.graph import GRAPH_TOLERANCE, OneHotSoftSplit, deploy_graph, graph_check
from deploy.profiler import ProfileConfig, profile_folder
from t2t.cli import main
from t2tvit.errors import CheckpointError, ConfigError
from t2tvit.models.layers import soft_split

pytestmark = pytest.mark.usefixtures("one_thread")

IMG = 32
MOBILE = ["ncnn", "ncnn-fp16", "coreml", "coreml-int8"]
_MISSING = {n: FORMATS[n].missing() for n in MOBILE}
needs = pytest.mark.skipif(
    any(_MISSING.values()), reason=f"the mobile extra is not installed: {next(filter(None, _MISSING.values()), '')}"
)
ON_MAC = platform.system() == "Darwin"


@pytest.fixture(scope="module")
def mobile(rows_export) -> dict:
    if any(_MISSING.values()):
        pytest.skip(f"the mobile extra is not installed: {next(filter(None, _MISSING.values()))}")
    return rows_export("mobile", batch=(1, 1, 8), calib_size=32)


def test_the_converter_rewrite_is_the_same_function() -> None:
    torch.manual_seed(0)
    model = deploy_model()
    x = torch.randn(4, 3, IMG, IMG)
    for runtime in ("ncnn", "coreml", "litert"):
        rec = graph_check(model, deploy_graph(model, runtime, IMG), x)
        assert rec["max_abs_diff"] <= GRAPH_TOLERANCE and rec["runtime"] == runtime and rec["phone_rewrites"]
    # the one-hot convolution gathers the soft split's tokens bit for bit, both layouts
    for k, s, p, c, last in ((7, 4, 2, 3, False), (3, 2, 1, 64, True)):
        t = torch.randn(2, 16, 16, c) if last else torch.randn(2, c, 16, 16)
        assert torch.equal(OneHotSoftSplit(k, s, p, c, last)(t), soft_split(t, k, s, p, last))
    assert type(model.tokens_to_token.soft_split0).__name__ == "SoftSplit"  # the model itself is not changed


def deploy_model() -> torch.nn.Module:
    import t2tvit

    return t2tvit.create_model("t2t_vit_7", num_classes=10, img_size=IMG).eval()


@needs
def test_ncnn_rows_build_and_pass_parity(mobile) -> None:
    e = mobile["entries"]
    for name in ("ncnn", "ncnn-fp16"):
        a = e[name]
        assert a["status"] == "ok", (name, a["reason"])
        assert {"pnnx", "ncnn"} <= set(a["tool_versions"])
        assert a["deploy_graph"]["max_abs_diff"] <= a["deploy_graph"]["limit"] and a["deploy_graph"]["images"] == 16
        param = mobile["out"] / a["file"]
        # size and digest cover the weights and the sidecar beside the .param
        files = [param, param.with_suffix(".bin"), param.with_suffix(".json")]
        assert a["bytes"] == sum(f.stat().st_size for f in files)
        assert not list(mobile["out"].glob("*.py")) and not list(mobile["out"].glob("*pnnx*"))
    assert e["ncnn"]["parity"]["max_abs_diff"] <= 1e-3  # the same arithmetic in another runtime
    assert e["ncnn-fp16"]["parity"]["top1_agreement"] >= 0.99
    assert "fp32 arithmetic" in e["ncnn-fp16"]["details"]["compute"]
    assert e["ncnn-fp16"]["bytes"] <= 0.55 * e["ncnn"]["bytes"]


@needs
def test_ncnn_round_trip_at_two_batch_sizes_with_threads_and_renamed_files(mobile, tmp_path) -> None:
    x = np.random.default_rng(0).standard_normal((5, 3, IMG, IMG), dtype=np.float32)
    ref = reference_logits(mobile["model"], x)
    for name in ("ncnn", "ncnn-fp16"):
        pred = deploy.open(mobile["out"] / FORMATS[name].filename, threads=1)
        assert pred.format == name and pred.input_hw == (IMG, IMG) and pred.net.opt.num_threads == 1
        assert pred.net.opt.use_fp16_storage == (name == "ncnn-fp16")
        tol = 1e-3 if name == "ncnn" else 0.05
        for n in (1, 5):  # one extractor per image: any batch runs
            np.testing.assert_allclose(pred(x[:n]), ref[:n], atol=tol * max(1.0, np.abs(ref).max()))
        # a renamed copy: the row and size from its sidecar; without it, the row from the weights' first blob tag
        src = mobile["out"] / FORMATS[name].filename
        dst = tmp_path / f"mine-{name}.param"
        for suffix in (".param", ".bin", ".json"):
            shutil.copy(src.with_suffix(suffix), dst.with_suffix(suffix))
        assert deploy.open(dst).format == name
        dst.with_suffix(".json").unlink()
        assert deploy.open(dst, img_size=IMG).format == name
    with pytest.raises(ConfigError, match=r"takes 32x32 images, not 64x64"):
        pred(np.zeros((1, 3, 64, 64), np.float32))


@needs
def test_a_damaged_or_missing_ncnn_weights_file_is_caught(mobile, tmp_path) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(mobile["out"], folder)
    param = folder / FORMATS["ncnn"].filename
    data = bytearray(param.with_suffix(".bin").read_bytes())
    data[len(data) // 2 : len(data) // 2 + 4096] = bytes(4096)
    param.with_suffix(".bin").write_bytes(bytes(data))
    results = {r["format"]: r for r in verify_artifacts(folder)}
    assert any("sha256 differs" in p for p in results["ncnn"]["problems"])
    assert results["ncnn-fp16"]["ok"] and "coreml" not in results  # a skipped row is not verified as ok
    param.with_suffix(".bin").write_bytes(bytes(data[:1000]))  # truncated
    with pytest.raises(CheckpointError, match=r"could not be read by ncnn"):
        FORMATS["ncnn"].load(param)
    param.with_suffix(".bin").unlink()
    with pytest.raises(CheckpointError, match=r"needs its weights file model-ncnn.bin beside it"):
        FORMATS["ncnn"].load(param)


@needs
@pytest.mark.skipif(ON_MAC, reason="on macOS Core ML runs, so its parity is checked like any other row")
@pytest.mark.parametrize("name", MOBILE)
def test_a_lone_mobile_artifact_says_how_to_use_it(mobile, name, tmp_path) -> None:
    # ncnn: the .json beside the .param; Core ML: the package's user-defined metadata
    assert_a_lone_file_describes_itself(mobile["out"], name, tmp_path)


def test_coreml_is_built_checked_structurally_and_its_parity_is_skipped_never_passed(mobile, tmp_path) -> None:
    e = mobile["entries"]
    for name in ("coreml", "coreml-int8"):
        a = e[name]
        assert a["status"] == "skipped" and a["parity"] is None
        assert a["reason"].startswith(f"parity skipped: {name} runs only on macOS/iOS, not on Linux")
        assert "checked structurally: float32 images [1, 3, 32, 32] -> float32 logits [1, 10]" in a["reason"]
        package = mobile["out"] / a["file"]
        assert package.is_dir() and a["bytes"] == sum(f.stat().st_size for f in package.rglob("*") if f.is_file())
        assert a["sha256"] == FORMATS[name].digest(package)
        weights = a["details"]["structure"]["weights"]
        assert not any(k.endswith(":fp32") for k in weights)
        pred = deploy.open(package)  # the folder itself is the artifact, not an export folder
        assert pred.format == name and pred.input_hw == (IMG, IMG)
        with pytest.raises(ConfigError, match=r"cannot run here: .* runs only on macOS/iOS"):
            pred(np.zeros((1, 3, IMG, IMG), np.float32))
    assert e["coreml-int8"]["details"]["structure"]["weights"]["constexpr_affine_dequantize:int8"] >= 30
    assert e["coreml-int8"]["details"]["structure"]["float_weights"] == []  # no --max-drop: every large one int8
    assert "constexpr_affine_dequantize:int8" not in e["coreml"]["details"]["structure"]["weights"]
    assert e["coreml-int8"]["bytes"] <= 0.6 * e["coreml"]["bytes"]
    # a changed weight changes the digest; a damaged program is refused in one sentence
    copy = tmp_path / "model-coreml.mlpackage"
    shutil.copytree(mobile["out"] / "model-coreml.mlpackage", copy)
    blob = next(copy.rglob("weight.bin"))
    blob.write_bytes(blob.read_bytes()[:-1] + b"\1")
    assert FORMATS["coreml"].digest(copy) != e["coreml"]["sha256"]
    spec = next(copy.rglob("model.mlmodel"))
    spec.write_bytes(spec.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"not a readable Core ML package"):
        FORMATS["coreml"].load(copy)


@needs
def test_bench_times_ncnn_and_skips_coreml_with_the_reason(mobile) -> None:
    config = ProfileConfig(threads=1, duration=0.0, min_runs=2, warmup=0, rounds=1, memory=False, batch_sizes=(1, 2))
    config.formats = "torch,ncnn,coreml"
    rows = {r.name: r for r in profile_folder(mobile["out"], config, progress=False).rows}
    assert rows["ncnn"].status == "ok" and rows["ncnn"].latency["2"]["p50_ms"] > 0
    if not ON_MAC:
        assert rows["coreml"].status == "skipped" and "runs only on macOS/iOS" in rows["coreml"].reason


@needs
def test_t2t_predict_runs_the_ncnn_artifact(mobile, capsys) -> None:
    images = val_images(1)
    capsys.readouterr()
    assert main(["predict", str(mobile["out"] / FORMATS["ncnn"].filename), *map(str, images), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["format"] == "ncnn" and len(out["predictions"]) == len(images) and not out["errors"]


def test_a_missing_mobile_package_gives_a_skipped_row_with_the_install_line(digits_checkpoint, tmp_path, monkeypatch):
    trained = digits_checkpoint(IMG)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n in ("ncnn", "coremltools") else real(n, *a)
    )
    x = np.random.default_rng(0).standard_normal((4, 3, IMG, IMG), dtype=np.float32)
    m = export_all(
        trained["model"], ["torch", *MOBILE], tmp_path / "out", ExportContext(img_size=(IMG, IMG)), x, progress=False
    )
    for a in m.artifacts[1:]:
        assert a.status == "skipped" and a.file is None
        assert 'not installed; install with: pip install "t2tvit-edge[mobile]"' in a.reason
