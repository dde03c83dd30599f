"""An accuracy budget for int8 (``t2t export --max-drop PTS --val-data DIR``, :mod:`compress.budget`).

The digits model is made sensitive on purpose, the way trained ViTs are (LayerNorm scales with outlier
channels): one channel of the final LayerNorm is scaled x1000 and the head's weights for it divided back,
so the fp32 function is unchanged but the head's input carries an outlier channel, and dynamic int8's
per-tensor activation scale crushes every other channel (digits top-1 falls by ~50 points). With the
budget the export keeps the layer that causes it in float, names it, and meets the budget -- measured again
by ``t2t validate`` on the same images.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from deploy.export import export_checkpoint
from deploy.settings import ExportConfig
from deploy.validation import validate
from t2tvit.data import dataset_split
from t2tvit.errors import ConfigError
from tests.conftest import t2t_here

IMG = 32
CHANNEL, OUTLIER = 7, 1000.0


@pytest.fixture(scope="module")
def sensitive(digits_checkpoint, tmp_path_factory) -> Path:
    """A checkpoint of the digits model with one activation outlier channel (same fp32 function)."""
    trained = digits_checkpoint(IMG)
    model = copy.deepcopy(trained["model"]).eval()
    with torch.no_grad():
        x = torch.randn(4, 3, IMG, IMG)
        before = model(x)
        model.norm.weight[CHANNEL] *= OUTLIER
        model.norm.bias[CHANNEL] *= OUTLIER
        model.head.weight[:, CHANNEL] /= OUTLIER
        assert torch.allclose(model(x), before, atol=1e-4 * before.abs().max().item())
    state = torch.load(trained["checkpoint"], weights_only=False)
    state["model"] = model.state_dict()
    state["classes"] = [str(i) for i in range(10)]  # the digits folders' names, so validation labels by name
    path = tmp_path_factory.mktemp("sensitive") / "sensitive.pth"
    torch.save(state, path)
    return path


def _export(checkpoint: Path, out: Path, **budget):
    return export_checkpoint(
        checkpoint, formats="onnx-int8-dynamic", out=out, calib_data=dataset_split("digits", "train"),
        parity_images=64, calib_size=8, progress=False, **budget,
    )  # fmt: skip


def test_the_budget_keeps_the_sensitive_layers_in_float_and_holds(sensitive, tmp_path, one_thread) -> None:
    plain = _export(sensitive, tmp_path / "plain")
    assert plain.manifest.entry("onnx-int8-dynamic").parity_failed  # the default int8 misses its parity check
    before = validate(plain.folder, "digits", formats="onnx-int8-dynamic", progress=False).results[0]
    assert before.drop > 20, f"default int8 of the sensitive model lost only {before.drop:.1f} points"

    fitted = _export(sensitive, tmp_path / "fitted", max_drop=2.0, val_data="digits")
    entry = fitted.manifest.entry("onnx-int8-dynamic")
    assert entry.status == "ok", entry.reason
    budget = entry.details["accuracy_budget"]
    assert budget["met"] and budget["drop"] <= 2.0 and budget["int8_drop"] == pytest.approx(before.drop)
    kept = budget["kept_float"]
    assert "head" in kept and len(kept) <= 3, kept  # the layer with the outlier input, not the model
    assert budget["ranking"][0]["layer"] in kept and budget["ranking"][0]["error"] > budget["ranking"][-1]["error"]
    assert entry.details["quantization"]["float_nodes"] == budget["kept_nodes"]
    report = validate(fitted.folder, "digits", progress=False)  # measured again, independently
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
    # an int8 row without a budget search is quantized as before, and the user is told which
    with pytest.warns(UserWarning, match="torch-int8 are quantized without an accuracy budget"):
        ExportConfig(formats="onnx-int8-dynamic,torch-int8", max_drop=1.0, val_data="digits").check()
    res = t2t_here("export", "--checkpoint", str(sensitive), "--formats", "onnx,torch-int8", "--max-drop", "1",
                   "--val-data", "digits", "--out", str(tmp_path / "d"))  # fmt: skip
    assert res.returncode == 2 and "--max-drop is an option of onnx-int8-dynamic" in res.stderr
    assert not (tmp_path / "d").exists()
