"""``t2t predict``: the same answers from a checkpoint and every artifact exported from it.

The T2T-ViT-7 trained on the bundled digits at 32x32 and its export to torch, onnx and ptl-int8
(``tests/conftest.py``); predictions are checked on held-out validation digits.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import NAMES, val_images

from deploy import manifest as mf
from t2t.cli import main
from t2tvit.data import bundled_dataset_path, eval_transform_for, open_rgb

IMG = 32
PER_CLASS = 2  # validation images per class used below


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(digits_export) -> SimpleNamespace:
    images = val_images(PER_CLASS)
    truth = [int(p.parent.name) for p in images]
    return SimpleNamespace(
        model=digits_export["model"],
        checkpoint=digits_export["checkpoint"],
        out=digits_export["out"],
        images=images,
        truth=truth,
    )


def predict(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(["predict", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def predict_json(capsys, artifact: Path | str, images: list[Path], *extra: str) -> dict:
    rc, out, err = predict(capsys, artifact, *images, "--json", *extra)
    assert rc == 0, err
    return json.loads(out)


def test_export_records_the_checkpoint_class_names(setup) -> None:
    manifest = json.loads(mf.path(setup.out).read_text())
    assert manifest["classes"] == NAMES


def test_checkpoint_and_every_artifact_give_the_same_named_top1(setup, capsys) -> None:
    runs = {
        "folder": setup.out,  # default: the torch artifact
        "onnx": setup.out / "model-onnx.onnx",
        "ptl-int8": setup.out / "model-ptl-int8.ptl",
        "checkpoint": setup.checkpoint,
    }
    res = {k: predict_json(capsys, path, setup.images) for k, path in runs.items()}
    assert res["folder"]["format"] == "torch" and res["checkpoint"]["format"] == "checkpoint"
    assert res["ptl-int8"]["precision"] == "int8" and res["onnx"]["input_size"] == [IMG, IMG]
    assert res["folder"]["classes_from"] == "the manifest" and res["checkpoint"]["classes_from"] == "the checkpoint"
    top1 = {k: [p["top"][0]["class"] for p in r["predictions"]] for k, r in res.items()}
    truth = [NAMES[t] for t in setup.truth]
    assert np.mean([a == b for a, b in zip(top1["checkpoint"], truth, strict=True)]) >= 0.7  # chance: 0.1
    assert top1["folder"] == top1["onnx"] == top1["checkpoint"]
    assert np.mean([a == b for a, b in zip(top1["ptl-int8"], top1["checkpoint"], strict=True)]) >= 0.9
    for r in res.values():
        assert [p["image"] for p in r["predictions"]] == [str(p) for p in setup.images] and r["errors"] == []
        first = r["predictions"][0]["top"]
        probs = [t["probability"] for t in first]
        assert len(first) == 5 and probs == sorted(probs, reverse=True)
    # fp32 runtimes: the same probabilities, not just the same order
    for a, b in zip(res["onnx"]["predictions"], res["checkpoint"]["predictions"], strict=True):
        pa = [t["probability"] for t in a["top"]]
        pb = [t["probability"] for t in b["top"]]
        np.testing.assert_allclose(pa, pb, atol=1e-4)


def test_table_plain_topk_and_format_choice(setup, capsys) -> None:
    three = [p for p in setup.images if p.parent.name == "3"]
    rc, out, _ = predict(capsys, setup.out, *three, "--format", "ptl-int8", "--topk", "3")
    assert rc == 0 and "ptl-int8 (int8, cpu)" in out and "three" in out and three[0].name in out
    assert "classes from the manifest" in out
    rc, out, _ = predict(capsys, setup.out, *three, "--plain", "--topk", "1", "-b", "1")
    lines = out.strip().splitlines()
    assert rc == 0 and len(lines) == len(three) and lines[0].startswith(str(three[0]))
    assert len(lines[0].split()) == 3  # image, class, probability


def test_class_names_from_file_folder_or_digits_else_indices(setup, tmp_path, capsys) -> None:
    imgs = setup.images[:3]
    ref = [p["top"][0]["index"] for p in predict_json(capsys, setup.out, imgs)["predictions"]]
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"digit-{i}" for i in range(10)) + "\n\n")
    for spec, expect in [
        (names, [f"digit-{i}" for i in ref]),
        (bundled_dataset_path(), [str(i) for i in ref]),  # its train/ sub-folders
        ("digits", [str(i) for i in ref]),
    ]:
        r = predict_json(capsys, setup.out, imgs, "--classes", spec)
        assert [p["top"][0]["class"] for p in r["predictions"]] == expect

    # an old export (no classes in its manifest): indices
    old = tmp_path / "old"
    old.mkdir()
    manifest = json.loads(mf.path(setup.out).read_text())
    del manifest["classes"]
    mf.path(old).write_text(json.dumps(manifest))
    shutil.copy(setup.out / "model-torch.pt", old)
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(setup.out / "model-onnx.onnx", lone / "digits.onnx")
    shutil.copy(setup.out / "model-ptl-int8.ptl", lone / "digits.ptl")
    r = predict_json(capsys, old, imgs)
    assert r["format"] == "torch" and r["classes_from"] is None and r["input_size"] == [IMG, IMG]
    assert [p["top"][0]["index"] for p in r["predictions"]] == ref
    assert r["predictions"][0]["top"][0]["class"] is None
    rc, out, _ = predict(capsys, old, imgs[0])
    assert rc == 0 and "class index" in out
    # a lone file without its manifest: the names the export wrote into the file itself
    for path, fmt in [(lone / "digits.onnx", "onnx"), (lone / "digits.ptl", "ptl-int8")]:
        r = predict_json(capsys, path, imgs)
        assert r["format"] == fmt and r["classes_from"] == "the file" and r["input_size"] == [IMG, IMG]
        assert [p["top"][0]["class"] for p in r["predictions"]] == [NAMES[i] for i in ref]
    rc, out, _ = predict(capsys, lone / "digits.onnx", imgs[0])
    assert rc == 0 and "classes from the file" in out

    rc, _, err = predict(capsys, setup.out, imgs[0], "--classes", tmp_path / "nowhere")
    assert rc == 2 and "neither a file, a folder nor 'digits'" in err
    many = tmp_path / "many.txt"
    many.write_text("\n".join(map(str, range(12))))
    rc, _, err = predict(capsys, setup.out, imgs[0], "--classes", many)
    assert rc == 2 and "names 12 classes but model-torch.pt predicts 10" in err


def test_unreadable_images_are_reported_and_the_others_predicted(setup, tmp_path, capsys) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    missing = tmp_path / "missing.jpg"
    good = setup.images[:2]
    rc, out, err = predict(capsys, setup.out, good[0], bad, missing, good[1], "--json", "-b", "2")
    assert rc == 1
    lines = err.strip().splitlines()
    assert len(lines) == 2 and "broken.png" in lines[0] and "missing.jpg: no such file" in lines[1]
    r = json.loads(out)
    assert [p["image"] for p in r["predictions"]] == [str(g) for g in good]
    assert [e["image"] for e in r["errors"]] == [str(bad), str(missing)]
    rc, out, err = predict(capsys, setup.out, good[0], bad)  # the table too
    assert rc == 1 and good[0].name in out and "broken.png" in err


def test_missing_or_unknown_artifacts_are_one_line_errors(setup, tmp_path, capsys) -> None:
    img = setup.images[0]
    cases = [
        ([tmp_path / "nope.onnx", img], "does not exist"),
        ([setup.out, img, "--format", "onnx-int4"], "unknown format 'onnx-int4'"),
        ([setup.out, img, "--format", "torchscript"], "torchscript is not in"),
        ([tmp_path, img], "has no manifest.json"),
        ([setup.out, img, "--img-size", "48"], "takes 32x32 images, not 48; drop --img-size"),
        ([setup.out, img, "--topk", "0"], "--topk and --batch-size must be at least 1"),
    ]
    weird = tmp_path / "model.xyz"
    weird.write_bytes(b"0")
    cases.append(([weird, img], "cannot tell what model.xyz is"))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not onnx")
    cases.append(([junk, img], "junk.onnx"))
    for argv, message in cases:
        rc, out, err = predict(capsys, *argv)
        assert rc == 2 and out == "", (argv, err)
        assert len(err.strip().splitlines()) == 1 and err.startswith("t2t predict: error: ") and message in err, err


def test_checkpoint_records_the_trainers_crop_and_interpolation(tmp_path) -> None:
    from deploy.artifacts import resolve as resolve_artifact

    ck = tmp_path / "ck.pth"
    sd = {"cls_token": torch.zeros(1, 1, 256)}
    args = {"model": "t2t_vit_7", "img_size": 48, "crop_pct": 1.0, "interpolation": "bilinear"}
    torch.save({"model": sd, "args": args, "classes": ["a", "b"]}, ck)
    art = resolve_artifact(ck)
    assert art.fmt is None and art.model == "t2t_vit_7" and art.img_size == (48, 48)
    assert art.preprocessing == {"crop_pct": 1.0, "interpolation": "bilinear"} and art.classes == ["a", "b"]


@pytest.mark.parametrize("flags", [[], ["--crop-pct", "1.0", "--interpolation", "bilinear"]])
def test_shared_eval_transform_is_the_trainers_val_transform(flags) -> None:
    """The trainer's validation pixels, calibration's and predict's are the same tensor."""
    import t2tvit
    from t2tvit import train
    from t2tvit.train import _set_transforms, build_parser

    data_config = getattr(train, "data_config", None) or train._data_config  # public since the distill work

    args = build_parser().parse_args(["digits", "--model", "t2t_vit_7", "--img-size", str(IMG), *flags])
    with torch.device("meta"):
        model = t2tvit.create_model("t2t_vit_7", num_classes=10, img_size=IMG)
    val = SimpleNamespace(transform=None)
    _set_transforms(args, data_config(args, model), None, val)
    rng = np.random.default_rng(0)
    from PIL import Image

    wide = Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8))
    digit = open_rgb(next((bundled_dataset_path() / "val" / "3").glob("*.png")))
    overrides = {"crop_pct": args.crop_pct, "interpolation": args.interpolation or None}
    for img in (wide, digit):
        expected = val.transform(img)
        assert expected.shape == (3, IMG, IMG)
        assert torch.equal(eval_transform_for("t2t_vit_7", IMG, **overrides)(img), expected)
        assert torch.equal(eval_transform_for(model, **overrides)(img), expected)
        if not flags:
            assert torch.equal(eval_transform_for(model)(img), expected)
