"""The model leaves PyTorch intact: TorchScript (trace and script) and ONNX with ONNX Runtime.

These are the model's own export guarantees; the deployment formats with manifests and
parity records live in ``deploy/``.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import timm
import torch

import t2tvit  # noqa: F401  - registers the T2T-ViT models with timm


def _x(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("t2t_vit_7").eval()


def test_torchscript_trace_saves_and_loads_back(model, tmp_path) -> None:
    with torch.no_grad():
        traced = torch.jit.trace(model, _x(1))
        path = tmp_path / "t2t_vit_7.pt"
        torch.jit.save(traced, str(path))
        loaded = torch.jit.load(str(path))
        for n in (1, 3):  # a traced batch of 1 still runs other batch sizes
            torch.testing.assert_close(loaded(_x(n, seed=n)), model(_x(n, seed=n)), atol=1e-5, rtol=1e-5)


def test_torchscript_script(model) -> None:
    scripted = torch.jit.script(model)
    with torch.no_grad():
        torch.testing.assert_close(scripted(_x(2)), model(_x(2)), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_onnx_export_with_dynamic_batch_matches_onnxruntime(model, tmp_path) -> None:
    path = tmp_path / "t2t_vit_7.onnx"
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.onnx.export(
        model,
        (_x(2),),
        str(path),
        input_names=["images"],
        output_names=["logits"],
        dynamic_shapes=({0: batch},),
        dynamo=True,
    )
    onnx.checker.check_model(onnx.load(str(path)))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 3):
        x = _x(n, seed=n)
        (logits,) = session.run(None, {"images": x.numpy()})
        with torch.no_grad():
            expected = model(x).numpy()
        assert logits.shape == (n, 1000)
        assert np.abs(logits - expected).max() <= 1e-4


def test_the_same_graph_exported_again_is_copied_and_other_weights_or_settings_are_not(tmp_path, monkeypatch):
    from deploy.base import ExportContext
    from deploy.onnx import _export_key, export_fp32

    torch.manual_seed(0)
    net = timm.create_model("t2t_vit_7", num_classes=10, img_size=32).eval()
    ctx = ExportContext(img_size=(32, 32), batch=(1, 1, 4))
    calls = []
    real = torch.onnx.export
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = export_fp32(net, tmp_path / "a.onnx", ctx)
    again = export_fp32(net, tmp_path / "b.onnx", ctx)  # another export run, the same graph and settings
    assert len(calls) == 1 and (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert again["deploy_graph"]["images"] == first["deploy_graph"]["images"]  # proven again, not copied
    key = _export_key(net, 2, ctx)
    assert _export_key(net, 2, ExportContext(img_size=(32, 32), batch=(1, 1, 8))) != key  # another batch range
    assert _export_key(net, 2, ExportContext(img_size=(32, 32), batch=(1, 1, 4), opset=17)) != key
    with torch.no_grad():
        net.head.weight[0, 0] += 1e-6  # one weight, one ulp-scale step
    assert _export_key(net, 2, ctx) != key
