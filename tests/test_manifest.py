"""The manifest's types: what is written is what is read, and a file of another shape is refused in one sentence.

(The manifests real exports write are checked in test_deploy.py; the readers' one-line refusals of a damaged
file, through every command, in test_faults_input.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deploy import manifest as mf
from deploy.manifest import ArtifactEntry, Manifest
from t2tvit.errors import ConfigError


def _manifest() -> Manifest:
    parity = {"images": 8, "top1_agreement": 1.0, "max_abs_diff": 1e-6, "passed": True}
    return Manifest(
        model={"model": "t2t_vit_7", "num_classes": 3, "img_size": [64, 64]},
        input={"name": "images", "shape": ["batch", 3, 64, 48], "batch": {"min": 1, "opt": 1, "max": 8}},
        preprocessing={"mean": [0.5] * 3, "std": [0.25] * 3, "crop_pct": None, "interpolation": "bicubic"},
        classes=["cat", "dog", "eel"],
        artifacts=[
            ArtifactEntry("torch", "fp32", "ok", file="model-torch.pt", batch=[1, 1, 8], parity=parity),
            ArtifactEntry(
                "onnx-int8-static",
                "int8",
                "failed",
                reason="parity check failed: agreement 0.5 < 0.95",
                parity={**parity, "passed": False},
            ),  # fmt: skip
            ArtifactEntry("tensorrt", "fp32", reason="needs a CUDA GPU"),
        ],
    )


def test_what_is_written_is_read_back(tmp_path: Path) -> None:
    m = _manifest()
    where = mf.write(tmp_path, m)
    assert where == mf.path(tmp_path) and where.name == mf.FILE and mf.exists(tmp_path)
    assert mf.read(tmp_path) == m
    data = json.loads(where.read_text())
    assert list(data)[0] == "schema" and data["schema"] == mf.SCHEMA and list(data)[-1] == "artifacts"
    assert data["artifacts"][1]["status"] == "failed" and data["artifacts"][1]["parity"]["passed"] is False


def test_states_are_fields() -> None:
    m = _manifest()
    assert [a.format for a in m.entries("ok")] == ["torch"] and m.entry("tensorrt").status == "skipped"
    assert m.entry("onnx-int8-static").parity_failed and not m.entry("torch").parity_failed
    assert not m.entry("tensorrt").parity_failed  # never built: no parity, not a parity failure
    assert m.entry("ncnn") is None
    assert m.model_name == "t2t_vit_7" and m.num_classes == 3
    assert m.img_size == (64, 48)  # the input's shape, over the model's recorded size
    assert Manifest(model={"img_size": [32, 32]}).img_size == (32, 32)
    # unset preprocessing is left to the model's own defaults
    assert m.transform_keywords() == {"mean": [0.5] * 3, "std": [0.25] * 3, "interpolation": "bicubic"}


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        (lambda d: {**d, "quantized_by": "someone"}, r"fields this version does not know \(quantized_by\)"),
        (lambda d: {**d, "artifacts": [{**d["artifacts"][0], "speed": 1}]}, r"\(artifact torch\) has fields .*speed"),
        (lambda d: {**d, "artifacts": [{"status": "ok"}]}, "an artifact entry without a format name"),
        (lambda d: {k: v for k, v in d.items() if k != "model"}, "does not say which model it holds"),
        (lambda d: {**d, "schema": "t2t-export/0"}, "has manifest schema 't2t-export/0' but this version reads"),
        (lambda d: {k: v for k, v in d.items() if k != "artifacts"}, "is not an export manifest"),
    ],
    ids=["unknown-field", "unknown-entry-field", "entry-without-format", "no-model", "other-schema", "no-artifacts"],
)
def test_a_manifest_of_another_shape_is_refused_in_one_sentence(damage, said, tmp_path: Path) -> None:
    mf.path(tmp_path).write_text(json.dumps(damage(_manifest().to_json())))
    with pytest.raises(ConfigError, match=said) as e:
        mf.read(tmp_path)
    assert str(mf.path(tmp_path)) in str(e.value) and str(e.value).endswith("export again")
    assert "\n" not in str(e.value)


def test_an_artifacts_self_description_round_trips_and_foreign_text_reads_as_nothing() -> None:
    spec = {"model": "t2t_vit_7", "num_classes": 3, "img_size": [32, 32]}
    pre = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "crop_pct": 0.9, "interpolation": None, "other": 1}
    about = mf.about(spec, ["cat", "dog", "eel"], pre)
    assert set(about) == {"toolkit", "model", "num_classes", "img_size", "classes", "preprocessing"}
    back = mf.read_about(json.dumps(about))  # as a file stores it: JSON text
    assert back["classes"] == ["cat", "dog", "eel"] and back["img_size"] == (32, 32) and back["model"] == "t2t_vit_7"
    assert back["preprocessing"] == {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "crop_pct": 0.9}
    # a file another tool wrote or edited still opens: what is not ours reads as nothing
    for foreign in (None, "", "{not json", "[1, 2]", b"\xff\xfe", {"classes": [1, 2]}, {"img_size": "32x32"}):
        assert mf.read_about(foreign) == {}
