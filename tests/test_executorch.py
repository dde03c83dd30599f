"""ExecuTorch .pte export (XNNPACK delegate), fp32 and int8, loaded back through the Predictor."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import timm
import torch

import deploy
import t2tvit  # noqa: F401  - registers the T2T-ViT models with timm
from deploy.base import FORMATS, ExportContext
from deploy.executorch import _calibration_batches, _capture_args, load
from t2tvit.errors import ConfigError
from tests.conftest import assert_a_lone_file_describes_itself

HAS_EXECUTORCH = importlib.util.find_spec("executorch") is not None
needs_executorch = pytest.mark.skipif(
    not HAS_EXECUTORCH, reason='executorch not installed (pip install "t2tvit-edge[executorch]")'
)

IMG = 64


def test_format_rows_point_here_and_say_how_to_install() -> None:
    for name in ("executorch", "executorch-int8"):
        fmt = FORMATS[name]
        assert fmt.module == "deploy.executorch" and fmt.cpu and not fmt.needs_gpu
        if not HAS_EXECUTORCH:
            assert 'pip install "t2tvit-edge[executorch]"' in fmt.missing()
        else:
            assert fmt.missing() is None


def test_capture_args_follow_the_batch_range() -> None:
    x, dyn = _capture_args(ExportContext(img_size=(32, 48), batch=(1, 1, 8)))
    assert tuple(x.shape) == (2, 3, 32, 48)  # a batch of 1 would make torch.export specialise it
    assert dyn[0][0].min == 1 and dyn[0][0].max == 8
    x, dyn = _capture_args(ExportContext(img_size=(32, 32), batch=(1, 1, 1)))
    assert tuple(x.shape) == (1, 3, 32, 32) and dyn is None


def test_calibration_batches_stay_inside_the_batch_range() -> None:
    calib = np.zeros((37, 3, 4, 4), np.float32)
    sizes = [len(b) for b in _calibration_batches(calib, 1, 32)]
    assert sizes == [16, 16, 5]
    sizes = [len(b) for b in _calibration_batches(calib, 4, 8)]
    assert sizes == [8, 8, 8, 8, 5]
    sizes = [len(b) for b in _calibration_batches(np.zeros((3, 3, 4, 4), np.float32), 4, 8)]
    assert sizes == []


def test_load_refuses_a_gpu_device(tmp_path) -> None:
    with pytest.raises(ConfigError, match="CPU"):
        load(tmp_path / "model.pte", "executorch", device="cuda")


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("t2t_vit_7", img_size=IMG, num_classes=10).eval()


@pytest.fixture(scope="module")
def ctx() -> ExportContext:
    calib = torch.randn(24, 3, IMG, IMG, generator=torch.Generator().manual_seed(1)).numpy()
    return ExportContext(img_size=(IMG, IMG), batch=(1, 2, 4), calib=calib)


def _images(n: int, seed: int) -> np.ndarray:
    return torch.randn(n, 3, IMG, IMG, generator=torch.Generator().manual_seed(seed)).numpy()


@needs_executorch
@pytest.mark.slow
@pytest.mark.parametrize("name", ["executorch", "executorch-int8"])
def test_pte_exports_and_answers_like_pytorch(name, model, ctx, tmp_path) -> None:
    fmt = FORMATS[name]
    path = tmp_path / fmt.filename
    extra = fmt.impl().export(model, path, fmt, ctx)
    assert path.stat().st_size > 0
    assert extra["delegated_subgraphs"] > 0 and extra["delegated_nodes"] > 0
    assert extra["batch_range"] == [1, 4]

    predictor = load(path, fmt)
    assert (predictor.format, predictor.precision, predictor.device) == (name, fmt.precision, "cpu")
    assert predictor.max_batch == 4 and predictor.file_bytes == path.stat().st_size
    images = _images(6, seed=2)  # 6 > the batch upper bound of 4: run in two chunks
    with torch.no_grad():
        expected = model(torch.from_numpy(images)).numpy()
    for n in (1, 3, 6):
        logits = predictor(images[:n])
        assert logits.shape == (n, 10) and logits.dtype == np.float32
        diff = np.abs(logits - expected[:n]).max()
        if fmt.precision == "fp32":
            assert diff <= 1e-3, diff
        else:  # random weights: int8 only has to stay close; trained-model agreement is tested elsewhere
            scale = np.abs(expected).max()
            assert np.isfinite(logits).all() and diff <= 0.25 * scale, (diff, scale)
    with pytest.raises(ConfigError, match="takes"):
        predictor(np.zeros((1, 3, IMG, IMG + 16), np.float32))


@needs_executorch
def test_int8_without_calibration_images_is_a_clear_error(model, tmp_path) -> None:
    fmt = FORMATS["executorch-int8"]
    with pytest.raises(ConfigError, match="calibration"):
        fmt.impl().export(model, tmp_path / fmt.filename, fmt, ExportContext(img_size=(IMG, IMG)))


@needs_executorch
@pytest.mark.slow
def test_a_lone_pte_says_how_to_use_it(export_digits, tmp_path) -> None:
    # the .pte's constant methods hold the manifest's part and its row; the program runs as before
    exp = export_digits("executorch,executorch-int8", calib_size=16)
    for name in ("executorch", "executorch-int8"):
        assert exp["entries"][name]["status"] == "ok", exp["entries"][name]["reason"]
        art = assert_a_lone_file_describes_itself(exp["out"], name, tmp_path / name)
        renamed = art.path.rename(art.path.with_name("mine.pte"))  # the row comes from the file, not its name
        assert deploy.open(renamed).format == name
